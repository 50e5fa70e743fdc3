//! Maps shared by every hook family: per-slot statistics and trigger
//! state, and the identity of each cgroup attachment.

#![expect(
    deprecated,
    reason = "legacy cgroup storage is per attachment, which is what we need; \
              BPF_MAP_TYPE_CGRP_STORAGE is per task cgroup"
)]

use aya_ebpf::{
    Global,
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
    unsafe { (*info).cgroup_id }
}

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

/// Whether the daemon's lease holds at `now`.
#[inline(always)]
pub fn leased(now: u64) -> bool {
    !lease_checked()
        || LEASE
            .get(injector_common::LEASE_SLOT)
            .is_some_and(|deadline| now < *deadline)
}
