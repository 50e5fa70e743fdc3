//! Maps shared by every hook family: per-slot statistics and trigger
//! state, and the identity of each cgroup attachment.

#![expect(
    deprecated,
    reason = "legacy cgroup storage is per attachment, which is what we need; \
              BPF_MAP_TYPE_CGRP_STORAGE is per task cgroup"
)]

use aya_ebpf::{
    Global,
    helpers::{bpf_ktime_get_ns, generated::bpf_jiffies64},
    macros::map,
    maps::{Array, CgroupStorage, PerCpuArray},
};
use injector_common::{AttachInfo, FaultStats, MAX_FAULTS, TriggerState};

/// Per-CPU evaluation and activation counters, indexed by fault slot.
#[map]
pub static FAULT_STATS: PerCpuArray<FaultStats> = PerCpuArray::with_max_entries(MAX_FAULTS, 0);

/// Shared trigger counters, indexed by fault slot (atomically updated).
#[map]
pub static TRIGGER_STATE: Array<TriggerState> = Array::with_max_entries(MAX_FAULTS, 0);

/// Which target cgroup an attachment of a cgroup program belongs to;
/// written by the daemon right after attaching. The kernel keeps one value
/// per (cgroup, attach type), shared by every program using the map.
#[map]
pub static CGROUP_ATTACH: CgroupStorage<AttachInfo> = CgroupStorage::new();

/// The target cgroup of the running cgroup program's attachment, or 0 while
/// the daemon has not published it yet.
#[inline(always)]
pub fn attached_cgroup() -> u64 {
    let info = CGROUP_ATTACH.get_ptr_mut();
    // SAFETY: bpf_get_local_storage always returns this attachment's storage.
    let id = unsafe { (*info).cgroup_id };
    if id != 0 { id } else { BENCH_CGROUP.load() }
}

/// See `injector_common::globals::BENCH_CGROUP`. Read-only data: in the
/// daemon's copies the verifier knows it is 0 and prunes the branch.
#[unsafe(no_mangle)]
static BENCH_CGROUP: Global<u64> = Global::new(0);

/// The daemon's lease: until when (CLOCK_MONOTONIC ns) faults may fire. The
/// daemon moves it forward every 100 ms or so; if the daemon dies or
/// freezes, whatever it left in the kernel (a clsact filter, a program
/// held by someone else) stops acting once the lease runs out. 0 until the
/// daemon first writes it, so a freshly loaded object is inert.
#[map]
pub static LEASE: Array<u64> = Array::with_max_entries(1, 0);

/// 0 skips the lease check (benchmarks only; see `injector_common::globals`).
#[unsafe(no_mangle)]
static LEASE_CHECK: Global<u8> = Global::new(1);

/// Whether faults check the lease (always, but in the benchmarks' copy
/// that measures what the check costs).
#[inline(always)]
pub fn lease_checked() -> bool {
    LEASE_CHECK.load() != 0
}

/// Per CPU, refreshed at the first event of each jiffy: that jiffy, what
/// CLOCK_MONOTONIC read then, and the lease's deadline then.
#[map]
static CLOCK_CACHE: PerCpuArray<[u64; 3]> = PerCpuArray::with_max_entries(1, 0);

/// The clock and the lease as this CPU saw them at its first event of the
/// current jiffy: at most one tick (1 to 10 ms) old.
///
/// Why cached: reading the clock costs about 25 ns (on a VM's kvm-clock),
/// most of what a matching packet cost, where the jiffies counter is a
/// load; and the lease's deadline, kept with it, saves a second map
/// lookup and cache line per event, on the path of every fault. So a
/// fault stops at most one tick after its lease or its TTL runs out, and
/// a renewal (every tenth of the lease at most) counts one tick late at
/// most, long before the deadline it extends.
#[derive(Clone, Copy)]
pub struct CoarseClock {
    pub now: u64,
    lease_deadline: u64,
}

impl CoarseClock {
    /// Whether the daemon's lease holds.
    #[inline(always)]
    pub fn leased(&self) -> bool {
        !lease_checked() || self.now < self.lease_deadline
    }
}

#[inline(always)]
fn lease_deadline() -> u64 {
    LEASE.get(injector_common::LEASE_SLOT).copied().unwrap_or(0)
}

/// See [`CoarseClock`].
#[inline(always)]
pub fn coarse_clock() -> CoarseClock {
    // SAFETY: helper without arguments or side effects.
    let jiffy = unsafe { bpf_jiffies64() };
    let Some(cache) = CLOCK_CACHE.get_ptr_mut(0) else {
        return CoarseClock {
            // SAFETY: as above.
            now: unsafe { bpf_ktime_get_ns() },
            lease_deadline: lease_deadline(),
        };
    };
    // SAFETY: per-CPU value: nothing else on this CPU runs concurrently
    // with us (programs run with migration disabled).
    unsafe {
        if (*cache)[0] != jiffy {
            (*cache)[0] = jiffy;
            (*cache)[1] = bpf_ktime_get_ns();
            (*cache)[2] = lease_deadline();
        }
        CoarseClock {
            now: (*cache)[1],
            lease_deadline: (*cache)[2],
        }
    }
}
