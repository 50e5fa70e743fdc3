//! Packet faults: drop, corrupt, duplicate, delay, rate-limit and
//! partition, on a network interface (XDP and TC, one private object per
//! interface) or on one cgroup's packets (cgroup_skb).
//!
//! Kernel side: `injector-ebpf/src/packet/`; shared types:
//! `injector_common::packet`.

mod cgroup;
mod cgroup_netns;
mod interface;
// `plan` and `rules` are public for the packet benchmark (an example that
// drives the maps without a daemon).
pub mod plan;
mod probe;
mod protocol;
pub mod rules;
pub mod spec;

use injector_common::packet::{ACTION_DROP, RULE_EVERY_FRAME};
use serde_json::Value;

pub use self::interface::PoolStatus;
use self::{
    cgroup::{CgroupPackets, CgroupRules},
    interface::{Attach, InterfaceFault, Interfaces, Pool},
    plan::PacketPlan,
    spec::{PacketFault, Partition},
};
use super::{
    Backend, Counters, Declaration, Installed, Load, Metric, Params, Request, Sample, SpecError,
    Target,
    connect::{ConnectRules, InstalledRule, RuleSpec},
    params_as,
};
use crate::{capabilities::Capability, errno::Errno, error::Error, kernel::Slot, target::Cgroup};

pub const FAMILY: Declaration = Declaration {
    name: "packet",
    types: spec::TYPES,
    parse,
    fields: PacketFault::fields,
    load,
};

fn parse(kind: &str, value: Value) -> Result<Box<dyn Params>, SpecError> {
    PacketFault::parse(kind, value).map(|f| Box::new(f) as Box<dyn Params>)
}

/// `injectord_packets_total{fault, type, outcome}`: packets evaluated, and
/// dropped, corrupted, duplicated or delayed, per packet fault.
static PACKETS: Metric = Metric {
    name: "injectord_packets",
    help: "Packets a packet fault evaluated (outcome=evaluated) and acted on",
};

struct Packets {
    /// cgroup_skb, or why this kernel refused it.
    cgroup: Result<CgroupPackets, String>,
    interfaces: Interfaces,
    /// The connect family's rules, for partitions on cgroups.
    connect: Option<ConnectRules>,
    capabilities: Vec<Capability>,
}

fn load(load: &mut Load<'_>) -> Box<dyn Backend> {
    let cgroup = CgroupPackets::load(load.kernel).map_err(|e| format!("{e:#}"));
    if let Err(e) = &cgroup {
        tracing::warn!(error = %e, "packet faults on cgroups unavailable");
    }
    let net = probe::probe_net(&mut load.kernel.ebpf);
    let mut capabilities = vec![Capability::probe(
        "cgroup_skb",
        cgroup
            .as_ref()
            .map(|_| "packet drops and partitions per cgroup".to_string())
            .map_err(|e| format!("cgroup_skb packet programs do not load: {e}")),
    )];
    capabilities.extend(net.capabilities);
    // tcx links need the TC hooks anchored to act at once; clsact filters
    // turn them on themselves (pool.rs).
    let tcx = capabilities.iter().any(|c| c.name == "tcx" && c.available);
    let pool = Pool::new(
        load.options.interface_pool,
        tcx && !load.options.force_clsact,
        load.kernel.lease.clone(),
    );
    load.services.publish(pool.status());
    Box::new(Packets {
        cgroup,
        interfaces: Interfaces::new(
            Attach {
                fq_available: net.fq_available,
                force_clsact: load.options.force_clsact,
            },
            load.reaper.clone(),
            pool,
        ),
        connect: load.services.get::<ConnectRules>(),
        capabilities,
    })
}

impl Backend for Packets {
    fn capabilities(&self) -> Vec<Capability> {
        self.capabilities.clone()
    }

    fn serving(&mut self) {
        self.interfaces.serving();
    }

    fn settle(&mut self) {
        self.interfaces.settle();
    }

    fn install(&mut self, req: &mut Request<'_>) -> Result<Box<dyn Installed>, Error> {
        let fault = params_as::<PacketFault>(req.params)?;
        let plan = PacketPlan::of(fault);
        let kind = fault.kind();
        match req.target {
            Target::Interface { name, netns } => {
                if let PacketFault::Partition(Partition { errno: Some(e), .. }) = fault {
                    return Err(Error::InvalidValue(format!(
                        "errno {e} applies to cgroup targets only, where a partition also makes connect() fail; on an interface no process would ever get it, so this fault could never deliver it. Drop errno, or aim the partition at the cgroup"
                    ))
                    .at("fault.errno"));
                }
                let f = self.interfaces.install(
                    name,
                    netns.as_ref(),
                    &plan,
                    req.trigger,
                    &req.kernel.lease,
                )?;
                Ok(Box::new(OnInterface { fault: f, kind }))
            }
            // cgroup_skb can only drop: a container's rewrite, copy or
            // delay goes on the device of its own network namespace.
            Target::Cgroup(cgroup) if plan.rule.action != ACTION_DROP => {
                let dir = req.cgroup_dir(cgroup);
                let dev = cgroup_netns::device_of(&dir, &cgroup.path, plan.kind)?;
                tracing::debug!(
                    cgroup = %cgroup.path,
                    netns = dev.netns.as_str(),
                    device = dev.name.as_str(),
                    "cgroup target acts on its namespace's device"
                );
                let f = self.interfaces.install(
                    &dev.name,
                    Some(&dev.netns),
                    &plan,
                    req.trigger,
                    &req.kernel.lease,
                )?;
                Ok(Box::new(OnInterface { fault: f, kind }))
            }
            Target::Cgroup(_) if plan.hook.is_some() => Err(Error::InvalidValue(format!(
                "hook chooses where an interface's ingress drops run; a {} on a cgroup runs in the cgroup's own packet programs (cgroup_skb). Drop hook, or aim the fault at the interface",
                plan.kind
            ))
            .at("fault.hook")),
            Target::Cgroup(_) if plan.rule.flags & RULE_EVERY_FRAME != 0 => Err(Error::InvalidValue(
                "\"protocol\": \"all\" drops every frame at an interface, ARP included; a cgroup's packet programs (cgroup_skb) see its IP packets only. Use \"any\", or aim the fault at the interface".into(),
            )
            .at("fault.protocol")),
            Target::Cgroup(cgroup) => self.install_on_cgroup(req, fault, &plan, cgroup),
        }
    }
}

impl Packets {
    fn install_on_cgroup(
        &self,
        req: &mut Request<'_>,
        fault: &PacketFault,
        plan: &PacketPlan,
        cgroup: &Cgroup,
    ) -> Result<Box<dyn Installed>, Error> {
        let backend = self.cgroup.as_ref().map_err(|why| {
            Error::UnsupportedKernel(format!(
                "{} on a cgroup needs cgroup_skb programs, which this kernel refused: {why}",
                plan.kind
            ))
        })?;
        let slot = req.kernel.slots.alloc()?;
        let rules = backend.install(req, cgroup, plan, &slot)?;
        // A partition also makes connect() towards the far side fail at
        // once. If that fails, `rules` is dropped: nothing stays.
        let connect = match fault {
            PacketFault::Partition(p) => {
                let table = self.connect.as_ref().ok_or_else(|| {
                    Error::UnsupportedKernel(
                        "partition on a cgroup also makes connect() fail, which needs cgroup sock_addr programs with bpf_set_retval, which this kernel refused".into(),
                    )
                })?;
                Some(
                    table.install(
                        req,
                        cgroup,
                        RuleSpec {
                            errno: p
                                .errno
                                .unwrap_or_else(|| {
                                    Errno::from_name("ENETUNREACH").expect("known errno")
                                })
                                .get(),
                            address: plan.filter.dst,
                            ports: plan.filter.dst_port.map(|r| (r.first, r.last)),
                        },
                        slot.index(),
                    )?,
                )
            }
            _ => None,
        };
        Ok(Box::new(OnCgroup {
            rules,
            _connect: connect,
            slot,
            kind: plan.kind,
        }))
    }
}

/// The samples of `injectord_packets_total` for one fault.
fn packet_counters(
    kind: &str,
    slot: &Slot,
    delay: Option<injector_common::packet::DelayHistogram>,
) -> Counters {
    let s = slot.stats();
    let outcome = match kind {
        "packet_corrupt" => "corrupted",
        "packet_duplicate" => "duplicated",
        "packet_delay" | "bandwidth_limit" => "delayed",
        _ => "dropped",
    };
    let sample = |label, value| Sample {
        metric: &PACKETS,
        label: ("outcome", label),
        value,
    };
    let mut samples = vec![
        sample("evaluated", s.evaluations),
        sample(outcome, s.activations),
    ];
    if kind == "bandwidth_limit" {
        // Paced packets that would have waited past max_delay.
        samples.push(sample("dropped", s.overflows));
    }
    Counters {
        evaluations: s.evaluations,
        activations: s.activations,
        samples,
        injected_delay: delay,
    }
}

/// A packet fault on an interface (or a container's device).
struct OnInterface {
    fault: InterfaceFault,
    kind: &'static str,
}

impl Installed for OnInterface {
    fn counters(&self) -> Counters {
        packet_counters(self.kind, self.fault.slot(), self.fault.histogram())
    }

    fn describe(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("interface".into(), self.fault.describe());
        m
    }
}

/// A packet fault on a cgroup: its rules, a partition's connect rule, then
/// its slot, dropped in that order.
struct OnCgroup {
    rules: CgroupRules,
    _connect: Option<InstalledRule>,
    slot: Slot,
    kind: &'static str,
}

impl Installed for OnCgroup {
    fn counters(&self) -> Counters {
        packet_counters(self.kind, &self.slot, self.rules.histogram())
    }
}
