//! Types shared by the eBPF programs and the daemon, and the names that tie
//! the two halves together.
//!
//! Everything here is `#[repr(C)]` plain data with explicit padding, so the
//! kernel and user space agree on the layout byte for byte. This module
//! holds what every fault family shares (fault slots, triggers, counters,
//! prefixes, the cgroup attachment identity); each family has a module of
//! its own with its map types and the names of its programs and maps.
//!
//! Program and map names are the identifiers of the eBPF side's functions
//! and statics (aya takes them from there), so each is spelled as an
//! identifier there and as a string constant here, and nowhere else. The
//! daemon's `object_names` test checks both spellings against the built
//! object.
#![no_std]

pub mod block;
pub mod connect;
pub mod packet;
pub mod probe;
pub mod syscall;

/// Every program name of the object, by family (a new family adds its
/// list here, next to its `pub mod` line).
pub const PROGRAMS: &[&[&str]] = &[
    connect::PROGRAMS,
    packet::PROGRAMS,
    probe::PROGRAMS,
    syscall::PROGRAMS,
    syscall::LSM_PROGRAM_NAMES,
    block::PROGRAMS,
    bench::PROGRAMS,
];

/// Every map name of the object, by family.
pub const MAPS: &[&[&str]] = &[
    maps::ALL,
    connect::MAPS,
    packet::MAPS,
    syscall::MAPS,
    block::MAPS,
];

/// Names of the maps every family shares.
pub mod maps {
    /// Per-CPU [`super::FaultStats`] by fault slot.
    pub const FAULT_STATS: &str = "FAULT_STATS";
    /// Shared [`super::TriggerState`] by fault slot.
    pub const TRIGGER_STATE: &str = "TRIGGER_STATE";
    /// Cgroup local storage: [`super::AttachInfo`] per cgroup attachment.
    pub const CGROUP_ATTACH: &str = "CGROUP_ATTACH";
    /// The daemon's log records from the eBPF side (aya-log).
    pub const AYA_LOGS: &str = "AYA_LOGS";
    /// The daemon's lease: one `u64`, the CLOCK_MONOTONIC time in ns until
    /// which faults may fire (see [`super::LEASE_SLOT`]).
    pub const LEASE: &str = "LEASE";
    /// Per CPU: the clock as first read in the current jiffy (the coarse
    /// clock the lease and expiry checks use).
    pub const CLOCK_CACHE: &str = "CLOCK_CACHE";

    pub const ALL: &[&str] = &[
        FAULT_STATS,
        TRIGGER_STATE,
        CGROUP_ATTACH,
        AYA_LOGS,
        LEASE,
        CLOCK_CACHE,
    ];
}

/// Globals of the object the daemon may set at load time.
pub mod globals {
    /// `u8`: 1 (the default) makes every fault check the lease; 0 skips the
    /// check. Only the benchmarks set 0, to measure what the check costs.
    pub const LEASE_CHECK: &str = "LEASE_CHECK";
    /// `u64`: the target a cgroup program takes while its attachment's
    /// storage holds none. 0 (the default, inert) in every copy the daemon
    /// loads; the packet benchmark sets it, because BPF_PROG_TEST_RUN gives
    /// a cgroup program fresh, zeroed storage.
    pub const BENCH_CGROUP: &str = "BENCH_CGROUP";
}

/// Programs only the benchmarks load (`./x bench`); the daemon never does.
pub mod bench {
    /// XDP_TX under BPF_PROG_TEST_RUN live frames: the traffic generator.
    pub const BENCH_XDP_TX: &str = "bench_xdp_tx";
    /// A bare XDP_DROP: what the drop benchmark measures injectord against.
    pub const BENCH_XDP_DROP: &str = "bench_xdp_drop";
    pub const BENCH_XDP_DROP_IP: &str = "bench_xdp_drop_ip";
    /// An XDP_DROP of IP frames that bumps a per-CPU counter.
    pub const BENCH_XDP_DROP_COUNTED: &str = "bench_xdp_drop_counted";
    /// The same, behind the daemon's lease check.
    pub const BENCH_XDP_DROP_LEASED: &str = "bench_xdp_drop_leased";
    /// A do-nothing cgroup_skb program: the cgroup rows' baseline.
    pub const BENCH_CGROUP_SKB: &str = "bench_cgroup_skb";

    pub const PROGRAMS: &[&str] = &[
        BENCH_XDP_TX,
        BENCH_XDP_DROP,
        BENCH_XDP_DROP_IP,
        BENCH_XDP_DROP_COUNTED,
        BENCH_XDP_DROP_LEASED,
        BENCH_CGROUP_SKB,
    ];
}

/// The one entry of the `LEASE` map.
pub const LEASE_SLOT: u32 = 0;

/// Number of fault slots. A slot indexes the per-CPU statistics and the
/// shared trigger state; the daemon allocates one per active fault.
pub const MAX_FAULTS: u32 = 16384;

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

    /// Whether the trigger fires at every event (until the lease or its
    /// TTL runs out): probability 1 and nothing counted.
    #[inline(always)]
    pub fn fires_every_time(&self) -> bool {
        self.threshold >= Self::ALWAYS && !self.is_counted()
    }
}

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
    /// The trigger's random state on this CPU (xorshift64*), seeded from
    /// the kernel's generator on first use. Not a counter: never summed.
    pub rng: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] plain data with explicit padding
    // and no invalid bit patterns.
    unsafe impl aya::Pod for super::AttachInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TriggerState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FaultStats {}
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
