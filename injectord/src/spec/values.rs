//! Value types of specs, each parsed into a form that cannot hold an
//! invalid value. Their error messages start with "invalid value" (see
//! [`crate::error::RpcError::from_spec_error`]).

use std::{fmt, net::IpAddr, time::Duration};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use serde_json::Value;

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
            // Also read for `jitter` and `max_delay`: the field path says
            // which, so the message does not call it a delay.
            Ok(_) => Err(de::Error::custom(format_args!(
                "invalid value: {s:?} must be above zero and at most 10s"
            ))),
            Err(e) => Err(de::Error::custom(format_args!(
                "invalid value: {s:?} is not a duration: {e} (write e.g. \"50ms\", \"250us\")"
            ))),
        }
    }
}

/// How long a pause lasts: above zero, at most [`Pause::MAX`] (an hour;
/// a longer stop is better written as a kill).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pause(Duration);

impl Pause {
    pub const MAX: Duration = Duration::from_secs(3600);

    pub fn get(self) -> Duration {
        self.0
    }
}

impl Serialize for Pause {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Pause {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match humantime::parse_duration(&s) {
            Ok(d) if !d.is_zero() && d <= Self::MAX => Ok(Self(d)),
            Ok(_) => Err(de::Error::custom(format_args!(
                "invalid value: pause {s:?} must be above zero and at most 1h"
            ))),
            Err(e) => Err(de::Error::custom(format_args!(
                "invalid value: pause {s:?} is not a duration: {e} (write e.g. \"500ms\", \"2s\", \"1m\")"
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

    /// Every address of one family (0.0.0.0/0 or ::/0).
    pub fn everything(v6: bool) -> Self {
        Self(if v6 {
            IpNet::V6(Default::default())
        } else {
            IpNet::V4(Default::default())
        })
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
