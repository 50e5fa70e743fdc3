//! Block I/O: latency histograms by device, operation and watched cgroup
//! (`latency`), and io_error at the block layer (`error`).
//!
//! Rust eBPF has no CO-RE relocations: the struct offsets the programs
//! read at come from the daemon, which finds them in the kernel's BTF
//! ([`BLOCK_OFFSETS`]).

mod delay;
mod error;
mod latency;

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
};
use injector_common::{
    block::{BlockKey, BlockOffsets, OPS_READ, OPS_WRITE},
    syscall::LEVELS_RULES,
};

use crate::syscall::{any_target, for_caller, read_at};

#[map]
static BLOCK_OFFSETS: Array<BlockOffsets> = Array::with_max_entries(1, 0);

/// The field offsets, once the daemon has written them.
#[inline(always)]
fn offsets() -> Option<&'static BlockOffsets> {
    BLOCK_OFFSETS.get(0).filter(|o| o.ready != 0)
}

/// `REQ_OP_MASK`: the operation in the low bits of `bi_opf`/`cmd_flags`.
const REQ_OP_MASK: u32 = 0xff;

/// The `dev_t` a bio is aimed at (`bio->bi_bdev->bd_dev`).
#[inline(always)]
fn bio_dev(o: &BlockOffsets, bio: u64) -> Option<u32> {
    let bdev = read_at::<u64>(bio, o.bio_bdev)?;
    read_at::<u32>(bdev, o.bdev_dev)
}

/// The bio's `REQ_OP_*`.
#[inline(always)]
fn bio_op(o: &BlockOffsets, bio: u64) -> Option<u32> {
    read_at::<u32>(bio, o.bio_opf).map(|f| f & REQ_OP_MASK)
}

/// The rule in `rules` for a read or write `bio` submitted by the current
/// task: its target found among the task's ancestors, deepest first, for
/// the bio's device, then for any device; with the bio's `OPS_*` bit.
/// Flushes, discards and the rest match nothing.
///
/// Every bio of the machine comes here, so the common case is kept
/// cheap: an ancestor not in `cgroups` (the targets of `rules`) costs one
/// lookup, and the bio is read only for a task in a target.
#[inline(always)]
fn rule_for_bio<V>(
    rules: &'static HashMap<BlockKey, V>,
    cgroups: &'static HashMap<u64, u32>,
    bio: u64,
) -> Option<(&'static V, u8)> {
    if !any_target(LEVELS_RULES) {
        return None;
    }
    let o = offsets()?;
    // (device, OPS_* bit), read at the first target met; the bit is 0 for
    // the operations no rule matches.
    let mut read: Option<(u32, u8)> = None;
    let rule = for_caller(LEVELS_RULES, |cgroup_id| {
        // SAFETY: a plain u32 value, not kept.
        unsafe { cgroups.get(&cgroup_id) }?;
        let (dev, ops) = *read.get_or_insert_with(|| {
            let ops = match bio_op(o, bio) {
                Some(0) => OPS_READ,
                Some(1) => OPS_WRITE,
                _ => 0,
            };
            (bio_dev(o, bio).unwrap_or(0), ops)
        });
        if ops == 0 {
            return None;
        }
        let mut key = BlockKey {
            cgroup_id,
            dev,
            _pad: 0,
        };
        // SAFETY: the rule maps are BPF_F_NO_PREALLOC: a value stays
        // valid for this run.
        unsafe { rules.get(&key) }.or_else(|| {
            key.dev = 0;
            // SAFETY: as above.
            unsafe { rules.get(&key) }
        })
    })?;
    Some((rule, read.map_or(0, |(_, ops)| ops)))
}
