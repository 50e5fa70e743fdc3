//! io_error at the block layer: a kprobe on `should_fail_bio` (on the
//! kernel's error-injection list) whose override ends the bio with
//! `BLK_STS_IOERR` before it reaches the driver. It runs in the task that
//! submits the bio, so the target is found from the caller's cgroup; the
//! rule is looked up for the bio's device, then for any device.

use aya_ebpf::{
    helpers::bpf_override_return,
    macros::{kprobe, map},
    maps::HashMap,
    programs::ProbeContext,
};
use injector_common::block::{BlockKey, BlockRule, MAX_BLOCK_RULES};

use crate::trigger;

/// `BPF_F_NO_PREALLOC`: a replaced rule is RCU-freed, never read torn.
const NO_PREALLOC: u32 = 1;

#[map]
static BLOCK_RULES: HashMap<BlockKey, BlockRule> =
    HashMap::with_max_entries(MAX_BLOCK_RULES, NO_PREALLOC);

#[map]
static BLOCK_CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_BLOCK_RULES, 0);

#[kprobe]
pub fn block_fail_bio(ctx: ProbeContext) -> u32 {
    // should_fail_bio(struct bio *bio)
    let Some(bio) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let Some((rule, ops)) = super::rule_for_bio(&BLOCK_RULES, &BLOCK_CGROUPS, bio) else {
        return 0;
    };
    if rule.ops & ops == 0 || !trigger::evaluate(rule.slot, &rule.trigger) {
        return 0;
    }
    // SAFETY: attached only to should_fail_bio, which is on the error
    // injection list (the kernel refuses the attachment otherwise); any
    // non-zero return ends the bio with an I/O error.
    unsafe { bpf_override_return(ctx.regs, (-i64::from(libc_eio())) as u64) };
    0
}

/// EIO; the value is not used by the kernel beyond being non-zero.
#[inline(always)]
const fn libc_eio() -> u32 {
    5
}
