//! The table of active faults: ids, names, TTLs and what each installed.
//! It knows no fault family: it resolves the target, hands the fault to
//! the family that parsed it, and keeps the owned result, whose drop
//! removes the fault.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Instant, SystemTime},
};

use serde_json::{Value, json};

use crate::{
    capabilities::Capability,
    error::{Error, ErrorCode, RpcError},
    family::{self, Backend, Counters, Installed, Load, Options, Request, Services, Target},
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
    kernel: Kernel,
    /// One per entry of `family::FAMILIES`, same order.
    backends: Vec<Box<dyn Backend>>,
    cgroups: Cgroups,
    by_id: BTreeMap<FaultId, ActiveFault>,
    by_name: HashMap<String, FaultId>,
    next_id: FaultId,
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
            Self::Name(n) => write!(f, "name {n:?}"),
        }
    }
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
                (decl.load)(&mut Load {
                    kernel: &mut kernel,
                    reaper: &reaper,
                    options: &options,
                    services: &mut services,
                })
            })
            .collect();
        Self {
            kernel,
            backends,
            cgroups,
            by_id: BTreeMap::new(),
            by_name: HashMap::new(),
            next_id: 1,
        }
    }

    /// What the families found this kernel can do for them.
    pub fn family_capabilities(&self) -> Vec<Capability> {
        self.backends
            .iter()
            .flat_map(|b| b.capabilities())
            .collect()
    }

    /// The main object, for probes that load programs of their own.
    pub fn kernel_mut(&mut self) -> &mut Kernel {
        &mut self.kernel
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

    /// Installs a fault; returns it and, when it has a TTL, its deadline.
    pub fn inject(&mut self, spec: FaultSpec) -> Result<(&ActiveFault, Option<Instant>), RpcError> {
        let id = self.next_id;
        let kind = spec.fault.kind();
        let name = spec
            .name
            .clone()
            .unwrap_or_else(|| Name::generated(kind, id));
        if self.by_name.contains_key(name.as_str()) {
            return Err(Error::NameTaken(format!(
                "a fault named \"{name}\" exists already; remove it or pick another name"
            ))
            .at("name")
            .into());
        }
        let expires = spec.duration.map(|d| Instant::now() + d.get());
        let trigger = spec.trigger.to_kernel(spec.duration);
        let target = self.resolve(&spec)?;
        let installed = self.backends[spec.fault.family()].install(&mut Request {
            name: name.as_str(),
            params: spec.fault.params(),
            target: &target,
            trigger,
            kernel: &mut self.kernel,
            cgroups: &self.cgroups,
        })?;
        let cgroup = match target {
            Target::Cgroup(c) => Some(c),
            Target::Interface { .. } => None,
        };
        self.next_id += 1;
        self.by_name.insert(name.to_string(), id);
        tracing::info!(
            id,
            name = %name,
            target = %spec.target,
            cgroup = cgroup.as_ref().map(|c| c.path.as_str()),
            kind,
            "fault injected"
        );
        let fault = ActiveFault {
            id,
            name,
            spec,
            cgroup,
            installed,
            created: SystemTime::now(),
            expires,
        };
        let fault = self.by_id.entry(id).or_insert(fault);
        Ok((fault, expires))
    }

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

    pub fn find(&self, sel: &Selector) -> Result<&ActiveFault, RpcError> {
        let id = match sel {
            Selector::Id(id) => Some(*id),
            Selector::Name(n) => self.by_name.get(n).copied(),
        };
        id.and_then(|id| self.by_id.get(&id)).ok_or_else(|| {
            RpcError::new(
                ErrorCode::NotFound,
                format!("no active fault with {sel} (it may have expired or been removed)"),
            )
        })
    }

    /// Removes a fault: dropping what it installed undoes it.
    pub fn remove(&mut self, id: FaultId) -> Option<ActiveFault> {
        let mut fault = self.by_id.remove(&id)?;
        self.by_name.remove(fault.name.as_str());
        fault.installed = Box::new(Removed);
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
            .map(|f| FaultCounters {
                name: f.name.to_string(),
                kind: f.spec.fault.kind(),
                counters: f.installed.counters(),
            })
            .collect()
    }

    pub fn view(&self, f: &ActiveFault) -> Value {
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
        if let Value::Object(m) = &mut view {
            m.extend(f.installed.describe());
        }
        view
    }

    pub fn list(&self) -> Vec<Value> {
        self.by_id.values().map(|f| self.view(f)).collect()
    }
}

/// What a removed fault holds: nothing.
struct Removed;

impl Installed for Removed {
    fn counters(&self) -> Counters {
        Counters::default()
    }
}
