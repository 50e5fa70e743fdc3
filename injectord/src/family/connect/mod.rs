//! `connect_error`: connect() fails with a chosen errno in one cgroup,
//! optionally only towards an address prefix and a port.
//!
//! Kernel side: `injector-ebpf/src/connect/` (cgroup sock_addr programs
//! with `bpf_set_retval`); shared types: `injector_common::connect`.

mod rules;

use aya::{
    programs::{CgroupSockAddr, ProgramType},
    sys::is_program_supported,
};
use injector_common::connect::{CONNECT4, CONNECT6};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use self::rules::{ConnectRules, InstalledRule, RuleSpec, prefix_of};
use super::{
    Backend, Counters, Declaration, Installed, Load, Params, Request, SpecError, Target, fields_of,
    params_as, parse_as,
};
use crate::{
    capabilities::Capability,
    errno::Errno,
    error::{Error, chain},
    kernel::Slot,
    spec::values::{Cidr, Port},
};

pub const FAMILY: Declaration = Declaration {
    name: "connect",
    types: &[ConnectError::KIND],
    parse,
    fields: |_| fields_of::<ConnectError>(),
    load,
};

/// `connect()` fails with `errno`, optionally only towards `address` (a
/// CIDR or a single address) and `port`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConnectError {
    pub errno: Errno,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Cidr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
}

impl ConnectError {
    pub const KIND: &str = "connect_error";
}

fn parse(_kind: &str, value: Value) -> Result<Box<dyn Params>, SpecError> {
    parse_as::<ConnectError>(value)
}

struct Connect {
    /// The rule table, or why this kernel refused the programs.
    rules: Result<ConnectRules, String>,
}

fn load(load: &mut Load<'_>) -> Box<dyn Backend> {
    let rules = load_programs(load).map_err(|e| format!("{e:#}"));
    match &rules {
        Ok(r) => load.services.publish(r.clone()),
        Err(e) => tracing::warn!(error = %e, "connect faults unavailable"),
    }
    Box::new(Connect { rules })
}

fn load_programs(load: &mut Load<'_>) -> anyhow::Result<ConnectRules> {
    use anyhow::Context as _;
    for name in [CONNECT4, CONNECT6] {
        let prog: &mut CgroupSockAddr = load
            .kernel
            .ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the object"))?
            .try_into()?;
        prog.load().map_err(|e| {
            anyhow::anyhow!(
                "loading {name} (cgroup sock_addr with bpf_set_retval, Linux 5.18+): {}",
                chain(&e)
            )
        })?;
    }
    ConnectRules::take(load.kernel)
}

impl Backend for Connect {
    fn capabilities(&self) -> Vec<Capability> {
        vec![
            Capability::probe(
                "cgroup_sock_addr",
                match is_program_supported(ProgramType::CgroupSockAddr) {
                    Ok(true) => Ok("connect/bind/sendmsg hooks per cgroup".into()),
                    Ok(false) => {
                        Err("the kernel does not support cgroup sock_addr programs".into())
                    }
                    Err(e) => Err(format!("probing cgroup sock_addr programs failed: {e}")),
                },
            ),
            Capability::probe(
                "bpf_set_retval",
                self.rules
                    .as_ref()
                    .map(|_| "cgroup programs return a chosen errno".to_string())
                    .map_err(|e| format!("cgroup programs cannot set an errno: {e}")),
            ),
        ]
    }

    fn install(&mut self, req: &mut Request<'_>) -> Result<Box<dyn Installed>, Error> {
        let fault = params_as::<ConnectError>(req.params)?;
        let Target::Cgroup(cgroup) = req.target else {
            return Err(Error::UnsupportedTarget(format!(
                "{} needs a cgroup target (cgroup, pid or container): it acts on processes, not on a device",
                ConnectError::KIND
            ))
            .at("target"));
        };
        let rules = self.rules.as_ref().map_err(|why| {
            Error::UnsupportedKernel(format!(
                "connect() faults need cgroup sock_addr programs with bpf_set_retval, which this kernel refused: {why}"
            ))
        })?;
        let slot = req.kernel.slots.alloc()?;
        let spec = RuleSpec {
            errno: fault.errno.get(),
            address: fault.address,
            ports: fault.port.map(|p| (p.get(), p.get())),
        };
        let rule = rules.install(req, cgroup, spec, slot.index())?;
        Ok(Box::new(ConnectFault { _rule: rule, slot }))
    }
}

/// An installed `connect_error`: its rule, then its slot (freed after the
/// rule is gone).
struct ConnectFault {
    _rule: InstalledRule,
    slot: Slot,
}

impl Installed for ConnectFault {
    fn counters(&self) -> Counters {
        let s = self.slot.stats();
        Counters {
            evaluations: s.evaluations,
            activations: s.activations,
            ..Counters::default()
        }
    }
}

crate::params!(ConnectError => ConnectError::KIND);
