//! The LSM backend: BPF LSM hooks that deny the call with the errno. A
//! hook serves several syscalls (file_permission runs for read, write and
//! their vector forms); the syscall number in the caller's registers tells
//! them apart, so a rule fires for its own syscall only.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_task_btf, bpf_task_pt_regs},
    programs::LsmContext,
};
use injector_common::syscall::*;

use super::{
    SOCK_TYPE_MASK, Subject, device_of_file, device_of_inode, error_for, file_on_disk, file_under,
    offsets, read_at, syscall_nr,
};

/// The largest errno (the kernel's MAX_ERRNO).
const MAX_ERRNO: u64 = 4095;

/// What the hook's object argument is (`kind`, an `OBJ_*`), its value,
/// and the argument after it (socket_create's type).
struct Object {
    kind: u8,
    arg: u64,
    next: u64,
}

impl Subject for Object {
    #[inline(always)]
    fn device(&self, _: &SyscallRule) -> Option<u32> {
        let o = offsets()?;
        match self.kind {
            OBJ_FILE => device_of_file(o, self.arg),
            OBJ_INODE => device_of_inode(o, self.arg),
            OBJ_PATH => {
                let dentry = read_at::<u64>(self.arg, o.path_dentry)?;
                let sb = read_at::<u64>(dentry, o.dentry_sb)?;
                read_at::<u32>(sb, o.sb_dev)
            }
            OBJ_BPRM => device_of_file(o, read_at::<u64>(self.arg, o.bprm_file)?),
            // An anonymous mapping has no file, so no device.
            OBJ_VMA => device_of_file(o, read_at::<u64>(self.arg, o.vma_file)?),
            _ => None,
        }
    }

    #[inline(always)]
    fn socket(&self, _: &SyscallRule) -> Option<(u16, u8)> {
        match self.kind {
            OBJ_SOCKET_ARGS => Some((self.arg as u16, self.next as u8 & SOCK_TYPE_MASK)),
            OBJ_SOCKET => {
                let o = offsets()?;
                let sock_type = read_at::<u16>(self.arg, o.socket_type)? as u8 & SOCK_TYPE_MASK;
                let sk = read_at::<u64>(self.arg, o.socket_sk)?;
                Some((read_at::<u16>(sk, o.sk_family)?, sock_type))
            }
            _ => None,
        }
    }

    #[inline(always)]
    fn on_disk(&self) -> bool {
        self.kind == OBJ_FILE && offsets().is_some_and(|o| file_on_disk(o, self.arg))
    }

    #[inline(always)]
    fn under(&self, ino: u64) -> bool {
        self.kind == OBJ_FILE && offsets().is_some_and(|o| file_under(o, self.arg, ino))
    }
}

/// The verdict for the current call: 0, or minus the errno of the rule
/// that fires.
#[inline(always)]
fn verdict(hook: u8, object: &Object) -> i64 {
    // SAFETY: both helpers are valid in LSM programs (Linux 5.15+); the
    // registers of the current task always exist.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    let Some(nr) = syscall_nr(regs) else {
        return 0;
    };
    error_for(nr, BACKEND_LSM, hook, regs, object).map_or(0, |errno| deny(u64::from(errno)))
}

/// `-errno`, or 0 if `errno` is not one (above MAX_ERRNO), computed so
/// that the verifier sees the result within [-MAX_ERRNO, 0]: kernels
/// before the 32-bit return range fix check all 64 bits of R0. The bound
/// is a one-sided check on `errno` itself; the volatile accesses keep the
/// compiler from folding the subtraction into a negation, which the
/// verifier does not bound.
#[inline(always)]
fn deny(errno: u64) -> i64 {
    let mut slots = [0u64; 3];
    // A round trip through the stack first, so the compiler cannot merge
    // the check below into the arithmetic that made `errno` (it did,
    // checking a negated value the verifier cannot bound).
    // SAFETY: writes and reads of a local array.
    let errno = unsafe {
        write_volatile(&mut slots[2], errno);
        read_volatile(&slots[2])
    };
    if errno > MAX_ERRNO {
        return 0;
    }
    // Stored only after the check (a volatile write is not moved above
    // it), so the spilled copy the verifier sees is the bounded one.
    // SAFETY: as above.
    unsafe {
        write_volatile(&mut slots[0], errno);
        write_volatile(&mut slots[1], 0);
        read_volatile(&slots[1]) as i64 - read_volatile(&slots[0]) as i64
    }
}

/// One LSM program: keeps an earlier BPF LSM program's denial (its verdict
/// comes after the hook's `$arity` arguments; the daemon checks the arity
/// against the kernel's BTF before loading), else gives ours. Written out
/// rather than with `#[lsm]`, whose programs return an i32 (see
/// [`deny`]).
macro_rules! lsm_program {
    ($($name:ident, $hook:literal, $arity:literal, $id:ident;)*) => {$(
        #[unsafe(no_mangle)]
        #[unsafe(link_section = concat!("lsm/", $hook))]
        pub fn $name(ctx: *mut core::ffi::c_void) -> i64 {
            // Argument $arity of an LSM program is the verdict of the
            // programs before it on this hook.
            let ctx = LsmContext::new(ctx);
            let previous: i32 = ctx.arg($arity);
            if previous < 0 {
                return deny(u64::from(previous.unsigned_abs()));
            }
            let object = Object {
                kind: $id.object,
                arg: ctx.arg($id.object_arg as usize),
                next: ctx.arg($id.object_arg as usize + 1),
            };
            verdict($id.id, &object)
        }
    )*};
}

lsm_program! {
    lsm_file_open, "file_open", 1, LSM_FILE_OPEN;
    lsm_file_permission, "file_permission", 2, LSM_FILE_PERMISSION;
    lsm_mmap_file, "mmap_file", 4, LSM_MMAP_FILE;
    lsm_file_mprotect, "file_mprotect", 3, LSM_FILE_MPROTECT;
    lsm_file_ioctl, "file_ioctl", 3, LSM_FILE_IOCTL;
    lsm_file_lock, "file_lock", 2, LSM_FILE_LOCK;
    lsm_file_fcntl, "file_fcntl", 3, LSM_FILE_FCNTL;
    lsm_bprm_check, "bprm_check_security", 1, LSM_BPRM_CHECK;
    lsm_task_alloc, "task_alloc", 2, LSM_TASK_ALLOC;
    lsm_task_kill, "task_kill", 4, LSM_TASK_KILL;
    lsm_socket_create, "socket_create", 4, LSM_SOCKET_CREATE;
    lsm_socket_bind, "socket_bind", 3, LSM_SOCKET_BIND;
    lsm_socket_connect, "socket_connect", 3, LSM_SOCKET_CONNECT;
    lsm_socket_listen, "socket_listen", 2, LSM_SOCKET_LISTEN;
    lsm_socket_accept, "socket_accept", 2, LSM_SOCKET_ACCEPT;
    lsm_socket_sendmsg, "socket_sendmsg", 3, LSM_SOCKET_SENDMSG;
    lsm_socket_recvmsg, "socket_recvmsg", 4, LSM_SOCKET_RECVMSG;
    lsm_socket_getsockopt, "socket_getsockopt", 3, LSM_SOCKET_GETSOCKOPT;
    lsm_socket_setsockopt, "socket_setsockopt", 3, LSM_SOCKET_SETSOCKOPT;
    lsm_socket_shutdown, "socket_shutdown", 2, LSM_SOCKET_SHUTDOWN;
    lsm_inode_mkdir, "inode_mkdir", 3, LSM_INODE_MKDIR;
    lsm_inode_rmdir, "inode_rmdir", 2, LSM_INODE_RMDIR;
    lsm_inode_unlink, "inode_unlink", 2, LSM_INODE_UNLINK;
    lsm_inode_rename, "inode_rename", 4, LSM_INODE_RENAME;
    lsm_inode_link, "inode_link", 3, LSM_INODE_LINK;
    lsm_inode_symlink, "inode_symlink", 3, LSM_INODE_SYMLINK;
    lsm_inode_getattr, "inode_getattr", 1, LSM_INODE_GETATTR;
    lsm_mmap_addr, "mmap_addr", 1, LSM_MMAP_ADDR;
}
