//! Just enough of a BTF reader to learn a kernel function's arity from
//! /sys/kernel/btf/vmlinux. aya parses BTF but keeps its type table
//! private; the syscall family needs the arity of each `bpf_lsm_*` hook,
//! because an LSM program finds the previous program's verdict right
//! after the hook's arguments and a signature that changed between
//! kernels must be refused, not misread.

use std::collections::HashMap;

const MAGIC: u16 = 0xeb9f;

// BTF kinds (include/uapi/linux/btf.h).
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

/// The arities of the kernel's functions, by name.
#[derive(Debug, Default)]
pub struct Arities(HashMap<String, usize>);

impl Arities {
    /// Reads the running kernel's BTF.
    pub fn from_sys_fs() -> std::io::Result<Self> {
        let data = std::fs::read("/sys/kernel/btf/vmlinux")?;
        Self::parse(&data).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "/sys/kernel/btf/vmlinux is not BTF this reader understands",
            )
        })
    }

    /// The number of parameters of function `name`, if the BTF has it.
    pub fn of(&self, name: &str) -> Option<usize> {
        self.0.get(name).copied()
    }

    fn parse(data: &[u8]) -> Option<Self> {
        let u16_at = |o: usize| Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?));
        let u32_at = |o: usize| Some(u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?));
        if u16_at(0)? != MAGIC {
            return None;
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let str_off = u32_at(16)? as usize;
        let types = hdr_len + type_off;
        let strings = hdr_len + str_off;
        let name_at = |off: u32| -> Option<&str> {
            let start = strings + off as usize;
            let rest = data.get(start..)?;
            let end = rest.iter().position(|&b| b == 0)?;
            std::str::from_utf8(&rest[..end]).ok()
        };
        // Type ids start at 1; remember each FUNC_PROTO's parameter count
        // and each FUNC's (name, proto id).
        let mut protos: HashMap<u32, usize> = HashMap::new();
        let mut funcs: Vec<(u32, u32)> = Vec::new();
        let (mut at, end, mut id) = (types, types + type_len, 1u32);
        while at + 12 <= end {
            let name_off = u32_at(at)?;
            let info = u32_at(at + 4)?;
            let size_or_type = u32_at(at + 8)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            at += 12;
            at += match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                _ => 0,
            };
            match kind {
                KIND_FUNC_PROTO => {
                    protos.insert(id, vlen);
                }
                KIND_FUNC => funcs.push((name_off, size_or_type)),
                _ => {}
            }
            id += 1;
        }
        let arities = funcs
            .into_iter()
            .filter_map(|(name, proto)| Some((name_at(name)?.to_string(), *protos.get(&proto)?)))
            .collect();
        Some(Self(arities))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_running_kernels_lsm_hooks() {
        let a =
            Arities::from_sys_fs().expect("reading /sys/kernel/btf/vmlinux (tests run as root)");
        assert_eq!(a.of("bpf_lsm_file_open"), Some(1));
        assert_eq!(a.of("bpf_lsm_file_permission"), Some(2));
        assert_eq!(a.of("bpf_lsm_socket_connect"), Some(3));
    }
}
