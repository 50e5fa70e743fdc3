//! Block I/O latency, from a bio's submission (in the submitting task,
//! so its cgroup is known) to its request's completion (usually in
//! softirq or another task, so the cgroup must be carried): each bio is
//! stamped at `block_bio_queue`, a request takes its first bio's stamp at
//! `block_rq_issue`, and `block_rq_complete` adds the latency to the
//! per-CPU histograms of the device and operation, for every I/O and for
//! the watched cgroup the stamp names. The same tracepoint applies the
//! io_delay rules (`delay.rs`); it is attached while the histograms are on
//! or a delay rule exists.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuHashMap},
    programs::RawTracePointContext,
};
use injector_common::{
    block::{
        CONFIG_STAMP, HIST_BUCKETS, HistKey, Histogram, MAX_BLOCK_WATCHES, MAX_SERIES, OP_DISCARD,
        OP_FLUSH, OP_OTHER, OP_READ, OP_WRITE, Stamp,
    },
    syscall::LEVELS_WATCHES,
};

use super::{REQ_OP_MASK, offsets};
use crate::syscall::{for_caller, read_at};

#[map]
static BLOCK_HIST: PerCpuHashMap<HistKey, Histogram> =
    PerCpuHashMap::with_max_entries(MAX_SERIES, 0);

/// Bios in flight (LRU: a bio merged into another's request is never
/// looked up again, and ages out).
#[map]
static BIO_START: LruHashMap<u64, Stamp> = LruHashMap::with_max_entries(65536, 0);

#[map]
static RQ_START: LruHashMap<u64, Stamp> = LruHashMap::with_max_entries(65536, 0);

/// Watched cgroup id to its watch number (1-based).
#[map]
static BLOCK_WATCH: HashMap<u64, u32> = HashMap::with_max_entries(MAX_BLOCK_WATCHES, 0);

/// `[CONFIG_STAMP]`: 1 while the histograms are on.
#[map]
static BLOCK_CONFIG: Array<u32> = Array::with_max_entries(1, 0);

#[raw_tracepoint(tracepoint = "block_bio_queue")]
pub fn block_bio_queue(ctx: RawTracePointContext) -> i32 {
    // block_bio_queue(struct bio *bio), in the submitting task.
    let bio: u64 = ctx.arg(0);
    let extra_ns = super::delay::apply(bio);
    if BLOCK_CONFIG.get(CONFIG_STAMP).copied().unwrap_or(0) == 0 {
        return 0;
    }
    // SAFETY: the map's values are plain u32s, copied out.
    let watch = for_caller(LEVELS_WATCHES, |id| {
        unsafe { BLOCK_WATCH.get(&id) }.copied()
    })
    .unwrap_or(0);
    let stamp = Stamp {
        // SAFETY: helper without arguments or side effects.
        at_ns: unsafe { bpf_ktime_get_ns() },
        watch,
        _pad: 0,
        extra_ns,
    };
    let _ = BIO_START.insert(&bio, &stamp, 0);
    0
}

#[raw_tracepoint(tracepoint = "block_rq_issue")]
pub fn block_rq_issue(ctx: RawTracePointContext) -> i32 {
    // block_rq_issue(struct request *rq)
    let rq: u64 = ctx.arg(0);
    let Some(o) = offsets() else {
        return 0;
    };
    // A request without a stamped bio (a flush, or one submitted before
    // we attached) is timed from its issue.
    let bio = read_at::<u64>(rq, o.rq_bio).unwrap_or(0);
    // SAFETY: the value is copied out before the entry is removed.
    let stamp = match unsafe { BIO_START.get(&bio) }.copied() {
        Some(s) => {
            let _ = BIO_START.remove(&bio);
            s
        }
        None => Stamp {
            // SAFETY: helper without arguments or side effects.
            at_ns: unsafe { bpf_ktime_get_ns() },
            watch: 0,
            _pad: 0,
            extra_ns: 0,
        },
    };
    let _ = RQ_START.insert(&rq, &stamp, 0);
    0
}

#[raw_tracepoint(tracepoint = "block_rq_complete")]
pub fn block_rq_complete(ctx: RawTracePointContext) -> i32 {
    // block_rq_complete(struct request *rq, blk_status_t error,
    //                   unsigned int nr_bytes)
    let rq: u64 = ctx.arg(0);
    // SAFETY: the value is copied out before the entry is removed.
    let Some(stamp) = (unsafe { RQ_START.get(&rq) }).copied() else {
        return 0;
    };
    let _ = RQ_START.remove(&rq);
    let Some(o) = offsets() else {
        return 0;
    };
    // SAFETY: helper without arguments or side effects.
    // The delay an io_delay held the submitting task for is part of the
    // latency it saw.
    let took = unsafe { bpf_ktime_get_ns() }.saturating_sub(stamp.at_ns) + stamp.extra_ns;
    let Some(dev) = request_dev(rq) else {
        return 0;
    };
    let op = match read_at::<u32>(rq, o.rq_cmd_flags).map(|f| f & REQ_OP_MASK) {
        Some(0) => OP_READ,
        Some(1) => OP_WRITE,
        Some(2) => OP_FLUSH,
        Some(3) => OP_DISCARD,
        _ => OP_OTHER,
    };
    let mut bucket = 0usize;
    while bucket < HIST_BUCKETS - 1 && took > 1u64 << (10 + bucket) {
        bucket += 1;
    }
    let mut key = HistKey {
        dev,
        op,
        _pad: 0,
        watch: 0,
    };
    record(&key, bucket, took);
    if stamp.watch != 0 {
        key.watch = stamp.watch as u16;
        record(&key, bucket, took);
    }
    0
}

/// The request's disk (`MKDEV(disk->major, disk->first_minor)`).
#[inline(always)]
fn request_dev(rq: u64) -> Option<u32> {
    let o = offsets()?;
    let q = read_at::<u64>(rq, o.rq_q)?;
    let disk = read_at::<u64>(q, o.q_disk)?;
    let major = read_at::<u32>(disk, o.disk_major)?;
    let minor = read_at::<u32>(disk, o.disk_first_minor)?;
    Some((major << 20) | minor)
}

/// Adds one I/O of `took` ns to the series `key`, in this CPU's copy.
#[inline(always)]
fn record(key: &HistKey, bucket: usize, took: u64) {
    if BLOCK_HIST.get_ptr_mut(key).is_none() {
        let _ = BLOCK_HIST.insert(key, &Histogram::default(), 0);
    }
    let Some(h) = BLOCK_HIST.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: per-CPU value; nothing else on this CPU touches it while we
    // run. The index is below HIST_BUCKETS by the loop's bound.
    unsafe {
        if let Some(b) = (*h).buckets.get_mut(bucket) {
            *b += 1;
        }
        (*h).sum_ns += took;
    }
}
