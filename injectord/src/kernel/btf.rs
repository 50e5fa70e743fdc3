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

/// A struct or union member: its name, type id and bit offset.
#[derive(Debug)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

/// What the daemon needs from the kernel's BTF: each function's arity,
/// and where struct members sit (Rust eBPF has no CO-RE relocations, so
/// programs read kernel structs at offsets the daemon learns here).
#[derive(Debug, Default)]
pub struct KernelBtf {
    arities: HashMap<String, usize>,
    /// Struct and union ids by name (anonymous ones are reached through
    /// their parent's members).
    by_name: HashMap<String, Vec<u32>>,
    /// Members of every struct and union, by type id.
    members: HashMap<u32, Vec<Member>>,
    /// Every enumerator of a 32-bit enum: (name offset, value); looked up
    /// rarely, by scanning.
    enumerators: Vec<(u32, i32)>,
    strings: Vec<u8>,
}

impl KernelBtf {
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
    pub fn arity(&self, name: &str) -> Option<usize> {
        self.arities.get(name).copied()
    }

    /// The byte offset of `member` in `struct name`, looking through
    /// anonymous structs and unions; `None` if no struct of that name has
    /// it (or it is a bit field).
    pub fn offset(&self, name: &str, member: &str) -> Option<u32> {
        self.by_name
            .get(name)?
            .iter()
            .find_map(|&id| self.offset_in(id, member, 0))
    }

    /// The value of enumerator `name` (of any enum), if the BTF has it:
    /// a kernel flag whose bit moved between versions, where it is an
    /// enum and not a macro.
    pub fn enumerator(&self, name: &str) -> Option<i32> {
        self.enumerators
            .iter()
            .find(|(n, _)| self.name(*n) == Some(name))
            .map(|&(_, v)| v)
    }

    fn offset_in(&self, id: u32, member: &str, depth: u32) -> Option<u32> {
        // Anonymous nesting is shallow in practice; the bound keeps a
        // malformed BTF from recursing forever.
        if depth > 8 {
            return None;
        }
        for m in self.members.get(&id)? {
            let name = self.name(m.name).unwrap_or("");
            if name == member {
                return (m.bit_offset % 8 == 0).then_some(m.bit_offset / 8);
            }
            if name.is_empty()
                && let Some(inner) = self.offset_in(m.type_id, member, depth + 1)
            {
                return Some(m.bit_offset / 8 + inner);
            }
        }
        None
    }

    fn name(&self, off: u32) -> Option<&str> {
        let rest = self.strings.get(off as usize..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    }

    fn parse(data: &[u8]) -> Option<Self> {
        let u16_at = |o: usize| Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?));
        let u32_at = |o: usize| Some(u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?));
        if u16_at(0)? != MAGIC {
            return None;
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let types = hdr_len + type_off;
        let strings = hdr_len + str_off;
        let mut btf = Self {
            strings: data.get(strings..strings + str_len)?.to_vec(),
            ..Self::default()
        };
        // Type ids start at 1; remember each FUNC_PROTO's parameter count,
        // each FUNC's (name, proto id), and every struct's members.
        let mut protos: HashMap<u32, usize> = HashMap::new();
        let mut funcs: Vec<(u32, u32)> = Vec::new();
        let (mut at, end, mut id) = (types, types + type_len, 1u32);
        while at + 12 <= end {
            let name_off = u32_at(at)?;
            let info = u32_at(at + 4)?;
            let size_or_type = u32_at(at + 8)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let bitfields = info >> 31 == 1;
            let body = at + 12;
            at = body
                + match kind {
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
                KIND_ENUM => {
                    for i in 0..vlen {
                        let e = body + 8 * i;
                        btf.enumerators.push((u32_at(e)?, u32_at(e + 4)? as i32));
                    }
                }
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = body + 12 * i;
                        let offset = u32_at(m + 8)?;
                        members.push(Member {
                            name: u32_at(m)?,
                            type_id: u32_at(m + 4)?,
                            // With the kind flag, the top byte is a bit
                            // field's size.
                            bit_offset: if bitfields {
                                offset & 0xff_ffff
                            } else {
                                offset
                            },
                        });
                    }
                    if name_off != 0
                        && let Some(name) = btf.name(name_off)
                    {
                        btf.by_name.entry(name.to_string()).or_default().push(id);
                    }
                    btf.members.insert(id, members);
                }
                _ => {}
            }
            id += 1;
        }
        btf.arities = funcs
            .into_iter()
            .filter_map(|(name, proto)| Some((btf.name(name)?.to_string(), *protos.get(&proto)?)))
            .collect();
        Some(btf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_running_kernels_lsm_hooks() {
        let a =
            KernelBtf::from_sys_fs().expect("reading /sys/kernel/btf/vmlinux (tests run as root)");
        assert_eq!(a.arity("bpf_lsm_file_open"), Some(1));
        assert_eq!(a.arity("bpf_lsm_file_permission"), Some(2));
        assert_eq!(a.arity("bpf_lsm_socket_connect"), Some(3));
    }

    #[test]
    fn finds_struct_members_also_inside_anonymous_unions() {
        let b = KernelBtf::from_sys_fs().expect("reading /sys/kernel/btf/vmlinux");
        // The first member of every struct sits at 0.
        assert_eq!(b.offset("sock", "__sk_common"), Some(0));
        // skc_family comes after the addresses, ports and hash.
        let family = b.offset("sock_common", "skc_family").expect("skc_family");
        assert!((8..64).contains(&family), "{family}");
        // skc_daddr sits in an anonymous struct inside an anonymous union.
        assert_eq!(b.offset("sock_common", "skc_daddr"), Some(0));
        assert!(b.offset("file", "f_inode").is_some());
        assert!(b.offset("file", "no_such_member").is_none());
        assert!(b.offset("no_such_struct", "x").is_none());
    }

    #[test]
    fn reads_enumerators() {
        let b = KernelBtf::from_sys_fs().expect("reading /sys/kernel/btf/vmlinux");
        // enum bpf_prog_type is uapi: its values never move.
        assert_eq!(b.enumerator("BPF_PROG_TYPE_KPROBE"), Some(2));
        assert_eq!(b.enumerator("BPF_PROG_TYPE_LSM"), Some(29));
        assert!(b.enumerator("NO_SUCH_ENUMERATOR").is_none());
    }
}
