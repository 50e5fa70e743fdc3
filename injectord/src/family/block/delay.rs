//! `io_delay`: each selected I/O of the target holds the task that issued
//! it for the delay. At `block_bio_queue` (in the submitting task) the
//! rule's program sends the task SIGSTOP, which takes effect when the
//! call that issued the I/O returns to user space, and records the stop
//! on the ring buffer the resume thread of process_pause reads; that
//! thread sends SIGCONT when the delay is over. Why this mechanism, and
//! its limits, are in docs/design.md ("Block I/O").
//!
//! Bounds: a delay per I/O of at most `max_delay` (default: delay +
//! jitter); at most `max_concurrent` processes held at once per fault,
//! counted in the kernel (stops) against the daemon (continues): the I/O
//! of another passes undelayed and is counted. The keeper holds a record
//! of the target from before the rule is published, so a daemon that
//! dies, whatever kills it, never leaves a task stopped; the lease stops
//! new stops.

use std::{
    path::Path,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::maps::{Array, MapData, PerCpuArray};
use injector_common::{
    block::{
        BlockKey, DELAY_CGROUPS, DELAY_OVER, DELAY_RESUMED, DELAY_RULES, DELAY_STOPPED, DelayRule,
        OPS_READ, OPS_WRITE,
    },
    syscall::LEVELS_RULES,
};

use super::{rules::RuleMap, spec::IoDelay};
use crate::{
    error::Error,
    family::syscall::{
        depths::{DepthGuard, Depths},
        resume::{Done, Owner, Resumer},
    },
    kernel::{
        Kernel, Slot,
        reaper::{Reaper, Record, Undo},
    },
    target::Cgroup,
};

struct Table {
    rules: RuleMap<DelayRule>,
    depths: Depths,
    stopped: Array<MapData, u64>,
    resumed: Arc<Mutex<Array<MapData, u64>>>,
    over: PerCpuArray<MapData, u64>,
}

/// Where a delay acts: the target cgroup, its directory, and the device
/// (`dev_t`; 0: any).
#[derive(Clone, Copy)]
pub struct Where<'a> {
    pub cgroup: &'a Cgroup,
    pub dir: &'a Path,
    pub dev: u32,
}

/// The io_delay backend, or why this kernel has none.
pub struct Delays {
    inner: Result<(Arc<Mutex<Table>>, Resumer), String>,
    reaper: Reaper,
}

/// An installed io_delay, undone in field order: the rule withdrawn, then
/// every task it still holds continued, then the keeper's record settled.
pub struct DelayFault {
    rule: DelayRuleGuard,
    pub owner: Owner,
    _record: Record,
    slot: u32,
}

struct DelayRuleGuard {
    table: Arc<Mutex<Table>>,
    key: BlockKey,
    _depth: DepthGuard,
}

impl Delays {
    pub fn load(
        kernel: &mut Kernel,
        depths: Option<Depths>,
        resumer: Option<Resumer>,
        reaper: &Reaper,
    ) -> Self {
        let inner = (|| {
            let depths = depths.ok_or("the cgroup depth table is unavailable")?;
            let resumer = resumer.ok_or("the resume thread of process_pause is unavailable")?;
            if !resumer.reads_events() {
                return Err("the stop records' ring buffer cannot be read".to_string());
            }
            let rules = RuleMap::take(kernel, DELAY_RULES, DELAY_CGROUPS)?;
            let mut take = |name: &str| {
                kernel
                    .ebpf
                    .take_map(name)
                    .ok_or_else(|| format!("map {name} missing from the object"))
            };
            let stopped = Array::try_from(take(DELAY_STOPPED)?).map_err(|e| e.to_string())?;
            let resumed = Array::try_from(take(DELAY_RESUMED)?).map_err(|e| e.to_string())?;
            let over = PerCpuArray::try_from(take(DELAY_OVER)?).map_err(|e| e.to_string())?;
            Ok((
                Arc::new(Mutex::new(Table {
                    rules,
                    depths,
                    stopped,
                    resumed: Arc::new(Mutex::new(resumed)),
                    over,
                })),
                resumer,
            ))
        })();
        Self {
            inner,
            reaper: reaper.clone(),
        }
    }

    pub fn unavailable(why: String, reaper: &Reaper) -> Self {
        Self {
            inner: Err(why),
            reaper: reaper.clone(),
        }
    }

    pub fn ready(&self) -> Result<(), &str> {
        self.inner.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// Arms the delay `f` where `at` says, counted in `slot`.
    pub fn install(
        &self,
        owner_name: &str,
        at: Where<'_>,
        f: &IoDelay,
        slot: &Slot,
        trigger: injector_common::Trigger,
    ) -> Result<DelayFault, Error> {
        let Where { cgroup, dir, dev } = at;
        let (table, resumer) = self
            .inner
            .as_ref()
            .map_err(|e| Error::UnsupportedKernel(format!("io_delay: {e}")))?;
        let key = BlockKey {
            cgroup_id: cgroup.id,
            dev,
            _pad: 0,
        };
        let index = slot.index();
        let mut t = lock(table);
        if let Some(other) = t.rules.owner(&key) {
            return Err(Error::Conflict(format!(
                "fault {other:?} already delays the block I/O of cgroup {} on this device; remove it first",
                cgroup.path
            )));
        }
        // A reused slot starts from zero on both sides of the count.
        t.stopped
            .set(index, &0, 0)
            .map_err(Error::map(DELAY_STOPPED))?;
        let resumed_map = Arc::clone(&t.resumed);
        lock(&resumed_map)
            .set(index, &0, 0)
            .map_err(Error::map(DELAY_RESUMED))?;
        let ended = Arc::new(AtomicU64::new(0));
        let done: Done = Arc::new(move |n| {
            let total = ended.fetch_add(n, Ordering::Relaxed) + n;
            if n != 0
                && let Err(e) = lock(&resumed_map).set(index, &total, 0)
            {
                tracing::error!(error = %e, slot = index, "recording continued tasks");
            }
        });
        // Recorded before the rule can stop anything.
        let record = self.reaper.record_process(Undo::Continue {
            cgroup_dir: dir.display().to_string(),
            cgroup_id: cgroup.id,
        });
        let owner = resumer.owner();
        owner.watch_slot_with(index, f.delay.get(), Some(done));
        let depth = t.depths.acquire(LEVELS_RULES, &cgroup.path)?;
        let jitter = f.jitter.map_or(0, |j| j.nanos());
        let rule = DelayRule {
            slot: index,
            ops: if f.op.reads() { OPS_READ } else { 0 }
                | if f.op.writes() { OPS_WRITE } else { 0 },
            _pad: [0; 3],
            delay_ns: f.delay.nanos(),
            jitter_ns: jitter,
            max_ns: f.bound().as_nanos() as u64,
            max_tasks: u64::from(f.max_concurrent.get()),
            trigger,
        };
        t.rules.insert(key, &rule, owner_name)?;
        Ok(DelayFault {
            rule: DelayRuleGuard {
                table: Arc::clone(table),
                key,
                _depth: depth,
            },
            owner,
            _record: record,
            slot: index,
        })
    }
}

impl DelayFault {
    /// I/Os that passed undelayed because the limit of held tasks was
    /// reached.
    pub fn over_limit(&self) -> u64 {
        lock(&self.rule.table)
            .over
            .get(&self.slot, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Drop for DelayRuleGuard {
    fn drop(&mut self) {
        lock(&self.table).rules.remove(&self.key);
    }
}
