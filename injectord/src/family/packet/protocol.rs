//! The `protocol` filter of packet faults: `any`, `all`, a name (`"tcp"`,
//! `"vrrp"`, `"sctp"`, ...) or an IP protocol number (`112`), matched on
//! the IPv4 protocol field and on the IPv6 next header past the extension
//! headers the programs walk (see `injector-ebpf/src/packet/parse.rs`).
//! A spec reads back as it was written: a name as that name, a number as
//! that number. `any` is any IP packet; `all` is every frame, ARP and the
//! other frames that are not IP included, as a pulled cable or netem's
//! `loss 100%` would: for drops of a whole interface (see
//! [`super::spec::PacketFilter`]).

use std::fmt;

use injector_common::packet::{IPV6_EXT_HEADERS, PROTO_ANY, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Which IP protocol a packet fault matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    Any,
    /// Every frame, IP or not (`"all"`).
    All,
    Tcp,
    Udp,
    /// ICMP or ICMPv6 (`"icmp"`; `"icmpv6"` and `1` are one of them).
    Icmp,
    /// Another protocol by name, from [`NAMES`].
    Named {
        name: &'static str,
        number: u8,
    },
    /// A protocol by number, as written in the spec.
    Number(u8),
}

/// Protocols known by name beyond tcp, udp and icmp: IANA's keywords
/// (lower case) and the aliases operators write. What NFV runs: VRRP
/// (keepalived), SCTP (S1AP, NGAP, Diameter), GRE and ESP/AH tunnels,
/// OSPF, PIM and IGMP. GTP-U is UDP port 2152 (`"protocol": "udp",
/// "dst_port": 2152`).
pub const NAMES: &[(&str, u8)] = &[
    ("igmp", 2),
    ("ipip", 4),
    ("ipencap", 4),
    ("ipv6", 41),
    ("gre", 47),
    ("esp", 50),
    ("ah", 51),
    ("icmpv6", 58),
    ("ipv6-icmp", 58),
    ("ipv6-nonxt", 59),
    ("eigrp", 88),
    ("ospf", 89),
    ("ospfigp", 89),
    ("pim", 103),
    ("vrrp", 112),
    ("carp", 112),
    ("l2tp", 115),
    ("isis", 124),
    ("sctp", 132),
    ("udplite", 136),
    ("mpls-in-ip", 137),
];

impl Protocol {
    pub(crate) fn is_any(&self) -> bool {
        *self == Self::Any
    }

    /// The protocol number a kernel rule carries ([`PROTO_ANY`] for any;
    /// `icmp` carries ICMP's and a flag for ICMPv6).
    pub fn number(self) -> u8 {
        match self {
            Self::Any | Self::All => PROTO_ANY,
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
            Self::Icmp => PROTO_ICMP,
            Self::Named { number, .. } | Self::Number(number) => number,
        }
    }

    /// Whether the filter lets through packets that have ports (TCP, UDP
    /// and SCTP, whose ports sit where TCP's do): `src_port` and
    /// `dst_port` can match only those.
    pub fn has_ports(self) -> bool {
        self == Self::Any || injector_common::packet::has_ports(self.number())
    }

    /// `protocol` from a name (case-insensitive) or a number.
    fn parse_name(s: &str) -> Option<Self> {
        let lower = s.to_ascii_lowercase();
        Some(match lower.as_str() {
            "any" => Self::Any,
            "all" => Self::All,
            "tcp" => Self::Tcp,
            "udp" => Self::Udp,
            "icmp" => Self::Icmp,
            other => {
                let &(name, number) = NAMES.iter().find(|(n, _)| *n == other)?;
                Self::Named { name, number }
            }
        })
    }

    fn from_number(n: i64) -> Result<Self, String> {
        let Ok(number) = u8::try_from(n) else {
            return Err(format!(
                "invalid value: protocol {n} is not an IP protocol number (0 to 255)"
            ));
        };
        if IPV6_EXT_HEADERS.contains(&number) {
            return Err(format!(
                "invalid value: protocol {number} is an IPv6 extension header (hop-by-hop 0, routing 43, fragment 44, destination options 60), which the filter walks past to the protocol behind it; name that one instead, or \"any\""
            ));
        }
        if number == 255 {
            return Err("invalid value: protocol 255 is reserved by IANA".to_string());
        }
        Ok(Self::Number(number))
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::All => f.write_str("all"),
            Self::Tcp => f.write_str("tcp"),
            Self::Udp => f.write_str("udp"),
            Self::Icmp => f.write_str("icmp"),
            Self::Named { name, .. } => f.write_str(name),
            Self::Number(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Number(n) => s.serialize_u8(*n),
            other => s.collect_str(other),
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Protocol;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an IP protocol name (\"tcp\", \"vrrp\", ...) or number 1 to 254")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Protocol, E> {
                Protocol::parse_name(s).ok_or_else(|| {
                    let names: Vec<&str> = ["any", "all", "tcp", "udp", "icmp"]
                        .into_iter()
                        .chain(NAMES.iter().map(|(n, _)| *n))
                        .collect();
                    E::custom(format_args!(
                        "invalid value: protocol {s:?} is not a protocol name this filter knows ({}); any other IP protocol goes by its number, e.g. 112",
                        names.join(", ")
                    ))
                })
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Protocol, E> {
                Protocol::from_number(n).map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Protocol, E> {
                Protocol::from_number(i64::try_from(n).unwrap_or(i64::MAX)).map_err(E::custom)
            }

            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Protocol, E> {
                Err(E::custom(format_args!(
                    "invalid value: protocol {n} is not an IP protocol number (0 to 255)"
                )))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn parse(v: Value) -> Result<Protocol, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn names_and_numbers_read_back_as_written() {
        for v in [
            json!("tcp"),
            json!("icmp"),
            json!("vrrp"),
            json!("sctp"),
            json!("ipv6-icmp"),
            json!(112),
            json!(6),
            json!(253),
        ] {
            let p = parse(v.clone()).unwrap();
            assert_eq!(serde_json::to_value(p).unwrap(), v);
        }
        assert_eq!(parse(json!("VRRP")).unwrap().number(), 112);
        assert_eq!(parse(json!("gre")).unwrap().number(), 47);
        assert_eq!(parse(json!(132)).unwrap().number(), 132);
        assert_eq!(parse(json!("any")).unwrap(), Protocol::Any);
        assert_eq!(parse(json!("all")).unwrap(), Protocol::All);
        assert_eq!(serde_json::to_value(Protocol::All).unwrap(), json!("all"));
    }

    #[test]
    fn ports_go_with_tcp_udp_and_sctp() {
        for (v, ports) in [
            (json!("any"), true),
            (json!("all"), false),
            (json!("tcp"), true),
            (json!(17), true),
            (json!("sctp"), true),
            (json!("icmp"), false),
            (json!("vrrp"), false),
            (json!(47), false),
        ] {
            assert_eq!(parse(v.clone()).unwrap().has_ports(), ports, "{v}");
        }
    }

    #[test]
    fn what_no_packet_shows_is_refused() {
        for v in [
            json!("carrier-pigeon"),
            json!(256),
            json!(-1),
            json!(0),
            json!(43),
            json!(44),
            json!(60),
            json!(255),
            json!(6.5),
        ] {
            let err = parse(v.clone()).unwrap_err();
            assert!(err.starts_with("invalid value"), "{v}: {err}");
        }
        assert!(parse(json!(true)).is_err());
    }
}
