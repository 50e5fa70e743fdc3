//! Packet fault parameters: each type's own fields plus the common
//! filter (direction, protocol, addresses, ports).

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, de};
use serde_json::Value;

use crate::{
    errno::Errno,
    family::{Params, SpecError, fields_of, json_with_type},
    spec::values::{Cidr, Latency, PortRange, Rate},
};

/// A packet fault, one variant per type.
#[derive(Clone, Debug, PartialEq)]
pub enum PacketFault {
    Drop(PacketDrop),
    Corrupt(PacketCorrupt),
    Duplicate(PacketDuplicate),
    Delay(PacketDelay),
    Rate(BandwidthLimit),
    Partition(Partition),
}

/// The fault types, as `fault.type` spells them.
pub const TYPES: &[&str] = &[
    "packet_drop",
    "packet_corrupt",
    "packet_duplicate",
    "packet_delay",
    "bandwidth_limit",
    "partition",
];

impl PacketFault {
    /// Parses the fields of a fault of type `kind` (one of [`TYPES`]).
    /// Fields that each parse but could never match a packet together are
    /// refused here (see [`PacketFilter::check`]).
    pub fn parse(kind: &str, value: Value) -> Result<Self, SpecError> {
        fn p<T: for<'de> Deserialize<'de>>(v: Value) -> Result<T, SpecError> {
            Ok(serde_path_to_error::deserialize(v)?)
        }
        let fault = match kind {
            "packet_corrupt" => Self::Corrupt(p(value)?),
            "packet_duplicate" => Self::Duplicate(p(value)?),
            "packet_delay" => Self::Delay(p(value)?),
            "bandwidth_limit" => Self::Rate(p(value)?),
            "partition" => Self::Partition(p(value)?),
            // The registry only hands us our own types.
            _ => Self::Drop(p(value)?),
        };
        fault.filter().check()?;
        if fault.filter().protocol == Protocol::All && !matches!(fault, Self::Drop(_)) {
            return Err(SpecError::Never {
                field: "protocol",
                message: format!(
                    "\"all\" (every frame, ARP and other frames that are not IP included) is for packet_drop; a {} acts on IP packets: use \"any\"",
                    fault.kind()
                ),
            });
        }
        if fault.hook().is_some() && !fault.filter().direction.ingress() {
            return Err(SpecError::Never {
                field: "hook",
                message: "hook chooses where ingress drops run, and this fault has no ingress side (\"direction\": \"egress\"); drop hook, or set \"direction\" to \"ingress\" or \"both\"".into(),
            });
        }
        Ok(fault)
    }

    /// The fields of a fault of type `kind`.
    pub fn fields(kind: &str) -> &'static [&'static str] {
        match kind {
            "packet_corrupt" => fields_of::<PacketCorrupt>(),
            "packet_duplicate" => fields_of::<PacketDuplicate>(),
            "packet_delay" => fields_of::<PacketDelay>(),
            "bandwidth_limit" => fields_of::<BandwidthLimit>(),
            "partition" => fields_of::<Partition>(),
            _ => fields_of::<PacketDrop>(),
        }
    }

    /// The ingress hook the spec asks for, if any.
    pub fn hook(&self) -> Option<Hook> {
        match self {
            Self::Drop(f) => f.hook,
            Self::Partition(f) => f.hook,
            _ => None,
        }
    }

    /// The packet filter, with the type's default direction.
    pub fn filter(&self) -> PacketFilter {
        match self {
            Self::Drop(f) => f.filter(Direction::Egress),
            Self::Corrupt(f) => f.filter(Direction::Egress),
            Self::Duplicate(f) => f.filter(Direction::Egress),
            Self::Delay(f) => f.filter(Direction::Egress),
            Self::Rate(f) => f.filter(Direction::Egress),
            Self::Partition(f) => f.filter(Direction::Both),
        }
    }
}

impl Params for PacketFault {
    fn kind(&self) -> &'static str {
        match self {
            Self::Drop(_) => "packet_drop",
            Self::Corrupt(_) => "packet_corrupt",
            Self::Duplicate(_) => "packet_duplicate",
            Self::Delay(_) => "packet_delay",
            Self::Rate(_) => "bandwidth_limit",
            Self::Partition(_) => "partition",
        }
    }

    fn to_json(&self) -> Value {
        let kind = self.kind();
        match self {
            Self::Drop(f) => json_with_type(kind, f),
            Self::Corrupt(f) => json_with_type(kind, f),
            Self::Duplicate(f) => json_with_type(kind, f),
            Self::Delay(f) => json_with_type(kind, f),
            Self::Rate(f) => json_with_type(kind, f),
            Self::Partition(f) => json_with_type(kind, f),
        }
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

impl PacketFilter {
    /// Refuses a filter no packet can match: addresses of two families (a
    /// packet has one), or ports on a protocol without them (ICMP, VRRP,
    /// GRE, ...; the programs read ports from TCP, UDP and SCTP only).
    fn check(&self) -> Result<(), SpecError> {
        if self.protocol == Protocol::All {
            let filter = [
                ("src", self.src.is_some()),
                ("dst", self.dst.is_some()),
                ("src_port", self.src_port.is_some()),
                ("dst_port", self.dst_port.is_some()),
            ]
            .into_iter()
            .find_map(|(field, set)| set.then_some(field));
            if let Some(field) = filter {
                return Err(SpecError::Never {
                    field,
                    message: format!(
                        "{field} with \"protocol\": \"all\": frames that are not IP (ARP, LLDP, ...) have no {}, so only IP packets could match; use \"any\"",
                        if field.ends_with("port") {
                            "ports"
                        } else {
                            "addresses"
                        }
                    ),
                });
            }
        }
        if let (Some(src), Some(dst)) = (self.src, self.dst) {
            let family = |c: Cidr| match c.net() {
                IpNet::V4(_) => "IPv4",
                IpNet::V6(_) => "IPv6",
            };
            if family(src) != family(dst) {
                return Err(SpecError::Never {
                    field: "dst",
                    message: format!(
                        "dst {} is {} but src {} is {}: a packet's addresses are of one family",
                        dst.net(),
                        family(dst),
                        src.net(),
                        family(src)
                    ),
                });
            }
        }
        if !self.protocol.has_ports() {
            let port = [("src_port", self.src_port), ("dst_port", self.dst_port)]
                .into_iter()
                .find_map(|(field, range)| range.map(|_| field));
            if let Some(field) = port {
                let written = serde_json::to_string(&self.protocol).unwrap_or_default();
                return Err(SpecError::Never {
                    field,
                    message: format!(
                        "{field} with \"protocol\": {written}: {} has no ports (they apply to tcp, udp and sctp)",
                        self.protocol.to_string().to_uppercase()
                    ),
                });
            }
        }
        Ok(())
    }
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
    PacketDrop {
        /// Where ingress drops run on an interface; see [`Hook`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hook: Option<Hook>,
    }
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
        /// Where the ingress half runs on an interface; see [`Hook`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hook: Option<Hook>,
    }
);

/// Where an interface's ingress drops run: `xdp` (before the kernel builds
/// an skb: the line-rate path for frames from a NIC) or `tc`. Without it:
/// XDP, but TC on a veth or where another program holds the device's XDP.
/// A veth receives skbs, which its XDP path turns back into frames on a
/// NAPI path, for every packet, targeted or not: slower drops and slower
/// untargeted flows than TC (docs/design.md, "XDP or TC at ingress").
/// `xdp` still pays off on a veth fed by XDP redirects. Faults other than
/// drops always run at TC.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    Xdp,
    Tc,
}

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

/// `any`, `tcp`, `udp`, `icmp`, another protocol's name or any IP protocol
/// number: see [`super::protocol`].
pub use super::protocol::Protocol;

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
