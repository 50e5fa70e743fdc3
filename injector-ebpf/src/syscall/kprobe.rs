//! The override backend: a kprobe on a syscall's entry point
//! (`__x64_sys_*`, on the kernel's error-injection list) that makes it
//! return the errno without running, through `bpf_override_return`. Needs
//! `CONFIG_BPF_KPROBE_OVERRIDE`; reaches any syscall, exactly.

use aya_ebpf::{
    bindings::pt_regs, helpers::bpf_override_return, macros::kprobe, programs::ProbeContext,
};
use injector_common::syscall::BACKEND_KPROBE;

use super::{Registers, error_for, syscall_nr};

#[kprobe]
pub fn syscall_kprobe(ctx: ProbeContext) -> u32 {
    // The syscall wrapper's only argument: the caller's user registers.
    let Some(regs) = ctx.arg::<*const pt_regs>(0) else {
        return 0;
    };
    let Some(nr) = syscall_nr(regs) else {
        return 0;
    };
    if let Some(errno) = error_for(nr, BACKEND_KPROBE, 0, regs, &Registers(regs)) {
        // SAFETY: the program is attached only to functions on the error
        // injection list (the kernel refuses the attachment otherwise), so
        // skipping them and returning this value is safe.
        unsafe { bpf_override_return(ctx.regs, (-i64::from(errno)) as u64) };
    }
    0
}
