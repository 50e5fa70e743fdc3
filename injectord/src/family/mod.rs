//! Fault families: each is a vertical slice (its spec parameters, its
//! backend, its capability probes and its metric labels here; its types
//! and names in `injector-common`; its programs in `injector-ebpf`),
//! registered by one line in [`FAMILIES`]. Nothing outside a family's
//! folder names its fault types.
//!
//! A family declares the fault types it serves and how to parse them
//! ([`Declaration`]); once loaded, its [`Backend`] installs faults and
//! hands back an owned [`Installed`] value: dropping it undoes exactly what
//! the install did, so a fault that fails half-way rolls back by
//! construction, and `remove`, TTL expiry, `clear` and shutdown are all
//! just a drop.

pub mod block;
pub mod connect;
pub mod packet;
pub mod syscall;

use std::{any::Any, fmt};

use injector_common::{Trigger, packet::DelayHistogram};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::{
    capabilities::Capability,
    error::Error,
    kernel::{Kernel, reaper::Reaper},
    spec::target::{IfName, Netns},
    target::{Cgroup, Cgroups},
};

/// Every family, in load order (a family may use services that an earlier
/// one published in [`Services`]). Adding a family adds one line here.
pub static FAMILIES: &[Declaration] = &[
    connect::FAMILY,
    packet::FAMILY,
    syscall::FAMILY,
    block::FAMILY,
];

/// What a family tells the registry about itself.
pub struct Declaration {
    /// Stable family name (logs, docs).
    pub name: &'static str,
    /// The `fault.type` values it serves.
    pub types: &'static [&'static str],
    /// Parses a fault object of one of `types` (without its `type` field).
    pub parse: fn(&str, Value) -> Parsed,
    /// The fields of a fault object of one of `types` (for `injectctl`'s
    /// flags; see [`fields_of`]).
    pub fields: fn(&str) -> &'static [&'static str],
    /// Loads its programs and maps into the kernel context. A family whose
    /// programs this kernel refuses still loads: its backend refuses its
    /// faults with the reason, and its capabilities say so.
    pub load: fn(&mut Load<'_>) -> Box<dyn Backend>,
}

/// Why a family refused a fault object.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A field does not parse: serde's error, with the field's path.
    #[error(transparent)]
    Field(#[from] serde_path_to_error::Error<serde_json::Error>),
    /// Fields that each parse, but together describe a fault that could
    /// never fire (e.g. an IPv4 `src` with an IPv6 `dst`). `field` is
    /// relative to the fault object; the message says why.
    #[error("{message}")]
    Never {
        field: &'static str,
        message: String,
    },
}

/// The outcome of a family's parse.
pub type Parsed = Result<Box<dyn Params>, SpecError>;

/// The family serving a fault type, with its index in [`FAMILIES`].
pub fn by_type(kind: &str) -> Option<(usize, &'static Declaration)> {
    FAMILIES
        .iter()
        .enumerate()
        .find(|(_, d)| d.types.contains(&kind))
}

/// The fields of a spec type's `fault` object, read from its serde
/// derive, so command-line flags follow the types.
pub fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    serde_aux::serde_introspection::serde_introspect::<T>()
}

/// Every field of every fault type, with the types that take it.
pub fn fault_fields() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for decl in FAMILIES {
        for kind in decl.types {
            for field in (decl.fields)(kind) {
                match out.iter_mut().find(|(f, _)| f == field) {
                    Some((_, kinds)) => kinds.push(kind),
                    None => out.push((field, vec![kind])),
                }
            }
        }
    }
    out
}

/// Every fault type, for error messages.
pub fn fault_types() -> Vec<&'static str> {
    FAMILIES
        .iter()
        .flat_map(|d| d.types.iter().copied())
        .collect()
}

/// The parsed parameters of one fault (the `fault` object of a spec).
pub trait Params: Any + fmt::Debug + Send + Sync {
    /// The fault type, e.g. `"connect_error"`.
    fn kind(&self) -> &'static str;
    /// The `fault` object again, `type` included, for `get` and `list`.
    fn to_json(&self) -> Value;
}

/// `impl Params` for a serde type whose `fault` object reads back as
/// itself with its `type`: `params!(Type => "kind")`.
#[macro_export]
macro_rules! params {
    ($($t:ty => $kind:expr),* $(,)?) => {$(
        impl $crate::family::Params for $t {
            fn kind(&self) -> &'static str {
                $kind
            }

            fn to_json(&self) -> serde_json::Value {
                $crate::family::json_with_type($kind, self)
            }
        }
    )*};
}

/// Parses `value` as `T` with exact field paths; for [`Declaration::parse`].
pub fn parse_as<T: Params + DeserializeOwned>(value: Value) -> Result<Box<dyn Params>, SpecError> {
    Ok(Box::new(serde_path_to_error::deserialize::<_, T>(value)?))
}

/// `value` serialized, with its fault type, for [`Params::to_json`].
pub fn json_with_type(kind: &str, value: &impl Serialize) -> Value {
    let mut v = serde_json::to_value(value).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.insert("type".into(), Value::String(kind.into()));
    }
    v
}

/// The parameters as the family's own type. The registry only hands a
/// family faults it parsed itself, so a mismatch is a bug.
pub fn params_as<T: Params>(params: &dyn Params) -> Result<&T, Error> {
    (params as &dyn Any)
        .downcast_ref::<T>()
        .ok_or_else(|| Error::Internal(format!("{} reached the wrong family", params.kind())))
}

/// What a family loads with: the main object, the reaper, options, and
/// services other families published.
pub struct Load<'a> {
    pub kernel: &'a mut Kernel,
    pub reaper: &'a Reaper,
    pub options: &'a Options,
    pub services: &'a mut Services,
}

/// Daemon options families read.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Use clsact filters even where tcx links exist (what kernels before
    /// 6.6 get; lets the host test that path too).
    pub force_clsact: bool,
    /// Measure the syscall latency of targeted cgroups (`--syscall-latency`).
    pub syscall_latency: bool,
    /// Leave the block I/O latency histograms off (`--no-block-latency`).
    pub no_block_latency: bool,
    /// How many per-interface copies of the object to keep loaded ahead
    /// (`--interface-pool`; 0: load each on demand).
    pub interface_pool: usize,
}

/// Typed values one family publishes for later ones (e.g. the connect
/// family's rule table, which a cgroup partition also writes to).
#[derive(Default)]
pub struct Services(Vec<Box<dyn Any + Send>>);

impl Services {
    pub fn publish<T: Any + Send>(&mut self, service: T) {
        self.0.push(Box::new(service));
    }

    pub fn get<T: Any + Send + Clone>(&self) -> Option<T> {
        self.0.iter().find_map(|s| s.downcast_ref::<T>()).cloned()
    }
}

/// A family's loaded backend.
pub trait Backend: Send {
    /// The kernel features this family depends on, as probed at load.
    fn capabilities(&self) -> Vec<Capability>;
    /// Installs a fault of this family.
    fn install(&mut self, request: &mut Request<'_>) -> Result<Box<dyn Installed>, Error>;
    /// Called once the daemon reports ready: background work start-up
    /// must not wait for (the packet family's pool of interface copies).
    fn serving(&mut self) {}
    /// Waits until what the family undoes in the background after a
    /// removal returned is done (the packet family detaches interfaces
    /// there); called before the daemon exits.
    fn settle(&mut self) {}
}

/// A resolved target.
#[derive(Debug)]
pub enum Target {
    Cgroup(Cgroup),
    Interface { name: IfName, netns: Option<Netns> },
}

/// One install request, with everything the backend may touch.
pub struct Request<'a> {
    pub name: &'a str,
    pub params: &'a dyn Params,
    pub target: &'a Target,
    /// The process a `{"pid": N}` target named (its cgroup is `target`):
    /// faults that act on processes rather than on calls act on it alone.
    pub pid: Option<u32>,
    pub trigger: Trigger,
    pub kernel: &'a mut Kernel,
    pub cgroups: &'a Cgroups,
}

impl Request<'_> {
    /// The cgroup's directory under the cgroup2 mount.
    pub fn cgroup_dir(&self, cgroup: &Cgroup) -> std::path::PathBuf {
        self.cgroups
            .mount()
            .join(cgroup.path.trim_start_matches('/'))
    }
}

/// A fault in the kernel. Dropping it removes it.
pub trait Installed: Send {
    fn counters(&self) -> Counters;
    /// Where the fault landed, merged into `get` and `list` (e.g. the
    /// interface and its attachments).
    fn describe(&self) -> serde_json::Map<String, Value> {
        serde_json::Map::new()
    }
}

/// A fault's counters, summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Events that matched the fault's target and filter.
    pub evaluations: u64,
    /// Faults delivered.
    pub activations: u64,
    /// Family-specific counters, exported as their own metric families.
    pub samples: Vec<Sample>,
    /// Delay the fault injected, for faults that delay.
    pub injected_delay: Option<DelayHistogram>,
}

/// One value of a family's own counter metric, e.g.
/// `injectord_packets_total{outcome="dropped"}`.
#[derive(Clone, Debug)]
pub struct Sample {
    pub metric: &'static Metric,
    /// The label that tells this sample from the fault's others.
    pub label: (&'static str, &'static str),
    pub value: u64,
}

/// A counter metric family a fault family exports.
#[derive(Debug)]
pub struct Metric {
    /// Without the `_total` suffix.
    pub name: &'static str,
    pub help: &'static str,
}
