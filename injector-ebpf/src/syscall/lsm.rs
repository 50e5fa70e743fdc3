//! The LSM backend: BPF LSM hooks that deny the call with the errno. A
//! hook serves several syscalls (file_permission runs for read, write and
//! their vector forms); the syscall number in the caller's registers tells
//! them apart, so a rule fires for its own syscall only.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_task_btf, bpf_task_pt_regs},
    macros::lsm,
    programs::LsmContext,
};
use injector_common::syscall::BACKEND_LSM;

use super::{error_for, syscall_nr};

/// The verdict for the current call: 0, or minus the errno of the rule
/// that fires.
#[inline(always)]
fn verdict() -> i32 {
    // SAFETY: both helpers are valid in LSM programs (Linux 5.15+); the
    // registers of the current task always exist.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    let Some(nr) = syscall_nr(regs) else {
        return 0;
    };
    error_for(nr, BACKEND_LSM, regs).map_or(0, |errno| -(errno as i32))
}

/// One LSM program: keeps an earlier BPF LSM program's denial (its verdict
/// comes after the hook's `$arity` arguments; the daemon checks the arity
/// against the kernel's BTF before loading), else gives ours.
macro_rules! lsm_program {
    ($($name:ident, $hook:literal, $arity:literal;)*) => {$(
        #[lsm(hook = $hook)]
        pub fn $name(ctx: LsmContext) -> i32 {
            // Argument $arity of an LSM program is the verdict of the
            // programs before it on this hook.
            let previous: i32 = ctx.arg($arity);
            if previous != 0 {
                return previous;
            }
            verdict()
        }
    )*};
}

lsm_program! {
    lsm_file_open, "file_open", 1;
    lsm_file_permission, "file_permission", 2;
    lsm_mmap_file, "mmap_file", 4;
    lsm_file_mprotect, "file_mprotect", 3;
    lsm_file_ioctl, "file_ioctl", 3;
    lsm_file_lock, "file_lock", 2;
    lsm_file_fcntl, "file_fcntl", 3;
    lsm_bprm_check, "bprm_check_security", 1;
    lsm_task_alloc, "task_alloc", 2;
    lsm_task_kill, "task_kill", 4;
    lsm_socket_create, "socket_create", 4;
    lsm_socket_bind, "socket_bind", 3;
    lsm_socket_connect, "socket_connect", 3;
    lsm_socket_listen, "socket_listen", 2;
    lsm_socket_accept, "socket_accept", 2;
    lsm_socket_sendmsg, "socket_sendmsg", 3;
    lsm_socket_recvmsg, "socket_recvmsg", 4;
    lsm_socket_getsockopt, "socket_getsockopt", 3;
    lsm_socket_setsockopt, "socket_setsockopt", 3;
    lsm_socket_shutdown, "socket_shutdown", 2;
    lsm_inode_mkdir, "inode_mkdir", 3;
    lsm_inode_rmdir, "inode_rmdir", 2;
    lsm_inode_unlink, "inode_unlink", 2;
    lsm_inode_rename, "inode_rename", 4;
    lsm_inode_link, "inode_link", 3;
    lsm_inode_symlink, "inode_symlink", 3;
    lsm_inode_getattr, "inode_getattr", 1;
}
