//! Packet faults on a network interface: XDP at ingress for drops, TC at
//! ingress and egress for everything that rewrites, copies or re-times
//! packets.
//!
//! Each interface gets a private copy of the eBPF object: XDP cannot tell
//! which network namespace an ifindex belongs to, and ifindexes repeat
//! across namespaces, so maps shared between interfaces would mix up two
//! containers' `eth0`. Programs are attached lazily, per hook a rule needs,
//! and everything is put back when the interface's last fault goes:
//! - XDP and tcx attachments are bpf_links owned by this process;
//! - clsact filters (kernels without tcx) get their own auto-chosen
//!   priority in front of others', and the clsact qdisc is removed only if
//!   we added it and no filter of anyone else is left on it;
//! - sch_fq is installed only on request and only over a default root
//!   qdisc, and removed again (the kernel then restores the default).

use std::{
    collections::{HashMap, hash_map::Entry},
    fs::File,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttach, TcAttachType, Xdp, XdpMode,
        links::Link as _,
        tc::{self, NlOptions, SchedClassifierLink},
        xdp::XdpLinkId,
    },
};
use injector_common::{
    ACTION_DROP, DelayHistogram, FaultStats, HOOK_TC_EGRESS, HOOK_TC_INGRESS, HOOK_XDP, Trigger,
};

use super::packet::{PacketMaps, PacketPlan, TargetRules};
use crate::{
    datapath::{Datapath, Slots},
    error::{ErrorCode, RpcError, chain},
    reaper::{self, Reaper, Undo},
    spec::{IfName, Netns},
};

/// An interface, named by its network namespace (device and inode of the
/// namespace file) and its index there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InterfaceKey {
    netns_dev: u64,
    netns_ino: u64,
    ifindex: u32,
}

/// A packet fault installed on an interface.
#[derive(Debug, Clone)]
pub struct InterfaceHandle {
    pub key: InterfaceKey,
    indices: Vec<u32>,
    slot: u32,
}

/// How the interface backend may attach.
#[derive(Clone, Copy, Debug, Default)]
pub struct InterfaceOptions {
    /// Whether this kernel has sch_fq at all (from the capabilities probe).
    pub fq_available: bool,
    /// Use clsact filters even where tcx links exist (what kernels before
    /// 6.6 get; lets the host test that path too).
    pub force_clsact: bool,
}

pub struct Interfaces {
    by_key: HashMap<InterfaceKey, Interface>,
    options: InterfaceOptions,
    /// Undoes netlink state (clsact filters, fq) if the daemon is killed.
    reaper: Option<Reaper>,
}

enum XdpState {
    NotTried,
    Attached(XdpLinkId),
    /// Another XDP program owns the device (or the kernel refused): ingress
    /// drops go through TC instead.
    Unavailable(String),
}

struct TcLink {
    link: SchedClassifierLink,
    /// A clsact filter (not a tcx link): detach it in its namespace.
    netlink: bool,
    /// The reaper's record for a clsact filter.
    undo: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fq {
    Unknown,
    /// fq was there before us.
    Present,
    /// We put fq at the root; removing it restores the default qdisc.
    Installed,
}

struct Interface {
    ebpf: Ebpf,
    slots: Slots,
    maps: PacketMaps,
    rules: TargetRules,
    /// The namespace, or `None` for the daemon's own, and its path.
    netns: Option<File>,
    netns_path: Option<String>,
    label: String,
    name: String,
    ifindex: u32,
    xdp: XdpState,
    /// Ingress, egress.
    tc: [Option<TcLink>; 2],
    /// The reaper's record for a clsact qdisc we added.
    clsact_created: Option<u64>,
    fq: Fq,
    /// The reaper's record for an fq we installed.
    fq_undo: Option<u64>,
}

impl InterfaceHandle {
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

impl Interfaces {
    pub fn new(options: InterfaceOptions, reaper: Option<Reaper>) -> Self {
        Self {
            by_key: HashMap::new(),
            options,
            reaper,
        }
    }

    pub fn install(
        &mut self,
        name: &IfName,
        netns: Option<&Netns>,
        plan: &PacketPlan,
        trigger: Trigger,
    ) -> Result<InterfaceHandle, RpcError> {
        let label = match netns {
            Some(ns) => format!("{} in netns {}", name.as_str(), ns.as_str()),
            None => name.as_str().to_string(),
        };
        if plan.delays() && plan.filter.direction.ingress() {
            return Err(RpcError::new(
                ErrorCode::UnsupportedTarget,
                format!(
                    "{} cannot act on ingress: departure times (EDT) only hold on the way out, through sch_fq. Delay the peer's egress instead (e.g. the other end of the veth pair), with \"direction\": \"egress\"",
                    plan.kind
                ),
            ));
        }
        let (ns_file, key) = resolve(name, netns)?;
        let options = self.options;
        let iface = match self.by_key.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(Interface::load(
                ns_file,
                netns.map(|ns| ns.path().display().to_string()),
                label,
                name.as_str(),
                key.ifindex,
            )?),
        };
        let result = iface.install(plan, trigger, options, self.reaper.as_mut());
        match result {
            Ok((indices, slot)) => Ok(InterfaceHandle { key, indices, slot }),
            Err(e) => {
                if iface.rules.is_empty()
                    && let Some(iface) = self.by_key.remove(&key)
                {
                    iface.teardown(self.reaper.as_mut());
                }
                Err(e)
            }
        }
    }

    pub fn uninstall(&mut self, handle: &InterfaceHandle) {
        let Some(iface) = self.by_key.get_mut(&handle.key) else {
            return;
        };
        iface
            .maps
            .remove(0, &mut iface.rules, &handle.indices, handle.slot);
        iface.slots.free(handle.slot);
        if iface.rules.is_empty()
            && let Some(iface) = self.by_key.remove(&handle.key)
        {
            iface.teardown(self.reaper.as_mut());
        }
    }

    pub fn stats(&self, handle: &InterfaceHandle) -> FaultStats {
        self.by_key
            .get(&handle.key)
            .map(|i| i.slots.stats(handle.slot))
            .unwrap_or_default()
    }

    pub fn histogram(&self, handle: &InterfaceHandle) -> Option<DelayHistogram> {
        self.by_key
            .get(&handle.key)
            .and_then(|i| i.maps.histogram(handle.slot))
    }

    /// Where a fault landed, for `get` and `list`.
    pub fn describe(&self, handle: &InterfaceHandle) -> serde_json::Value {
        let Some(i) = self.by_key.get(&handle.key) else {
            return serde_json::Value::Null;
        };
        serde_json::json!({
            "interface": i.name,
            "ifindex": i.ifindex,
            "label": i.label,
            "xdp": match &i.xdp {
                XdpState::Attached(_) => "attached".to_string(),
                XdpState::NotTried => "not needed".to_string(),
                XdpState::Unavailable(why) => format!("unavailable ({why}); ingress drops use TC"),
            },
            "tc": i.tc.iter().map(|t| t.as_ref().map(|t| if t.netlink { "clsact" } else { "tcx" })).collect::<Vec<_>>(),
            "fq": match i.fq {
                Fq::Unknown => "not needed",
                Fq::Present => "present",
                Fq::Installed => "installed by injectord",
            },
        })
    }
}

/// Opens the namespace and finds the interface's index there.
fn resolve(name: &IfName, netns: Option<&Netns>) -> Result<(Option<File>, InterfaceKey), RpcError> {
    let (file, path) = match netns {
        Some(ns) => {
            let path = ns.path();
            let file = File::open(&path).map_err(|e| {
                RpcError::new(
                    ErrorCode::TargetNotFound,
                    format!(
                        "network namespace {} not found ({}: {e})",
                        ns.as_str(),
                        path.display()
                    ),
                )
            })?;
            (Some(file), path)
        }
        None => (None, "/proc/self/ns/net".into()),
    };
    let meta = match &file {
        Some(f) => f.metadata(),
        None => std::fs::metadata(&path),
    }
    .map_err(|e| {
        RpcError::new(
            ErrorCode::TargetNotFound,
            format!("{}: {e}", path.display()),
        )
    })?;
    let where_ = netns.map_or_else(
        || "the daemon's network namespace".to_string(),
        |ns| format!("network namespace {}", ns.as_str()),
    );
    let lookup = in_netns(file.as_ref(), || {
        nix::net::if_::if_nametoindex(name.as_str()).map_err(|_| {
            let names: Vec<String> = nix::net::if_::if_nameindex()
                .map(|l| {
                    l.iter()
                        .map(|i| i.name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.join(", ")
        })
    });
    let ifindex = match lookup {
        Ok(Ok(i)) => i,
        Ok(Err(names)) => {
            return Err(RpcError::new(
                ErrorCode::TargetNotFound,
                format!(
                    "no interface {:?} in {where_} (it has: {names})",
                    name.as_str()
                ),
            ));
        }
        Err(e) => {
            return Err(RpcError::new(
                ErrorCode::TargetNotFound,
                format!("entering {where_}: {e}"),
            ));
        }
    };
    let key = InterfaceKey {
        netns_dev: meta.dev(),
        netns_ino: meta.ino(),
        ifindex,
    };
    Ok((file, key))
}

/// Runs `f` with the calling thread's network namespace set to `netns`
/// (a fresh thread, so the daemon's own threads never change namespace).
/// Netlink sockets, interface lookups, link creation by ifindex and child
/// processes all act in the namespace of the thread that makes them.
pub(crate) fn in_netns<R: Send>(
    netns: Option<&File>,
    f: impl FnOnce() -> R + Send,
) -> std::io::Result<R> {
    let Some(ns) = netns else {
        return Ok(f());
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("netns worker thread panicked")))
    })
}

impl Interface {
    fn load(
        netns: Option<File>,
        netns_path: Option<String>,
        label: String,
        name: &str,
        ifindex: u32,
    ) -> Result<Self, RpcError> {
        let (mut ebpf, slots) = Datapath::load_instance()
            .map_err(|e| RpcError::new(ErrorCode::Internal, format!("{e:#}")))?;
        let maps = PacketMaps::take(&mut ebpf)
            .map_err(|e| RpcError::new(ErrorCode::Internal, format!("{e:#}")))?;
        tracing::debug!(interface = %label, ifindex, "loaded packet programs");
        Ok(Self {
            ebpf,
            slots,
            maps,
            rules: TargetRules::default(),
            netns,
            netns_path,
            label,
            name: name.to_string(),
            ifindex,
            xdp: XdpState::NotTried,
            tc: [None, None],
            clsact_created: None,
            fq: Fq::Unknown,
            fq_undo: None,
        })
    }

    fn install(
        &mut self,
        plan: &PacketPlan,
        trigger: Trigger,
        options: InterfaceOptions,
        mut reaper: Option<&mut Reaper>,
    ) -> Result<(Vec<u32>, u32), RpcError> {
        if plan.needs_fq {
            self.ensure_fq(plan, options.fq_available, reaper.as_deref_mut())?;
        }
        let dir = plan.filter.direction;
        let mut ingress = 0u8;
        if dir.ingress() {
            // Drops at XDP, before the stack allocates anything; the rest
            // needs an skb.
            ingress = if plan.rule.action == ACTION_DROP && self.ensure_xdp() {
                1 << HOOK_XDP
            } else {
                self.ensure_tc(TcAttachType::Ingress, options, reaper.as_deref_mut())?;
                1 << HOOK_TC_INGRESS
            };
        }
        let egress = if dir.egress() {
            self.ensure_tc(TcAttachType::Egress, options, reaper)?;
            1 << HOOK_TC_EGRESS
        } else {
            0
        };
        let slot = self.slots.alloc()?;
        let entries = plan.entries(ingress, egress, slot, trigger);
        let nr_cpus = self.slots.nr_cpus();
        match self.maps.add(0, &mut self.rules, entries, nr_cpus) {
            Ok(indices) => Ok((indices, slot)),
            Err(e) => {
                self.slots.free(slot);
                Err(e)
            }
        }
    }

    /// Attaches the XDP program if not yet tried; false if XDP cannot be
    /// used on this device.
    fn ensure_xdp(&mut self) -> bool {
        if let XdpState::NotTried = self.xdp {
            self.xdp = match self.attach_xdp() {
                Ok(id) => XdpState::Attached(id),
                Err(why) => {
                    tracing::info!(interface = %self.label, %why, "XDP unavailable; ingress drops use TC");
                    XdpState::Unavailable(why)
                }
            };
        }
        matches!(self.xdp, XdpState::Attached(_))
    }

    fn attach_xdp(&mut self) -> Result<XdpLinkId, String> {
        let ifindex = self.ifindex;
        let netns = self.netns.as_ref();
        let prog: &mut Xdp = self
            .ebpf
            .program_mut("packet_xdp")
            .and_then(|p| p.try_into().ok())
            .ok_or("packet_xdp missing from the object")?;
        prog.load()
            .map_err(|e| format!("loading packet_xdp: {}", chain(&e)))?;
        in_netns(netns, || {
            // Native mode where the driver has it, generic otherwise. A link
            // never replaces another program: the kernel answers EBUSY.
            prog.attach(ifindex, XdpMode::Driver).or_else(|native| {
                prog.attach(ifindex, XdpMode::Skb).map_err(|generic| {
                    format!("native: {}; generic: {}", chain(&native), chain(&generic))
                })
            })
        })
        .map_err(|e| e.to_string())?
    }

    fn ensure_tc(
        &mut self,
        attach_type: TcAttachType,
        options: InterfaceOptions,
        mut reaper: Option<&mut Reaper>,
    ) -> Result<(), RpcError> {
        let i = usize::from(attach_type == TcAttachType::Egress);
        if self.tc[i].is_some() {
            return Ok(());
        }
        let name = if i == 0 {
            "packet_tc_ingress"
        } else {
            "packet_tc_egress"
        };
        let ifindex = self.ifindex;
        let dev = self.name.clone();
        let netns = self.netns.as_ref();
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| RpcError::new(ErrorCode::Internal, format!("{name} missing")))?;
        if prog.fd().is_err() {
            prog.load().map_err(|e| {
                RpcError::new(
                    ErrorCode::UnsupportedKernel,
                    format!("loading {name} (TC classifier): {}", chain(&e)),
                )
            })?;
        }
        // Registered before the qdisc exists, so a crash in between is
        // covered; withdrawn if the qdisc was there already.
        let clsact_undo = reaper.as_deref_mut().map(|r| {
            r.add(
                self.netns_path.as_deref(),
                Undo::Clsact { dev: dev.clone() },
            )
        });
        let attached = in_netns(netns, || {
            // tcx (Linux 6.6+): a link, first in the chain; our program
            // answers "next" for packets it leaves alone.
            let tcx = TcAttach::Tcx {
                attach_type,
                order: LinkOrder::first(),
            };
            let tcx = if options.force_clsact {
                Err("tcx not used (--tc-attach clsact)".to_string())
            } else {
                prog.attach(ifindex, tcx).map_err(|e| chain(&e))
            };
            match tcx {
                Ok(id) => Ok((id, false, false)),
                Err(tcx_err) => {
                    // clsact + cls_bpf: a filter at a priority the kernel
                    // picks in front of the existing ones.
                    let created = match tc::qdisc_add_clsact(ifindex) {
                        Ok(()) => true,
                        Err(e) if chain(&e).contains("exists") => false,
                        Err(e) => {
                            return Err(format!("tcx: {}; clsact: {}", tcx_err, chain(&e)));
                        }
                    };
                    let nl = TcAttach::Netlink {
                        parent: attach_type.into(),
                        options: NlOptions::default(),
                    };
                    match prog.attach(ifindex, nl) {
                        Ok(id) => Ok((id, true, created)),
                        Err(e) => {
                            if created {
                                let _ = reaper::tc(&["qdisc", "del", "dev", &dev, "clsact"]);
                            }
                            Err(format!("tcx: {}; clsact filter: {}", tcx_err, chain(&e)))
                        }
                    }
                }
            }
        });
        let attached = attached
            .map_err(|e| format!("entering the namespace: {e}"))
            .and_then(|r| r)
            .and_then(|(id, netlink, created)| {
                prog.take_link(id)
                    .map(|link| (link, netlink, created))
                    .map_err(|e| chain(&e))
            });
        let (link, netlink, created) = match attached {
            Ok(a) => a,
            Err(msg) => {
                if let (Some(r), Some(token)) = (reaper, clsact_undo) {
                    r.done(token);
                }
                return Err(RpcError::new(
                    ErrorCode::UnsupportedKernel,
                    format!("attaching {name} to {}: {msg}", self.label),
                ));
            }
        };
        if created && self.clsact_created.is_none() {
            self.clsact_created = clsact_undo;
        } else if let (Some(r), Some(token)) = (reaper.as_deref_mut(), clsact_undo) {
            r.done(token);
        }
        let undo = match (netlink, reaper, link.priority()) {
            (true, Some(r), Ok(priority)) => Some(r.add(
                self.netns_path.as_deref(),
                Undo::Filter {
                    dev: dev.clone(),
                    ingress: i == 0,
                    priority,
                },
            )),
            _ => None,
        };
        self.tc[i] = Some(TcLink {
            link,
            netlink,
            undo,
        });
        tracing::debug!(interface = %self.label, name, netlink, "attached TC program");
        Ok(())
    }

    /// Makes sure sch_fq is the device's root qdisc (EDT needs it).
    fn ensure_fq(
        &mut self,
        plan: &PacketPlan,
        fq_available: bool,
        reaper: Option<&mut Reaper>,
    ) -> Result<(), RpcError> {
        if self.fq != Fq::Unknown {
            return Ok(());
        }
        if !fq_available {
            return Err(RpcError::new(
                ErrorCode::UnsupportedKernel,
                format!(
                    "{} needs the sch_fq qdisc (CONFIG_NET_SCH_FQ) to hold packets until their departure time, and this kernel has no sch_fq",
                    plan.kind
                ),
            ));
        }
        let name = self.name.clone();
        let root = in_netns(self.netns.as_ref(), || root_qdisc(&name))
            .map_err(|e| RpcError::new(ErrorCode::Internal, e.to_string()))?
            .map_err(|e| RpcError::new(ErrorCode::Internal, e))?;
        if root.kind == "fq" {
            self.fq = Fq::Present;
            return Ok(());
        }
        if !plan.install_fq {
            return Err(RpcError::new(
                ErrorCode::UnsupportedTarget,
                format!(
                    "{} needs sch_fq as the root qdisc of {}, which has {} instead; set \"install_fq\": true to let injectord put fq there for the fault's lifetime, or run `tc qdisc replace dev {} root fq`",
                    plan.kind, self.label, root.kind, self.name
                ),
            ));
        }
        if !root.is_default() {
            return Err(RpcError::new(
                ErrorCode::Conflict,
                format!(
                    "{} has a configured root qdisc ({} handle {}); injectord will not replace someone else's qdisc. Add fq yourself, or remove that qdisc first",
                    self.label, root.kind, root.handle
                ),
            ));
        }
        let mut reaper = reaper;
        let undo = reaper
            .as_deref_mut()
            .map(|r| r.add(self.netns_path.as_deref(), Undo::Fq { dev: name.clone() }));
        let installed = in_netns(self.netns.as_ref(), || {
            // Room for a rate limit's queue: fq's default of 100 packets per
            // flow would drop what the limiter already scheduled.
            reaper::tc(&[
                "qdisc",
                "replace",
                "dev",
                &name,
                "root",
                "fq",
                "limit",
                "100000",
                "flow_limit",
                "10000",
            ])
        })
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        if let Err(e) = installed {
            if let (Some(r), Some(token)) = (reaper, undo) {
                r.done(token);
            }
            return Err(RpcError::new(
                ErrorCode::Internal,
                format!("installing fq on {}: {e}", self.label),
            ));
        }
        self.fq_undo = undo;
        tracing::info!(interface = %self.label, previous = %root.kind, "installed sch_fq");
        self.fq = Fq::Installed;
        Ok(())
    }

    /// Detaches everything and puts back what was there before us.
    fn teardown(mut self, reaper: Option<&mut Reaper>) {
        let label = self.label.clone();
        let name = self.name.clone();
        let (tc, xdp) = (
            std::mem::take(&mut self.tc),
            std::mem::replace(&mut self.xdp, XdpState::NotTried),
        );
        let (fq, fq_undo, clsact) = (self.fq, self.fq_undo, self.clsact_created.take());
        let netns = self.netns.take();
        let ebpf = &mut self.ebpf;
        let result = in_netns(netns.as_ref(), || {
            let mut done = Vec::new();
            for link in tc.into_iter().flatten() {
                match link.link.detach() {
                    Ok(()) => done.extend(link.undo),
                    Err(e) => tracing::error!(error = %chain(&e), "detaching TC program"),
                }
            }
            if let XdpState::Attached(id) = xdp
                && let Some(prog) = ebpf
                    .program_mut("packet_xdp")
                    .and_then(|p| <&mut Xdp>::try_from(p).ok())
                && let Err(e) = prog.detach(id)
            {
                tracing::error!(error = %chain(&e), "detaching XDP program");
            }
            if fq == Fq::Installed {
                match (Undo::Fq { dev: name.clone() }).run() {
                    Ok(()) => done.extend(fq_undo),
                    Err(e) => tracing::error!(error = %e, "removing the fq qdisc we installed"),
                }
            }
            if let Some(token) = clsact {
                match (Undo::Clsact { dev: name.clone() }).run() {
                    Ok(()) => done.push(token),
                    Err(e) => tracing::error!(error = %e, "removing the clsact qdisc we added"),
                }
            }
            done
        });
        match (result, reaper) {
            (Ok(done), Some(r)) => {
                for token in done {
                    r.done(token);
                }
            }
            (Ok(_), None) => {}
            (Err(e), _) => {
                tracing::error!(error = %e, interface = %label, "entering the namespace to clean up");
            }
        }
        tracing::debug!(interface = %label, "detached packet programs");
    }
}

/// The root qdisc of a device, as `tc -j` reports it.
struct RootQdisc {
    kind: String,
    handle: String,
}

impl RootQdisc {
    /// Default qdiscs are created by the kernel with handle 0: (noqueue on
    /// virtual devices, pfifo_fast/fq_codel/mq per `net.core.default_qdisc`).
    fn is_default(&self) -> bool {
        self.handle == "0:"
    }
}

fn root_qdisc(dev: &str) -> Result<RootQdisc, String> {
    let out = reaper::tc(&["-j", "qdisc", "show", "dev", dev, "root"])?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("parsing `tc -j qdisc show`: {e}"))?;
    let q = v.get(0).ok_or("no root qdisc reported")?;
    Ok(RootQdisc {
        kind: q["kind"].as_str().unwrap_or("?").to_string(),
        handle: q["handle"].as_str().unwrap_or("?").to_string(),
    })
}
