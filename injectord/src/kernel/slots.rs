//! Fault slots of one loaded object: per-CPU statistics and shared trigger
//! state, handed out as owned [`Slot`]s that return to the pool on drop.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use injector_common::{FaultStats, TriggerState, maps};

use crate::error::Error;

pub struct SlotPool {
    maps: Mutex<SlotMaps>,
    /// Free slots, oldest-freed first, so a slot is reused as late as
    /// possible (a program that looked a rule up just before its removal may
    /// still count once into the old slot).
    free: Mutex<VecDeque<u32>>,
    capacity: u32,
    nr_cpus: usize,
}

struct SlotMaps {
    stats: PerCpuArray<MapData, FaultStats>,
    trigger_state: Array<MapData, TriggerState>,
}

/// One fault's slot. Dropping it returns the slot to its pool.
pub struct Slot {
    pool: Arc<SlotPool>,
    index: u32,
}

impl SlotPool {
    pub fn take(ebpf: &mut Ebpf, capacity: u32) -> anyhow::Result<Self> {
        let stats = PerCpuArray::try_from(
            ebpf.take_map(maps::FAULT_STATS)
                .context(maps::FAULT_STATS)?,
        )?;
        let trigger_state = Array::try_from(
            ebpf.take_map(maps::TRIGGER_STATE)
                .context(maps::TRIGGER_STATE)?,
        )?;
        let nr_cpus = nr_cpus()
            .map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?
            .get() as usize;
        Ok(Self {
            maps: Mutex::new(SlotMaps {
                stats,
                trigger_state,
            }),
            free: Mutex::new((0..capacity).collect()),
            capacity,
            nr_cpus,
        })
    }

    pub fn nr_cpus(&self) -> usize {
        self.nr_cpus
    }

    /// Takes a free slot and zeroes its counters.
    pub fn alloc(self: &Arc<Self>) -> Result<Slot, Error> {
        let index = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
            .ok_or_else(|| {
                Error::Capacity(format!(
                    "all {} fault slots of this target are in use; remove faults first",
                    self.capacity
                ))
            })?;
        // From here on the slot goes back to the pool if zeroing fails.
        let slot = Slot {
            pool: Arc::clone(self),
            index,
        };
        let zeroed = PerCpuValues::try_from(vec![FaultStats::default(); self.nr_cpus])
            .map_err(|e| Error::io("per-CPU values", e))?;
        let mut m = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        m.stats
            .set(index, zeroed, 0)
            .map_err(Error::map(maps::FAULT_STATS))?;
        m.trigger_state
            .set(index, &TriggerState::default(), 0)
            .map_err(Error::map(maps::TRIGGER_STATE))?;
        drop(m);
        Ok(slot)
    }

    /// Sums a slot's per-CPU counters.
    fn stats(&self, index: u32) -> FaultStats {
        self.maps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stats
            .get(&index, 0)
            .map(|per_cpu| {
                per_cpu
                    .iter()
                    .fold(FaultStats::default(), |acc, s| FaultStats {
                        evaluations: acc.evaluations + s.evaluations,
                        activations: acc.activations + s.activations,
                        overflows: acc.overflows + s.overflows,
                        rng: 0,
                    })
            })
            .unwrap_or_default()
    }
}

impl Slot {
    /// The index the kernel's rules carry.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The slot's counters, summed over CPUs.
    pub fn stats(&self) -> FaultStats {
        self.pool.stats(self.index)
    }

    pub fn nr_cpus(&self) -> usize {
        self.pool.nr_cpus
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(self.index);
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Slot").field(&self.index).finish()
    }
}
