//! The connect rule table and the cgroup attachments of connect4/connect6:
//! shared by `connect_error` and by the packet family's cgroup partitions
//! (which also make connect() towards the far side fail at once).
//!
//! The programs are attached (as bpf_links, owned by this process) to each
//! targeted cgroup, once however many faults aim at it, and detached when
//! the last of them goes. Tasks outside every target never run them.

use std::{
    collections::HashMap as StdHashMap,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
};

use anyhow::Context as _;
use aya::{
    maps::{HashMap, MapData},
    programs::CgroupSockAddr,
};
use aya_obj::programs::CgroupSockAddrAttachType;
use injector_common::{
    FAMILY_INET, FAMILY_INET6, Prefix,
    connect::{CONNECT_RULES, CONNECT4, CONNECT6, ConnectKey, ConnectRule},
};

use crate::{
    error::Error,
    family::Request,
    kernel::{
        Kernel,
        cgroup_links::{Attachment, CgroupLinks},
    },
    spec::values::Cidr,
    target::Cgroup,
};

static PROGRAMS: [(&str, CgroupSockAddrAttachType); 2] = [
    (CONNECT4, CgroupSockAddrAttachType::Connect4),
    (CONNECT6, CgroupSockAddrAttachType::Connect6),
];

type Link = <CgroupSockAddr as crate::kernel::cgroup_links::CgroupProgram>::Link;

struct Table {
    rules: HashMap<MapData, ConnectKey, ConnectRule>,
    links: CgroupLinks<CgroupSockAddr>,
    /// The fault holding each key, for conflict messages.
    owners: StdHashMap<ConnectKey, String>,
}

/// The connect rule table, shared by the faults that use it.
#[derive(Clone)]
pub struct ConnectRules(Arc<Mutex<Table>>);

/// What a connect rule asks for.
pub struct RuleSpec {
    pub errno: u32,
    pub address: Option<Cidr>,
    /// A single port gets its own rule key; ranges and "any" share the
    /// cgroup's any-port key.
    pub ports: Option<(u16, u16)>,
}

impl RuleSpec {
    fn key_port(&self) -> u16 {
        match self.ports {
            Some((a, b)) if a == b => a,
            _ => 0,
        }
    }
}

/// A rule in the kernel; dropping it withdraws the rule (effective at once
/// for new connect() calls), then releases the cgroup's attachment.
pub struct InstalledRule {
    table: ConnectRules,
    key: ConnectKey,
    _attachment: Arc<Attachment<Link>>,
}

impl ConnectRules {
    /// Takes the rule map out of the main object (the programs are loaded).
    pub fn take(kernel: &mut Kernel) -> anyhow::Result<Self> {
        let rules = HashMap::try_from(kernel.ebpf.take_map(CONNECT_RULES).context(CONNECT_RULES)?)?;
        Ok(Self(Arc::new(Mutex::new(Table {
            rules,
            links: CgroupLinks::new(&PROGRAMS),
            owners: StdHashMap::new(),
        }))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Attaches to the cgroup if needed and publishes the rule for the
    /// fault `req` installs. At most one rule per (cgroup, port key): a
    /// second one is a conflict. On error nothing is left behind.
    pub fn install(
        &self,
        req: &mut Request<'_>,
        cgroup: &Cgroup,
        spec: RuleSpec,
        slot: u32,
    ) -> Result<InstalledRule, Error> {
        let dir = req.cgroup_dir(cgroup);
        let key = ConnectKey::new(cgroup.id, spec.key_port());
        let mut t = self.lock();
        if let Some(other) = t.owners.get(&key) {
            let port = match key.port {
                0 => "any port".to_string(),
                p => format!("port {p}"),
            };
            return Err(Error::Conflict(format!(
                "fault {other:?} already makes connect() fail in cgroup {} for {port}; remove it first or use another port",
                cgroup.path
            )));
        }
        let attachment = t.links.acquire(req.kernel, cgroup, &dir)?;
        let rule = ConnectRule {
            slot,
            errno: spec.errno,
            dst: spec.address.map_or(Prefix::ANY, prefix_of),
            ports: spec.ports.map_or([0, u16::MAX], |(a, b)| [a, b]),
            trigger: req.trigger,
        };
        t.rules
            .insert(&key, &rule, 0)
            .map_err(Error::map(CONNECT_RULES))?;
        t.owners.insert(key, req.name.to_string());
        Ok(InstalledRule {
            table: self.clone(),
            key,
            _attachment: attachment,
        })
    }
}

impl Drop for InstalledRule {
    fn drop(&mut self) {
        let mut t = self.table.lock();
        t.owners.remove(&self.key);
        if let Err(e) = t.rules.remove(&self.key) {
            tracing::error!(error = %e, key = ?self.key, "removing connect rule");
        }
    }
}

/// The kernel's form of a CIDR.
pub fn prefix_of(cidr: Cidr) -> Prefix {
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
