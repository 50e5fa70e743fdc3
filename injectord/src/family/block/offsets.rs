//! Where the struct fields the block programs read sit on this kernel,
//! from its BTF (Rust eBPF has no CO-RE relocations), written to
//! `BLOCK_OFFSETS` at start-up.

use aya::maps::{Array, MapData};
use injector_common::block::{BLOCK_OFFSETS, BlockOffsets};

use crate::kernel::{Kernel, btf::KernelBtf};

/// The offsets map, kept open for the programs loaded later.
pub type OffsetsMap = Array<MapData, BlockOffsets>;

/// Learns the offsets and writes them; `Err` says which field is missing.
pub fn publish(kernel: &mut Kernel, btf: &KernelBtf) -> Result<OffsetsMap, String> {
    let field = |s: &str, m: &str| {
        btf.offset(s, m)
            .ok_or_else(|| format!("this kernel's BTF has no field {m} in struct {s}"))
    };
    let offsets = BlockOffsets {
        ready: 1,
        rq_q: field("request", "q")?,
        rq_bio: field("request", "bio")?,
        rq_cmd_flags: field("request", "cmd_flags")?,
        q_disk: field("request_queue", "disk")?,
        disk_major: field("gendisk", "major")?,
        disk_first_minor: field("gendisk", "first_minor")?,
        bio_bdev: field("bio", "bi_bdev")?,
        bio_opf: field("bio", "bi_opf")?,
        bdev_dev: field("block_device", "bd_dev")?,
        rq_start_time_ns: field("request", "start_time_ns")?,
        rq_flags: field("request", "rq_flags")?,
        rq_io_stat: btf
            .enumerator("__RQF_IO_STAT")
            .and_then(|bit| 1u32.checked_shl(bit as u32))
            .unwrap_or(0),
    };
    let map = kernel
        .ebpf
        .take_map(BLOCK_OFFSETS)
        .ok_or_else(|| format!("map {BLOCK_OFFSETS} missing from the object"))?;
    let mut array: OffsetsMap = Array::try_from(map).map_err(|e| e.to_string())?;
    array
        .set(0, &offsets, 0)
        .map_err(|e| format!("writing {BLOCK_OFFSETS}: {e}"))?;
    tracing::debug!(?offsets, "kernel struct offsets for the block programs");
    Ok(array)
}
