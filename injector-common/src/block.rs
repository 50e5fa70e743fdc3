//! The block family: block I/O latency histograms, and I/O errors for one
//! cgroup at the block layer.

use crate::{MAX_FAULTS, Trigger};

/// raw tracepoint block_bio_queue: stamps each bio of a watched cgroup
/// with its watch number.
pub const BLOCK_BIO_QUEUE: &str = "block_bio_queue";
/// raw tracepoint block_rq_issue: the request inherits its first bio's
/// stamp, or is stamped with its issue when the kernel keeps no start
/// time for it.
pub const BLOCK_RQ_ISSUE: &str = "block_rq_issue";
/// raw tracepoint block_rq_complete: the request's latency into the
/// histograms of its device and operation.
pub const BLOCK_RQ_COMPLETE: &str = "block_rq_complete";
/// (the io_delay rules are applied by [`BLOCK_BIO_QUEUE`] too: the
/// submitting task is stopped, and continued by the daemon.)
///
/// kprobe on should_fail_bio (with bpf_override_return): a bio of the
/// target fails at the block layer.
pub const BLOCK_FAIL_BIO: &str = "block_fail_bio";

pub const PROGRAMS: &[&str] = &[
    BLOCK_BIO_QUEUE,
    BLOCK_RQ_ISSUE,
    BLOCK_RQ_COMPLETE,
    BLOCK_FAIL_BIO,
];

/// Per-CPU [`Histogram`] by [`HistKey`].
pub const BLOCK_HIST: &str = "BLOCK_HIST";
/// Stamps of watched bios in flight, by bio address (LRU).
pub const BIO_START: &str = "BIO_START";
/// Stamps of watched or untimed requests in flight, by request address
/// (LRU).
pub const RQ_START: &str = "RQ_START";
/// Watched cgroup id to its watch number (1-based).
pub const BLOCK_WATCH: &str = "BLOCK_WATCH";
/// [`BlockOffsets`], written by the daemon from the kernel's BTF.
pub const BLOCK_OFFSETS: &str = "BLOCK_OFFSETS";
/// [`BlockRule`] by [`BlockKey`].
pub const BLOCK_RULES: &str = "BLOCK_RULES";

/// Cgroups with a [`BLOCK_RULES`] entry (cgroup id to 1): every bio
/// passes the programs, and a task of no such cgroup is let go before its
/// bio is read.
pub const BLOCK_CGROUPS: &str = "BLOCK_CGROUPS";

/// [`DelayRule`] by [`BlockKey`].
pub const DELAY_RULES: &str = "DELAY_RULES";
/// Cgroups with a [`DELAY_RULES`] entry, as [`BLOCK_CGROUPS`].
pub const DELAY_CGROUPS: &str = "DELAY_CGROUPS";
/// Per slot: tasks an io_delay rule stopped (the kernel counts).
pub const DELAY_STOPPED: &str = "DELAY_STOPPED";
/// Per slot: tasks the daemon continued (the daemon writes).
pub const DELAY_RESUMED: &str = "DELAY_RESUMED";
/// Per CPU, per slot: I/Os that passed undelayed because the rule held
/// its maximum of tasks.
pub const DELAY_OVER: &str = "DELAY_OVER";
/// Until when each process is held (tgid to ns): a process already held
/// is not counted again.
pub const DELAY_UNTIL: &str = "DELAY_UNTIL";
/// `u32` flags: [`CONFIG_STAMP`].
pub const BLOCK_CONFIG: &str = "BLOCK_CONFIG";

/// Index of [`BLOCK_CONFIG`]: 1 when bios are stamped for the latency
/// histograms.
pub const CONFIG_STAMP: u32 = 0;

pub const MAPS: &[&str] = &[
    DELAY_RULES,
    DELAY_CGROUPS,
    BLOCK_CGROUPS,
    DELAY_STOPPED,
    DELAY_RESUMED,
    DELAY_OVER,
    DELAY_UNTIL,
    BLOCK_CONFIG,
    BLOCK_HIST,
    BIO_START,
    RQ_START,
    BLOCK_WATCH,
    BLOCK_OFFSETS,
    BLOCK_RULES,
];

/// Histogram buckets: bucket `k` counts I/Os of at most `2^(10+k)` ns
/// (1.024 µs ... 4.3 s); the last one every longer I/O.
pub const HIST_BUCKETS: usize = 23;

/// The operations the histogram tells apart (`REQ_OP_*` folded).
pub const OP_READ: u8 = 0;
pub const OP_WRITE: u8 = 1;
pub const OP_FLUSH: u8 = 2;
pub const OP_DISCARD: u8 = 3;
pub const OP_OTHER: u8 = 4;

/// Distinct (device, operation, cgroup) series at once.
pub const MAX_SERIES: u32 = 4096;
/// Cgroups watched at once.
pub const MAX_BLOCK_WATCHES: u32 = 256;

/// Key of [`BLOCK_HIST`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HistKey {
    /// The disk's `dev_t` (`major << 20 | minor`).
    pub dev: u32,
    /// `OP_*`.
    pub op: u8,
    pub _pad: u8,
    /// 0: every I/O of the device; else the watch number of the issuing
    /// cgroup.
    pub watch: u16,
}

/// Value of [`BLOCK_HIST`]: the bucket counts, then the sum in ns.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Histogram {
    pub buckets: [u64; HIST_BUCKETS],
    pub sum_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: [0; HIST_BUCKETS],
            sum_ns: 0,
        }
    }
}

/// Value of [`BIO_START`]: a bio of a watched cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BioStamp {
    /// Watch number of the submitting cgroup.
    pub watch: u32,
    pub _pad: u32,
    /// Delay injected into the submitting task for this I/O, added to the
    /// latency it saw.
    pub extra_ns: u64,
}

/// Value of [`RQ_START`]: a request that carries a watched bio's stamp,
/// or that the kernel did not time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    /// When the latency starts: the request's own `start_time_ns`, or
    /// its issue when the kernel did not time it.
    pub at_ns: u64,
    /// The request's `start_time_ns` at issue: requests are recycled, so
    /// a stamp whose request has since started again is stale.
    pub rq_start_ns: u64,
    /// Watch number of the submitting cgroup (0: none).
    pub watch: u32,
    pub _pad: u32,
    /// As in [`BioStamp`].
    pub extra_ns: u64,
}

/// Where the fields the block programs read sit in this kernel's structs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockOffsets {
    /// 1 once the daemon has written them.
    pub ready: u32,
    pub rq_q: u32,
    pub rq_bio: u32,
    pub rq_cmd_flags: u32,
    pub q_disk: u32,
    pub disk_major: u32,
    pub disk_first_minor: u32,
    pub bio_bdev: u32,
    pub bio_opf: u32,
    pub bdev_dev: u32,
    /// `request.start_time_ns`: when the kernel started timing the
    /// request (for its I/O statistics).
    pub rq_start_time_ns: u32,
    /// `request.rq_flags`.
    pub rq_flags: u32,
    /// The `RQF_IO_STAT` bit of `rq_flags` where the kernel's BTF names
    /// it (`enum rqf_flags`, 6.11 on): only then is `start_time_ns` this
    /// request's, as a request is recycled with the last one's. 0 on
    /// older kernels, which zero `start_time_ns` of a request they do not
    /// time.
    pub rq_io_stat: u32,
}

/// Key of [`BLOCK_RULES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlockKey {
    /// cgroup2 id of the target (its descendants match too).
    pub cgroup_id: u64,
    /// The device's `dev_t` (0: any device).
    pub dev: u32,
    pub _pad: u32,
}

/// `BlockRule::ops` bits.
pub const OPS_READ: u8 = 1;
pub const OPS_WRITE: u8 = 2;

/// An io_error rule at the block layer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockRule {
    pub slot: u32,
    /// `OPS_*` bits: the operations that fail.
    pub ops: u8,
    pub _pad: [u8; 3],
    pub trigger: Trigger,
}

/// An io_delay rule: the submitting task is held `delay_ns ± jitter_ns`
/// (at most `max_ns`), unless `max_tasks` are held already.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DelayRule {
    pub slot: u32,
    pub ops: u8,
    pub _pad: [u8; 3],
    pub delay_ns: u64,
    pub jitter_ns: u64,
    pub max_ns: u64,
    pub max_tasks: u64,
    pub trigger: Trigger,
}

/// Maximum number of block rules.
pub const MAX_BLOCK_RULES: u32 = MAX_FAULTS;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers without padding.
    unsafe impl aya::Pod for super::HistKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Histogram {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Stamp {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BioStamp {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BlockOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BlockKey {}
    // SAFETY: as above; Trigger is 8-aligned after 8 bytes.
    unsafe impl aya::Pod for super::BlockRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DelayRule {}
}
