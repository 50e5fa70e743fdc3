//! The table of active faults: ids, names, TTLs and what each installed.
//! It knows no fault family: it resolves the target, hands the fault to
//! the family that parsed it, and keeps the owned result, whose drop
//! removes the fault.
//!
//! Two locks, never held together: the table (ids, names, installed
//! faults; held for microseconds) and the installer (the kernel object,
//! the families' backends; held through an install or a removal, which
//! may load and verify programs or talk netlink for a hundred
//! milliseconds). Reading counters, `list` and `get` take only the table,
//! so a scrape never waits for an install; installs and removals are
//! serialized on the installer, which orders every change to the kernel.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Instant, SystemTime},
};

use serde_json::{Value, json};

use crate::{
    capabilities::Capability,
    error::{Error, ErrorCode, RpcError},
    family::{
        self, Backend, Counters, Installed, Load, Options, Request, Services, Target,
        block::latency::{BlockLatency, BlockSeries},
        packet::PoolStatus,
        syscall::latency::{LatencySeries, Watch, Watches},
    },
    kernel::{Kernel, reaper::Reaper},
    spec::{FaultSpec, Name, TargetSpec},
    target::{self, Cgroup, Cgroups},
};

pub type FaultId = u64;

pub struct ActiveFault {
    pub id: FaultId,
    pub name: Name,
    pub spec: FaultSpec,
    /// The resolved cgroup, for cgroup targets.
    pub cgroup: Option<Cgroup>,
    installed: Box<dyn Installed>,
    /// The target cgroup's syscall latency histogram, kept while a fault
    /// aims there.
    _latency: Option<Arc<Watch>>,
    created: SystemTime,
    expires: Option<Instant>,
}

/// Counters of one fault, for the metrics endpoint.
#[derive(Debug, Clone)]
pub struct FaultCounters {
    pub name: String,
    pub kind: &'static str,
    pub counters: Counters,
}

pub struct Faults {
    table: Mutex<Table>,
    installer: Mutex<Installer>,
    /// The number of faults, for `status` (which takes no lock).
    active: AtomicUsize,
    /// Faults that ended, by [`End`] (in its order).
    ended: [AtomicU64; End::ALL.len()],
    cgroup2_mount: String,
    latency: Option<Watches>,
    block_latency: Option<BlockLatency>,
    /// The packet family's pool of interface copies, for `status`.
    interface_pool: Option<PoolStatus>,
}

#[derive(Default)]
struct Table {
    by_id: BTreeMap<FaultId, ActiveFault>,
    /// Names in use; `None` while the fault is being installed.
    by_name: HashMap<String, Option<FaultId>>,
    /// The cgroups faults are aimed at, by cgroup id: their directory
    /// (for [`Faults::end_gone_targets`]) and how many faults aim there.
    targets: HashMap<u64, (Arc<PathBuf>, usize)>,
    next_id: FaultId,
}

/// Why a fault ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// `remove`.
    Removed,
    /// `clear` (and the daemon's shutdown).
    Cleared,
    /// Its `duration` ran out.
    Ttl,
    /// Its target cgroup was removed (the pod, the VM, the container
    /// ended), or replaced by another at the same path.
    TargetGone,
}

impl End {
    pub const ALL: [Self; 4] = [Self::Removed, Self::Cleared, Self::Ttl, Self::TargetGone];

    /// The `reason` label of `injectord_faults_ended_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Removed => "removed",
            Self::Cleared => "cleared",
            Self::Ttl => "ttl",
            Self::TargetGone => "target_gone",
        }
    }
}

struct Installer {
    kernel: Kernel,
    /// One per entry of `family::FAMILIES`, same order.
    backends: Vec<Box<dyn Backend>>,
    cgroups: Cgroups,
    /// Syscall latency histograms of targeted cgroups, where the kernel
    /// has the tracepoints.
    latency: Option<Watches>,
}

/// What installing a fault made: the family's installed fault, the
/// resolved cgroup (cgroup targets) and its latency watch.
struct Placed {
    installed: Box<dyn Installed>,
    cgroup: Option<Cgroup>,
    latency: Option<Arc<Watch>>,
}

/// How `get` and `remove` name a fault.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Selector {
    Id(FaultId),
    Name(String),
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Id(id) => write!(f, "id {id}"),
            Self::Name(n) => write!(f, "name \"{n}\""),
        }
    }
}

/// A poisoned lock: a panic while holding it left the kernel state as it
/// was, so it is not a reason to stop serving.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Faults {
    /// Loads every family into `kernel`; `reaper` undoes netlink state if
    /// the daemon is killed.
    pub fn new(mut kernel: Kernel, cgroups: Cgroups, options: Options, reaper: Reaper) -> Self {
        let mut services = Services::default();
        let backends = family::FAMILIES
            .iter()
            .map(|decl| {
                let _span = tracing::debug_span!("load", family = decl.name).entered();
                let started = std::time::Instant::now();
                let backend = (decl.load)(&mut Load {
                    kernel: &mut kernel,
                    reaper: &reaper,
                    options: &options,
                    services: &mut services,
                });
                tracing::debug!(
                    family = decl.name,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "family loaded"
                );
                backend
            })
            .collect();
        let latency = services.get::<Watches>();
        let block_latency = services.get::<BlockLatency>();
        let interface_pool = services.get::<PoolStatus>();
        Self {
            table: Mutex::new(Table {
                next_id: 1,
                ..Table::default()
            }),
            cgroup2_mount: cgroups.mount().display().to_string(),
            latency: latency.clone(),
            block_latency,
            interface_pool,
            installer: Mutex::new(Installer {
                kernel,
                backends,
                cgroups,
                latency,
            }),
            active: AtomicUsize::new(0),
            ended: Default::default(),
        }
    }

    /// How many faults ended, by why, since the daemon started.
    pub fn ended(&self) -> Vec<(End, u64)> {
        End::ALL
            .iter()
            .zip(&self.ended)
            .map(|(end, n)| (*end, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Tells the families the daemon serves: their background work may
    /// start now.
    pub fn serving(&self) {
        for backend in &mut lock(&self.installer).backends {
            backend.serving();
        }
    }

    /// Waits until what the families undo in the background after a
    /// removal is done (before the daemon exits).
    pub fn settle(&self) {
        for backend in &mut lock(&self.installer).backends {
            backend.settle();
        }
    }

    /// What the families found this kernel can do for them.
    pub fn family_capabilities(&self) -> Vec<Capability> {
        lock(&self.installer)
            .backends
            .iter()
            .flat_map(|b| b.capabilities())
            .collect()
    }

    pub fn cgroup2_mount(&self) -> &str {
        &self.cgroup2_mount
    }

    /// Copies of the interface programs ready to attach, and how many the
    /// pool keeps (without the table's or the installer's lock).
    pub fn interface_pool(&self) -> Option<(usize, usize)> {
        self.interface_pool.as_ref().map(PoolStatus::ready)
    }

    /// The number of faults, without taking a lock.
    pub fn len(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn count(&self, table: &Table) {
        self.active.store(table.by_id.len(), Ordering::Relaxed);
    }

    /// Installs a fault; returns its id, its name and, when it has a TTL,
    /// its deadline.
    pub fn inject(&self, spec: FaultSpec) -> Result<(FaultId, Name, Option<Instant>), RpcError> {
        let kind = spec.fault.kind();
        // Reserve the name and the id, so a concurrent inject of the same
        // name is refused while this one installs.
        let (id, name) = {
            let mut t = lock(&self.table);
            let id = t.next_id;
            let name = spec
                .name
                .clone()
                .unwrap_or_else(|| Name::generated(kind, id));
            if t.by_name.contains_key(name.as_str()) {
                return Err(Error::NameTaken(format!(
                    "a fault named \"{name}\" exists already; remove it or pick another name"
                ))
                .at("name")
                .into());
            }
            t.next_id += 1;
            t.by_name.insert(name.to_string(), None);
            (id, name)
        };
        let installed = self.install(&spec, name.as_str());
        let mut t = lock(&self.table);
        let Placed {
            installed,
            cgroup,
            latency,
        } = match installed {
            Ok(ok) => ok,
            Err(e) => {
                t.by_name.remove(name.as_str());
                return Err(e);
            }
        };
        let expires = spec.duration.map(|d| Instant::now() + d.get());
        tracing::info!(
            id,
            name = %name,
            target = %spec.target,
            cgroup = cgroup.as_ref().map(|c| c.path.as_str()),
            kind,
            "fault injected"
        );
        t.by_name.insert(name.to_string(), Some(id));
        if let Some(cg) = &cgroup {
            let dir =
                std::path::Path::new(&self.cgroup2_mount).join(cg.path.trim_start_matches('/'));
            t.targets
                .entry(cg.id)
                .or_insert_with(|| (Arc::new(dir), 0))
                .1 += 1;
        }
        t.by_id.insert(
            id,
            ActiveFault {
                id,
                name: name.clone(),
                spec,
                cgroup,
                installed,
                _latency: latency,
                created: SystemTime::now(),
                expires,
            },
        );
        self.count(&t);
        Ok((id, name, expires))
    }

    /// Resolves the target and hands the fault to its family, under the
    /// installer lock.
    fn install(&self, spec: &FaultSpec, name: &str) -> Result<Placed, RpcError> {
        let mut guard = lock(&self.installer);
        let inst = &mut *guard;
        let target = inst.resolve(spec)?;
        let installed = inst.backends[spec.fault.family()].install(&mut Request {
            name,
            params: spec.fault.params(),
            target: &target,
            pid: match &spec.target {
                TargetSpec::Pid(pid) => Some(pid.get()),
                _ => None,
            },
            trigger: spec.trigger.to_kernel(spec.duration),
            kernel: &mut inst.kernel,
            cgroups: &inst.cgroups,
        })?;
        let cgroup = match target {
            Target::Cgroup(c) => Some(c),
            Target::Interface { .. } => None,
        };
        // A fault without the histogram is still a fault: say why, go on.
        let latency = match (&inst.latency, &cgroup) {
            (Some(w), Some(c)) => match w.watch(&mut inst.kernel, c) {
                Ok(watch) => Some(watch),
                // Past 256 cgroups: expected with thousands of targets.
                Err(e @ Error::Capacity(_)) => {
                    tracing::debug!(error = %e, cgroup = %c.path, "syscall latency not measured");
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, cgroup = %c.path, "syscall latency not measured");
                    None
                }
            },
            _ => None,
        };
        Ok(Placed {
            installed,
            cgroup,
            latency,
        })
    }

    /// The view of one fault, for `get`.
    pub fn get(&self, sel: &Selector) -> Result<Value, RpcError> {
        let t = lock(&self.table);
        find(&t, sel).map(view)
    }

    pub fn list(&self) -> Vec<Value> {
        lock(&self.table).by_id.values().map(view).collect()
    }

    /// Removes a fault; returns its view as it was just before.
    pub fn remove(&self, sel: &Selector) -> Result<Value, RpcError> {
        let (fault, view) = {
            let mut t = lock(&self.table);
            let id = find(&t, sel)?.id;
            let fault = self.take(&mut t, id, End::Removed).expect("found above");
            let v = view(&fault);
            (fault, v)
        };
        self.undo(fault);
        Ok(view)
    }

    /// Removes every fault; returns how many there were.
    pub fn clear(&self) -> usize {
        let faults: Vec<ActiveFault> = {
            let mut t = lock(&self.table);
            let ids: Vec<_> = t.by_id.keys().copied().collect();
            ids.into_iter()
                .filter_map(|id| self.take(&mut t, id, End::Cleared))
                .collect()
        };
        let n = faults.len();
        for f in faults {
            self.undo(f);
        }
        n
    }

    /// Removes the fault if it is still there and its deadline has passed.
    pub fn expire(&self, id: FaultId) -> bool {
        let fault = {
            let mut t = lock(&self.table);
            let due = t
                .by_id
                .get(&id)
                .and_then(|f| f.expires)
                .is_some_and(|d| d <= Instant::now());
            if !due {
                return false;
            }
            self.take(&mut t, id, End::Ttl)
        };
        fault.map(|f| self.undo(f)).is_some()
    }

    /// Ends every fault whose target cgroup is gone: its directory no
    /// longer exists, or holds another cgroup (a new inode, so a new
    /// cgroup id: the programs attached to the old one never run for the
    /// new one's processes). Each is logged (a warning naming the fault
    /// and the cgroup) and counted (`target_gone`). One `stat` per
    /// targeted cgroup, outside the table's lock; returns how many faults
    /// ended.
    ///
    /// A cgroup with our programs attached can still be removed once it
    /// has no processes and no children: the kernel keeps the cgroup
    /// itself alive while the links hold it, and nothing in it can run
    /// again. Ending the fault drops what it installed, which detaches
    /// the links and frees the dead cgroup.
    pub fn end_gone_targets(&self) -> usize {
        let targets: Vec<(u64, Arc<PathBuf>)> = lock(&self.table)
            .targets
            .iter()
            .map(|(id, (dir, _))| (*id, Arc::clone(dir)))
            .collect();
        let gone: HashSet<u64> = targets
            .into_iter()
            .filter(|(id, dir)| match std::fs::metadata(dir.as_path()) {
                Ok(meta) => meta.ino() != *id,
                Err(e) => matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ),
            })
            .map(|(id, _)| id)
            .collect();
        if gone.is_empty() {
            return 0;
        }
        let faults: Vec<ActiveFault> = {
            let mut t = lock(&self.table);
            let ids: Vec<FaultId> = t
                .by_id
                .values()
                .filter(|f| f.cgroup.as_ref().is_some_and(|c| gone.contains(&c.id)))
                .map(|f| f.id)
                .collect();
            ids.into_iter()
                .filter_map(|id| self.take(&mut t, id, End::TargetGone))
                .collect()
        };
        let n = faults.len();
        for f in faults {
            self.undo(f);
        }
        n
    }

    /// Takes a fault out of the table: it stops being listed at once, and
    /// its end is counted and logged at once, under the table's lock, so
    /// that whoever sees it gone from `list` also sees why in the metrics
    /// and the log. Undoing what it installed comes after ([`Self::undo`]),
    /// and may wait for the installer lock. (Counted after the undo, a
    /// removed cgroup's fault was once unlisted but not yet counted when a
    /// client looked, in a TCG guest.)
    fn take(&self, t: &mut Table, id: FaultId, end: End) -> Option<ActiveFault> {
        let fault = t.by_id.remove(&id)?;
        t.by_name.remove(fault.name.as_str());
        if let Some(cg) = &fault.cgroup
            && let Some((_, n)) = t.targets.get_mut(&cg.id)
        {
            *n -= 1;
            if *n == 0 {
                t.targets.remove(&cg.id);
            }
        }
        self.count(t);
        if let Some(n) = End::ALL.iter().position(|e| *e == end) {
            self.ended[n].fetch_add(1, Ordering::Relaxed);
        }
        match (end, &fault.cgroup) {
            (End::TargetGone, Some(cg)) => tracing::warn!(
                id = fault.id,
                name = %fault.name,
                target = %fault.spec.target,
                cgroup = %cg.path,
                cgroup_id = cg.id,
                "fault ended: its target cgroup is gone (removed, or replaced by another at the same path)"
            ),
            _ => {
                tracing::info!(id = fault.id, name = %fault.name, reason = end.as_str(), "fault removed")
            }
        }
        Some(fault)
    }

    /// Drops what a taken fault installed, which undoes it, under the
    /// installer lock (so it never races an install on the same device).
    fn undo(&self, fault: ActiveFault) {
        let _installer = lock(&self.installer);
        drop(fault);
    }

    /// The syscall latency histograms of the targeted cgroups.
    pub fn syscall_latency(&self) -> Vec<LatencySeries> {
        self.latency
            .as_ref()
            .map(Watches::series)
            .unwrap_or_default()
    }

    /// The block I/O latency histograms.
    pub fn block_latency(&self) -> Vec<BlockSeries> {
        self.block_latency
            .as_ref()
            .map(BlockLatency::series)
            .unwrap_or_default()
    }

    pub fn counters(&self) -> Vec<FaultCounters> {
        lock(&self.table)
            .by_id
            .values()
            .map(|f| FaultCounters {
                name: f.name.to_string(),
                kind: f.spec.fault.kind(),
                counters: f.installed.counters(),
            })
            .collect()
    }
}

impl Installer {
    /// The target, resolved, with the guards against hitting the host.
    fn resolve(&self, spec: &FaultSpec) -> Result<Target, Error> {
        Ok(match &spec.target {
            TargetSpec::Interface { name, netns } => Target::Interface {
                name: name.clone(),
                netns: netns.clone(),
            },
            other => {
                let cgroup = self.cgroups.resolve(other)?;
                target::check_guard(&cgroup, spec.force).map_err(Error::field(other.field()))?;
                Target::Cgroup(cgroup)
            }
        })
    }
}

fn find<'t>(t: &'t Table, sel: &Selector) -> Result<&'t ActiveFault, RpcError> {
    let id = match sel {
        Selector::Id(id) => Some(*id),
        Selector::Name(n) => t.by_name.get(n).copied().flatten(),
    };
    id.and_then(|id| t.by_id.get(&id)).ok_or_else(|| {
        RpcError::new(
            ErrorCode::NotFound,
            format!("no active fault with {sel} (it may have expired or been removed)"),
        )
    })
}

fn view(f: &ActiveFault) -> Value {
    let c = f.installed.counters();
    let exhausted = f
        .spec
        .trigger
        .max_activations
        .is_some_and(|m| c.activations >= m.get());
    let created = f
        .created
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut view = json!({
        "id": f.id,
        "name": f.name,
        "type": f.spec.fault.kind(),
        "state": if exhausted { "exhausted" } else { "active" },
        "spec": f.spec,
        "cgroup": f.cgroup.as_ref().map(|c| json!({ "path": c.path, "id": c.id })),
        "evaluations": c.evaluations,
        "activations": c.activations,
        "created_unix_ms": created.as_millis() as u64,
        "expires_in_ms": f.expires.map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64),
    });
    if !c.samples.is_empty() {
        // The family's own counters, e.g. {"outcome": {"dropped": 12}}.
        let mut own = serde_json::Map::new();
        for s in &c.samples {
            let by_label = own
                .entry(s.label.0)
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
            by_label[s.label.1] = json!(s.value);
        }
        view["counters"] = Value::Object(own);
    }
    if let Some(w) = f.cgroup.as_ref().and_then(|c| c.workload.as_ref()) {
        // What a pod or vm target found: {"pod": {"uid", "driver", "qos"}}
        // or {"vm": {"name", "machine", "domain_id", "driver", "qemu_pid"}}.
        let (key, detail) = w.to_json();
        view[key] = detail;
    }
    if let Value::Object(m) = &mut view {
        m.extend(f.installed.describe());
    }
    view
}
