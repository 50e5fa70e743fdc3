//! Maps shared by every hook family: per-slot statistics and trigger
//! state, and the identity of each cgroup attachment.

#![expect(
    deprecated,
    reason = "legacy cgroup storage is per attachment, which is what we need; \
              BPF_MAP_TYPE_CGRP_STORAGE is per task cgroup"
)]

use aya_ebpf::{
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
