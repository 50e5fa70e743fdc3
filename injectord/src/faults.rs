//! The table of active faults: inject, look up, remove, expire.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Instant, SystemTime},
};

use injector_common::{ConnectKey, Trigger};
use serde_json::{Value, json};

use crate::{
    backend::connect::{ConnectBackend, ConnectFault},
    datapath::Datapath,
    error::{ErrorCode, RpcError},
    spec::{Fault, FaultSpec, Name},
    sys,
    target::{self, Cgroup, Cgroups},
};

pub type FaultId = u64;

/// Where a fault's rule lives in the kernel.
#[derive(Debug, Clone, Copy)]
enum Installed {
    Connect(ConnectKey),
}

#[derive(Debug)]
pub struct ActiveFault {
    pub id: FaultId,
    pub name: Name,
    pub spec: FaultSpec,
    pub cgroup: Cgroup,
    slot: u32,
    installed: Installed,
    created: SystemTime,
    expires: Option<Instant>,
}

/// Counters of one fault, summed over CPUs.
#[derive(Debug, Clone)]
pub struct FaultCounters {
    pub name: String,
    pub kind: &'static str,
    pub evaluations: u64,
    pub activations: u64,
}

pub struct Faults {
    datapath: Datapath,
    cgroups: Cgroups,
    by_id: BTreeMap<FaultId, ActiveFault>,
    by_name: HashMap<String, FaultId>,
    connect_keys: HashMap<ConnectKey, FaultId>,
    next_id: FaultId,
}

/// How `get` and `remove` name a fault.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Selector {
    Id(FaultId),
    Name(String),
}

impl Faults {
    pub fn new(datapath: Datapath, cgroups: Cgroups) -> Self {
        Self {
            datapath,
            cgroups,
            by_id: BTreeMap::new(),
            by_name: HashMap::new(),
            connect_keys: HashMap::new(),
            next_id: 1,
        }
    }

    pub fn datapath(&self) -> &Datapath {
        &self.datapath
    }

    pub fn cgroups(&self) -> &Cgroups {
        &self.cgroups
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Installs a fault; returns its id and, when it has a TTL, its deadline.
    pub fn inject(&mut self, spec: FaultSpec) -> Result<(&ActiveFault, Option<Instant>), RpcError> {
        if let Some(name) = &spec.name
            && self.by_name.contains_key(name.as_str())
        {
            return Err(RpcError::new(
                ErrorCode::NameTaken,
                format!("a fault named {name:?} exists already; remove it or pick another name"),
            ));
        }
        let cgroup = self.cgroups.resolve(&spec.target)?;
        target::check_guard(&cgroup, spec.force)?;

        let id = self.next_id;
        let name = spec
            .name
            .clone()
            .unwrap_or_else(|| Name::generated(spec.fault.kind(), id));
        if self.by_name.contains_key(name.as_str()) {
            return Err(RpcError::new(
                ErrorCode::NameTaken,
                format!("a fault named {name:?} exists already"),
            ));
        }
        let expires = spec.duration.map(|d| Instant::now() + d.get());
        let trigger = Trigger {
            threshold: spec
                .trigger
                .probability
                .map_or(Trigger::ALWAYS, |p| p.threshold()),
            after: spec.trigger.after.unwrap_or(0),
            every_nth: spec.trigger.every_nth.map_or(0, |n| n.get()),
            max_activations: spec.trigger.max_activations.map_or(0, |n| n.get()),
            expires_at_ns: spec
                .duration
                .map_or(0, |d| sys::monotonic_ns() + d.get().as_nanos() as u64),
        };

        let installed = match &spec.fault {
            Fault::ConnectError {
                errno,
                address,
                port,
            } => {
                let fault = ConnectFault {
                    errno: errno.get(),
                    address: *address,
                    port: port.map(|p| p.get()),
                };
                let key = ConnectBackend::key(&cgroup, &fault);
                if let Some(other) = self.connect_keys.get(&key) {
                    let other = &self.by_id[other].name;
                    return Err(RpcError::new(
                        ErrorCode::Conflict,
                        format!(
                            "fault {other:?} already makes connect() fail in cgroup {} for {}; remove it first or use another port",
                            cgroup.path,
                            port.map_or("any port".to_string(), |p| format!("port {}", p.get()))
                        ),
                    ));
                }
                let dir = self
                    .cgroups
                    .mount()
                    .join(cgroup.path.trim_start_matches('/'));
                let slot = self.datapath.alloc_slot()?;
                let backend = match &mut self.datapath.connect {
                    Ok(b) => b,
                    Err(why) => {
                        let why = why.clone();
                        self.datapath.free_slot(slot);
                        return Err(RpcError::new(
                            ErrorCode::UnsupportedKernel,
                            format!(
                                "connect_error needs cgroup sock_addr programs with bpf_set_retval, which this kernel refused: {why}"
                            ),
                        ));
                    }
                };
                if let Err(e) = backend.install(
                    &mut self.datapath.ebpf,
                    &cgroup,
                    &dir,
                    &fault,
                    slot,
                    trigger,
                ) {
                    self.datapath.free_slot(slot);
                    return Err(e);
                }
                self.connect_keys.insert(key, id);
                (Installed::Connect(key), slot)
            }
        };

        self.next_id += 1;
        self.by_name.insert(name.to_string(), id);
        tracing::info!(id, name = %name, target = %spec.target, cgroup = %cgroup.path, kind = spec.fault.kind(), "fault injected");
        let fault = ActiveFault {
            id,
            name,
            spec,
            cgroup,
            slot: installed.1,
            installed: installed.0,
            created: SystemTime::now(),
            expires,
        };
        let fault = self.by_id.entry(id).or_insert(fault);
        Ok((fault, expires))
    }

    pub fn find(&self, sel: &Selector) -> Result<&ActiveFault, RpcError> {
        let id = match sel {
            Selector::Id(id) => Some(*id),
            Selector::Name(n) => self.by_name.get(n).copied(),
        };
        id.and_then(|id| self.by_id.get(&id)).ok_or_else(|| {
            RpcError::new(
                ErrorCode::NotFound,
                format!("no active fault with {sel:?} (it may have expired or been removed)"),
            )
        })
    }

    pub fn remove(&mut self, id: FaultId) -> Option<ActiveFault> {
        let fault = self.by_id.remove(&id)?;
        self.by_name.remove(fault.name.as_str());
        match fault.installed {
            Installed::Connect(key) => {
                self.connect_keys.remove(&key);
                if let Ok(b) = &mut self.datapath.connect {
                    b.uninstall(&mut self.datapath.ebpf, &key);
                }
            }
        }
        self.datapath.free_slot(fault.slot);
        tracing::info!(id, name = %fault.name, "fault removed");
        Some(fault)
    }

    /// Removes every fault; returns how many there were.
    pub fn clear(&mut self) -> usize {
        let ids: Vec<_> = self.by_id.keys().copied().collect();
        ids.iter().filter(|id| self.remove(**id).is_some()).count()
    }

    /// Removes the fault if it is still there and its deadline has passed.
    pub fn expire(&mut self, id: FaultId) -> bool {
        let due = self
            .by_id
            .get(&id)
            .and_then(|f| f.expires)
            .is_some_and(|t| t <= Instant::now());
        due && self.remove(id).is_some()
    }

    pub fn counters(&self) -> Vec<FaultCounters> {
        self.by_id
            .values()
            .map(|f| {
                let s = self.datapath.stats(f.slot);
                FaultCounters {
                    name: f.name.to_string(),
                    kind: f.spec.fault.kind(),
                    evaluations: s.evaluations,
                    activations: s.activations,
                }
            })
            .collect()
    }

    pub fn view(&self, f: &ActiveFault) -> Value {
        let s = self.datapath.stats(f.slot);
        let exhausted = f
            .spec
            .trigger
            .max_activations
            .is_some_and(|m| s.activations >= m.get());
        let created = f
            .created
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        json!({
            "id": f.id,
            "name": f.name,
            "type": f.spec.fault.kind(),
            "state": if exhausted { "exhausted" } else { "active" },
            "spec": f.spec,
            "cgroup": { "path": f.cgroup.path, "id": f.cgroup.id },
            "evaluations": s.evaluations,
            "activations": s.activations,
            "created_unix_ms": created.as_millis() as u64,
            "expires_in_ms": f.expires.map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64),
        })
    }

    pub fn list(&self) -> Vec<Value> {
        self.by_id.values().map(|f| self.view(f)).collect()
    }
}
