//! Syscall latency of the cgroups faults are aimed at: each such cgroup is
//! watched while a fault targets it (its calls timed between the
//! raw_syscalls tracepoints, see `injector-ebpf/src/syscall/latency.rs`),
//! and `/metrics` exports `injectord_syscall_latency_seconds{cgroup,
//! syscalls}`. The two tracepoint programs are attached while anything is
//! watched.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::Context as _;
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues},
    programs::{RawTracePoint, raw_trace_point::RawTracePointLink},
    util::nr_cpus,
};
use injector_common::syscall::{
    LATENCY_BUCKETS, LATENCY_GROUPS, LATENCY_HIST, LATENCY_SLOTS, LATENCY_WATCH, LEVELS_WATCHES,
    MAX_SYSCALL_NR, MAX_WATCHES, SYSCALL_GROUPS, SYSCALL_LATENCY_ENTER, SYSCALL_LATENCY_EXIT,
};

use super::{
    depths::{DepthGuard, Depths},
    table::{GROUPS, Syscall},
};
use crate::{
    error::{Error, chain},
    kernel::{Kernel, shared::SharedByKey},
    target::Cgroup,
};

/// The group label of histogram group `g` (0: every other syscall).
pub fn group_label(g: usize) -> &'static str {
    match g {
        0 => "other",
        g => GROUPS
            .get(g - 1)
            .map_or("other", |(name, _)| name.trim_start_matches("syscalls_")),
    }
}

struct Inner {
    watch: HashMap<MapData, u64, u32>,
    hist: PerCpuArray<MapData, u64>,
    free: Vec<u32>,
    by_cgroup: SharedByKey<u64, Watch>,
    links: Vec<RawTracePointLink>,
    depths: Depths,
}

/// The watches, shared by the faults (through `Faults`) and `/metrics`.
#[derive(Clone)]
pub struct Watches(Arc<Mutex<Inner>>);

/// One watched cgroup; the last fault aimed there drops it.
pub struct Watch {
    owner: Watches,
    cgroup: Cgroup,
    index: u32,
    _depth: DepthGuard,
}

/// One cgroup's latency histogram for one group of syscalls.
#[derive(Clone, Debug)]
pub struct LatencySeries {
    pub cgroup: String,
    pub syscalls: &'static str,
    /// `LATENCY_BUCKETS` counts: bucket `k` holds calls of at most
    /// `2^(10+k)` ns, the last every longer one.
    pub buckets: Vec<u64>,
    pub sum_ns: u64,
}

impl Watches {
    /// Loads the programs and fills the syscall-to-group table.
    pub fn load(kernel: &mut Kernel, depths: Depths) -> anyhow::Result<Self> {
        for name in [SYSCALL_LATENCY_ENTER, SYSCALL_LATENCY_EXIT] {
            program(kernel, name)?
                .load()
                .map_err(|e| anyhow::anyhow!("loading {name}: {}", chain(&e)))?;
        }
        let mut groups: Array<MapData, u32> = Array::try_from(
            kernel
                .ebpf
                .take_map(SYSCALL_GROUPS)
                .context(SYSCALL_GROUPS)?,
        )?;
        for (g, (_, members)) in GROUPS.iter().enumerate() {
            for name in *members {
                if let Ok(sc) = name.parse::<Syscall>()
                    && sc.nr() < MAX_SYSCALL_NR
                {
                    groups.set(sc.nr(), &(g as u32 + 1), 0)?;
                }
            }
        }
        let watch = HashMap::try_from(kernel.ebpf.take_map(LATENCY_WATCH).context(LATENCY_WATCH)?)?;
        let hist =
            PerCpuArray::try_from(kernel.ebpf.take_map(LATENCY_HIST).context(LATENCY_HIST)?)?;
        Ok(Self(Arc::new(Mutex::new(Inner {
            watch,
            hist,
            free: (0..MAX_WATCHES).rev().collect(),
            by_cgroup: SharedByKey::default(),
            links: Vec::new(),
            depths,
        }))))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cgroup's watch, started now if none holds one.
    pub fn watch(&self, kernel: &mut Kernel, cgroup: &Cgroup) -> Result<Arc<Watch>, Error> {
        let mut inner = self.lock();
        let Inner {
            watch,
            free,
            by_cgroup,
            links,
            depths,
            ..
        } = &mut *inner;
        by_cgroup.get_or_try_make(cgroup.id, || {
            if links.is_empty() {
                for name in [SYSCALL_LATENCY_ENTER, SYSCALL_LATENCY_EXIT] {
                    let tp = if name == SYSCALL_LATENCY_ENTER {
                        "sys_enter"
                    } else {
                        "sys_exit"
                    };
                    let prog =
                        program(kernel, name).map_err(|e| Error::Internal(format!("{e:#}")))?;
                    let link =
                        prog.attach(tp)
                            .and_then(|id| prog.take_link(id))
                            .map_err(|source| Error::Attach {
                                what: format!("{name} to raw tracepoint {tp}"),
                                source,
                            });
                    match link {
                        Ok(l) => links.push(l),
                        Err(e) => {
                            links.clear();
                            return Err(e);
                        }
                    }
                }
            }
            let Some(index) = free.pop() else {
                return Err(Error::Capacity(format!(
                    "syscall latency is measured for at most {MAX_WATCHES} cgroups at once"
                )));
            };
            let depth = match depths.acquire(LEVELS_WATCHES, &cgroup.path) {
                Ok(d) => d,
                Err(e) => {
                    free.push(index);
                    return Err(e);
                }
            };
            if let Err(e) = watch.insert(&cgroup.id, &index, 0) {
                free.push(index);
                return Err(Error::map(LATENCY_WATCH)(e));
            }
            Ok(Watch {
                owner: self.clone(),
                cgroup: cgroup.clone(),
                index,
                _depth: depth,
            })
        })
    }

    /// Every watched cgroup's histograms, by syscall group (groups without
    /// a call left out).
    pub fn series(&self) -> Vec<LatencySeries> {
        let inner = self.lock();
        let mut out = Vec::new();
        for w in inner.by_cgroup.held() {
            for g in 0..LATENCY_GROUPS {
                let base = (w.index * LATENCY_GROUPS + g) * LATENCY_SLOTS;
                let read = |i: u32| -> u64 {
                    inner
                        .hist
                        .get(&(base + i), 0)
                        .map(|v| v.iter().sum())
                        .unwrap_or(0)
                };
                let buckets: Vec<u64> = (0..LATENCY_BUCKETS).map(read).collect();
                if buckets.iter().all(|n| *n == 0) {
                    continue;
                }
                out.push(LatencySeries {
                    cgroup: w.cgroup.path.clone(),
                    syscalls: group_label(g as usize),
                    buckets,
                    sum_ns: read(LATENCY_BUCKETS),
                });
            }
        }
        out
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut inner = self.owner.lock();
        // A fault may have watched the cgroup anew between our last
        // reference going and this lock: then the entries are its own.
        if !inner.by_cgroup.is_held(&self.cgroup.id)
            && let Err(e) = inner.watch.remove(&self.cgroup.id)
        {
            tracing::error!(error = %e, cgroup = %self.cgroup.path, "unwatching");
        }
        // A later watch reuses the index: it starts from zero.
        if let Ok(cpus) = nr_cpus() {
            for g in 0..LATENCY_GROUPS {
                let base = (self.index * LATENCY_GROUPS + g) * LATENCY_SLOTS;
                for i in 0..LATENCY_SLOTS {
                    if let Ok(zeros) = PerCpuValues::try_from(vec![0u64; cpus.get() as usize]) {
                        let _ = inner.hist.set(base + i, zeros, 0);
                    }
                }
            }
        }
        inner.free.push(self.index);
        if inner.by_cgroup.is_empty() {
            // Detaches both programs: nothing is watched.
            inner.links.clear();
        }
    }
}

fn program<'a>(kernel: &'a mut Kernel, name: &str) -> anyhow::Result<&'a mut RawTracePoint> {
    kernel
        .ebpf
        .program_mut(name)
        .and_then(|p| <&mut RawTracePoint>::try_from(p).ok())
        .with_context(|| format!("program {name} is not in the eBPF object"))
}
