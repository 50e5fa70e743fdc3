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
use injector_common::{
    block::{BlockKey, BlockRule, MAX_BLOCK_RULES, OPS_READ, OPS_WRITE},
    syscall::LEVELS_RULES,
};

use super::{bio_dev, bio_op, offsets};
use crate::{syscall::for_caller, trigger};

/// `BPF_F_NO_PREALLOC`: a replaced rule is RCU-freed, never read torn.
const NO_PREALLOC: u32 = 1;

#[map]
static BLOCK_RULES: HashMap<BlockKey, BlockRule> =
    HashMap::with_max_entries(MAX_BLOCK_RULES, NO_PREALLOC);

#[kprobe]
pub fn block_fail_bio(ctx: ProbeContext) -> u32 {
    // should_fail_bio(struct bio *bio)
    let Some(bio) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let Some(o) = offsets() else {
        return 0;
    };
    let ops = match bio_op(o, bio) {
        Some(0) => OPS_READ,
        Some(1) => OPS_WRITE,
        // Flushes, discards and the rest pass.
        _ => return 0,
    };
    let dev = bio_dev(o, bio).unwrap_or(0);
    let Some(rule) = for_caller(LEVELS_RULES, |cgroup_id| {
        let mut key = BlockKey {
            cgroup_id,
            dev,
            _pad: 0,
        };
        // SAFETY: BPF_F_NO_PREALLOC: the value stays valid for this run.
        unsafe { BLOCK_RULES.get(&key) }.or_else(|| {
            key.dev = 0;
            // SAFETY: as above.
            unsafe { BLOCK_RULES.get(&key) }
        })
    }) else {
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
