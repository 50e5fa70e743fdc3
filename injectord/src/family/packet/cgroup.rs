//! Packet faults on cgroup targets: cgroup_skb programs attached (as
//! bpf_links owned by this process) to each targeted cgroup, so only that
//! cgroup's sockets see them, whatever device or bridge their packets cross.
//! Rules live in the main object's packet maps, keyed by cgroup id.
//! cgroup_skb can only drop (and pace); rewrites, copies and delays of a
//! container go on its own device (see `cgroup_netns`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use anyhow::Context as _;
use aya::programs::{CgroupSkb, CgroupSkbAttachType};
use injector_common::packet::{
    DelayHistogram, HOOK_CGROUP_EGRESS, HOOK_CGROUP_INGRESS, PACKET_CGROUP_EGRESS,
    PACKET_CGROUP_INGRESS,
};

use super::{
    plan::PacketPlan,
    rules::{PacketMaps, TargetRules},
};
use crate::{
    error::{Error, chain},
    family::Request,
    kernel::{
        Kernel, Slot,
        cgroup_links::{Attachment, CgroupLinks, CgroupProgram},
    },
    target::Cgroup,
};

static PROGRAMS: [(&str, CgroupSkbAttachType); 2] = [
    (PACKET_CGROUP_INGRESS, CgroupSkbAttachType::Ingress),
    (PACKET_CGROUP_EGRESS, CgroupSkbAttachType::Egress),
];

type Link = <CgroupSkb as CgroupProgram>::Link;

struct State {
    maps: PacketMaps,
    rules: HashMap<u64, TargetRules>,
    links: CgroupLinks<CgroupSkb>,
}

/// The cgroup_skb backend, shared with the rules it installed.
#[derive(Clone)]
pub struct CgroupPackets(Arc<Mutex<State>>);

/// A packet fault's rules on one cgroup; dropping them withdraws them and
/// then releases the cgroup's attachment.
pub struct CgroupRules {
    backend: CgroupPackets,
    cgroup_id: u64,
    indices: Vec<u32>,
    slot: u32,
    _attachment: Arc<Attachment<Link>>,
}

impl CgroupPackets {
    pub fn load(kernel: &mut Kernel) -> anyhow::Result<Self> {
        for (name, _) in PROGRAMS {
            let prog: &mut CgroupSkb = kernel
                .ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load()
                .map_err(|e| anyhow::anyhow!("loading {name} (cgroup_skb): {}", chain(&e)))?;
        }
        Ok(Self(Arc::new(Mutex::new(State {
            maps: PacketMaps::take(&mut kernel.ebpf)?,
            rules: HashMap::new(),
            links: CgroupLinks::new(&PROGRAMS),
        }))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Attaches to the cgroup if needed and publishes the fault's rules.
    pub fn install(
        &self,
        req: &mut Request<'_>,
        cgroup: &Cgroup,
        plan: &PacketPlan,
        slot: &Slot,
    ) -> Result<CgroupRules, Error> {
        let (slot, nr_cpus) = (slot.index(), slot.nr_cpus());
        let entries = plan.entries(
            1 << HOOK_CGROUP_INGRESS,
            1 << HOOK_CGROUP_EGRESS,
            slot,
            req.trigger,
        );
        let dir = req.cgroup_dir(cgroup);
        let mut s = self.lock();
        let attachment = s.links.acquire(req.kernel, cgroup, &dir)?;
        let State { maps, rules, .. } = &mut *s;
        let added = maps.add(
            cgroup.id,
            rules.entry(cgroup.id).or_default(),
            entries,
            nr_cpus,
        );
        if added.is_err() && rules.get(&cgroup.id).is_some_and(TargetRules::is_empty) {
            rules.remove(&cgroup.id);
        }
        let indices = added?;
        Ok(CgroupRules {
            backend: self.clone(),
            cgroup_id: cgroup.id,
            indices,
            slot,
            _attachment: attachment,
        })
    }

    fn histogram(&self, slot: u32) -> Option<DelayHistogram> {
        self.lock().maps.histogram(slot)
    }
}

impl CgroupRules {
    pub fn histogram(&self) -> Option<DelayHistogram> {
        self.backend.histogram(self.slot)
    }
}

impl Drop for CgroupRules {
    fn drop(&mut self) {
        let mut s = self.backend.lock();
        let State { maps, rules, .. } = &mut *s;
        if let Some(set) = rules.get_mut(&self.cgroup_id) {
            maps.remove(self.cgroup_id, set, &self.indices, self.slot);
            if set.is_empty() {
                rules.remove(&self.cgroup_id);
            }
        }
    }
}
