//! Syscall latency of the watched cgroups (the targets of cgroup faults),
//! so a dashboard shows what the workload felt while a fault ran: on
//! sys_enter a call of a watched task is stamped, on sys_exit its latency
//! lands in a per-CPU log2 histogram by (watch, syscall group).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::RawTracePointContext,
};
use injector_common::syscall::{
    LATENCY_BUCKETS, LATENCY_GROUPS, LATENCY_SLOTS, LEVELS_WATCHES, LatencyStart, MAX_SYSCALL_NR,
    MAX_WATCHES,
};

use super::for_caller;

/// Watched cgroup id to its watch index.
#[map]
static LATENCY_WATCH: HashMap<u64, u32> = HashMap::with_max_entries(MAX_WATCHES, 0);

/// Calls in flight, by thread (LRU: a thread that exits inside a call,
/// or execs, never reaches our sys_exit for it).
#[map]
static LATENCY_START: LruHashMap<u64, LatencyStart> = LruHashMap::with_max_entries(65536, 0);

/// Per CPU: `[(watch * LATENCY_GROUPS + group) * LATENCY_SLOTS + bucket]`.
#[map]
static LATENCY_HIST: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(MAX_WATCHES * LATENCY_GROUPS * LATENCY_SLOTS, 0);

/// Syscall number to group (written by the daemon).
#[map]
static SYSCALL_GROUPS: Array<u32> = Array::with_max_entries(MAX_SYSCALL_NR, 0);

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn syscall_latency_enter(ctx: RawTracePointContext) -> i32 {
    // sys_enter(struct pt_regs *regs, long id)
    let nr: u64 = ctx.arg(1);
    // SAFETY: the map's values are plain u32s, read once.
    let Some(watch) = for_caller(LEVELS_WATCHES, |id| {
        unsafe { LATENCY_WATCH.get(&id) }.copied()
    }) else {
        return 0;
    };
    let group = SYSCALL_GROUPS.get(nr as u32).copied().unwrap_or(0);
    let start = LatencyStart {
        // SAFETY: helper without arguments or side effects.
        at_ns: unsafe { bpf_ktime_get_ns() },
        watch,
        group,
    };
    let _ = LATENCY_START.insert(&bpf_get_current_pid_tgid(), &start, 0);
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn syscall_latency_exit(_ctx: RawTracePointContext) -> i32 {
    let thread = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(start) = (unsafe { LATENCY_START.get(&thread) }).copied() else {
        return 0;
    };
    let _ = LATENCY_START.remove(&thread);
    // SAFETY: helper without arguments or side effects.
    let took = unsafe { bpf_ktime_get_ns() }.saturating_sub(start.at_ns);
    let mut bucket = 0u32;
    while bucket < LATENCY_BUCKETS - 1 && took > 1u64 << (10 + bucket) {
        bucket += 1;
    }
    let base = (start.watch * LATENCY_GROUPS + start.group) * LATENCY_SLOTS;
    for (index, add) in [(base + bucket, 1), (base + LATENCY_BUCKETS, took)] {
        if let Some(slot) = LATENCY_HIST.get_ptr_mut(index) {
            // SAFETY: per-CPU value; nothing else on this CPU touches it
            // while we run.
            unsafe { *slot += add };
        }
    }
    0
}
