//! Maps shared by every hook family: per-slot statistics and trigger state.

use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray},
};
use injector_common::{FaultStats, MAX_FAULTS, TriggerState};

/// Per-CPU evaluation and activation counters, indexed by fault slot.
#[map]
pub static FAULT_STATS: PerCpuArray<FaultStats> = PerCpuArray::with_max_entries(MAX_FAULTS, 0);

/// Shared trigger counters, indexed by fault slot (atomically updated).
#[map]
pub static TRIGGER_STATE: Array<TriggerState> = Array::with_max_entries(MAX_FAULTS, 0);
