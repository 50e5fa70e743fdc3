//! What one packet fault asks of the kernel: its rule, and the rule
//! entries per direction once the target's hooks are known.

use injector_common::Trigger;
use injector_common::packet::{
    ACTION_CORRUPT, ACTION_DELAY, ACTION_DROP, ACTION_DUPLICATE, ACTION_RATE, OFFSET_RANDOM,
    PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, PacketRule, REGION_ANY,
    REGION_HEADERS, REGION_PAYLOAD, RULE_EVERY_FRAME, RULE_FIX_CHECKSUM, RULE_JITTER_NORMAL,
    RULE_PROTO_ICMP_ANY,
};

use super::{
    rules::RuleEntry,
    spec::{Distribution, Hook, PacketFault, PacketFilter, Protocol, Region},
};
use crate::{error::Error, family::Params as _, spec::values::PortRange};

/// Default for `bandwidth_limit.max_delay`: a queue of 200 ms, like a
/// shaper's (tbf's `latency`), rather than an unbounded backlog.
const DEFAULT_RATE_HORIZON_NS: u64 = 200_000_000;

/// What one packet fault asks of the kernel, before hooks are chosen.
#[derive(Clone, Debug)]
pub struct PacketPlan {
    pub kind: &'static str,
    pub filter: PacketFilter,
    /// The rule, without slot and trigger.
    pub rule: PacketRule,
    /// `partition`: the ingress side matches the mirrored filter.
    pub mirrored: bool,
    /// Needs sch_fq at the device root (delay, rate).
    pub needs_fq: bool,
    pub install_fq: bool,
    /// Where the spec wants ingress drops to run (interfaces only).
    pub hook: Option<Hook>,
}

impl PacketPlan {
    /// The kernel rule for a packet fault.
    pub fn of(fault: &PacketFault) -> Self {
        let filter = fault.filter();
        let mut rule = PacketRule {
            proto: filter.protocol.number(),
            flags: match filter.protocol {
                Protocol::Icmp => RULE_PROTO_ICMP_ANY,
                Protocol::All => RULE_EVERY_FRAME,
                _ => 0,
            },
            sport: range(filter.src_port),
            dport: range(filter.dst_port),
            offset: OFFSET_RANDOM,
            ..PacketRule::default()
        };
        let (mut needs_fq, mut install_fq, mut mirrored) = (false, false, false);
        match fault {
            PacketFault::Drop(_) => rule.action = ACTION_DROP,
            PacketFault::Partition(_) => {
                rule.action = ACTION_DROP;
                mirrored = true;
            }
            PacketFault::Duplicate(_) => rule.action = ACTION_DUPLICATE,
            PacketFault::Corrupt(c) => {
                rule.action = ACTION_CORRUPT;
                rule.region = match c.region {
                    Region::Payload => REGION_PAYLOAD,
                    Region::Headers => REGION_HEADERS,
                    Region::Any => REGION_ANY,
                };
                rule.offset = c.offset.map_or(OFFSET_RANDOM, u32::from);
                rule.xor_mask = c.mask.map_or(0, |m| m.get());
                if c.fix_checksum {
                    rule.flags |= RULE_FIX_CHECKSUM;
                }
            }
            PacketFault::Delay(d) => {
                rule.action = ACTION_DELAY;
                rule.delay_ns = d.delay.nanos();
                rule.jitter_ns = d.jitter.map_or(0, |j| j.nanos());
                if d.distribution == Distribution::Normal {
                    rule.flags |= RULE_JITTER_NORMAL;
                }
                needs_fq = true;
                install_fq = d.install_fq;
            }
            PacketFault::Rate(b) => {
                rule.action = ACTION_RATE;
                rule.rate_bytes = (b.rate.bits_per_second() / 8).max(1);
                rule.horizon_ns = b.max_delay.map_or(DEFAULT_RATE_HORIZON_NS, |d| d.nanos());
                needs_fq = true;
                install_fq = b.install_fq;
            }
        }
        Self {
            kind: fault.kind(),
            filter,
            rule,
            mirrored,
            needs_fq,
            install_fq,
            hook: fault.hook(),
        }
    }

    /// Refuses a corruption `offset` that lies outside its region in every
    /// packet a device with this MTU can carry: the fault could never fire.
    ///
    /// The MTU bounds a packet from its IP header on (VLAN tags and the
    /// Ethernet header are not counted in it, nor in the regions). The
    /// regions, as the programs measure them (`corrupt_position`):
    /// - `any`: the whole IP packet, so `offset` < MTU;
    /// - `payload`: what follows the headers, so `offset` < MTU minus the
    ///   shortest headers the filter lets through (IPv4's 20 bytes, IPv6's
    ///   40 when the addresses are IPv6; TCP 20, SCTP 12, UDP and ICMP 8,
    ///   other protocols none);
    /// - `headers`: the IP and transport headers, at most 60 + 60 bytes
    ///   for IPv4 (and TCP, both with all options), never more than the
    ///   MTU; IPv6 extension headers can take up all of it.
    ///
    /// A GSO packet (TSO, GRO) is larger than the MTU on its way through
    /// TC, but an offset means a byte of a packet on the wire, so the MTU
    /// is the bound that matters.
    pub fn check_mtu(&self, mtu: u32) -> Result<(), Error> {
        if self.rule.action != ACTION_CORRUPT || self.rule.offset == OFFSET_RANDOM {
            return Ok(());
        }
        let offset = self.rule.offset;
        let family = |v6: bool| {
            [self.filter.src, self.filter.dst]
                .iter()
                .flatten()
                .any(|c| matches!(c.net(), ipnet::IpNet::V6(_)) == v6)
        };
        // IPv6 extension headers, which the programs walk past, count as
        // headers: behind them an IPv6 header can be as long as the packet.
        let (ip_min, ip_max) = match (family(false), family(true)) {
            (true, _) => (20, 60),
            (false, true) => (40, mtu),
            (false, false) => (20, mtu),
        };
        let (l4_min, l4_max) = match self.filter.protocol {
            // Any protocol: TCP's headers are the longest; a protocol the
            // programs do not parse has none past IP.
            Protocol::Any => (0, 60),
            p => match p.number() {
                PROTO_TCP => (20, 60),
                PROTO_UDP | PROTO_ICMP | PROTO_ICMPV6 => (8, 8),
                PROTO_SCTP => (12, 12),
                _ => (0, 0),
            },
        };
        let (region, size) = match self.rule.region {
            REGION_ANY => ("the packet", mtu),
            REGION_HEADERS => ("the headers", mtu.min(ip_max + l4_max)),
            _ => ("the payload", mtu.saturating_sub(ip_min + l4_min)),
        };
        if offset < size {
            return Ok(());
        }
        Err(Error::InvalidValue(format!(
            "offset {offset} lies past the end of {region}, which is at most {size} bytes on this device (MTU {mtu}); this fault could never fire"
        ))
        .at("fault.offset"))
    }

    pub fn delays(&self) -> bool {
        matches!(self.rule.action, ACTION_DELAY | ACTION_RATE)
    }

    /// The rule entries to install: one per direction form. `ingress` and
    /// `egress` map a direction to the hook bits of the target kind.
    pub fn entries(&self, ingress: u8, egress: u8, slot: u32, trigger: Trigger) -> Vec<RuleEntry> {
        let rule = PacketRule {
            slot,
            trigger,
            ..self.rule
        };
        let f = &self.filter;
        let plain = |hooks| RuleEntry {
            hooks,
            src: f.src.map(|c| c.net()),
            dst: f.dst.map(|c| c.net()),
            rule,
        };
        let mut out = Vec::new();
        match (self.mirrored, f.direction.ingress(), f.direction.egress()) {
            (true, true, true) => {
                out.push(plain(egress));
                out.push(RuleEntry {
                    hooks: ingress,
                    src: f.dst.map(|c| c.net()),
                    dst: f.src.map(|c| c.net()),
                    rule: PacketRule {
                        sport: rule.dport,
                        dport: rule.sport,
                        ..rule
                    },
                });
            }
            (_, i, e) => out.push(plain(
                if i { ingress } else { 0 } | if e { egress } else { 0 },
            )),
        }
        out
    }
}

fn range(r: Option<PortRange>) -> [u16; 2] {
    r.map_or([0, u16::MAX], |r| [r.first, r.last])
}
