//! Block I/O: latency histograms by device, operation and watched cgroup
//! (`latency`), and io_error at the block layer (`error`).
//!
//! Rust eBPF has no CO-RE relocations: the struct offsets the programs
//! read at come from the daemon, which finds them in the kernel's BTF
//! ([`BLOCK_OFFSETS`]).

mod delay;
mod error;
mod latency;

use aya_ebpf::{macros::map, maps::Array};
use injector_common::block::BlockOffsets;

use crate::syscall::read_at;

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
