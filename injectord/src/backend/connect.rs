//! connect() errors through cgroup sock_addr programs (connect4/connect6)
//! and `bpf_set_retval`.
//!
//! The programs are attached (as bpf_links, owned by this process) to each
//! targeted cgroup, once however many faults aim at it, and detached when the
//! last of them goes. Tasks outside every target never run them.

use std::{collections::HashMap as StdHashMap, fs::File, net::IpAddr, os::fd::AsFd as _};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{HashMap, MapData},
    programs::{CgroupAttachMode, CgroupSockAddr, cgroup_sock_addr::CgroupSockAddrLinkId},
};
use injector_common::{ConnectKey, ConnectRule, FAMILY_INET, FAMILY_INET6, Prefix, Trigger};

use crate::{
    error::{ErrorCode, RpcError},
    spec::Cidr,
    target::Cgroup,
};

/// Programs and their kernel attach types (for the cgroup storage key).
const PROGRAMS: [(&str, u32); 2] = [
    // BPF_CGROUP_INET4_CONNECT, BPF_CGROUP_INET6_CONNECT
    ("connect4", 10),
    ("connect6", 11),
];

/// Attach flags. bpf_link cgroup attachments always coexist with other
/// programs (multi semantics), and the kernel rejects any flag on them
/// (`BPF_F_ALLOW_MULTI` gives EINVAL): "Single" means no flags.
const LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

struct Attachment {
    links: Vec<CgroupSockAddrLinkId>,
    users: usize,
}

pub struct ConnectBackend {
    rules: HashMap<MapData, ConnectKey, ConnectRule>,
    attachments: StdHashMap<u64, Attachment>,
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
            attachments: StdHashMap::new(),
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
        self.acquire(ebpf, storage, cgroup, cgroup_dir)?;
        let rule = ConnectRule {
            slot,
            errno: fault.errno,
            dst: fault.address.map_or(Prefix::ANY, prefix_of),
            ports: fault.ports.map_or([0, u16::MAX], |(a, b)| [a, b]),
            trigger,
        };
        if let Err(e) = self.rules.insert(&key, &rule, 0) {
            self.release(ebpf, cgroup.id);
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
        self.release(ebpf, key.cgroup_id);
    }

    fn acquire(
        &mut self,
        ebpf: &mut Ebpf,
        storage: &MapData,
        cgroup: &Cgroup,
        cgroup_dir: &std::path::Path,
    ) -> Result<(), RpcError> {
        if let Some(a) = self.attachments.get_mut(&cgroup.id) {
            a.users += 1;
            return Ok(());
        }
        let dir = File::open(cgroup_dir).map_err(|e| {
            RpcError::new(
                ErrorCode::TargetNotFound,
                format!("opening cgroup {}: {e}", cgroup_dir.display()),
            )
        })?;
        let mut links = Vec::new();
        for (name, attach_type) in PROGRAMS {
            let result = program(ebpf, name)
                .attach(dir.as_fd(), LINK_MODE)
                .map_err(|e| {
                    format!(
                        "attaching {name} to {}: {}",
                        cgroup.path,
                        crate::error::chain(&e)
                    )
                })
                .and_then(|link| {
                    links.push(link);
                    super::publish_attachment(storage, cgroup.id, attach_type)
                        .map_err(|e| format!("publishing the target of {name}: {e}"))
                });
            if let Err(msg) = result {
                for (link, (name, _)) in links.into_iter().zip(PROGRAMS) {
                    let _ = program(ebpf, name).detach(link);
                }
                return Err(super::attach_error(msg));
            }
        }
        self.attachments
            .insert(cgroup.id, Attachment { links, users: 1 });
        tracing::debug!(cgroup = %cgroup.path, "attached connect programs");
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
            for (link, (name, _)) in a.links.into_iter().zip(PROGRAMS) {
                if let Err(e) = program(ebpf, name).detach(link) {
                    tracing::error!(error = %e, name, "detaching");
                }
            }
        }
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut CgroupSockAddr {
    // Both programs were loaded (and type-checked) in `load`, which is the
    // only way to construct a ConnectBackend.
    ebpf.program_mut(name)
        .and_then(|p| <&mut CgroupSockAddr>::try_from(p).ok())
        .expect("connect programs are loaded")
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
