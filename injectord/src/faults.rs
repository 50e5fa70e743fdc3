//! The table of active faults: inject, look up, remove, expire.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Instant, SystemTime},
};

use injector_common::{ACTION_DROP, ConnectKey, DelayHistogram, FaultStats, Trigger};
use serde_json::{Value, json};

use crate::{
    backend::{
        cgroup_netns,
        cgroup_skb::CgroupPacketHandle,
        connect::{ConnectBackend, ConnectFault},
        interface::{InterfaceHandle, InterfaceOptions, Interfaces},
        packet::PacketPlan,
    },
    datapath::Datapath,
    errno::Errno,
    error::{ErrorCode, RpcError},
    reaper::Reaper,
    spec::{Fault, FaultSpec, Name, TargetSpec},
    sys,
    target::{self, Cgroup, Cgroups},
};

pub type FaultId = u64;

/// Where a fault's rules live in the kernel.
#[derive(Debug, Clone)]
enum Installed {
    /// connect() rule; counters in the main object's slot.
    Connect(ConnectKey),
    /// cgroup_skb rules (and, for a partition, a connect() rule); counters
    /// in the main object's slot.
    CgroupPacket(CgroupPacketHandle, Option<ConnectKey>),
    /// Rules in an interface's own object; counters in its slot.
    Interface(InterfaceHandle),
}

#[derive(Debug)]
pub struct ActiveFault {
    pub id: FaultId,
    pub name: Name,
    pub spec: FaultSpec,
    /// The resolved cgroup, for cgroup targets.
    pub cgroup: Option<Cgroup>,
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
    /// Packets a rate limit dropped past its `max_delay`.
    pub overflows: u64,
    pub delay: Option<DelayHistogram>,
}

pub struct Faults {
    datapath: Datapath,
    interfaces: Interfaces,
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
    /// `reaper`: undoes netlink state if the daemon is killed.
    pub fn new(
        datapath: Datapath,
        cgroups: Cgroups,
        interface_options: InterfaceOptions,
        reaper: Option<Reaper>,
    ) -> Self {
        Self {
            datapath,
            interfaces: Interfaces::new(interface_options, reaper),
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
        let id = self.next_id;
        let name = spec
            .name
            .clone()
            .unwrap_or_else(|| Name::generated(spec.fault.kind(), id));
        if self.by_name.contains_key(name.as_str()) {
            return Err(RpcError::new(
                ErrorCode::NameTaken,
                format!("a fault named {name:?} exists already; remove it or pick another name"),
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

        let (cgroup, installed, slot) = match &spec.target {
            TargetSpec::Interface {
                name: ifname,
                netns,
            } => {
                let Some(plan) = PacketPlan::of(&spec.fault) else {
                    return Err(RpcError::new(
                        ErrorCode::UnsupportedTarget,
                        format!(
                            "{} needs a cgroup target (cgroup, pid or container): it acts on processes, not on a device",
                            spec.fault.kind()
                        ),
                    ));
                };
                let handle = self
                    .interfaces
                    .install(ifname, netns.as_ref(), &plan, trigger)?;
                let slot = handle.slot();
                (None, Installed::Interface(handle), slot)
            }
            target => {
                let cgroup = self.cgroups.resolve(target)?;
                target::check_guard(&cgroup, spec.force)?;
                let (installed, slot) = match PacketPlan::of(&spec.fault) {
                    None => self.install_connect(&spec.fault, &cgroup, trigger)?,
                    Some(plan) => {
                        self.install_cgroup_packet(&spec.fault, &plan, &cgroup, trigger)?
                    }
                };
                (Some(cgroup), installed, slot)
            }
        };

        self.next_id += 1;
        self.by_name.insert(name.to_string(), id);
        if let Installed::Connect(key) | Installed::CgroupPacket(_, Some(key)) = &installed {
            self.connect_keys.insert(*key, id);
        }
        tracing::info!(
            id,
            name = %name,
            target = %spec.target,
            cgroup = cgroup.as_ref().map(|c| c.path.as_str()),
            kind = spec.fault.kind(),
            "fault injected"
        );
        let fault = ActiveFault {
            id,
            name,
            spec,
            cgroup,
            slot,
            installed,
            created: SystemTime::now(),
            expires,
        };
        let fault = self.by_id.entry(id).or_insert(fault);
        Ok((fault, expires))
    }

    /// Refuses a connect rule that would replace another fault's.
    fn check_connect_conflict(&self, key: &ConnectKey, cgroup: &Cgroup) -> Result<(), RpcError> {
        if let Some(other) = self.connect_keys.get(key) {
            let other = &self.by_id[other].name;
            let port = if key.port == 0 {
                "any port".to_string()
            } else {
                format!("port {}", key.port)
            };
            return Err(RpcError::new(
                ErrorCode::Conflict,
                format!(
                    "fault {other:?} already makes connect() fail in cgroup {} for {port}; remove it first or use another port",
                    cgroup.path
                ),
            ));
        }
        Ok(())
    }

    fn cgroup_dir(&self, cgroup: &Cgroup) -> std::path::PathBuf {
        self.cgroups
            .mount()
            .join(cgroup.path.trim_start_matches('/'))
    }

    fn install_connect(
        &mut self,
        fault: &Fault,
        cgroup: &Cgroup,
        trigger: Trigger,
    ) -> Result<(Installed, u32), RpcError> {
        let Fault::ConnectError {
            errno,
            address,
            port,
        } = fault
        else {
            return Err(RpcError::new(
                ErrorCode::Internal,
                format!("{} is not a connect fault", fault.kind()),
            ));
        };
        let fault = ConnectFault {
            errno: errno.get(),
            address: *address,
            ports: port.map(|p| (p.get(), p.get())),
        };
        let key = ConnectBackend::key(cgroup, &fault);
        self.check_connect_conflict(&key, cgroup)?;
        let slot = self.datapath.slots.alloc()?;
        if let Err(e) = self.connect_install(cgroup, &fault, slot, trigger) {
            self.datapath.slots.free(slot);
            return Err(e);
        }
        Ok((Installed::Connect(key), slot))
    }

    fn connect_install(
        &mut self,
        cgroup: &Cgroup,
        fault: &ConnectFault,
        slot: u32,
        trigger: Trigger,
    ) -> Result<(), RpcError> {
        let dir = self.cgroup_dir(cgroup);
        let dp = &mut self.datapath;
        let backend = dp.connect.as_mut().map_err(|why| {
            RpcError::new(
                ErrorCode::UnsupportedKernel,
                format!(
                    "connect() faults need cgroup sock_addr programs with bpf_set_retval, which this kernel refused: {why}"
                ),
            )
        })?;
        backend.install(
            &mut dp.ebpf,
            &dp.cgroup_storage,
            cgroup,
            &dir,
            fault,
            slot,
            trigger,
        )
    }

    /// cgroup_skb can only drop: a container's rewrite, copy or delay goes
    /// on the device of its own network namespace.
    fn install_on_cgroup_device(
        &mut self,
        plan: &PacketPlan,
        cgroup: &Cgroup,
        trigger: Trigger,
    ) -> Result<(Installed, u32), RpcError> {
        let dev = cgroup_netns::device_of(&self.cgroup_dir(cgroup), &cgroup.path, plan.kind)?;
        tracing::debug!(
            cgroup = %cgroup.path,
            netns = dev.netns.as_str(),
            device = dev.name.as_str(),
            "cgroup target acts on its namespace's device"
        );
        let handle = self
            .interfaces
            .install(&dev.name, Some(&dev.netns), plan, trigger)?;
        let slot = handle.slot();
        Ok((Installed::Interface(handle), slot))
    }

    fn install_cgroup_packet(
        &mut self,
        fault: &Fault,
        plan: &PacketPlan,
        cgroup: &Cgroup,
        trigger: Trigger,
    ) -> Result<(Installed, u32), RpcError> {
        if plan.rule.action != ACTION_DROP {
            return self.install_on_cgroup_device(plan, cgroup, trigger);
        }
        // A partition also makes connect() towards the far side fail at once.
        let connect = match fault {
            Fault::Partition(p) => {
                let f = ConnectFault {
                    errno: p
                        .errno
                        .unwrap_or_else(|| Errno::from_name("ENETUNREACH").expect("known errno"))
                        .get(),
                    address: plan.filter.dst,
                    ports: plan.filter.dst_port.map(|r| (r.first, r.last)),
                };
                let key = ConnectBackend::key(cgroup, &f);
                self.check_connect_conflict(&key, cgroup)?;
                Some((f, key))
            }
            _ => None,
        };
        let slot = self.datapath.slots.alloc()?;
        let dir = self.cgroup_dir(cgroup);
        let dp = &mut self.datapath;
        let nr_cpus = dp.slots.nr_cpus();
        let installed = match dp.cgroup_packets.as_mut() {
            Err(why) => Err(RpcError::new(
                ErrorCode::UnsupportedKernel,
                format!(
                    "{} on a cgroup needs cgroup_skb programs, which this kernel refused: {why}",
                    plan.kind
                ),
            )),
            Ok(backend) => backend.install(
                &mut dp.ebpf,
                &dp.cgroup_storage,
                cgroup,
                &dir,
                plan,
                slot,
                trigger,
                nr_cpus,
            ),
        };
        let handle = match installed {
            Ok(h) => h,
            Err(e) => {
                self.datapath.slots.free(slot);
                return Err(e);
            }
        };
        let key = match connect {
            None => None,
            Some((f, key)) => {
                if let Err(e) = self.connect_install(cgroup, &f, slot, trigger) {
                    let dp = &mut self.datapath;
                    if let Ok(b) = dp.cgroup_packets.as_mut() {
                        b.uninstall(&mut dp.ebpf, &handle);
                    }
                    dp.slots.free(slot);
                    return Err(e);
                }
                Some(key)
            }
        };
        Ok((Installed::CgroupPacket(handle, key), slot))
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
        let dp = &mut self.datapath;
        match &fault.installed {
            Installed::Connect(key) => {
                self.connect_keys.remove(key);
                if let Ok(b) = &mut dp.connect {
                    b.uninstall(&mut dp.ebpf, key);
                }
                dp.slots.free(fault.slot);
            }
            Installed::CgroupPacket(handle, key) => {
                if let Ok(b) = &mut dp.cgroup_packets {
                    b.uninstall(&mut dp.ebpf, handle);
                }
                if let Some(key) = key {
                    self.connect_keys.remove(key);
                    if let Ok(b) = &mut dp.connect {
                        b.uninstall(&mut dp.ebpf, key);
                    }
                }
                dp.slots.free(fault.slot);
            }
            Installed::Interface(handle) => self.interfaces.uninstall(handle),
        }
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

    fn stats(&self, f: &ActiveFault) -> FaultStats {
        match &f.installed {
            Installed::Interface(h) => self.interfaces.stats(h),
            _ => self.datapath.slots.stats(f.slot),
        }
    }

    fn histogram(&self, f: &ActiveFault) -> Option<DelayHistogram> {
        match &f.installed {
            Installed::Interface(h) => self.interfaces.histogram(h),
            Installed::CgroupPacket(h, _) => self
                .datapath
                .cgroup_packets
                .as_ref()
                .ok()
                .and_then(|b| b.histogram(h)),
            Installed::Connect(_) => None,
        }
    }

    pub fn counters(&self) -> Vec<FaultCounters> {
        self.by_id
            .values()
            .map(|f| {
                let s = self.stats(f);
                FaultCounters {
                    name: f.name.to_string(),
                    kind: f.spec.fault.kind(),
                    evaluations: s.evaluations,
                    activations: s.activations,
                    overflows: s.overflows,
                    delay: self.histogram(f),
                }
            })
            .collect()
    }

    pub fn view(&self, f: &ActiveFault) -> Value {
        let s = self.stats(f);
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
            "cgroup": f.cgroup.as_ref().map(|c| json!({ "path": c.path, "id": c.id })),
            "interface": match &f.installed {
                Installed::Interface(h) => self.interfaces.describe(h),
                _ => Value::Null,
            },
            "evaluations": s.evaluations,
            "activations": s.activations,
            "overflows": s.overflows,
            "created_unix_ms": created.as_millis() as u64,
            "expires_in_ms": f.expires.map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64),
        })
    }

    pub fn list(&self) -> Vec<Value> {
        self.by_id.values().map(|f| self.view(f)).collect()
    }
}
