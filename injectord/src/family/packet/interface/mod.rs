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
//!
//! Loading a copy and verifying its programs takes tens of milliseconds,
//! so a first fault on a device takes a copy from a warm pool (`pool.rs`)
//! and only attaches; after the last fault, detaching and undoing happen
//! on a thread of their own (`teardown.rs`), once the rules are gone.

mod fq;
mod pool;
mod tc;
mod teardown;
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

pub use self::pool::{Pool, PoolStatus};
use self::{fq::Fq, tc::TcLink, teardown::Teardown, xdp::XdpState};
use super::{
    plan::PacketPlan,
    rules::{PacketMaps, TargetRules},
    spec::Hook,
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
    pool: Pool,
    teardown: Teardown,
}

/// A packet fault on an interface: its rules, then its slot, then (if it
/// was the last) the interface's programs and netlink state.
pub struct InterfaceFault {
    iface: Arc<Mutex<Interface>>,
    indices: Vec<u32>,
    slot: Slot,
}

/// A private copy of the object, loaded but attached nowhere yet.
struct Blank {
    ebpf: Ebpf,
    slots: SlotPool,
    maps: PacketMaps,
    lease: Arc<LeaseMap>,
}

struct Interface {
    ebpf: Ebpf,
    slots: Arc<SlotPool>,
    maps: PacketMaps,
    rules: TargetRules,
    ns: NsHandle,
    key: DeviceKey,
    label: String,
    name: String,
    ifindex: u32,
    /// A veth: ingress drops go to TC unless the spec asks for XDP.
    veth: bool,
    _lease: Arc<LeaseMap>,
    // Handed to `teardown` when the interface goes (see Drop).
    tc: [Option<TcLink>; 2],
    xdp: XdpState,
    fq: Fq,
    /// The clsact qdisc, if we added it.
    clsact: Option<NetlinkGuard<Undo>>,
    teardown: Teardown,
    _logs: Option<LogReader>,
}

/// What an interface attached and installed, undone when dropped.
struct Attached {
    label: String,
    tc: [Option<TcLink>; 2],
    xdp: XdpState,
    fq: Fq,
    clsact: Option<NetlinkGuard<Undo>>,
}

impl Interfaces {
    pub fn new(attach: Attach, reaper: Reaper, pool: Pool) -> Self {
        Self {
            by_key: SharedByKey::default(),
            attach,
            reaper,
            pool,
            teardown: Teardown::default(),
        }
    }

    /// Waits until every interface whose last fault went is detached and
    /// its netlink state undone (the daemon's exit).
    pub fn settle(&self) {
        self.teardown.settle();
    }

    /// Starts filling the pool of ready copies (once the daemon serves:
    /// start-up does not wait for it).
    pub fn serving(&self) {
        self.pool.fill();
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
        let started = std::time::Instant::now();
        let Device { ns, key, mtu, veth } = resolve_device(name, netns)?;
        let resolve_us = started.elapsed().as_micros() as u64;
        plan.check_mtu(mtu)?;
        let (pool, teardown) = (&self.pool, &self.teardown);
        let mut took = false;
        let iface = self.by_key.get_or_try_make(key, || {
            // The device's last teardown must be over before we attach.
            // (Faults are installed and dropped under the installer's
            // lock, so none can go between this wait and the attach.)
            teardown.wait_for(&key);
            // A ready copy from the pool, or (pool empty or off) one
            // loaded now, its programs verified as they are needed.
            let blank = match pool.take() {
                Some(blank) => {
                    took = true;
                    blank
                }
                None => {
                    tracing::debug!(interface = %label, "no ready copy: loading one for this fault");
                    Blank::load(lease)?
                }
            };
            Ok::<_, Error>(Mutex::new(Interface::new(
                blank,
                Place {
                    ns,
                    key,
                    label,
                    name: name.as_str(),
                    veth,
                },
                teardown.clone(),
            )))
        })?;
        // On error, `iface` is dropped here; if no fault holds it, its
        // programs and netlink state go with it (on the teardown thread).
        let ready_us = started.elapsed().as_micros() as u64;
        let installed = lock(&iface).install(plan, trigger, self.attach, &self.reaper);
        if took {
            pool.refill();
        }
        let (indices, slot) = installed?;
        tracing::debug!(
            resolve_us,
            ready_us,
            total_us = started.elapsed().as_micros() as u64,
            "interface fault installed"
        );
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
            "veth": i.veth,
            "xdp": i.xdp.describe(),
            "tc": i.tc.iter().map(|t| t.as_ref().map(TcLink::kind)).collect::<Vec<_>>(),
            "fq": i.fq.describe(),
        })
    }
}

impl Drop for InterfaceFault {
    fn drop(&mut self) {
        let started = std::time::Instant::now();
        let mut i = lock(&self.iface);
        let locked_us = started.elapsed().as_micros() as u64;
        let Interface { maps, rules, .. } = &mut *i;
        maps.remove(0, rules, &self.indices, self.slot.index());
        tracing::debug!(
            locked_us,
            total_us = started.elapsed().as_micros() as u64,
            "interface rules withdrawn"
        );
    }
}

impl Blank {
    /// Loads a copy: its maps exist, its programs are not loaded yet.
    fn load(lease: &Lease) -> Result<Self, Error> {
        let internal = |e: anyhow::Error| Error::Internal(format!("{e:#}"));
        let kernel::Instance {
            mut ebpf,
            slots,
            lease,
        } = kernel::load_instance(SIZES, MAX_PACKET_RULES, lease).map_err(internal)?;
        let maps = PacketMaps::take_interface(&mut ebpf).map_err(internal)?;
        Ok(Self {
            ebpf,
            slots,
            maps,
            lease,
        })
    }

    /// Loads (verifies) every program an interface may attach, so that a
    /// first fault only attaches. A program the kernel refuses stays
    /// unloaded: a fault that needs it loads it again and reports why.
    fn verify_all(&mut self) {
        if let Err(e) = xdp::load(&mut self.ebpf) {
            tracing::debug!(error = %e, "XDP program not loaded ahead");
        }
        for direction in [TcAttachType::Ingress, TcAttachType::Egress] {
            if let Err(e) = tc::load(&mut self.ebpf, direction) {
                tracing::debug!(error = %e, "TC program not loaded ahead");
            }
        }
    }
}

/// Where an interface is.
struct Place<'a> {
    ns: NsHandle,
    key: DeviceKey,
    label: String,
    name: &'a str,
    veth: bool,
}

impl Interface {
    fn new(blank: Blank, place: Place<'_>, teardown: Teardown) -> Self {
        let Blank {
            mut ebpf,
            slots,
            maps,
            lease,
        } = blank;
        let Place {
            ns,
            key,
            label,
            name,
            veth,
        } = place;
        let logs = logs::forward(&mut ebpf, &label);
        tracing::debug!(interface = %label, ifindex = key.ifindex, "packet programs ready");
        Self {
            ebpf,
            slots: Arc::new(slots),
            maps,
            rules: TargetRules::default(),
            ns,
            key,
            label,
            name: name.to_string(),
            ifindex: key.ifindex,
            veth,
            _lease: lease,
            tc: [None, None],
            xdp: XdpState::NotTried,
            fq: Fq::Unknown,
            clsact: None,
            teardown,
            _logs: logs,
        }
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
        // Drops at XDP, before the stack allocates anything, but on a veth
        // at TC (docs/design.md, "XDP or TC at ingress"), unless the spec
        // chooses; the rest needs an skb.
        let drop_in = dir.ingress() && plan.rule.action == ACTION_DROP;
        if plan.hook == Some(Hook::Xdp)
            && let XdpState::Unavailable(why) = &self.xdp
        {
            return Err(Error::UnsupportedTarget(format!(
                "\"hook\": \"xdp\" on {}: XDP cannot be used on this device ({why}); leave hook out, or use \"tc\"",
                self.label
            ))
            .at("fault.hook"));
        }
        let xdp = drop_in
            && match plan.hook {
                Some(Hook::Xdp) => true,
                Some(Hook::Tc) => false,
                None => !self.veth && !matches!(self.xdp, XdpState::Unavailable(_)),
            };
        let ingress: u8 = match (dir.ingress(), xdp) {
            (false, _) => 0,
            (true, true) => 1 << HOOK_XDP,
            (true, false) => 1 << HOOK_TC_INGRESS,
        };
        let egress = if dir.egress() { 1 << HOOK_TC_EGRESS } else { 0 };
        let slot = self.slots.alloc()?;
        let nr_cpus = slot.nr_cpus();
        let entries = |ingress| plan.entries(ingress, egress, slot.index(), trigger);
        let mut indices = self
            .maps
            .add(0, &mut self.rules, entries(ingress), nr_cpus)?;
        // Programs are attached after the rules are published. Both kinds
        // of attach wait for an RCU grace period (10-20 ms here) before
        // they return, an XDP attach in the XDP dispatcher's update, a
        // tcx attach before it turns the TC hooks on (anchored on, see
        // pool.rs), but the program runs from the moment it is in place,
        // before that wait: so the fault acts from then on. Until then no
        // program reads the rules of its hook.
        let on_xdp = xdp && self.ensure_xdp();
        if xdp && !on_xdp && plan.hook == Some(Hook::Xdp) {
            self.maps.remove(0, &mut self.rules, &indices, slot.index());
            let why = match &self.xdp {
                XdpState::Unavailable(why) => why.clone(),
                _ => "the attach failed".to_string(),
            };
            return Err(Error::UnsupportedTarget(format!(
                "\"hook\": \"xdp\" on {}: XDP cannot be used on this device ({why}); leave hook out, or use \"tc\"",
                self.label
            ))
            .at("fault.hook"));
        }
        if xdp && !on_xdp {
            // XDP cannot be used on this device (found just now): the
            // ingress half goes through TC.
            self.maps.remove(0, &mut self.rules, &indices, slot.index());
            indices = self
                .maps
                .add(0, &mut self.rules, entries(1 << HOOK_TC_INGRESS), nr_cpus)?;
        }
        let tc = [
            (dir.ingress() && !on_xdp, TcAttachType::Ingress),
            (egress != 0, TcAttachType::Egress),
        ];
        for (needed, attach_type) in tc {
            if needed && let Err(e) = self.ensure_tc(attach_type, attach, reaper) {
                self.maps.remove(0, &mut self.rules, &indices, slot.index());
                return Err(e);
            }
        }
        Ok((indices, slot))
    }
}

impl Drop for Interface {
    fn drop(&mut self) {
        // The rules are gone (each fault withdrew its own): nothing acts on
        // packets any more, and the slow part goes off the request's path.
        let attached = Attached {
            label: self.label.clone(),
            tc: std::mem::take(&mut self.tc),
            xdp: std::mem::replace(&mut self.xdp, XdpState::NotTried),
            fq: std::mem::replace(&mut self.fq, Fq::Unknown),
            clsact: self.clsact.take(),
        };
        self.teardown.retire(self.key, Box::new(attached));
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // Programs first, then the qdiscs: fq, then clsact once no filter
        // is left on it. Each guard undoes itself inside the interface's
        // namespace.
        self.tc = [None, None];
        self.xdp = XdpState::NotTried;
        self.fq = Fq::Unknown;
        self.clsact = None;
        tracing::debug!(interface = %self.label, "detached packet programs");
    }
}
