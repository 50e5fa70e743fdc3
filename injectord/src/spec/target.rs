//! Targets: what a fault is aimed at.

use std::{fmt, num::NonZeroU32};

use serde::{Deserialize, Deserializer, Serialize, de};
use serde_json::Value;

use crate::error::{ErrorCode, RpcError};

/// What a fault is aimed at: a cgroup (by path, pid or container id) or a
/// network interface (in the daemon's network namespace or another one).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(into = "RawTarget")]
pub enum TargetSpec {
    /// A cgroup2 directory, absolute or relative to the cgroup2 mount.
    Cgroup(String),
    /// The cgroup of a process.
    Pid(NonZeroU32),
    /// A container id or a unique prefix of at least 12 hex digits.
    Container(ContainerId),
    /// A network device, in `netns` (a name under /run/netns or a path such
    /// as /proc/PID/ns/net) or else in the daemon's own namespace.
    Interface { name: IfName, netns: Option<Netns> },
}

impl TargetSpec {
    /// Parses the spec's `target` object. Its fields are parsed with their
    /// paths (`target.pid`); then the combination is checked, naming the
    /// field that does not fit.
    pub fn parse(value: Value) -> Result<Self, RpcError> {
        let raw: RawTarget = serde_path_to_error::deserialize(value)
            .map_err(|e| RpcError::from_spec_error(e, Some("target")))?;
        Self::try_from(raw)
            .map_err(|(field, why)| RpcError::for_field(ErrorCode::InvalidValue, field, why))
    }

    pub fn is_cgroup(&self) -> bool {
        !matches!(self, Self::Interface { .. })
    }

    /// The spec field that names this target, for errors about it
    /// (`target.cgroup`, `target.pid`, `target.container`,
    /// `target.interface`).
    pub fn field(&self) -> &'static str {
        match self {
            Self::Cgroup(_) => "target.cgroup",
            Self::Pid(_) => "target.pid",
            Self::Container(_) => "target.container",
            Self::Interface { .. } => "target.interface",
        }
    }
}

/// The JSON shape of a target: one of `cgroup`, `pid`, `container`,
/// `interface` (the last optionally with `netns`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a target object: {\"cgroup\": path}, {\"pid\": N}, {\"container\": id} or {\"interface\": name}"
)]
struct RawTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cgroup: Option<String>,
    /// 0 is not a process (serde says "expected a nonzero u32").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid: Option<NonZeroU32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    container: Option<ContainerId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interface: Option<IfName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    netns: Option<Netns>,
}

impl TryFrom<RawTarget> for TargetSpec {
    /// The field that does not fit, and why.
    type Error = (&'static str, String);

    fn try_from(raw: RawTarget) -> Result<Self, Self::Error> {
        let RawTarget {
            cgroup,
            pid,
            container,
            interface,
            netns,
        } = raw;
        let given = [
            cgroup.is_some(),
            pid.is_some(),
            container.is_some(),
            interface.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given != 1 {
            return Err((
                "target",
                format!(
                    "a target needs exactly one of \"cgroup\", \"pid\", \"container\" or \"interface\"; {}",
                    if given == 0 {
                        "none is given".to_string()
                    } else {
                        format!("{given} are given")
                    }
                ),
            ));
        }
        if netns.is_some() && interface.is_none() {
            return Err((
                "target.netns",
                "\"netns\" goes with an \"interface\" target only: a cgroup, pid or container target already names its processes".into(),
            ));
        }
        Ok(match (cgroup, pid, container, interface) {
            (Some(c), ..) => Self::Cgroup(c),
            (_, Some(p), ..) => Self::Pid(p),
            (_, _, Some(c), _) => Self::Container(c),
            (.., Some(name)) => Self::Interface { name, netns },
            _ => unreachable!("exactly one is set"),
        })
    }
}

impl From<TargetSpec> for RawTarget {
    fn from(t: TargetSpec) -> Self {
        match t {
            TargetSpec::Cgroup(c) => Self {
                cgroup: Some(c),
                ..Self::default()
            },
            TargetSpec::Pid(p) => Self {
                pid: Some(p),
                ..Self::default()
            },
            TargetSpec::Container(c) => Self {
                container: Some(c),
                ..Self::default()
            },
            TargetSpec::Interface { name, netns } => Self {
                interface: Some(name),
                netns,
                ..Self::default()
            },
        }
    }
}

impl fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cgroup(p) => write!(f, "cgroup {p}"),
            Self::Pid(p) => write!(f, "pid {p}"),
            Self::Container(c) => write!(f, "container {}", c.0),
            Self::Interface { name, netns: None } => write!(f, "interface {}", name.0),
            Self::Interface {
                name,
                netns: Some(ns),
            } => write!(f, "interface {} in netns {}", name.0, ns.0),
        }
    }
}

/// A network device name: 1 to 15 bytes, no '/', ':' or whitespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct IfName(String);

impl IfName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IfName {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let ok = (1..=15).contains(&s.len())
            && s != "."
            && s != ".."
            && !s
                .bytes()
                .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0);
        if ok {
            Ok(Self(s))
        } else {
            Err(format!(
                "invalid value: interface name {s:?} must be 1 to 15 characters without '/', ':' or spaces"
            ))
        }
    }
}

impl<'de> Deserialize<'de> for IfName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::try_from(String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// A network namespace: a name (as `ip netns` makes them, under
/// /run/netns) or an absolute path to a namespace file.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Netns(String);

impl Netns {
    /// The namespace file to open.
    pub fn path(&self) -> std::path::PathBuf {
        if self.0.starts_with('/') {
            self.0.clone().into()
        } else {
            std::path::Path::new("/run/netns").join(&self.0)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespace process `pid` lives in.
    pub fn of_pid(pid: u32) -> Self {
        Self(format!("/proc/{pid}/ns/net"))
    }
}

impl<'de> Deserialize<'de> for Netns {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let name_ok = !s.is_empty() && s.len() <= 255 && s != "." && s != ".." && !s.contains('/');
        if name_ok || (s.starts_with('/') && !s.contains("/../")) {
            Ok(Self(s))
        } else {
            Err(de::Error::custom(format_args!(
                "invalid value: netns {s:?} must be a name under /run/netns or an absolute path such as /proc/PID/ns/net"
            )))
        }
    }
}

/// Lower-case hex, 12 to 64 digits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerId(String);

impl ContainerId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ContainerId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let lower = s.to_ascii_lowercase();
        if !(12..=64).contains(&lower.len()) || !lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(de::Error::custom(format_args!(
                "invalid value: container id {s:?} must be 12 to 64 hex digits"
            )));
        }
        Ok(Self(lower))
    }
}
