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

/// What a fault is aimed at: a cgroup (by path, pid or container id) or a
/// network interface (in the daemon's network namespace or another one).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "RawTarget", into = "RawTarget")]
pub enum TargetSpec {
    /// A cgroup2 directory, absolute or relative to the cgroup2 mount.
    Cgroup(String),
    /// The cgroup of a process.
    Pid(u32),
    /// A container id or a unique prefix of at least 12 hex digits.
    Container(ContainerId),
    /// A network device, in `netns` (a name under /run/netns or a path such
    /// as /proc/PID/ns/net) or else in the daemon's own namespace.
    Interface { name: IfName, netns: Option<Netns> },
}

impl TargetSpec {
    pub fn is_cgroup(&self) -> bool {
        !matches!(self, Self::Interface { .. })
    }
}

/// The JSON shape of a target: one of `cgroup`, `pid`, `container`,
/// `interface` (the last optionally with `netns`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    container: Option<ContainerId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interface: Option<IfName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    netns: Option<Netns>,
}

impl TryFrom<RawTarget> for TargetSpec {
    type Error = String;

    fn try_from(raw: RawTarget) -> Result<Self, String> {
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
            return Err(
                "invalid value: a target needs exactly one of \"cgroup\", \"pid\", \"container\" or \"interface\""
                    .into(),
            );
        }
        if netns.is_some() && interface.is_none() {
            return Err("invalid value: \"netns\" goes with an \"interface\" target".into());
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

/// The fault to inject, tagged by `type`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
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
    PacketDrop(PacketDrop),
    PacketCorrupt(PacketCorrupt),
    PacketDuplicate(PacketDuplicate),
    PacketDelay(PacketDelay),
    BandwidthLimit(BandwidthLimit),
    Partition(Partition),
}

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ConnectError { .. } => "connect_error",
            Self::PacketDrop(_) => "packet_drop",
            Self::PacketCorrupt(_) => "packet_corrupt",
            Self::PacketDuplicate(_) => "packet_duplicate",
            Self::PacketDelay(_) => "packet_delay",
            Self::BandwidthLimit(_) => "bandwidth_limit",
            Self::Partition(_) => "partition",
        }
    }

    /// The packet filter of a packet fault.
    pub fn packet_filter(&self) -> Option<PacketFilter> {
        Some(match self {
            Self::ConnectError { .. } => return None,
            Self::PacketDrop(f) => f.filter(Direction::Egress),
            Self::PacketCorrupt(f) => f.filter(Direction::Egress),
            Self::PacketDuplicate(f) => f.filter(Direction::Egress),
            Self::PacketDelay(f) => f.filter(Direction::Egress),
            Self::BandwidthLimit(f) => f.filter(Direction::Egress),
            Self::Partition(f) => f.filter(Direction::Both),
        })
    }
}

/// Which packets a packet fault matches. Addresses and ports are those in
/// the packet (`src` is the sender). `partition` also applies the mirrored
/// filter to ingress, so `dst` names the far side in both directions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketFilter {
    pub direction: Direction,
    pub protocol: Protocol,
    pub src: Option<Cidr>,
    pub dst: Option<Cidr>,
    pub src_port: Option<PortRange>,
    pub dst_port: Option<PortRange>,
}

/// Declares a packet fault struct: its own fields plus the common filter
/// fields, with unknown fields denied (serde's `flatten` cannot be combined
/// with `deny_unknown_fields`).
macro_rules! packet_fault {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            /// ingress, egress or both.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub direction: Option<Direction>,
            #[serde(default, skip_serializing_if = "Protocol::is_any")]
            pub protocol: Protocol,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub src: Option<Cidr>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub dst: Option<Cidr>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub src_port: Option<PortRange>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub dst_port: Option<PortRange>,
        }

        impl $name {
            pub fn filter(&self, default_direction: Direction) -> PacketFilter {
                PacketFilter {
                    direction: self.direction.unwrap_or(default_direction),
                    protocol: self.protocol,
                    src: self.src,
                    dst: self.dst,
                    src_port: self.src_port,
                    dst_port: self.dst_port,
                }
            }
        }
    };
}

packet_fault!(
    /// Drops matching packets.
    PacketDrop {}
);

packet_fault!(
    /// Flips bits in one byte of matching packets.
    PacketCorrupt {
        /// Which bytes may be hit: `payload` (default), `headers` (IP and
        /// transport headers) or `any`.
        #[serde(default, skip_serializing_if = "Region::is_payload")]
        region: Region,
        /// Byte offset into the region; random when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u16>,
        /// XOR mask for the byte; one random bit when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mask: Option<ByteMask>,
        /// Fix the checksums up so the corruption reaches the application;
        /// by default they are left wrong and the receiving stack drops the
        /// packet.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        fix_checksum: bool,
    }
);

packet_fault!(
    /// Sends a copy of matching packets as well as the original.
    PacketDuplicate {}
);

packet_fault!(
    /// Delays matching packets (egress; needs sch_fq on the device).
    PacketDelay {
        delay: Latency,
        /// Uniform half-width, or the standard deviation for `normal`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        jitter: Option<Latency>,
        #[serde(default, skip_serializing_if = "Distribution::is_uniform")]
        distribution: Distribution,
        /// Put sch_fq on the device if it lacks it (restored on removal).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        install_fq: bool,
    }
);

packet_fault!(
    /// Paces matching packets to `rate` (egress; needs sch_fq).
    BandwidthLimit {
        rate: Rate,
        /// Packets that would wait longer than this are dropped (default
        /// 200ms).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_delay: Option<Latency>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        install_fq: bool,
    }
);

packet_fault!(
    /// Cuts matching traffic in both directions; on a cgroup target also
    /// makes connect() towards `dst` fail at once with `errno` (default
    /// ENETUNREACH).
    Partition {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        errno: Option<Errno>,
    }
);

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Ingress,
    Egress,
    Both,
}

impl Direction {
    pub fn ingress(self) -> bool {
        matches!(self, Self::Ingress | Self::Both)
    }

    pub fn egress(self) -> bool {
        matches!(self, Self::Egress | Self::Both)
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Any,
    Tcp,
    Udp,
    /// ICMP or ICMPv6.
    Icmp,
}

impl Protocol {
    fn is_any(&self) -> bool {
        *self == Self::Any
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Region {
    #[default]
    Payload,
    Headers,
    Any,
}

impl Region {
    fn is_payload(&self) -> bool {
        *self == Self::Payload
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    #[default]
    Uniform,
    Normal,
}

impl Distribution {
    fn is_uniform(&self) -> bool {
        *self == Self::Uniform
    }
}

/// A non-zero XOR mask for one byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ByteMask(u8);

impl ByteMask {
    pub fn get(self) -> u8 {
        self.0
    }
}

impl<'de> Deserialize<'de> for ByteMask {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        u8::try_from(n)
            .ok()
            .filter(|m| *m != 0)
            .map(Self)
            .ok_or_else(|| {
                de::Error::custom(format_args!("invalid value: mask {n} must be 1 to 255"))
            })
    }
}

/// An inclusive port range: a number, or a string "80" or "1000-2000".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn single(self) -> Option<u16> {
        (self.first == self.last).then_some(self.first)
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.single() {
            Some(p) => s.serialize_u16(p),
            None => s.collect_str(&format_args!("{}-{}", self.first, self.last)),
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let bad = || {
            de::Error::custom(format_args!(
                "invalid value: port range {v} must be a port 1 to 65535 or \"first-last\""
            ))
        };
        let port = |n: Option<i64>| n.and_then(|n| u16::try_from(n).ok()).filter(|p| *p != 0);
        let (first, last) = match &v {
            Value::Number(n) => {
                let p = port(n.as_i64()).ok_or_else(bad)?;
                (p, p)
            }
            Value::String(s) => {
                let (a, b) = s.split_once('-').unwrap_or((s, s));
                let a = port(a.trim().parse().ok()).ok_or_else(bad)?;
                let b = port(b.trim().parse().ok()).ok_or_else(bad)?;
                (a, b)
            }
            _ => return Err(bad()),
        };
        if first > last {
            return Err(bad());
        }
        Ok(Self { first, last })
    }
}

/// A delay: above zero, at most 10 s (sch_fq's default horizon).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latency(Duration);

impl Latency {
    pub const MAX: Duration = Duration::from_secs(10);

    pub fn get(self) -> Duration {
        self.0
    }

    pub fn nanos(self) -> u64 {
        self.0.as_nanos() as u64
    }
}

impl Serialize for Latency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Latency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match humantime::parse_duration(&s) {
            Ok(d) if !d.is_zero() && d <= Self::MAX => Ok(Self(d)),
            Ok(_) => Err(de::Error::custom(format_args!(
                "invalid value: delay {s:?} must be above zero and at most 10s"
            ))),
            Err(e) => Err(de::Error::custom(format_args!(
                "invalid value: delay {s:?}: {e} (write e.g. \"50ms\", \"250us\")"
            ))),
        }
    }
}

/// A rate in bit/s: a number, or a string with a unit: "bit", "kbit",
/// "mbit", "gbit" (powers of 1000, as tc(8) reads them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate(u64);

impl Rate {
    pub fn bits_per_second(self) -> u64 {
        self.0
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let bits = match &v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => {
                let s = s.trim().to_ascii_lowercase();
                let digits_end = s
                    .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                    .unwrap_or(s.len());
                let (num, unit) = s.split_at(digits_end);
                let scale = match unit.trim() {
                    "" | "bit" | "bps" => Some(1.0),
                    "kbit" => Some(1e3),
                    "mbit" => Some(1e6),
                    "gbit" => Some(1e9),
                    _ => None,
                };
                num.parse::<f64>()
                    .ok()
                    .zip(scale)
                    .map(|(n, k)| (n * k).round() as u64)
            }
            _ => None,
        };
        match bits {
            Some(b) if (8..=1_000_000_000_000).contains(&b) => Ok(Self(b)),
            _ => Err(de::Error::custom(format_args!(
                "invalid value: rate {v} must be 8 bit/s to 1 Tbit/s, as bits per second or e.g. \"10mbit\", \"500kbit\", \"1gbit\""
            ))),
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
        let Fault::ConnectError { address, port, .. } = a.fault else {
            panic!("parsed as {:?}", a.fault)
        };
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
