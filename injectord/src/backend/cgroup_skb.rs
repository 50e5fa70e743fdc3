//! Packet faults on cgroup targets: cgroup_skb programs attached (as
//! bpf_links owned by this process) to each targeted cgroup, so only that
//! cgroup's sockets see them, whatever device or bridge their packets cross.
//! Rules live in the main object's packet maps, keyed by cgroup id.

use std::{collections::HashMap, path::Path};

use anyhow::Context as _;
use aya::{Ebpf, maps::MapData, programs::CgroupSkb};
use injector_common::{DelayHistogram, HOOK_CGROUP_EGRESS, HOOK_CGROUP_INGRESS, Trigger};

use super::{
    cgroup_links::CgroupLinks,
    packet::{PacketMaps, PacketPlan, TargetRules},
};
use crate::{error::RpcError, target::Cgroup};

/// Programs and their kernel attach types (for the cgroup storage key):
/// BPF_CGROUP_INET_INGRESS, BPF_CGROUP_INET_EGRESS.
static PROGRAMS: [(&str, u32); 2] = [("packet_cgroup_ingress", 0), ("packet_cgroup_egress", 1)];

pub struct CgroupPackets {
    maps: PacketMaps,
    rules: HashMap<u64, TargetRules>,
    links: CgroupLinks<CgroupSkb>,
}

/// A packet fault installed on a cgroup.
#[derive(Debug, Clone)]
pub struct CgroupPacketHandle {
    pub cgroup_id: u64,
    indices: Vec<u32>,
    slot: u32,
}

impl CgroupPackets {
    pub fn load(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        for (name, _) in PROGRAMS {
            let prog: &mut CgroupSkb = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("loading {name} (cgroup_skb)"))?;
        }
        Ok(Self {
            maps: PacketMaps::take(ebpf)?,
            rules: HashMap::new(),
            links: CgroupLinks::new(&PROGRAMS),
        })
    }

    /// Attaches to the cgroup if needed and publishes the fault's rules.
    #[expect(clippy::too_many_arguments, reason = "the pieces of one install")]
    pub fn install(
        &mut self,
        ebpf: &mut Ebpf,
        storage: &MapData,
        cgroup: &Cgroup,
        dir: &Path,
        plan: &PacketPlan,
        slot: u32,
        trigger: Trigger,
        nr_cpus: usize,
    ) -> Result<CgroupPacketHandle, RpcError> {
        let entries = plan.entries(
            1 << HOOK_CGROUP_INGRESS,
            1 << HOOK_CGROUP_EGRESS,
            slot,
            trigger,
        );
        self.links.acquire(ebpf, storage, cgroup, dir)?;
        let set = self.rules.entry(cgroup.id).or_default();
        match self.maps.add(cgroup.id, set, entries, nr_cpus) {
            Ok(indices) => Ok(CgroupPacketHandle {
                cgroup_id: cgroup.id,
                indices,
                slot,
            }),
            Err(e) => {
                self.links.release(ebpf, cgroup.id);
                Err(e)
            }
        }
    }

    pub fn uninstall(&mut self, ebpf: &mut Ebpf, handle: &CgroupPacketHandle) {
        if let Some(set) = self.rules.get_mut(&handle.cgroup_id) {
            self.maps
                .remove(handle.cgroup_id, set, &handle.indices, handle.slot);
            if set.is_empty() {
                self.rules.remove(&handle.cgroup_id);
            }
        }
        self.links.release(ebpf, handle.cgroup_id);
    }

    pub fn histogram(&self, handle: &CgroupPacketHandle) -> Option<DelayHistogram> {
        self.maps.histogram(handle.slot)
    }
}
