//! Block I/O latency, from a request's start to its completion, as the
//! kernel's own I/O statistics (iostat's await) measure it: the request's
//! `start_time_ns`, set when it is allocated in the submitting task, read
//! again at `block_rq_complete`, which adds the latency to the per-CPU
//! histogram of the device and operation. Nothing is stored per I/O on
//! this path: every I/O of the machine takes it, and a map update per I/O
//! would cost more than the I/O's share the issue allows (3%).
//!
//! Only what the request does not carry is stored: the watched cgroup
//! that submitted it (at completion the current task is usually another:
//! softirq, a kworker), and the delay an io_delay held it for. A bio of a
//! watched cgroup is stamped at `block_bio_queue`, in the submitting
//! task; `block_rq_issue` moves the stamp of the request's first bio to
//! the request. A request the kernel keeps no start time for (a queue
//! with `iostats` off) is stamped at its issue instead. The same
//! `block_bio_queue` program applies the io_delay rules (`delay.rs`); it
//! is attached while the histograms are on or a delay rule exists.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuHashMap},
    programs::RawTracePointContext,
};
use injector_common::{
    block::{
        BioStamp, BlockOffsets, CONFIG_STAMP, HIST_BUCKETS, HistKey, Histogram, MAX_BLOCK_WATCHES,
        MAX_SERIES, OP_DISCARD, OP_FLUSH, OP_OTHER, OP_READ, OP_WRITE, Stamp,
    },
    syscall::LEVELS_WATCHES,
};

use super::{REQ_OP_MASK, offsets};
use crate::syscall::{any_target, for_caller, read_at};

#[map]
static BLOCK_HIST: PerCpuHashMap<HistKey, Histogram> =
    PerCpuHashMap::with_max_entries(MAX_SERIES, 0);

/// Watched bios in flight (LRU: a bio merged into another's request is
/// never looked up again, and ages out).
#[map]
static BIO_START: LruHashMap<u64, BioStamp> = LruHashMap::with_max_entries(65536, 0);

#[map]
static RQ_START: LruHashMap<u64, Stamp> = LruHashMap::with_max_entries(65536, 0);

/// Watched cgroup id to its watch number (1-based).
#[map]
static BLOCK_WATCH: HashMap<u64, u32> = HashMap::with_max_entries(MAX_BLOCK_WATCHES, 0);

/// `[CONFIG_STAMP]`: 1 while the histograms are on.
#[map]
static BLOCK_CONFIG: Array<u32> = Array::with_max_entries(1, 0);

/// Whether any cgroup is watched (an array lookup, which the verifier
/// inlines): without one, no bio or request is stamped.
#[inline(always)]
fn watching() -> bool {
    any_target(LEVELS_WATCHES)
}

#[raw_tracepoint(tracepoint = "block_bio_queue")]
pub fn block_bio_queue(ctx: RawTracePointContext) -> i32 {
    // block_bio_queue(struct bio *bio), in the submitting task.
    let bio: u64 = ctx.arg(0);
    let extra_ns = super::delay::apply(bio);
    if BLOCK_CONFIG.get(CONFIG_STAMP).copied().unwrap_or(0) == 0 || !watching() {
        return 0;
    }
    // SAFETY: the map's values are plain u32s, copied out.
    let Some(watch) = for_caller(LEVELS_WATCHES, |id| {
        unsafe { BLOCK_WATCH.get(&id) }.copied()
    }) else {
        return 0;
    };
    let stamp = BioStamp {
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
    let (_, rq_flags) = request_flags(o, rq);
    let rq_start_ns = kernel_start(o, rq, rq_flags);
    let mut stamp = Stamp {
        at_ns: rq_start_ns,
        rq_start_ns,
        watch: 0,
        _pad: 0,
        extra_ns: 0,
    };
    if watching() {
        let bio = read_at::<u64>(rq, o.rq_bio).unwrap_or(0);
        // SAFETY: the value is copied out before the entry is removed.
        if let Some(b) = unsafe { BIO_START.get(&bio) }.copied() {
            let _ = BIO_START.remove(&bio);
            stamp.watch = b.watch;
            stamp.extra_ns = b.extra_ns;
        }
    }
    if stamp.at_ns == 0 {
        // The kernel keeps no start time for this request: its issue.
        // SAFETY: helper without arguments or side effects.
        stamp.at_ns = unsafe { bpf_ktime_get_ns() };
    } else if stamp.watch == 0 {
        // Timed by the kernel and not watched: nothing to carry.
        return 0;
    }
    let _ = RQ_START.insert(&rq, &stamp, 0);
    0
}

#[raw_tracepoint(tracepoint = "block_rq_complete")]
pub fn block_rq_complete(ctx: RawTracePointContext) -> i32 {
    // block_rq_complete(struct request *rq, blk_status_t error,
    //                   unsigned int nr_bytes)
    let rq: u64 = ctx.arg(0);
    let Some(o) = offsets() else {
        return 0;
    };
    let (cmd_flags, rq_flags) = request_flags(o, rq);
    let rq_start_ns = kernel_start(o, rq, rq_flags);
    let mut stamp = Stamp {
        at_ns: rq_start_ns,
        ..Stamp::default()
    };
    if rq_start_ns == 0 || watching() {
        // SAFETY: the value is copied out before the entry is removed.
        if let Some(s) = unsafe { RQ_START.get(&rq) }.copied() {
            let _ = RQ_START.remove(&rq);
            // A stamp left by an earlier use of this request (the watch
            // ended before it completed) is not this one's.
            if s.rq_start_ns == rq_start_ns {
                stamp = s;
            }
        }
    }
    if stamp.at_ns == 0 {
        // Issued before we attached, on a queue without start times.
        return 0;
    }
    // SAFETY: helper without arguments or side effects.
    // The delay an io_delay held the submitting task for is part of the
    // latency it saw.
    let took = unsafe { bpf_ktime_get_ns() }.saturating_sub(stamp.at_ns) + stamp.extra_ns;
    let Some(dev) = request_dev(rq) else {
        return 0;
    };
    let op = match cmd_flags.map(|f| f & REQ_OP_MASK) {
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

/// The request's `cmd_flags` (its operation) and `rq_flags`: one read
/// where they sit side by side, as they do in every kernel we know.
#[inline(always)]
fn request_flags(o: &BlockOffsets, rq: u64) -> (Option<u32>, u32) {
    if o.rq_flags == o.rq_cmd_flags + 4 {
        return match read_at::<u64>(rq, o.rq_cmd_flags) {
            Some(both) => (Some(both as u32), (both >> 32) as u32),
            None => (None, 0),
        };
    }
    (
        read_at::<u32>(rq, o.rq_cmd_flags),
        read_at::<u32>(rq, o.rq_flags).unwrap_or(0),
    )
}

/// When the kernel started timing the request, or 0 if it does not time
/// it: a request is recycled, and where the kernel marks the ones it
/// times (`RQF_IO_STAT`), `start_time_ns` of an unmarked one is a former
/// request's.
#[inline(always)]
fn kernel_start(o: &BlockOffsets, rq: u64, rq_flags: u32) -> u64 {
    if o.rq_io_stat != 0 && rq_flags & o.rq_io_stat == 0 {
        return 0;
    }
    read_at::<u64>(rq, o.rq_start_time_ns).unwrap_or(0)
}

/// The request's disk (`MKDEV(disk->major, disk->first_minor)`).
#[inline(always)]
fn request_dev(rq: u64) -> Option<u32> {
    let o = offsets()?;
    let q = read_at::<u64>(rq, o.rq_q)?;
    let disk = read_at::<u64>(q, o.q_disk)?;
    // `int major; int first_minor;` sit side by side in every kernel we
    // know: one read for both (each read is a helper call, and this runs
    // for every I/O).
    if o.disk_first_minor == o.disk_major + 4 {
        let both = read_at::<u64>(disk, o.disk_major)?;
        return Some(((both as u32) << 20) | (both >> 32) as u32);
    }
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
