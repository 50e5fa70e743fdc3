//! Packet faults on a network interface: XDP at ingress for drops, TC at
//! ingress and egress for everything that rewrites, copies or re-times
//! packets.
//!
//! Each interface gets a private copy of the eBPF object: XDP cannot tell
//! which network namespace an ifindex belongs to, and ifindexes repeat
//! across namespaces, so maps shared between interfaces would mix up two
//! containers' `eth0`. Programs are attached lazily, per hook a rule needs,
//! and everything is put back when the interface's last fault is dropped:
//! - XDP and tcx attachments are bpf_links owned by this process;
//! - clsact filters (kernels without tcx) get their own auto-chosen
//!   priority in front of others', and the clsact qdisc is removed only if
//!   we added it and no filter of anyone else is left on it;
//! - sch_fq is installed only on request and only over a default root
//!   qdisc, and removed again (the kernel then restores the default).
//!
//! Each piece of netlink state is a [`NetlinkGuard`] holding its reaper
//! record, so the order of undoing is the order of fields, and a crash
//! leaves the reaper the records of what is still there.

mod fq;
mod tc;
mod xdp;

use std::sync::{Arc, Mutex, PoisonError};

use aya::{Ebpf, programs::TcAttachType};
use injector_common::{
    MAX_FAULTS, Trigger, maps,
    packet::{
        ACTION_DROP, DELAY_HIST, DelayHistogram, HOOK_TC_EGRESS, HOOK_TC_INGRESS, HOOK_XDP,
        IFACE_RULE_TABLE, IFACE_RULES, MAX_PACKET_RULES, RATE_STATE, RULE_SETS,
    },
};
use serde_json::{Value, json};

use self::{fq::Fq, tc::TcLink, xdp::XdpState};
use super::{
    plan::PacketPlan,
    rules::{PacketMaps, TargetRules},
};
use crate::{
    error::Error,
    kernel::{
        self, Slot, SlotPool,
        lease::{Lease, LeaseMap},
        logs::{self, LogReader},
        netns::{Device, DeviceKey, NsHandle, resolve_device},
        reaper::{NetlinkGuard, Reaper, Undo},
        shared::SharedByKey,
    },
    spec::target::{IfName, Netns},
};

/// Map sizes of a per-interface copy: its rule sets and its rules' slots.
/// Every other map of the object gets one entry.
const SIZES: &[(&str, u32)] = &[
    (maps::FAULT_STATS, MAX_PACKET_RULES),
    (maps::TRIGGER_STATE, MAX_PACKET_RULES),
    (RATE_STATE, MAX_PACKET_RULES),
    (DELAY_HIST, MAX_PACKET_RULES),
    (IFACE_RULES, RULE_SETS),
    (IFACE_RULE_TABLE, RULE_SETS * MAX_PACKET_RULES),
];

const _: () = assert!(MAX_PACKET_RULES <= MAX_FAULTS);

/// How the interface backend may attach.
#[derive(Clone, Copy, Debug, Default)]
pub struct Attach {
    /// Whether this kernel has sch_fq at all (from the family's probe).
    pub fq_available: bool,
    /// Use clsact filters even where tcx links exist.
    pub force_clsact: bool,
}

/// The interfaces that have faults, each shared by its faults.
pub struct Interfaces {
    by_key: SharedByKey<DeviceKey, Mutex<Interface>>,
    attach: Attach,
    reaper: Reaper,
}

/// A packet fault on an interface: its rules, then its slot, then (if it
/// was the last) the interface's programs and netlink state.
pub struct InterfaceFault {
    iface: Arc<Mutex<Interface>>,
    indices: Vec<u32>,
    slot: Slot,
}

struct Interface {
    ebpf: Ebpf,
    slots: Arc<SlotPool>,
    maps: PacketMaps,
    rules: TargetRules,
    ns: NsHandle,
    label: String,
    name: String,
    ifindex: u32,
    _lease: Arc<LeaseMap>,
    // Undone in this order when the interface goes (see Drop).
    tc: [Option<TcLink>; 2],
    xdp: XdpState,
    fq: Fq,
    /// The clsact qdisc, if we added it.
    clsact: Option<NetlinkGuard<Undo>>,
    _logs: Option<LogReader>,
}

impl Interfaces {
    pub fn new(attach: Attach, reaper: Reaper) -> Self {
        Self {
            by_key: SharedByKey::default(),
            attach,
            reaper,
        }
    }

    pub fn install(
        &mut self,
        name: &IfName,
        netns: Option<&Netns>,
        plan: &PacketPlan,
        trigger: Trigger,
        lease: &Lease,
    ) -> Result<InterfaceFault, Error> {
        let label = match netns {
            Some(ns) => format!("{} in netns {}", name.as_str(), ns.as_str()),
            None => name.as_str().to_string(),
        };
        if plan.delays() && plan.filter.direction.ingress() {
            return Err(Error::UnsupportedTarget(format!(
                "{} cannot act on ingress: departure times (EDT) only hold on the way out, through sch_fq. Delay the peer's egress instead (e.g. the other end of the veth pair), with \"direction\": \"egress\"",
                plan.kind
            ))
            .at("fault.direction"));
        }
        let Device { ns, key, mtu } = resolve_device(name, netns)?;
        plan.check_mtu(mtu)?;
        let ifindex = key.ifindex;
        let iface = self.by_key.get_or_try_make(key, || {
            Interface::load(ns, label, name.as_str(), ifindex, lease).map(Mutex::new)
        })?;
        // On error, `iface` is dropped here; if no fault holds it, its
        // programs and netlink state go with it.
        let (indices, slot) = lock(&iface).install(plan, trigger, self.attach, &self.reaper)?;
        Ok(InterfaceFault {
            iface,
            indices,
            slot,
        })
    }
}

fn lock(i: &Mutex<Interface>) -> std::sync::MutexGuard<'_, Interface> {
    i.lock().unwrap_or_else(PoisonError::into_inner)
}

impl InterfaceFault {
    pub fn slot(&self) -> &Slot {
        &self.slot
    }

    pub fn histogram(&self) -> Option<DelayHistogram> {
        lock(&self.iface).maps.histogram(self.slot.index())
    }

    /// Where the fault landed, for `get` and `list`.
    pub fn describe(&self) -> Value {
        let i = lock(&self.iface);
        json!({
            "interface": i.name,
            "ifindex": i.ifindex,
            "label": i.label,
            "xdp": i.xdp.describe(),
            "tc": i.tc.iter().map(|t| t.as_ref().map(TcLink::kind)).collect::<Vec<_>>(),
            "fq": i.fq.describe(),
        })
    }
}

impl Drop for InterfaceFault {
    fn drop(&mut self) {
        let mut i = lock(&self.iface);
        let Interface { maps, rules, .. } = &mut *i;
        maps.remove(0, rules, &self.indices, self.slot.index());
    }
}

impl Interface {
    fn load(
        ns: NsHandle,
        label: String,
        name: &str,
        ifindex: u32,
        lease: &Lease,
    ) -> Result<Self, Error> {
        let internal = |e: anyhow::Error| Error::Internal(format!("{e:#}"));
        let kernel::Instance {
            mut ebpf,
            slots,
            lease,
        } = kernel::load_instance(SIZES, MAX_PACKET_RULES, lease).map_err(internal)?;
        let maps = PacketMaps::take_interface(&mut ebpf).map_err(internal)?;
        let logs = logs::forward(&mut ebpf, &label);
        tracing::debug!(interface = %label, ifindex, "loaded packet programs");
        Ok(Self {
            ebpf,
            slots: Arc::new(slots),
            maps,
            rules: TargetRules::default(),
            ns,
            label,
            name: name.to_string(),
            ifindex,
            _lease: lease,
            tc: [None, None],
            xdp: XdpState::NotTried,
            fq: Fq::Unknown,
            clsact: None,
            _logs: logs,
        })
    }

    fn install(
        &mut self,
        plan: &PacketPlan,
        trigger: Trigger,
        attach: Attach,
        reaper: &Reaper,
    ) -> Result<(Vec<u32>, Slot), Error> {
        if plan.needs_fq {
            self.ensure_fq(plan, attach.fq_available, reaper)?;
        }
        let dir = plan.filter.direction;
        let mut ingress = 0u8;
        if dir.ingress() {
            // Drops at XDP, before the stack allocates anything; the rest
            // needs an skb.
            ingress = if plan.rule.action == ACTION_DROP && self.ensure_xdp() {
                1 << HOOK_XDP
            } else {
                self.ensure_tc(TcAttachType::Ingress, attach, reaper)?;
                1 << HOOK_TC_INGRESS
            };
        }
        let egress = if dir.egress() {
            self.ensure_tc(TcAttachType::Egress, attach, reaper)?;
            1 << HOOK_TC_EGRESS
        } else {
            0
        };
        let slot = self.slots.alloc()?;
        let entries = plan.entries(ingress, egress, slot.index(), trigger);
        let indices = self.maps.add(0, &mut self.rules, entries, slot.nr_cpus())?;
        Ok((indices, slot))
    }
}

impl Drop for Interface {
    fn drop(&mut self) {
        // Programs first (nothing acts on packets any more), then the
        // qdiscs: fq, then clsact once no filter is left on it. Each guard
        // undoes itself inside the interface's namespace.
        self.tc = [None, None];
        self.xdp = XdpState::NotTried;
        self.fq = Fq::Unknown;
        self.clsact = None;
        tracing::debug!(interface = %self.label, "detached packet programs");
    }
}
