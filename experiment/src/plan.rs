//! The experiment plan: what to probe, which faults to inject, how long
//! each phase lasts, which runs to make and what stops them.
//!
//! Parsed in two steps: serde reads the document into plain structs whose
//! fields already have their types (durations as [`Duration`], ratios in
//! 0..=1, counts above zero), then [`Plan::from_raw`] resolves every name
//! into an index ([`ProbeId`], [`FaultId`]) and checks what crosses fields.
//! A [`Plan`] that exists is one the runner can run.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    num::{NonZeroU32, NonZeroUsize},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer, de::Error as _};
use serde_json::{Map, Value};

/// Why a plan cannot run: where, and what to change.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {field}: {message}")]
    Syntax {
        path: String,
        field: String,
        message: String,
    },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> PlanError {
    PlanError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A duration written as humantime text ("50ms", "2s", "1m 30s").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Dur)
            .map_err(|e| D::Error::custom(format!("{s:?} is not a duration like \"50ms\": {e}")))
    }
}

/// A duration above zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Positive(pub Duration);

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Dur(v) = Dur::deserialize(d)?;
        if v.is_zero() {
            return Err(D::Error::custom("must be above zero"));
        }
        Ok(Self(v))
    }
}

/// A ratio in 0..=1.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Ratio(pub f64);

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !(0.0..=1.0).contains(&v) {
            return Err(D::Error::custom(format!("{v} is not a ratio in 0..=1")));
        }
        Ok(Self(v))
    }
}

/// A name the daemon takes in a fault name: `[A-Za-z0-9_.:-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Name {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
        if ok {
            Ok(Self(s))
        } else {
            Err(format!(
                "{s:?} is not a name of 1 to 64 letters, digits, '_', '.', ':' or '-'"
            ))
        }
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::try_from(String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// One or several (`"stop_if": {...}` or `[{...}, {...}]`). Not an
/// untagged enum: that would hide what is wrong inside the object.
#[derive(Debug)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object or a list of them")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(OneOrMany::One)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(t) = seq.next_element()? {
                    v.push(t);
                }
                Ok(OneOrMany::Many(v))
            }
        }
        d.deserialize_any(Visit(std::marker::PhantomData))
    }
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            Self::One(t) => vec![t],
            Self::Many(v) => v,
        }
    }
}

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        Self::Many(Vec::new())
    }
}

// ---------------------------------------------------------------- probes

/// An HTTP(S) GET: success is a status in 200..=399 (or `expect_status`).
/// `https` URLs go through curl (this crate has no TLS stack), so their
/// latency includes curl's start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    pub url: String,
    pub timeout: Option<Positive>,
    pub expect_status: Option<u16>,
}

/// A TCP connect to `address` (`ip:port` or `host:port`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProbe {
    pub address: String,
    pub timeout: Option<Positive>,
}

/// One UDP datagram to `address` from a fresh socket, one try: success is
/// any reply (containing `expect`, if given) within the timeout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpProbe {
    pub address: String,
    #[serde(default = "default_payload")]
    pub payload: String,
    pub expect: Option<String>,
    pub timeout: Option<Positive>,
}

fn default_payload() -> String {
    "ping".into()
}

/// One DNS query over UDP, one try: success is an answer with rcode 0 and
/// at least one record.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsProbe {
    /// The server, `ip` (port 53) or `ip:port`.
    pub server: String,
    pub name: String,
    #[serde(default, rename = "type")]
    pub record: DnsType,
    pub timeout: Option<Positive>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum DnsType {
    #[default]
    A,
    AAAA,
}

/// One ICMP echo request (IPv4, raw socket: needs CAP_NET_RAW).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpProbe {
    pub host: std::net::Ipv4Addr,
    pub timeout: Option<Positive>,
}

/// A command: success is exit status 0 within the timeout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandProbe {
    pub argv: Vec<String>,
    pub timeout: Option<Positive>,
}

#[derive(Debug, Clone)]
pub enum ProbeKind {
    Http(HttpProbe),
    Tcp(TcpProbe),
    Udp(UdpProbe),
    Dns(DnsProbe),
    Icmp(IcmpProbe),
    Command(CommandProbe),
}

impl ProbeKind {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Http(_) => "http",
            Self::Tcp(_) => "tcp",
            Self::Udp(_) => "udp",
            Self::Dns(_) => "dns",
            Self::Icmp(_) => "icmp",
            Self::Command(_) => "command",
        }
    }

    fn own_timeout(&self) -> Option<Positive> {
        match self {
            Self::Http(p) => p.timeout,
            Self::Tcp(p) => p.timeout,
            Self::Udp(p) => p.timeout,
            Self::Dns(p) => p.timeout,
            Self::Icmp(p) => p.timeout,
            Self::Command(p) => p.timeout,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    name: Name,
    interval: Positive,
    timeout: Option<Positive>,
    netns: Option<String>,
    cgroup: Option<String>,
    http: Option<HttpProbe>,
    tcp: Option<TcpProbe>,
    udp: Option<UdpProbe>,
    dns: Option<DnsProbe>,
    icmp: Option<IcmpProbe>,
    command: Option<CommandProbe>,
}

/// Where a probe runs from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Netns {
    /// The runner's own network namespace.
    Own,
    /// A namespace file: `/run/netns/NAME` for a bare name, else the path.
    Path(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Probe {
    pub name: Name,
    pub kind: ProbeKind,
    pub interval: Duration,
    /// The probe kind's timeout, else the probe's, else one second.
    pub timeout: Duration,
    pub netns: Netns,
    /// A cgroup (absolute, or relative to the cgroup2 mount) that command
    /// probes run in.
    pub cgroup: Option<String>,
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

impl RawProbe {
    fn resolve(self, at: &str) -> Result<Probe, PlanError> {
        let mut kinds = Vec::new();
        if let Some(p) = self.http {
            kinds.push(ProbeKind::Http(p));
        }
        if let Some(p) = self.tcp {
            kinds.push(ProbeKind::Tcp(p));
        }
        if let Some(p) = self.udp {
            kinds.push(ProbeKind::Udp(p));
        }
        if let Some(p) = self.dns {
            kinds.push(ProbeKind::Dns(p));
        }
        if let Some(p) = self.icmp {
            kinds.push(ProbeKind::Icmp(p));
        }
        if let Some(p) = self.command {
            kinds.push(ProbeKind::Command(p));
        }
        if kinds.len() != 1 {
            let found: Vec<_> = kinds.iter().map(ProbeKind::label).collect();
            return Err(invalid(
                at,
                format!(
                    "give exactly one of http, tcp, udp, dns, icmp, command (found {})",
                    if found.is_empty() {
                        "none".to_string()
                    } else {
                        found.join(", ")
                    }
                ),
            ));
        }
        let kind = kinds.remove(0);
        match &kind {
            ProbeKind::Http(h)
                if !(h.url.starts_with("http://") || h.url.starts_with("https://")) =>
            {
                return Err(invalid(
                    format!("{at}.http.url"),
                    format!("{:?} is not an http:// or https:// URL", h.url),
                ));
            }
            ProbeKind::Command(c) if c.argv.is_empty() => {
                return Err(invalid(format!("{at}.command.argv"), "is empty"));
            }
            _ => {}
        }
        if self.cgroup.is_some() && !matches!(kind, ProbeKind::Command(_)) {
            return Err(invalid(
                format!("{at}.cgroup"),
                "only command probes run in a cgroup (a socket belongs to the cgroup of the \
                 process that made it, and the runner's probes are threads); use a command probe, \
                 or netns",
            ));
        }
        let timeout = kind
            .own_timeout()
            .or(self.timeout)
            .map_or(DEFAULT_TIMEOUT, |t| t.0);
        let netns = match self.netns {
            None => Netns::Own,
            Some(n) if n.contains('/') => Netns::Path(PathBuf::from(n)),
            Some(n) if n.is_empty() || n == "." || n == ".." => {
                return Err(invalid(format!("{at}.netns"), "is not a namespace name"));
            }
            Some(n) => Netns::Path(Path::new("/run/netns").join(n)),
        };
        Ok(Probe {
            name: self.name,
            kind,
            interval: self.interval.0,
            timeout,
            netns,
            cgroup: self.cgroup,
        })
    }
}

// ---------------------------------------------------------------- faults

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProbeId(pub usize);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FaultId(pub usize);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    name: Name,
    /// A spec of `faultspecs/`, by its path without `.json`
    /// (`network/link-loss-1pct`); the fields below override its own.
    library: Option<String>,
    target: Option<Value>,
    fault: Option<Value>,
    trigger: Option<Value>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// A prior for ordering combinations when no single run measured it.
    likelihood: Option<Ratio>,
}

/// One fault of the faultload: the spec the daemon gets (without `name`
/// and `duration`, which the runner sets), and what pruning looks at.
#[derive(Debug, Clone)]
pub struct Fault {
    pub name: Name,
    pub spec: Map<String, Value>,
    pub labels: BTreeMap<String, String>,
    pub likelihood: Option<f64>,
}

impl RawFault {
    fn resolve(self, at: &str, library: &Path) -> Result<Fault, PlanError> {
        let mut spec = Map::new();
        if let Some(lib) = &self.library {
            if lib.contains("..") || lib.starts_with('/') {
                return Err(invalid(
                    format!("{at}.library"),
                    "names a spec under faultspecs/",
                ));
            }
            let file = library.join(format!("{lib}.json"));
            let text = std::fs::read_to_string(&file).map_err(|e| {
                invalid(
                    format!("{at}.library"),
                    format!("no spec {lib:?} ({}: {e})", file.display()),
                )
            })?;
            let v: Value = serde_json::from_str(&text).map_err(|e| {
                invalid(format!("{at}.library"), format!("{}: {e}", file.display()))
            })?;
            let Value::Object(obj) = v else {
                return Err(invalid(
                    format!("{at}.library"),
                    format!("{} is not a spec object", file.display()),
                ));
            };
            spec = obj;
            spec.remove("name");
            spec.remove("duration");
        }
        for (key, v) in [
            ("target", self.target),
            ("fault", self.fault),
            ("trigger", self.trigger),
        ] {
            if let Some(v) = v {
                spec.insert(key.into(), v);
            }
        }
        if self.force {
            spec.insert("force".into(), Value::Bool(true));
        }
        for key in ["target", "fault"] {
            if !spec.get(key).is_some_and(Value::is_object) {
                return Err(invalid(
                    format!("{at}.{key}"),
                    "missing: give it, or a `library` spec that has it",
                ));
            }
        }
        Ok(Fault {
            name: self.name,
            spec,
            labels: self.labels,
            likelihood: self.likelihood.map(|r| r.0),
        })
    }
}

// ------------------------------------------------------- steady state etc.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSteady {
    probe: String,
    min_success: Ratio,
    max_latency: Option<Positive>,
    window: Option<Positive>,
    failed_below: Option<Ratio>,
}

/// What "the service is fine" means for one probe.
#[derive(Debug, Clone)]
pub struct SteadyState {
    pub probe: ProbeId,
    /// A window meets the steady state when at least this share of its
    /// samples succeeded within `max_latency`.
    pub min_success: f64,
    /// A sample slower than this counts against the steady state (and as
    /// detected), though it succeeded.
    pub max_latency: Option<Duration>,
    /// The length of the windows judged (default ten probe intervals).
    pub window: Duration,
    /// Availability in the fault window below this is a failure, above it
    /// (without self-recovery) a degradation. Default 0.5.
    pub failed_below: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStop {
    probe: String,
    success_below: Ratio,
    #[serde(rename = "for")]
    over: Positive,
}

/// A guard: if `probe`'s success ratio over the last `over` falls below
/// `success_below` while faults are in, the runner removes them at once,
/// marks the run aborted and ends the experiment.
#[derive(Debug, Clone)]
pub struct StopIf {
    pub probe: ProbeId,
    pub success_below: f64,
    pub over: Duration,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phases {
    pub warmup: Positive,
    pub inject: Positive,
    pub recover: Positive,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCombinations {
    size: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPruning {
    #[serde(default)]
    tolerated_alone: bool,
    equivalence: Option<String>,
    budget: Option<NonZeroUsize>,
}

/// PreFail-style pruning policies, combined (each can be off).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruning {
    /// Only combine faults each of which was tolerated alone.
    pub tolerated_alone: bool,
    /// Faults with the same value of this label are one: a single run per
    /// value, and one combination per multiset of values.
    pub equivalence: Option<String>,
    /// At most this many combinations, the likeliest to fail first.
    pub budget: Option<NonZeroUsize>,
}

/// Which fault sets to run.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Each fault alone.
    Singles,
    /// These sets, in this order.
    Explicit(Vec<Vec<FaultId>>),
    /// Each fault alone, then the combinations of `size` that pruning
    /// leaves.
    Combinations { size: usize, pruning: Pruning },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    name: Name,
    probes: Vec<RawProbe>,
    steady_state: OneOrMany<RawSteady>,
    faults: Vec<RawFault>,
    phases: Phases,
    #[serde(default = "one")]
    repeat: NonZeroU32,
    #[serde(default)]
    stop_if: OneOrMany<RawStop>,
    combinations: Option<RawCombinations>,
    pruning: Option<RawPruning>,
    runs: Option<Vec<Vec<String>>>,
}

fn one() -> NonZeroU32 {
    NonZeroU32::MIN
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub name: Name,
    pub probes: Vec<Probe>,
    /// At least one; the first gives a run's headline KPIs.
    pub steady_state: Vec<SteadyState>,
    pub faults: Vec<Fault>,
    pub phases: Phases,
    pub repeat: NonZeroU32,
    pub stop_if: Vec<StopIf>,
    pub schedule: Schedule,
}

/// The format of a plan document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

impl Format {
    /// YAML for `.yaml`/`.yml`, JSON otherwise.
    pub fn of(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Self::Yaml,
            _ => Self::Json,
        }
    }
}

impl Plan {
    /// Reads a plan file; `library` is the `faultspecs/` directory that
    /// `library` faults name specs in.
    pub fn load(path: &Path, library: &Path) -> Result<Self, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(
            &text,
            Format::of(path),
            &path.display().to_string(),
            library,
        )
    }

    /// Parses a plan document; `origin` names it in errors.
    pub fn parse(
        text: &str,
        format: Format,
        origin: &str,
        library: &Path,
    ) -> Result<Self, PlanError> {
        let syntax = |field: String, message: String| PlanError::Syntax {
            path: origin.to_string(),
            field: if field.is_empty() || field == "." {
                "plan".into()
            } else {
                field
            },
            message,
        };
        let raw: RawPlan = match format {
            Format::Json => {
                let de = &mut serde_json::Deserializer::from_str(text);
                serde_path_to_error::deserialize(de)
                    .map_err(|e| syntax(e.path().to_string(), e.into_inner().to_string()))?
            }
            Format::Yaml => {
                let de = serde_norway::Deserializer::from_str(text);
                serde_path_to_error::deserialize(de)
                    .map_err(|e| syntax(e.path().to_string(), e.into_inner().to_string()))?
            }
        };
        Self::from_raw(raw, library)
    }

    fn from_raw(raw: RawPlan, library: &Path) -> Result<Self, PlanError> {
        if raw.probes.is_empty() {
            return Err(invalid("probes", "at least one probe"));
        }
        if raw.faults.is_empty() {
            return Err(invalid("faults", "at least one fault"));
        }
        let probes = raw
            .probes
            .into_iter()
            .enumerate()
            .map(|(i, p)| p.resolve(&format!("probes[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        unique(probes.iter().map(|p| &p.name), "probes")?;
        let probe_id = |name: &str, at: String| {
            probes
                .iter()
                .position(|p| p.name.as_str() == name)
                .map(ProbeId)
                .ok_or_else(|| {
                    let known: Vec<_> = probes.iter().map(|p| p.name.as_str()).collect();
                    invalid(
                        at,
                        format!("no probe {name:?} (probes: {})", known.join(", ")),
                    )
                })
        };
        let faults = raw
            .faults
            .into_iter()
            .enumerate()
            .map(|(i, f)| f.resolve(&format!("faults[{i}]"), library))
            .collect::<Result<Vec<_>, _>>()?;
        unique(faults.iter().map(|f| &f.name), "faults")?;

        let steady = raw.steady_state.into_vec();
        if steady.is_empty() {
            return Err(invalid("steady_state", "at least one probe's steady state"));
        }
        let steady_state = steady
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let probe = probe_id(&s.probe, format!("steady_state[{i}].probe"))?;
                let interval = probes[probe.0].interval;
                let window = s.window.map_or(interval * 10, |w| w.0);
                if window < interval {
                    return Err(invalid(
                        format!("steady_state[{i}].window"),
                        format!("{window:?} is shorter than the probe's interval {interval:?}"),
                    ));
                }
                let recover = raw.phases.recover.0;
                if recover < window + interval {
                    return Err(invalid(
                        "phases.recover",
                        format!(
                            "{recover:?} leaves no room for a {window:?} window of probe {} (and one interval) after the removal: recovery could never be measured",
                            s.probe
                        ),
                    ));
                }
                let failed_below = s.failed_below.map_or(0.5, |r| r.0);
                if failed_below > s.min_success.0 {
                    return Err(invalid(
                        format!("steady_state[{i}].failed_below"),
                        "is above min_success",
                    ));
                }
                Ok(SteadyState {
                    probe,
                    min_success: s.min_success.0,
                    max_latency: s.max_latency.map(|d| d.0),
                    window,
                    failed_below,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let stop_if = raw
            .stop_if
            .into_vec()
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let probe = probe_id(&s.probe, format!("stop_if[{i}].probe"))?;
                if s.over.0 < probes[probe.0].interval {
                    return Err(invalid(
                        format!("stop_if[{i}].for"),
                        "is shorter than the probe's interval: it would judge no sample",
                    ));
                }
                Ok(StopIf {
                    probe,
                    success_below: s.success_below.0,
                    over: s.over.0,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let fault_id = |name: &str, at: String| {
            faults
                .iter()
                .position(|f| f.name.as_str() == name)
                .map(FaultId)
                .ok_or_else(|| invalid(at, format!("no fault {name:?}")))
        };
        let schedule = match (raw.runs, raw.combinations, raw.pruning) {
            (Some(_), Some(_), _) => {
                return Err(invalid(
                    "runs",
                    "give either runs (explicit fault sets) or combinations, not both",
                ));
            }
            (Some(_), None, Some(_)) => {
                return Err(invalid(
                    "pruning",
                    "applies to combinations, not to explicit runs",
                ));
            }
            (Some(runs), None, None) => {
                if runs.is_empty() {
                    return Err(invalid("runs", "at least one run"));
                }
                let sets = runs
                    .iter()
                    .enumerate()
                    .map(|(i, set)| {
                        if set.is_empty() {
                            return Err(invalid(format!("runs[{i}]"), "an empty fault set"));
                        }
                        let ids = set
                            .iter()
                            .enumerate()
                            .map(|(j, n)| fault_id(n, format!("runs[{i}][{j}]")))
                            .collect::<Result<Vec<_>, _>>()?;
                        if ids.iter().collect::<BTreeSet<_>>().len() != ids.len() {
                            return Err(invalid(format!("runs[{i}]"), "names a fault twice"));
                        }
                        Ok(ids)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Schedule::Explicit(sets)
            }
            (None, Some(c), pruning) => {
                if c.size < 2 || c.size > faults.len() {
                    return Err(invalid(
                        "combinations.size",
                        format!(
                            "{} is not between 2 and the number of faults ({})",
                            c.size,
                            faults.len()
                        ),
                    ));
                }
                let p = pruning.unwrap_or_default();
                if let Some(label) = &p.equivalence
                    && let Some(f) = faults.iter().find(|f| !f.labels.contains_key(label))
                {
                    return Err(invalid(
                        "pruning.equivalence",
                        format!("fault {:?} has no label {label:?}", f.name.as_str()),
                    ));
                }
                Schedule::Combinations {
                    size: c.size,
                    pruning: Pruning {
                        tolerated_alone: p.tolerated_alone,
                        equivalence: p.equivalence,
                        budget: p.budget,
                    },
                }
            }
            (None, None, Some(_)) => {
                return Err(invalid(
                    "pruning",
                    "applies to combinations: add combinations",
                ));
            }
            (None, None, None) => Schedule::Singles,
        };
        Ok(Self {
            name: raw.name,
            probes,
            steady_state,
            faults,
            phases: raw.phases,
            repeat: raw.repeat,
            stop_if,
            schedule,
        })
    }

    pub fn fault_names(&self, set: &[FaultId]) -> Vec<String> {
        set.iter()
            .map(|f| self.faults[f.0].name.to_string())
            .collect()
    }
}

fn unique<'a>(names: impl Iterator<Item = &'a Name>, what: &str) -> Result<(), PlanError> {
    let mut seen = BTreeSet::new();
    for n in names {
        if !seen.insert(n) {
            return Err(invalid(what, format!("two are named {:?}", n.as_str())));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
      "name": "web-under-loss",
      "probes": [{"name": "web", "http": {"url": "http://10.0.0.2/", "timeout": "200ms"},
                  "interval": "50ms", "netns": "client"}],
      "steady_state": {"probe": "web", "min_success": 0.99},
      "faults": [{"name": "loss", "target": {"interface": "eth0", "netns": "server"},
                  "fault": {"type": "packet_drop"}, "trigger": {"probability": 1.0}}],
      "phases": {"warmup": "2s", "inject": "3s", "recover": "5s"},
      "repeat": 3,
      "stop_if": {"probe": "web", "success_below": 0.2, "for": "10s"}
    }"#;

    fn parse(text: &str) -> Result<Plan, PlanError> {
        Plan::parse(text, Format::Json, "plan.json", Path::new("/nonexistent"))
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    fn with(field: &str, value: &str) -> String {
        let mut v: Value = serde_json::from_str(GOOD).unwrap();
        let mut cur = &mut v;
        let parts: Vec<_> = field.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            cur = match p.parse::<usize>() {
                Ok(i) => &mut cur[i],
                Err(_) => &mut cur[*p],
            };
        }
        let last = parts[parts.len() - 1];
        if value == "DELETE" {
            cur.as_object_mut().unwrap().remove(last);
        } else if let Ok(i) = last.parse::<usize>() {
            cur[i] = serde_json::from_str(value).unwrap();
        } else {
            cur[last] = serde_json::from_str(value).unwrap();
        }
        v.to_string()
    }

    #[test]
    fn the_issue_example_parses() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.name.as_str(), "web-under-loss");
        assert_eq!(p.probes[0].interval, Duration::from_millis(50));
        assert_eq!(p.probes[0].timeout, Duration::from_millis(200));
        assert_eq!(p.probes[0].netns, Netns::Path("/run/netns/client".into()));
        assert_eq!(p.steady_state[0].window, Duration::from_millis(500));
        assert_eq!(p.repeat.get(), 3);
        assert_eq!(p.stop_if[0].over, Duration::from_secs(10));
        assert!(matches!(p.schedule, Schedule::Singles));
        assert_eq!(p.faults[0].spec["fault"]["type"], "packet_drop");
    }

    #[test]
    fn yaml_plans_parse_alike() {
        let yaml = r#"
name: web
probes:
  - name: web
    tcp: {address: "10.0.0.2:80"}
    interval: 20ms
steady_state: {probe: web, min_success: 0.9}
faults:
  - name: loss
    target: {interface: eth0}
    fault: {type: packet_drop}
    labels: {class: link}
phases: {warmup: 1s, inject: 1s, recover: 1s}
combinations: {size: 2}
"#;
        let e = Plan::parse(yaml, Format::Yaml, "p.yaml", Path::new("/x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("combinations.size"), "{e}");
        let p = Plan::parse(
            &yaml.replace("combinations: {size: 2}\n", ""),
            Format::Yaml,
            "p.yaml",
            Path::new("/x"),
        )
        .unwrap();
        assert_eq!(p.probes[0].timeout, DEFAULT_TIMEOUT);
        assert_eq!(p.faults[0].labels["class"], "link");
    }

    #[test]
    fn the_example_plan_parses() {
        let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../faultspecs");
        let p = Plan::parse(
            include_str!("../examples/web-failover.yaml"),
            Format::Yaml,
            "web-failover.yaml",
            &lib,
        )
        .unwrap();
        assert_eq!(p.probes.len(), 2);
        assert_eq!(p.faults[2].spec["fault"]["type"], "process_kill");
        assert_eq!(p.faults[2].spec["target"]["cgroup"], "vnf/backend1");
        assert_eq!(
            p.steady_state[0].max_latency,
            Some(Duration::from_millis(250))
        );
        let Schedule::Combinations { pruning, .. } = &p.schedule else {
            panic!("not combinations")
        };
        assert_eq!(pruning.budget.map(NonZeroUsize::get), Some(2));
    }

    #[test]
    fn bad_plans_say_where_and_why() {
        let e = err(&with("probes.0.interval", r#""50 parsecs""#));
        assert!(
            e.contains("probes[0].interval") && e.contains("not a duration"),
            "{e}"
        );
        let e = err(&with("probes.0.interval", r#""0s""#));
        assert!(e.contains("above zero"), "{e}");
        let e = err(&with("steady_state.min_success", "1.5"));
        assert!(e.contains("steady_state") && e.contains("ratio"), "{e}");
        let e = err(&with("steady_state.probe", r#""api""#));
        assert!(
            e.contains("steady_state[0].probe") && e.contains("no probe \"api\""),
            "{e}"
        );
        let e = err(&with("probes.0.tcp", r#"{"address": "1.2.3.4:5"}"#));
        assert!(e.contains("exactly one") && e.contains("http, tcp"), "{e}");
        let e = err(&with("probes.0.http", "DELETE"));
        assert!(e.contains("found none"), "{e}");
        let e = err(&with("probes.0.colour", r#""red""#));
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = err(&with("faults.0.target", "DELETE"));
        assert!(
            e.contains("faults[0].target") && e.contains("missing"),
            "{e}"
        );
        let e = err(&with("faults.0.name", r#""a b""#));
        assert!(e.contains("faults[0].name"), "{e}");
        let e = err(&with("stop_if.for", r#""10ms""#));
        assert!(e.contains("stop_if[0].for"), "{e}");
        let e = err(&with("runs", r#"[["loss"], ["nope"]]"#));
        assert!(e.contains("runs[1][0]") && e.contains("no fault"), "{e}");
        let e = err(&with("pruning", r#"{"budget": 3}"#));
        assert!(e.contains("pruning"), "{e}");
        let e = err(&with("phases.inject", "DELETE"));
        assert!(e.contains("inject"), "{e}");
        let e = err(&with("probes.0.cgroup", r#""vnf""#));
        assert!(e.contains("only command probes"), "{e}");
        let e = err(&with("repeat", "0"));
        assert!(e.contains("repeat"), "{e}");
        let e = err(&with("phases.recover", r#""500ms""#));
        assert!(
            e.contains("phases.recover") && e.contains("never be measured"),
            "{e}"
        );
    }

    #[test]
    fn combinations_need_the_equivalence_label_on_every_fault() {
        let mut v: Value = serde_json::from_str(GOOD).unwrap();
        let f = v["faults"][0].clone();
        let mut g = f.clone();
        g["name"] = "loss2".into();
        g["labels"] = serde_json::json!({"class": "link"});
        v["faults"] = serde_json::json!([f, g]);
        v["combinations"] = serde_json::json!({"size": 2});
        v["pruning"] = serde_json::json!({"equivalence": "class", "tolerated_alone": true});
        let e = err(&v.to_string());
        assert!(e.contains("fault \"loss\" has no label \"class\""), "{e}");
        v["faults"][0]["labels"] = serde_json::json!({"class": "link"});
        let p = parse(&v.to_string()).unwrap();
        let Schedule::Combinations { size, pruning } = p.schedule else {
            panic!("not combinations")
        };
        assert_eq!(size, 2);
        assert!(pruning.tolerated_alone);
    }

    #[test]
    fn library_faults_take_the_spec_and_the_overrides() {
        let dir = std::env::temp_dir().join(format!("plan-lib-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("network")).unwrap();
        std::fs::write(
            dir.join("network/x.json"),
            r#"{"name": "x", "target": {"cgroup": "vnf/example"},
                "fault": {"type": "connect_error", "errno": "ECONNRESET"}, "duration": "5m"}"#,
        )
        .unwrap();
        let text = with(
            "faults.0",
            r#"{"name": "lib", "library": "network/x", "target": {"cgroup": "mine"}}"#,
        );
        let p = Plan::parse(&text, Format::Json, "p", &dir).unwrap();
        let spec = &p.faults[0].spec;
        assert_eq!(spec["target"]["cgroup"], "mine");
        assert_eq!(spec["fault"]["errno"], "ECONNRESET");
        assert!(!spec.contains_key("duration") && !spec.contains_key("name"));
        let e = Plan::parse(
            &text.replace("network/x", "network/y"),
            Format::Json,
            "p",
            &dir,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("faults[0].library") && e.contains("no spec"),
            "{e}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
