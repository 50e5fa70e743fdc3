//! Types shared by the eBPF programs and the daemon.
//!
//! Everything here is `#[repr(C)]` plain data with explicit padding, so the
//! kernel and user space agree on the layout byte for byte.
#![no_std]

/// Number of fault slots. A slot indexes the per-CPU statistics and the
/// shared trigger state; the daemon allocates one per active fault.
pub const MAX_FAULTS: u32 = 16384;

/// Maximum number of `(attached cgroup, port)` rules in the connect map.
pub const MAX_CONNECT_RULES: u32 = MAX_FAULTS;

/// Identifies the cgroup an attachment of a cgroup program belongs to.
///
/// Lives in cgroup local storage: the kernel keeps one per (cgroup, attach
/// type) the program is attached to, and the daemon writes the cgroup's id
/// there right after attaching. A program therefore learns which attachment
/// it runs for in O(1), whatever the depth of the task's own cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttachInfo {
    pub cgroup_id: u64,
}

/// Key of the connect rule map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnectKey {
    /// cgroup2 id (inode number) of the targeted cgroup.
    pub cgroup_id: u64,
    /// Destination port in host byte order; 0 matches any port.
    pub port: u16,
    pub _pad: [u8; 6],
}

impl ConnectKey {
    pub const fn new(cgroup_id: u64, port: u16) -> Self {
        Self {
            cgroup_id,
            port,
            _pad: [0; 6],
        }
    }
}

/// Address families a rule can match.
pub const FAMILY_ANY: u8 = 0;
pub const FAMILY_INET: u8 = 4;
pub const FAMILY_INET6: u8 = 6;

/// A destination prefix. `addr` holds the address in network byte order
/// (IPv4 in the first word); bits past `prefix_len` are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prefix {
    pub family: u8,
    pub prefix_len: u8,
    pub _pad: [u8; 2],
    pub addr: [u32; 4],
}

impl Prefix {
    /// Prefix matching every address of every family.
    pub const ANY: Self = Self {
        family: FAMILY_ANY,
        prefix_len: 0,
        _pad: [0; 2],
        addr: [0; 4],
    };

    /// Whether an address of `family` (network-order words) lies in the prefix.
    ///
    /// Unrolled over the four words so the verifier sees no loop.
    #[inline(always)]
    pub fn contains(&self, family: u8, addr: &[u32; 4]) -> bool {
        if self.family == FAMILY_ANY {
            return true;
        }
        if self.family != family {
            return false;
        }
        let len = self.prefix_len as u32;
        word_matches(self.addr[0], addr[0], len)
            && word_matches(self.addr[1], addr[1], len.saturating_sub(32))
            && word_matches(self.addr[2], addr[2], len.saturating_sub(64))
            && word_matches(self.addr[3], addr[3], len.saturating_sub(96))
    }
}

/// Compares the first `bits` (capped at 32) bits of two network-order words.
#[inline(always)]
fn word_matches(prefix: u32, addr: u32, bits: u32) -> bool {
    if bits == 0 {
        return true;
    }
    let mask = if bits >= 32 {
        u32::MAX
    } else {
        u32::MAX << (32 - bits)
    };
    (u32::from_be(prefix) & mask) == (u32::from_be(addr) & mask)
}

/// When a matching event is turned into an activation. All fields together;
/// zero means "not set" for each of them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trigger {
    /// Fire when `bpf_get_prandom_u32() < threshold`; `1 << 32` (or more)
    /// always fires. Probability p is stored as round(p * 2^32).
    pub threshold: u64,
    /// Skip the first `after` matching events.
    pub after: u64,
    /// Fire on every n-th matching event counted after `after`.
    pub every_nth: u64,
    /// Stop after this many activations (0: no limit).
    pub max_activations: u64,
    /// `bpf_ktime_get_ns()` after which the rule never fires (0: no expiry).
    /// A second guard behind the daemon's own TTL timer.
    pub expires_at_ns: u64,
}

impl Trigger {
    pub const ALWAYS: u64 = 1 << 32;

    /// Whether firing depends on the shared event counter (and so needs
    /// atomics); plain probabilistic rules avoid the shared cache line.
    #[inline(always)]
    pub fn is_counted(&self) -> bool {
        self.after != 0 || self.every_nth > 1 || self.max_activations != 0
    }
}

/// A connect() fault rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectRule {
    /// Fault slot: index into [`FaultStats`] and [`TriggerState`] maps.
    pub slot: u32,
    /// Positive errno returned by connect().
    pub errno: u32,
    pub dst: Prefix,
    /// Inclusive destination port range (`[0, 65535]`: any).
    pub ports: [u16; 2],
    pub trigger: Trigger,
}

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
    pub proto_masks: [u64; 4],
    /// Rules with a single destination port that the port index holds (set
    /// when a target has many): candidates among them are cut to those for
    /// the packet's port by one lookup in `PACKET_PORTS`.
    pub port_indexed: u64,
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

/// Protocol classes of [`PacketTarget::proto_masks`]: other, TCP, UDP,
/// ICMP (v4 or v6).
#[inline(always)]
pub fn proto_class(proto: u8) -> usize {
    match proto {
        PROTO_TCP => 1,
        PROTO_UDP => 2,
        PROTO_ICMP | PROTO_ICMPV6 => 3,
        _ => 0,
    }
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

/// IP protocol numbers a rule can filter on (0: any).
pub const PROTO_ANY: u8 = 0;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// Where `packet_corrupt` flips bits.
pub const REGION_PAYLOAD: u8 = 0;
pub const REGION_HEADERS: u8 = 1;
pub const REGION_ANY: u8 = 2;

/// Rule flags.
pub const RULE_FIX_CHECKSUM: u8 = 1;
pub const RULE_JITTER_NORMAL: u8 = 2;
/// `icmp` matches ICMP and ICMPv6.
pub const RULE_PROTO_ICMP_ANY: u8 = 4;

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
    /// Source and destination prefixes, IPv4 as `::ffff:a.b.c.d/96+len`
    /// (family [`FAMILY_INET6`]), checked on every candidate; the LPM tries
    /// only prune candidates first when a target has many prefixed rules.
    pub src: Prefix,
    pub dst: Prefix,
}

impl PacketRule {
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

/// Shared (not per-CPU) trigger state of one fault slot, updated with
/// atomic fetch-and-add so `after`, `every_nth` and `max_activations` are
/// exact across CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TriggerState {
    /// Matching events seen (only counted when the trigger needs it).
    pub seen: u64,
    /// Activations granted against `max_activations`.
    pub granted: u64,
}

/// Per-CPU counters of one fault slot, summed by the daemon at scrape time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Events that matched the fault's target and filter.
    pub evaluations: u64,
    /// Faults delivered.
    pub activations: u64,
    /// Packets a rate limit dropped because they would have left later
    /// than its horizon.
    pub overflows: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] plain data with explicit padding
    // and no invalid bit patterns.
    unsafe impl aya::Pod for super::AttachInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnectKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnectRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TriggerState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FaultStats {}
    // SAFETY: as above.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> [u32; 4] {
        [u32::from_ne_bytes(a), 0, 0, 0]
    }

    #[test]
    fn prefix_matching() {
        let p = Prefix {
            family: FAMILY_INET,
            prefix_len: 24,
            _pad: [0; 2],
            addr: v4([10, 1, 2, 0]),
        };
        assert!(p.contains(FAMILY_INET, &v4([10, 1, 2, 77])));
        assert!(!p.contains(FAMILY_INET, &v4([10, 1, 3, 77])));
        assert!(!p.contains(FAMILY_INET6, &v4([10, 1, 2, 77])));
        assert!(Prefix::ANY.contains(FAMILY_INET6, &[1, 2, 3, 4]));
        let host = Prefix {
            prefix_len: 32,
            ..p
        };
        assert!(!host.contains(FAMILY_INET, &v4([10, 1, 2, 1])));
    }
}
