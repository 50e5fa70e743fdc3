//! Fault specs: the JSON users send, parsed into types that cannot hold an
//! invalid value (parse, don't validate).

use std::{fmt, net::IpAddr, time::Duration};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use serde_json::Value;

use crate::{errno::Errno, error::RpcError};

/// A complete fault request, as accepted by `inject`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Unique name; generated from the fault type and id when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Name>,
    pub target: TargetSpec,
    pub fault: Fault,
    #[serde(default, skip_serializing_if = "TriggerSpec::is_default")]
    pub trigger: TriggerSpec,
    /// Time to live; the fault is removed when it runs out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Ttl>,
    /// Allows targets that contain PID 1, the daemon itself or the whole host.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

impl FaultSpec {
    /// Parses `inject` params: either the spec itself or `{"spec": {...}}`.
    pub fn from_params(params: Value) -> Result<Self, RpcError> {
        let spec = match params {
            Value::Object(mut map) if map.len() == 1 && map.contains_key("spec") => {
                map.remove("spec").unwrap_or(Value::Null)
            }
            other => other,
        };
        serde_path_to_error::deserialize(spec).map_err(RpcError::from_spec_error)
    }
}

/// What a fault is aimed at. Exactly one key.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TargetSpec {
    /// A cgroup2 directory, absolute or relative to the cgroup2 mount.
    Cgroup(String),
    /// The cgroup of a process.
    Pid(u32),
    /// A container id or a unique prefix of at least 12 hex digits.
    Container(ContainerId),
}

impl fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cgroup(p) => write!(f, "cgroup {p}"),
            Self::Pid(p) => write!(f, "pid {p}"),
            Self::Container(c) => write!(f, "container {}", c.0),
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

/// The fault to inject, tagged by `type`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// `connect()` fails with `errno`, optionally only towards `address`
    /// (a CIDR or a single address) and `port`.
    ConnectError {
        errno: Errno,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<Cidr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<Port>,
    },
}

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ConnectError { .. } => "connect_error",
        }
    }
}

/// An IPv4 or IPv6 prefix with its host bits cleared. A bare address is a
/// host prefix (/32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(IpNet);

impl Cidr {
    pub fn net(&self) -> IpNet {
        self.0
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let net = s
            .parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                de::Error::custom(format_args!(
                    "invalid value: {s:?} is not an IPv4 or IPv6 address or CIDR (e.g. \"10.0.0.0/8\", \"fd00::/64\")"
                ))
            })?;
        Ok(Self(net.trunc()))
    }
}

/// A TCP/UDP port, 1 to 65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Port(u16);

impl Port {
    pub fn get(self) -> u16 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        u16::try_from(n)
            .ok()
            .filter(|p| *p != 0)
            .map(Self)
            .ok_or_else(|| {
                de::Error::custom(format_args!(
                    "invalid value: port {n} is out of range 1 to 65535"
                ))
            })
    }
}

/// When a matching event becomes an activation. All conditions combine:
/// skip the first `after`, then take every `every_nth`, each with
/// `probability`, until `max_activations` have fired.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<Probability>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_nth: Option<Count>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_activations: Option<Count>,
}

impl TriggerSpec {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A probability in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Probability(f64);

impl Probability {
    /// round(p * 2^32): the kernel fires when a random u32 is below it.
    pub fn threshold(self) -> u64 {
        (self.0 * 4_294_967_296.0).round() as u64
    }
}

impl<'de> Deserialize<'de> for Probability {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let p = f64::deserialize(d)?;
        if (0.0..=1.0).contains(&p) {
            Ok(Self(p))
        } else {
            Err(de::Error::custom(format_args!(
                "invalid value: probability {p} is outside 0 to 1"
            )))
        }
    }
}

/// A count of at least 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Count(u64);

impl Count {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        u64::try_from(n)
            .ok()
            .filter(|n| *n >= 1)
            .map(Self)
            .ok_or_else(|| de::Error::custom(format_args!("invalid value: {n} must be at least 1")))
    }
}

/// A positive duration written as "500ms", "30s", "5m", "1h 30m".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ttl(Duration);

impl Ttl {
    pub fn get(self) -> Duration {
        self.0
    }
}

impl Serialize for Ttl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match humantime::parse_duration(&s) {
            Ok(d) if !d.is_zero() && d <= Duration::from_secs(366 * 24 * 3600) => Ok(Self(d)),
            Ok(_) => Err(de::Error::custom(format_args!(
                "invalid value: duration {s:?} must be above zero and at most a year"
            ))),
            Err(e) => Err(de::Error::custom(format_args!(
                "invalid value: duration {s:?}: {e} (write e.g. \"500ms\", \"30s\", \"5m\")"
            ))),
        }
    }
}

/// A fault name: 1 to 128 characters from `[A-Za-z0-9_.:-]`, usable as a
/// Prometheus label value and on a command line without quoting.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Name(String);

impl Name {
    pub fn generated(kind: &str, id: u64) -> Self {
        Self(format!("{kind}-{id}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = (1..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
        if ok {
            Ok(Self(s))
        } else {
            Err(de::Error::custom(format_args!(
                "invalid value: name {s:?} must be 1 to 128 characters from A-Z a-z 0-9 _ . : -"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::error::ErrorCode;

    fn parse(v: Value) -> Result<FaultSpec, RpcError> {
        FaultSpec::from_params(v)
    }

    #[test]
    fn accepts_a_full_spec_directly_or_wrapped() {
        let spec = json!({
            "name": "db-down",
            "target": {"cgroup": "test/a"},
            "fault": {"type": "connect_error", "errno": "ECONNREFUSED", "address": "10.1.2.3/24", "port": 5432},
            "trigger": {"probability": 0.5, "every_nth": 2, "after": 3, "max_activations": 4},
            "duration": "30s",
        });
        let a = parse(spec.clone()).unwrap();
        let b = parse(json!({ "spec": spec })).unwrap();
        assert_eq!(a.target, b.target);
        let Fault::ConnectError { address, port, .. } = a.fault;
        assert_eq!(address.unwrap().net().to_string(), "10.1.2.0/24");
        assert_eq!(port.unwrap().get(), 5432);
        assert_eq!(a.duration.unwrap().get(), Duration::from_secs(30));
    }

    #[test]
    fn errors_are_classified() {
        let base = |fault: Value, trigger: Value| json!({"target": {"pid": 1}, "fault": fault, "trigger": trigger});
        let code = |v: Value| parse(v).unwrap_err().code;
        let ok_fault = json!({"type": "connect_error", "errno": 111});
        assert_eq!(
            code(json!({"target": {"pid": 1}, "fault": ok_fault, "bogus": 1})),
            ErrorCode::UnknownField
        );
        assert_eq!(
            code(base(
                json!({"type": "connect_error", "errno": 111, "prot": 1}),
                json!({})
            )),
            ErrorCode::UnknownField
        );
        assert_eq!(
            code(base(
                json!({"type": "connect_error", "errno": "EBOGUS"}),
                json!({})
            )),
            ErrorCode::UnknownErrno
        );
        assert_eq!(
            code(base(ok_fault.clone(), json!({"probability": 1.5}))),
            ErrorCode::InvalidValue
        );
        assert_eq!(
            code(base(json!({"type": "disk_full"}), json!({}))),
            ErrorCode::UnknownFaultType
        );
        assert_eq!(code(json!({"fault": ok_fault})), ErrorCode::InvalidSpec);
        let err = parse(base(ok_fault, json!({"every_nth": 0}))).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("trigger.every_nth"));
    }

    #[test]
    fn the_faultspec_library_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../faultspecs");
        let mut seen = 0;
        for area in std::fs::read_dir(&dir).unwrap().flatten() {
            if !area.path().is_dir() {
                continue;
            }
            for file in std::fs::read_dir(area.path()).unwrap().flatten() {
                let text = std::fs::read_to_string(file.path()).unwrap();
                let v: Value = serde_json::from_str(&text).unwrap();
                if let Err(e) = parse(v) {
                    panic!("{}: {e}", file.path().display());
                }
                seen += 1;
            }
        }
        assert!(seen >= 5, "only {seen} specs found in {}", dir.display());
    }

    #[test]
    fn probability_threshold() {
        assert_eq!(Probability(1.0).threshold(), 1 << 32);
        assert_eq!(Probability(0.0).threshold(), 0);
        assert_eq!(Probability(0.5).threshold(), 1 << 31);
    }
}
