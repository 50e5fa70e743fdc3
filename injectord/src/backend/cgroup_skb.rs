//! Packet faults on cgroup targets: cgroup_skb programs attached (as
//! bpf_links owned by this process) to each targeted cgroup, so only that
//! cgroup's sockets see them, whatever device or bridge their packets cross.
//! Rules live in the main object's packet maps, keyed by cgroup id.

use std::{collections::HashMap, fs::File, os::fd::AsFd as _, path::Path};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::MapData,
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, cgroup_skb::CgroupSkbLinkId},
};
use injector_common::{DelayHistogram, HOOK_CGROUP_EGRESS, HOOK_CGROUP_INGRESS, Trigger};

use super::{
    packet::{PacketMaps, PacketPlan, TargetRules},
    publish_attachment,
};
use crate::{
    error::{ErrorCode, RpcError},
    target::Cgroup,
};

/// Programs, their aya attach types and kernel attach types (for the
/// cgroup storage key): BPF_CGROUP_INET_INGRESS, BPF_CGROUP_INET_EGRESS.
const PROGRAMS: [(&str, CgroupSkbAttachType, u32); 2] = [
    ("packet_cgroup_ingress", CgroupSkbAttachType::Ingress, 0),
    ("packet_cgroup_egress", CgroupSkbAttachType::Egress, 1),
];

struct Attachment {
    links: Vec<CgroupSkbLinkId>,
    users: usize,
}

pub struct CgroupPackets {
    maps: PacketMaps,
    rules: HashMap<u64, TargetRules>,
    attachments: HashMap<u64, Attachment>,
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
        for (name, ..) in PROGRAMS {
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
            attachments: HashMap::new(),
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
        self.acquire(ebpf, storage, cgroup, dir)?;
        let set = self.rules.entry(cgroup.id).or_default();
        match self.maps.add(cgroup.id, set, entries, nr_cpus) {
            Ok(indices) => Ok(CgroupPacketHandle {
                cgroup_id: cgroup.id,
                indices,
                slot,
            }),
            Err(e) => {
                self.release(ebpf, cgroup.id);
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
        self.release(ebpf, handle.cgroup_id);
    }

    pub fn histogram(&self, handle: &CgroupPacketHandle) -> Option<DelayHistogram> {
        self.maps.histogram(handle.slot)
    }

    fn acquire(
        &mut self,
        ebpf: &mut Ebpf,
        storage: &MapData,
        cgroup: &Cgroup,
        dir: &Path,
    ) -> Result<(), RpcError> {
        if let Some(a) = self.attachments.get_mut(&cgroup.id) {
            a.users += 1;
            return Ok(());
        }
        let file = File::open(dir).map_err(|e| {
            RpcError::new(
                ErrorCode::TargetNotFound,
                format!("opening cgroup {}: {e}", dir.display()),
            )
        })?;
        let mut links = Vec::new();
        for (name, attach, kernel_attach) in PROGRAMS {
            let result = program(ebpf, name)
                // Links always coexist with other programs; no flags.
                .attach(file.as_fd(), attach, CgroupAttachMode::Single)
                .map_err(|e| {
                    format!(
                        "attaching {name} to {}: {}",
                        cgroup.path,
                        crate::error::chain(&e)
                    )
                })
                .and_then(|link| {
                    links.push(link);
                    publish_attachment(storage, cgroup.id, kernel_attach)
                        .map_err(|e| format!("publishing the target of {name}: {e}"))
                });
            if let Err(msg) = result {
                for (link, (name, ..)) in links.into_iter().zip(PROGRAMS) {
                    let _ = program(ebpf, name).detach(link);
                }
                return Err(super::attach_error(msg));
            }
        }
        self.attachments
            .insert(cgroup.id, Attachment { links, users: 1 });
        tracing::debug!(cgroup = %cgroup.path, "attached cgroup_skb programs");
        Ok(())
    }

    fn release(&mut self, ebpf: &mut Ebpf, cgroup_id: u64) {
        let Some(a) = self.attachments.get_mut(&cgroup_id) else {
            return;
        };
        a.users -= 1;
        if a.users > 0 {
            return;
        }
        if let Some(a) = self.attachments.remove(&cgroup_id) {
            for (link, (name, ..)) in a.links.into_iter().zip(PROGRAMS) {
                if let Err(e) = program(ebpf, name).detach(link) {
                    tracing::error!(error = %e, name, "detaching");
                }
            }
        }
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut CgroupSkb {
    // Both programs were loaded (and type-checked) in `load`, the only way
    // to construct a CgroupPackets.
    ebpf.program_mut(name)
        .and_then(|p| <&mut CgroupSkb>::try_from(p).ok())
        .expect("cgroup_skb programs are loaded")
}
