//! Targets: what a fault is aimed at.

use std::{fmt, num::NonZeroU32};

use serde::{Deserialize, Deserializer, Serialize, de};
use serde_json::Value;

use crate::error::{ErrorCode, RpcError};

/// What a fault is aimed at: a cgroup (by path, pid, container id, pod uid
/// or libvirt domain name) or a network interface (in the daemon's network
/// namespace or another one).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(into = "RawTarget")]
pub enum TargetSpec {
    /// A cgroup2 directory, absolute or relative to the cgroup2 mount.
    Cgroup(String),
    /// The cgroup of a process.
    Pid(NonZeroU32),
    /// A container id or a unique prefix of at least 12 hex digits.
    Container(ContainerId),
    /// A Kubernetes pod, by its uid: the pod's cgroup under kubelet's
    /// kubepods tree (either cgroup driver, any QoS class).
    Pod(PodUid),
    /// A libvirt (QEMU) domain, by name: its machine scope, with every
    /// process of the VM in it.
    Vm(VmName),
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
            Self::Pod(_) => "target.pod",
            Self::Vm(_) => "target.vm",
            Self::Interface { .. } => "target.interface",
        }
    }
}

/// The JSON shape of a target: one of `cgroup`, `pid`, `container`,
/// `pod`, `vm`, `interface` (the last optionally with `netns`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a target object: {\"cgroup\": path}, {\"pid\": N}, {\"container\": id}, {\"pod\": uid}, {\"vm\": name} or {\"interface\": name}"
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
    pod: Option<PodUid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vm: Option<VmName>,
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
            pod,
            vm,
            interface,
            netns,
        } = raw;
        let given = [
            cgroup.is_some(),
            pid.is_some(),
            container.is_some(),
            pod.is_some(),
            vm.is_some(),
            interface.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given != 1 {
            return Err((
                "target",
                format!(
                    "a target needs exactly one of \"cgroup\", \"pid\", \"container\", \"pod\", \"vm\" or \"interface\"; {}",
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
                "\"netns\" goes with an \"interface\" target only: a cgroup, pid, container, pod or vm target already names its processes".into(),
            ));
        }
        Ok(if let Some(c) = cgroup {
            Self::Cgroup(c)
        } else if let Some(p) = pid {
            Self::Pid(p)
        } else if let Some(c) = container {
            Self::Container(c)
        } else if let Some(p) = pod {
            Self::Pod(p)
        } else if let Some(v) = vm {
            Self::Vm(v)
        } else if let Some(name) = interface {
            Self::Interface { name, netns }
        } else {
            unreachable!("exactly one is set")
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
            TargetSpec::Pod(p) => Self {
                pod: Some(p),
                ..Self::default()
            },
            TargetSpec::Vm(v) => Self {
                vm: Some(v),
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
            Self::Pod(p) => write!(f, "pod {}", p.0),
            Self::Vm(v) => write!(f, "vm {:?}", v.0),
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

/// A Kubernetes pod uid in its RFC 4122 text form (8-4-4-4-12 hex digits,
/// as the API server generates it and `kubectl get pod -o
/// jsonpath='{.metadata.uid}'` prints it), in lower case.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PodUid(String);

impl PodUid {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The uid as kubelet's systemd cgroup driver writes it in a slice
    /// name: `-` is the slice hierarchy separator there, so each becomes
    /// `_` (kubelet's `escapeSystemdCgroupName`).
    pub fn systemd_form(&self) -> String {
        self.0.replace('-', "_")
    }
}

impl TryFrom<String> for PodUid {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        let groups: Vec<&str> = lower.split('-').collect();
        let ok = groups.len() == 5
            && groups
                .iter()
                .zip([8, 4, 4, 4, 12])
                .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
        if ok {
            Ok(Self(lower))
        } else {
            Err(format!(
                "invalid value: pod uid {s:?} must be a UUID such as 1b2c3d4e-5f60-4182-93a4-b5c6d7e8f901 (8-4-4-4-12 hex digits; `kubectl get pod NAME -o jsonpath='{{.metadata.uid}}'` prints it)"
            ))
        }
    }
}

impl<'de> Deserialize<'de> for PodUid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::try_from(String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// A libvirt domain name, as `virsh list` shows it: not empty, no `/` (which
/// libvirt refuses in a name) and no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct VmName(String);

impl VmName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for VmName {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() || s.len() > 1024 || s.contains('/') || s.chars().any(char::is_control) {
            Err(format!(
                "invalid value: vm {s:?} must be a libvirt domain name (as `virsh list` shows it): 1 to 1024 bytes, without '/' or control characters"
            ))
        } else {
            Ok(Self(s))
        }
    }
}

impl<'de> Deserialize<'de> for VmName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::try_from(String::deserialize(d)?).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<TargetSpec, RpcError> {
        TargetSpec::parse(v)
    }

    #[test]
    fn pod_uids_are_uuids_in_lower_case() {
        let t = parse(json!({"pod": "1B2C3D4E-5F60-4182-93A4-B5C6D7E8F901"})).unwrap();
        let TargetSpec::Pod(uid) = &t else {
            panic!("{t:?}")
        };
        assert_eq!(uid.as_str(), "1b2c3d4e-5f60-4182-93a4-b5c6d7e8f901");
        assert_eq!(uid.systemd_form(), "1b2c3d4e_5f60_4182_93a4_b5c6d7e8f901");
        assert_eq!(t.field(), "target.pod");
        // Reads back as it is kept.
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            json!({"pod": "1b2c3d4e-5f60-4182-93a4-b5c6d7e8f901"})
        );
        for bad in [
            "",
            "1b2c3d4e5f60418293a4b5c6d7e8f901",
            "1b2c3d4e_5f60_4182_93a4_b5c6d7e8f901",
            "1b2c3d4e-5f60-4182-93a4-b5c6d7e8f90",
            "1b2c3d4e-5f60-4182-93a4-b5c6d7e8f9012",
            "1b2c3d4e-5f60-4182-93a4b-5c6d7e8f901",
            "gb2c3d4e-5f60-4182-93a4-b5c6d7e8f901",
            "pod1b2c3d4e-5f60-4182-93a4-b5c6d7e8f901",
            "../../../../1b2c-5f60-4182-93a4-b5c6d7e8f901",
        ] {
            let e = parse(json!({ "pod": bad })).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidValue, "{bad}: {e:?}");
            assert_eq!(e.field.as_deref(), Some("target.pod"), "{bad}");
            assert!(e.message.contains("must be a UUID"), "{}", e.message);
        }
        let e = parse(json!({ "pod": 7 })).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("target.pod"));
    }

    #[test]
    fn vm_names_are_libvirt_domain_names() {
        let t = parse(json!({"vm": "vnf_edge.01 (Ωmega)"})).unwrap();
        assert_eq!(t, TargetSpec::Vm(VmName("vnf_edge.01 (Ωmega)".into())));
        assert_eq!(t.field(), "target.vm");
        assert!(t.is_cgroup());
        assert_eq!(t.to_string(), "vm \"vnf_edge.01 (Ωmega)\"");
        for bad in ["", "a/b", "line\nbreak"] {
            let e = parse(json!({ "vm": bad })).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidValue, "{bad:?}: {e:?}");
            assert_eq!(e.field.as_deref(), Some("target.vm"));
        }
    }

    #[test]
    fn one_target_kind_only() {
        let e =
            parse(json!({"pod": "1b2c3d4e-5f60-4182-93a4-b5c6d7e8f901", "vm": "a"})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("target"));
        assert!(e.message.contains("2 are given"), "{}", e.message);
        let e = parse(json!({"vm": "a", "netns": "x"})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("target.netns"));
    }
}
