//! connect() errors through cgroup sock_addr programs (connect4/connect6)
//! and `bpf_set_retval`.
//!
//! The programs are attached (as bpf_links, owned by this process) to each
//! targeted cgroup, once however many faults aim at it, and detached when the
//! last of them goes. Tasks outside every target never run them.

use std::net::IpAddr;

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{HashMap, MapData},
    programs::CgroupSockAddr,
};
use injector_common::{ConnectKey, ConnectRule, FAMILY_INET, FAMILY_INET6, Prefix, Trigger};

use super::cgroup_links::CgroupLinks;
use crate::{
    error::{ErrorCode, RpcError},
    spec::Cidr,
    target::Cgroup,
};

/// Programs and their kernel attach types (for the cgroup storage key).
static PROGRAMS: [(&str, u32); 2] = [
    // BPF_CGROUP_INET4_CONNECT, BPF_CGROUP_INET6_CONNECT
    ("connect4", 10),
    ("connect6", 11),
];

pub struct ConnectBackend {
    rules: HashMap<MapData, ConnectKey, ConnectRule>,
    links: CgroupLinks<CgroupSockAddr>,
}

/// What a connect fault asks for, ready for the kernel.
pub struct ConnectFault {
    pub errno: u32,
    pub address: Option<Cidr>,
    /// A single port gets its own rule key; ranges and "any" share the
    /// cgroup's any-port key.
    pub ports: Option<(u16, u16)>,
}

impl ConnectFault {
    fn key_port(&self) -> u16 {
        match self.ports {
            Some((a, b)) if a == b => a,
            _ => 0,
        }
    }
}

impl ConnectBackend {
    pub fn load(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        for (name, _) in PROGRAMS {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load().with_context(|| {
                format!("loading {name} (cgroup sock_addr with bpf_set_retval, Linux 5.18+)")
            })?;
        }
        let rules = HashMap::try_from(ebpf.take_map("CONNECT_RULES").context("CONNECT_RULES")?)?;
        Ok(Self {
            rules,
            links: CgroupLinks::new(&PROGRAMS),
        })
    }

    pub fn key(cgroup: &Cgroup, fault: &ConnectFault) -> ConnectKey {
        ConnectKey::new(cgroup.id, fault.key_port())
    }

    /// Attaches to the cgroup if needed and publishes the rule. On error
    /// nothing is left behind.
    #[expect(clippy::too_many_arguments, reason = "the pieces of one install")]
    pub fn install(
        &mut self,
        ebpf: &mut Ebpf,
        storage: &MapData,
        cgroup: &Cgroup,
        cgroup_dir: &std::path::Path,
        fault: &ConnectFault,
        slot: u32,
        trigger: Trigger,
    ) -> Result<(), RpcError> {
        let key = Self::key(cgroup, fault);
        self.links.acquire(ebpf, storage, cgroup, cgroup_dir)?;
        let rule = ConnectRule {
            slot,
            errno: fault.errno,
            dst: fault.address.map_or(Prefix::ANY, prefix_of),
            ports: fault.ports.map_or([0, u16::MAX], |(a, b)| [a, b]),
            trigger,
        };
        if let Err(e) = self.rules.insert(&key, &rule, 0) {
            self.links.release(ebpf, cgroup.id);
            return Err(RpcError::new(
                ErrorCode::Internal,
                format!("inserting the connect rule: {e}"),
            ));
        }
        Ok(())
    }

    /// Withdraws the rule (effective immediately for new connect() calls)
    /// and detaches from the cgroup when no other fault needs it.
    pub fn uninstall(&mut self, ebpf: &mut Ebpf, key: &ConnectKey) {
        if let Err(e) = self.rules.remove(key) {
            tracing::error!(error = %e, ?key, "removing connect rule");
        }
        self.links.release(ebpf, key.cgroup_id);
    }
}

fn prefix_of(cidr: Cidr) -> Prefix {
    let net = cidr.net();
    let mut addr = [0u32; 4];
    let family = match net.network() {
        IpAddr::V4(a) => {
            addr[0] = u32::from_ne_bytes(a.octets());
            FAMILY_INET
        }
        IpAddr::V6(a) => {
            let octets = a.octets();
            let (chunks, _) = octets.as_chunks::<4>();
            for (word, chunk) in addr.iter_mut().zip(chunks) {
                *word = u32::from_ne_bytes(*chunk);
            }
            FAMILY_INET6
        }
    };
    Prefix {
        family,
        prefix_len: net.prefix_len(),
        _pad: [0; 2],
        addr,
    }
}
