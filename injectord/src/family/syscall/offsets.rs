//! Where the kernel struct fields the device and socket filters read sit
//! on this kernel. Rust eBPF has no CO-RE relocations, so the daemon
//! learns the offsets from the kernel's BTF at start-up and writes them to
//! `SYSCALL_OFFSETS`; without them (no BTF, a renamed field), the filters
//! that need them are refused on the kprobe and LSM backends, naming the
//! missing field.

use aya::maps::{Array, MapData};
use injector_common::syscall::{KernelOffsets, SYSCALL_OFFSETS};

use crate::kernel::{Kernel, btf::KernelBtf};

/// The offsets map, kept open for the programs loaded later (closing the
/// daemon's descriptor before they load would leave them no map).
pub type OffsetsMap = Array<MapData, KernelOffsets>;

/// Learns the offsets and writes them for the programs; `Err` says why
/// the filters that need them cannot work here.
pub fn publish(kernel: &mut Kernel, btf: Result<&KernelBtf, &str>) -> Result<OffsetsMap, String> {
    let btf = btf.map_err(|e| format!("no kernel BTF to find struct fields in: {e}"))?;
    let field = |s: &str, m: &str| {
        btf.offset(s, m)
            .ok_or_else(|| format!("this kernel's BTF has no field {m} in struct {s}"))
    };
    let offsets = KernelOffsets {
        ready: 1,
        file_inode: field("file", "f_inode")?,
        inode_sb: field("inode", "i_sb")?,
        sb_dev: field("super_block", "s_dev")?,
        inode_mode: field("inode", "i_mode")?,
        inode_rdev: field("inode", "i_rdev")?,
        file_path: field("file", "f_path")?,
        dentry_parent: field("dentry", "d_parent")?,
        dentry_inode: field("dentry", "d_inode")?,
        inode_ino: field("inode", "i_ino")?,
        sb_bdev: field("super_block", "s_bdev")?,
        _pad: 0,
        path_dentry: field("path", "dentry")?,
        dentry_sb: field("dentry", "d_sb")?,
        bprm_file: field("linux_binprm", "file")?,
        vma_file: field("vm_area_struct", "vm_file")?,
        socket_type: field("socket", "type")?,
        socket_sk: field("socket", "sk")?,
        sk_family: field("sock", "__sk_common")? + field("sock_common", "skc_family")?,
        task_files: field("task_struct", "files")?,
        files_fdt: field("files_struct", "fdt")?,
        fdt_max_fds: field("fdtable", "max_fds")?,
        fdt_fd: field("fdtable", "fd")?,
    };
    let map = kernel
        .ebpf
        .take_map(SYSCALL_OFFSETS)
        .ok_or_else(|| format!("map {SYSCALL_OFFSETS} missing from the object"))?;
    let mut array: Array<_, KernelOffsets> = Array::try_from(map).map_err(|e| e.to_string())?;
    array
        .set(0, &offsets, 0)
        .map_err(|e| format!("writing {SYSCALL_OFFSETS}: {e}"))?;
    tracing::debug!(?offsets, "kernel struct offsets for the syscall filters");
    Ok(array)
}
