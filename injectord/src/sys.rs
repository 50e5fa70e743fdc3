//! The few raw `bpf(2)` calls aya has no typed wrapper for.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// `union bpf_attr` as used by the BPF_MAP_*_ELEM commands.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

/// `bpf_map_update_elem` with untyped key and value. The caller passes
/// buffers of exactly the map's key and value sizes.
pub fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
    let attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `attr` is a valid, fully initialised bpf_attr prefix for this
    // command, the key and value pointers stay valid for the call, and the
    // kernel reads at most the map's key and value sizes from them.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_ELEM,
            &raw const attr,
            size_of::<MapElemAttr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Views a plain-data value as bytes.
pub fn bytes_of<T: aya::Pod>(v: &T) -> &[u8] {
    // SAFETY: `T: Pod` is plain data with no padding holes that matter to
    // the kernel (our map types spell their padding out).
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

/// `clock_gettime(CLOCK_MONOTONIC)` in nanoseconds: the clock
/// `bpf_ktime_get_ns()` reads.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}
