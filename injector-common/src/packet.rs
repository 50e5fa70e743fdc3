//! Packet faults: drop, corrupt, duplicate, delay and rate-limit packets at
//! XDP, TC and cgroup_skb.

use crate::{FAMILY_ANY, FAMILY_INET6, Prefix, Trigger};

/// Program names (the eBPF functions).
pub const PACKET_XDP: &str = "packet_xdp";
pub const PACKET_TC_INGRESS: &str = "packet_tc_ingress";
pub const PACKET_TC_EGRESS: &str = "packet_tc_egress";
pub const PACKET_CGROUP_INGRESS: &str = "packet_cgroup_ingress";
pub const PACKET_CGROUP_EGRESS: &str = "packet_cgroup_egress";
pub const PROGRAMS: &[&str] = &[
    PACKET_XDP,
    PACKET_TC_INGRESS,
    PACKET_TC_EGRESS,
    PACKET_CGROUP_INGRESS,
    PACKET_CGROUP_EGRESS,
];

/// Map names (the eBPF statics).
pub const PACKET_TARGETS: &str = "PACKET_TARGETS";
pub const PACKET_RULES: &str = "PACKET_RULES";
pub const PACKET_PORTS: &str = "PACKET_PORTS";
pub const PACKET_SRC: &str = "PACKET_SRC";
pub const PACKET_DST: &str = "PACKET_DST";
pub const RATE_STATE: &str = "RATE_STATE";
pub const DELAY_HIST: &str = "DELAY_HIST";
/// An interface's rules, as [`RuleSet`]s: [`RULE_SETS`] of them, the one
/// [`IFACE_ACTIVE`] names in force.
pub const IFACE_RULES: &str = "IFACE_RULES";
/// `[0]`: an [`ActiveSet`], which rule set is in force.
pub const IFACE_ACTIVE: &str = "IFACE_ACTIVE";
/// The rules of an interface's rule sets: rule `i` of set `s` at
/// `s * MAX_PACKET_RULES + i`.
pub const IFACE_RULE_TABLE: &str = "IFACE_RULE_TABLE";
pub const MAPS: &[&str] = &[
    IFACE_RULES,
    IFACE_ACTIVE,
    IFACE_RULE_TABLE,
    PACKET_TARGETS,
    PACKET_RULES,
    PACKET_PORTS,
    PACKET_SRC,
    PACKET_DST,
    RATE_STATE,
    DELAY_HIST,
];

/// Packet rules per target: a rule is one bit in a `u64` candidate mask.
pub const MAX_PACKET_RULES: u32 = 64;

/// Where a packet program runs. Each rule carries the set of hooks it is
/// active at (`PacketTarget::masks[hook]`).
pub const HOOK_XDP: usize = 0;
pub const HOOK_TC_INGRESS: usize = 1;
pub const HOOK_TC_EGRESS: usize = 2;
pub const HOOK_CGROUP_INGRESS: usize = 3;
pub const HOOK_CGROUP_EGRESS: usize = 4;
pub const NR_HOOKS: usize = 8;

/// The rules of one target, by hook: bit `i` of `masks[hook]` says that
/// rule `i` of the target applies at `hook`. A hook whose mask is zero costs
/// one hash lookup per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketTarget {
    pub masks: [u64; NR_HOOKS],
    /// Rules whose source (destination) prefix the LPM trie should check
    /// first: set by the daemon only when a target has enough prefixed
    /// rules that pruning candidates beats checking each rule's prefix.
    pub src_filtered: u64,
    pub dst_filtered: u64,
    /// Rules by protocol class ([`proto_class`]): a packet's candidates are
    /// cut to the rules for its protocol before any rule is looked up.
    pub proto_masks: [u64; NR_PROTO_CLASSES],
    /// Rules with a single destination port that the port index holds (set
    /// when a target has many): candidates among them are cut to those for
    /// the packet's port by one lookup in `PACKET_PORTS`.
    pub port_indexed: u64,
}

/// Rule sets an interface's object holds, used in turn: the one in force,
/// and the ones the daemon writes the next into. A set is written again
/// only after an RCU grace period since it was last in force, so no packet
/// ever sees a half-written set; with four, three changes in a row (an
/// inject and a remove a moment apart, say) never wait for one (a grace
/// period takes milliseconds). A power of two: the programs take it as a mask.
pub const RULE_SETS: u32 = 4;
const _: () = assert!(RULE_SETS.is_power_of_two());

/// Destination-port buckets of [`RuleSet::dport_masks`] (port % 64).
pub const DPORT_BUCKETS: usize = 64;

/// The candidate masks of an interface's rules, which the XDP and TC
/// programs reach with array lookups the verifier turns into plain loads:
/// a packet's candidates are the rules of its hook, protocol class and
/// destination-port bucket, and a packet of a port no rule is for stops
/// there. The rules themselves sit in [`IFACE_RULE_TABLE`] (one array
/// lookup each: a pointer into one large value at a variable offset
/// defeated the verifier's state pruning).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleSet {
    pub masks: [u64; NR_HOOKS],
    pub proto_masks: [u64; NR_PROTO_CLASSES],
    /// Bit `i` of `dport_masks[p % 64]`: rule `i` may match destination
    /// port `p` (a rule without a port filter, or with a range of 64 ports
    /// or more, is in every bucket).
    pub dport_masks: [u64; DPORT_BUCKETS],
    /// Per hook: the hook's first rule if that rule drops every IP packet
    /// (no protocol, port or prefix filter). Every IP packet's first
    /// candidate is then that rule, so the programs evaluate it before
    /// parsing anything past the ethertype, from this copy: a 100% drop of
    /// a whole device costs little more than a bare `XDP_DROP`.
    pub catch_all: [CatchAll; NR_HOOKS],
    /// Per hook: the rules that take frames that are not IP as well
    /// ([`RULE_EVERY_FRAME`]), a non-IP frame's only candidates.
    pub frame_masks: [u64; NR_HOOKS],
}

/// Hooks an interface's programs run at: [`HOOK_XDP`], [`HOOK_TC_INGRESS`]
/// and [`HOOK_TC_EGRESS`].
pub const NR_IFACE_HOOKS: usize = 3;

/// What an interface's programs read first, in one array lookup: which
/// rule set is in force and, per hook, a catch-all drop rule that fires
/// at every event (probability 1, no `after`, `every_nth` or
/// `max_activations`; a TTL is fine), so a 100% drop of a device costs
/// one lookup, the ethertype, the lease and the counters: no rule set.
///
/// A packet reads the fields the daemon changes one at a time, each
/// write changing one field (see `RuleSets::publish` in the daemon): a
/// `fast` entry is switched on (its `mask` set) only while the set in
/// force has that rule first at that hook, switched off before a set
/// without it is put in force, and its other fields are rewritten only
/// while it is off and a grace period after it was last on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActiveSet {
    /// The index of the [`RuleSet`] in force.
    pub set: u32,
    pub _pad: u32,
    /// Per hook (XDP first, so that it shares the cache line with `set`):
    /// `mask` 0 when the hook has no such rule.
    pub fast: [CatchAll; NR_IFACE_HOOKS],
}

/// A hook's catch-all drop rule (see [`RuleSet::catch_all`]), copied out
/// of the rule table: the fast path reads it from the rule set it already
/// has in hand, one dependent load fewer per packet, and takes its index
/// from `mask` without a bit scan.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CatchAll {
    /// The rule's bit in [`RuleSet::masks`]; 0: the hook has no such rule.
    pub mask: u64,
    /// The rule's fault slot.
    pub slot: u32,
    /// 1: the rule takes every frame ([`RULE_EVERY_FRAME`]), so the
    /// programs decide without reading the ethertype; 0: IP packets only.
    pub every_frame: u32,
    pub trigger: Trigger,
}

impl Default for RuleSet {
    fn default() -> Self {
        Self {
            masks: [0; NR_HOOKS],
            proto_masks: [0; NR_PROTO_CLASSES],
            dport_masks: [0; DPORT_BUCKETS],
            catch_all: [CatchAll::default(); NR_HOOKS],
            frame_masks: [0; NR_HOOKS],
        }
    }
}

/// Key of the destination-port index: the value is the mask of the
/// target's indexed rules for that port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub target: u64,
    pub port: u16,
    pub _pad: [u8; 6],
}

/// Protocol classes of [`PacketTarget::proto_masks`]. The protocols that
/// carry bulk traffic on an NFV link (TCP, UDP, SCTP and the tunnels GRE,
/// ESP and IP-in-IP) each have a class, so a rule for one of them is never
/// a candidate for the others' packets. The rest (VRRP, OSPF, IGMP, AH,
/// ...: control protocols at a few packets per second) share class 0, and
/// each such rule checks its own protocol number.
pub const NR_PROTO_CLASSES: usize = 8;
// The programs index the classes with `& (NR_PROTO_CLASSES - 1)`.
const _: () = assert!(NR_PROTO_CLASSES.is_power_of_two());

/// The [`PacketTarget::proto_masks`] class of an IP protocol number (the
/// IPv4 protocol or the IPv6 next header past the extension headers).
#[inline(always)]
pub fn proto_class(proto: u8) -> usize {
    match proto {
        PROTO_TCP => 1,
        PROTO_UDP => 2,
        PROTO_ICMP | PROTO_ICMPV6 => 3,
        PROTO_SCTP => 4,
        PROTO_GRE => 5,
        PROTO_ESP => 6,
        PROTO_IPIP | PROTO_IPV6 => 7,
        _ => 0,
    }
}

/// Whether packets of `proto` carry ports where TCP has them (the first
/// four bytes of the transport header), which is what the port filters
/// and the port index match.
#[inline(always)]
pub fn has_ports(proto: u8) -> bool {
    matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP)
}

/// Key of the packet rule map: (target, rule index 0..64).
///
/// Targets are cgroup ids for cgroup_skb programs and 0 for the programs
/// of a per-interface object (which has maps of its own).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PacketRuleKey {
    pub target: u64,
    pub index: u32,
    pub _pad: u32,
}

/// Data of an LPM-trie key for source or destination prefixes: the target
/// (big-endian, always fully matched) then an IPv6 address, IPv4 mapped as
/// `::ffff:a.b.c.d`. The value is the mask of the target's rules whose
/// prefix covers the key's prefix, so the longest match yields every rule
/// that matches the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LpmData {
    pub target: [u8; 8],
    /// Network-order words.
    pub addr: [u32; 4],
}

/// Prefix length of an LPM key that matches any address of its target.
pub const LPM_TARGET_BITS: u32 = 64;
/// Prefix length of an LPM key for a full address.
pub const LPM_FULL_BITS: u32 = 64 + 128;

pub const ACTION_DROP: u8 = 1;
pub const ACTION_CORRUPT: u8 = 2;
pub const ACTION_DUPLICATE: u8 = 3;
pub const ACTION_DELAY: u8 = 4;
pub const ACTION_RATE: u8 = 5;

/// IP protocol numbers (IANA) with a meaning here. A rule filters on any
/// number but these: 0 stands for "any" in a rule (0 on the wire is
/// IPv6's hop-by-hop header, which the parser walks past, as it does the
/// other [`IPV6_EXT_HEADERS`]).
pub const PROTO_ANY: u8 = 0;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_IPV6: u8 = 41;
pub const PROTO_GRE: u8 = 47;
pub const PROTO_ESP: u8 = 50;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

/// IPv6 extension headers the parser walks past to find the protocol:
/// hop-by-hop options, routing, fragment, destination options. A packet
/// can never show them as its protocol, so no rule may ask for them.
pub const IPV6_HOPOPTS: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_DSTOPTS: u8 = 60;
pub const IPV6_EXT_HEADERS: [u8; 4] = [IPV6_HOPOPTS, IPV6_ROUTING, IPV6_FRAGMENT, IPV6_DSTOPTS];
/// At most this many extension headers are walked past (one of each is
/// the usual worst case); behind a longer chain the protocol reads as the
/// extension header where the walk stopped, which only `any` matches.
pub const IPV6_EXT_STEPS: usize = 4;

/// Where `packet_corrupt` flips bits.
pub const REGION_PAYLOAD: u8 = 0;
pub const REGION_HEADERS: u8 = 1;
pub const REGION_ANY: u8 = 2;

/// Rule flags.
pub const RULE_FIX_CHECKSUM: u8 = 1;
pub const RULE_JITTER_NORMAL: u8 = 2;
/// `icmp` matches ICMP and ICMPv6.
pub const RULE_PROTO_ICMP_ANY: u8 = 4;
/// A drop without filters on an interface that takes frames that are not
/// IP as well (ARP, LLDP, LACP, ...), as a pulled cable or netem's `loss
/// 100%` would (`"protocol": "all"`).
pub const RULE_EVERY_FRAME: u8 = 8;

/// Corrupt at a random offset of the region.
pub const OFFSET_RANDOM: u32 = u32::MAX;

/// A packet fault rule. Addresses are matched through the LPM tries;
/// protocol and ports here.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketRule {
    /// Fault slot: index into the statistics and trigger maps.
    pub slot: u32,
    pub action: u8,
    /// IP protocol number, or [`PROTO_ANY`].
    pub proto: u8,
    /// `RULE_*` flags.
    pub flags: u8,
    /// Corruption region (`REGION_*`).
    pub region: u8,
    /// Inclusive source and destination port ranges (`[0, 65535]`: any).
    pub sport: [u16; 2],
    pub dport: [u16; 2],
    /// Corruption: byte offset into the region, or [`OFFSET_RANDOM`].
    pub offset: u32,
    /// Corruption: XOR mask for the byte (0: one random bit).
    pub xor_mask: u8,
    pub _pad: [u8; 3],
    /// Delay: base delay and jitter (uniform half-width or normal sigma).
    pub delay_ns: u64,
    pub jitter_ns: u64,
    /// Rate limit in bytes per second.
    pub rate_bytes: u64,
    /// Rate limit: packets that would leave later than this are dropped.
    pub horizon_ns: u64,
    pub trigger: Trigger,
    /// Source and destination prefixes, IPv4 as `::ffff:a.b.c.d/96+len`,
    /// checked on every candidate; the LPM tries only prune candidates
    /// first when a target has many prefixed rules.
    pub src: AddrMask,
    pub dst: AddrMask,
}

/// A prefix as an address and a mask of its bits, both in network order:
/// a packet's address lies in it when `(address ^ addr) & mask` is zero in
/// every word. Four XORs and ANDs without a branch, where comparing by
/// prefix length costs a shift and two branches per word; the daemon
/// computes the mask once per rule ([`AddrMask::of`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrMask {
    pub addr: [u32; 4],
    pub mask: [u32; 4],
}

impl AddrMask {
    /// Every address (an all-zero mask).
    pub const ANY: Self = Self {
        addr: [0; 4],
        mask: [0; 4],
    };

    /// The mask form of an IPv6 (or IPv4-mapped) prefix, or of
    /// [`Prefix::ANY`]; `None` for a prefix of another family, which no
    /// packet address (always IPv6 or IPv4-mapped) could match.
    pub fn of(prefix: &Prefix) -> Option<Self> {
        match prefix.family {
            FAMILY_ANY => Some(Self::ANY),
            FAMILY_INET6 => {
                let len = u32::from(prefix.prefix_len).min(128);
                let mut mask = [0u32; 4];
                for (i, word) in mask.iter_mut().enumerate() {
                    let bits = len.saturating_sub(32 * i as u32).min(32);
                    let host = if bits == 0 {
                        0
                    } else {
                        u32::MAX << (32 - bits)
                    };
                    *word = host.to_be();
                }
                let addr = core::array::from_fn(|i| prefix.addr[i] & mask[i]);
                Some(Self { addr, mask })
            }
            _ => None,
        }
    }

    /// Whether `addr` (IPv6 or IPv4-mapped, network-order words) lies in
    /// the prefix.
    #[inline(always)]
    pub fn contains(&self, addr: &[u32; 4]) -> bool {
        ((addr[0] ^ self.addr[0]) & self.mask[0])
            | ((addr[1] ^ self.addr[1]) & self.mask[1])
            | ((addr[2] ^ self.addr[2]) & self.mask[2])
            | ((addr[3] ^ self.addr[3]) & self.mask[3])
            == 0
    }
}

impl PacketRule {
    /// Whether the rule drops frames that are not IP as well.
    pub fn takes_every_frame(&self) -> bool {
        self.flags & RULE_EVERY_FRAME != 0 && self.drops_everything()
    }

    /// Whether the rule drops every IP packet it sees: no protocol, port
    /// or prefix filter.
    pub fn drops_everything(&self) -> bool {
        self.action == ACTION_DROP
            && self.proto == PROTO_ANY
            && self.sport == [0, u16::MAX]
            && self.dport == [0, u16::MAX]
            && self.src.mask == [0; 4]
            && self.dst.mask == [0; 4]
    }

    /// Whether the rule's protocol and port filters accept a packet.
    #[inline(always)]
    pub fn accepts(&self, proto: u8, sport: u16, dport: u16) -> bool {
        let proto_ok = self.proto == PROTO_ANY
            || self.proto == proto
            || (self.flags & RULE_PROTO_ICMP_ANY != 0
                && (proto == PROTO_ICMP || proto == PROTO_ICMPV6));
        proto_ok
            && sport >= self.sport[0]
            && sport <= self.sport[1]
            && dport >= self.dport[0]
            && dport <= self.dport[1]
    }
}

/// Log2 histogram buckets of injected delay, in microseconds: bucket `k`
/// counts delays in `[2^k, 2^(k+1))` µs (bucket 0 also takes delays under
/// 1 µs).
pub const DELAY_BUCKETS: usize = 32;

/// Per-CPU histogram of the delay a fault injected.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelayHistogram {
    pub buckets: [u64; DELAY_BUCKETS],
    pub sum_ns: u64,
}

impl Default for DelayHistogram {
    fn default() -> Self {
        Self {
            buckets: [0; DELAY_BUCKETS],
            sum_ns: 0,
        }
    }
}

/// Bit of `skb->mark` that tags a duplicate on its way back through our own
/// TC program (cleared there, so nobody else sees it).
pub const DUPLICATE_MARK: u32 = 1 << 30;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] plain data with explicit padding
    // and no invalid bit patterns.
    unsafe impl aya::Pod for super::PacketTarget {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PacketRuleKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LpmData {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PacketRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DelayHistogram {}
    // SAFETY: as above (arrays of u64).
    unsafe impl aya::Pod for super::RuleSet {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ActiveSet {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6(words: [u32; 4], len: u8) -> Prefix {
        Prefix {
            family: FAMILY_INET6,
            prefix_len: len,
            _pad: [0; 2],
            addr: words,
        }
    }

    /// The mask form agrees with comparing by prefix length, for every
    /// length and for addresses that differ in one bit anywhere.
    #[test]
    fn addr_mask_agrees_with_prefix_len() {
        let base: [u32; 4] = [
            0x2001_0db8u32.to_be(),
            0x1234_5678u32.to_be(),
            0,
            0xffff_0a00u32.to_be(),
        ];
        for len in 0..=128u8 {
            let mut net = base;
            // Bits past the length are zero in a Prefix.
            for (i, w) in net.iter_mut().enumerate() {
                let bits = u32::from(len).saturating_sub(32 * i as u32).min(32);
                let keep = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                *w = (u32::from_be(*w) & keep).to_be();
            }
            let p = v6(net, len);
            let m = AddrMask::of(&p).expect("inet6");
            for bit in 0..128u32 {
                let mut a = base;
                let w = (bit / 32) as usize;
                a[w] = (u32::from_be(a[w]) ^ (1 << (31 - bit % 32))).to_be();
                assert_eq!(
                    m.contains(&a),
                    p.contains(FAMILY_INET6, &a),
                    "len {len} bit {bit}"
                );
            }
            assert_eq!(
                m.contains(&base),
                p.contains(FAMILY_INET6, &base),
                "len {len}"
            );
        }
        assert!(AddrMask::of(&Prefix::ANY).expect("any").contains(&base));
        let v4 = Prefix {
            family: crate::FAMILY_INET,
            ..Prefix::ANY
        };
        assert_eq!(AddrMask::of(&v4), None);
    }
}
