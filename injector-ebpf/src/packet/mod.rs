//! Packet faults: drop, corrupt, duplicate, delay and rate-limit packets at
//! XDP (ingress drops at line rate), TC (everything that rewrites or
//! re-times packets) and cgroup_skb (one cgroup's packets only).
//!
//! An interface's programs (XDP, TC) have an object of their own, whose
//! rules sit in array maps ([`RuleSet`] masks, a rule table): per packet,
//! after parsing, three loads give the candidates (the rules of the
//! packet's hook, protocol class and destination-port bucket), and the
//! first candidate is checked in place, the others in a bpf_loop. A packet that no rule
//! aims at stops after those loads.
//!
//! The cgroup programs share one object among every targeted cgroup: per
//! packet, one hash lookup for the target's rule masks at this hook (cut to
//! the rules of the packet's protocol class), two LPM-trie lookups (source
//! and destination prefix) whose values are masks of the rules covering the
//! address, and then one rule lookup per candidate rule left in the
//! intersection (in a bpf_loop). A packet that no rule aims at stops after
//! the first lookup or the tries.

mod cgroup;
mod parse;
mod tc;
mod xdp;

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, generated::bpf_loop},
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuHashMap, lpm_trie::Key},
};
use injector_common::{
    MAX_FAULTS, Trigger,
    packet::{
        ACTION_CORRUPT, ACTION_DELAY, ACTION_DROP, ACTION_DUPLICATE, ACTION_RATE, ActiveSet,
        DELAY_BUCKETS, DPORT_BUCKETS, DelayHistogram, LPM_FULL_BITS, LpmData, MAX_PACKET_RULES,
        NR_IFACE_HOOKS, NR_PROTO_CLASSES, OFFSET_RANDOM, PacketRule, PacketRuleKey, PacketTarget,
        PortKey, REGION_ANY, REGION_HEADERS, RULE_JITTER_NORMAL, RULE_SETS, RuleSet, proto_class,
    },
};
pub use parse::{Flow, is_ip};

use crate::{maps::FAULT_STATS, trigger};

/// `BPF_F_NO_PREALLOC`: a rule replaced by the daemon is freed after an RCU
/// grace period, so a program never reads one half-rewritten.
const NO_PREALLOC: u32 = 1;

/// An interface object's rule sets; see [`RuleSet`].
#[map]
static IFACE_RULES: Array<RuleSet> = Array::with_max_entries(RULE_SETS, 0);

/// `[0]`: which of [`IFACE_RULES`] is in force, and the hooks' catch-all
/// drops that fire at every event; see [`ActiveSet`].
#[map]
static IFACE_ACTIVE: Array<ActiveSet> = Array::with_max_entries(1, 0);

/// The rules of [`IFACE_RULES`]: rule `i` of set `s` at `s * 64 + i`.
#[map]
static IFACE_RULE_TABLE: Array<PacketRule> =
    Array::with_max_entries(RULE_SETS * MAX_PACKET_RULES, 0);

/// Rule masks per target and hook.
#[map]
static PACKET_TARGETS: HashMap<u64, PacketTarget> =
    HashMap::with_max_entries(MAX_FAULTS, NO_PREALLOC);

#[map]
static PACKET_RULES: HashMap<PacketRuleKey, PacketRule> =
    HashMap::with_max_entries(MAX_FAULTS, NO_PREALLOC);

/// Destination-port index; see [`PortKey`].
#[map]
static PACKET_PORTS: HashMap<PortKey, u64> = HashMap::with_max_entries(MAX_FAULTS, NO_PREALLOC);

/// Source and destination prefixes; see [`LpmData`].
#[map]
static PACKET_SRC: LpmTrie<LpmData, u64> = LpmTrie::with_max_entries(MAX_FAULTS * 2, NO_PREALLOC);

#[map]
static PACKET_DST: LpmTrie<LpmData, u64> = LpmTrie::with_max_entries(MAX_FAULTS * 2, NO_PREALLOC);

/// Next free departure time of each rate limit, by fault slot. Updated
/// without a lock (as Cilium's EDT rate limiter does): two CPUs racing on
/// one limit can both send, which costs a packet's worth of accuracy.
#[map]
static RATE_STATE: Array<u64> = Array::with_max_entries(MAX_FAULTS, 0);

/// Injected delay per fault slot, for faults that delay (inserted by the
/// daemon, so the hot path never allocates).
#[map]
static DELAY_HIST: PerCpuHashMap<u32, DelayHistogram> =
    PerCpuHashMap::with_max_entries(MAX_FAULTS, NO_PREALLOC);

/// What a hook does with a packet once the rules have run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
}

/// The packet operations a hook offers. Hooks that cannot rewrite or
/// re-time packets keep the defaults (the daemon never installs such rules
/// at such hooks; these are the second line).
pub trait Packet {
    /// Total packet length in bytes (linear and paged).
    fn len(&self) -> u32;
    /// Flips `mask` in the byte at `pos`, with the rule's checksum policy.
    fn corrupt(&mut self, _flow: &Flow, _pos: u32, _mask: u8, _fix_checksum: bool) -> bool {
        false
    }
    /// Sends a copy of the packet the way the original goes.
    fn duplicate(&mut self) -> bool {
        false
    }
    /// The packet's earliest departure time (0: now).
    fn departure(&self) -> u64 {
        0
    }
    /// Sets the earliest departure time (EDT).
    fn set_departure(&mut self, _ns: u64) -> bool {
        false
    }
}

#[inline(always)]
fn lpm_mask(trie: &LpmTrie<LpmData, u64>, target: &[u8; 8], addr: &[u32; 4]) -> u64 {
    let key = Key::new(
        LPM_FULL_BITS,
        LpmData {
            target: *target,
            addr: *addr,
        },
    );
    trie.get(&key).copied().unwrap_or(0)
}

/// Runs the rules of `target` at `hook` against one packet.
#[inline(always)]
pub fn run<P: Packet>(hook: usize, target: u64, flow: &Flow, pkt: &mut P) -> Verdict {
    let Some(masks) = PACKET_TARGETS.get_ptr(&target) else {
        return Verdict::Pass;
    };
    // SAFETY: NO_PREALLOC map value, valid for this RCU read section.
    let (mut mask, src_filtered, dst_filtered, port_indexed) = unsafe {
        (
            (*masks).masks[hook & 7]
                & (*masks).proto_masks[proto_class(flow.proto) & (NR_PROTO_CLASSES - 1)],
            (*masks).src_filtered,
            (*masks).dst_filtered,
            (*masks).port_indexed,
        )
    };
    if mask & port_indexed != 0 {
        let key = PortKey {
            target,
            port: flow.dport,
            _pad: [0; 6],
        };
        let for_port = PACKET_PORTS
            .get_ptr(&key)
            // SAFETY: NO_PREALLOC map value, valid for this RCU read section.
            .map_or(0, |m| unsafe { *m });
        mask = (mask & !port_indexed) | (mask & for_port);
    }
    if mask == 0 {
        return Verdict::Pass;
    }
    // Each candidate's own prefixes are checked in `step`; the tries (which
    // hold every rule's prefixes, a rule without one at the target's
    // catch-all entry) prune candidates first only for targets with many
    // prefixed rules (the daemon sets the *_filtered masks then). A trie
    // shared by many targets costs O(log targets) per lookup.
    let target_be = target.to_be_bytes();
    if mask & src_filtered != 0 {
        mask &= lpm_mask(&PACKET_SRC, &target_be, &flow.src);
        if mask == 0 {
            return Verdict::Pass;
        }
    }
    if mask & dst_filtered != 0 {
        mask &= lpm_mask(&PACKET_DST, &target_be, &flow.dst);
    }
    // The first candidate in place, as in `run_interface`.
    if mask == 0 {
        return Verdict::Pass;
    }
    let index = lowest_bit(mask);
    mask &= mask - 1;
    if step(target, index, flow, pkt) == Verdict::Drop {
        return Verdict::Drop;
    }
    if mask == 0 {
        return Verdict::Pass;
    }

    // bpf_loop (Linux 5.17+) rather than a bounded loop: the verifier checks
    // the callback once, where a 64-round loop around the rule evaluation
    // exceeds its million-instruction budget on 6.1.
    let mut state = LoopState {
        mask,
        target,
        flow,
        pkt,
        drop: false,
    };
    // SAFETY: the callback matches bpf_loop's contract (index, context
    // pointer; 0 continues, 1 stops) and the context outlives the call.
    unsafe {
        bpf_loop(
            MAX_PACKET_RULES,
            rule_step::<P> as *mut c_void,
            (&raw mut state).cast(),
            0,
        )
    };
    if state.drop {
        Verdict::Drop
    } else {
        Verdict::Pass
    }
}

/// Runs an interface's rules at `HOOK` against the Ethernet frame in
/// `data..end`.
#[inline(always)]
pub fn run_interface<const HOOK: usize, P: Packet>(
    data: usize,
    end: usize,
    pkt: &mut P,
) -> Verdict {
    let Some(active) = IFACE_ACTIVE.get(0) else {
        return Verdict::Pass;
    };
    // A first rule that drops every IP packet (or every frame) is every
    // IP packet's first candidate: decided on the ethertype alone, before
    // the parse, or without reading the frame at all. One that fires at
    // every event, the common case, from `active` itself.
    let fast = &active.fast[HOOK % NR_IFACE_HOOKS];
    if fast.mask != 0 && (fast.every_frame != 0 || parse::is_ip(data, end)) {
        // Such a trigger, spelled out so that the compiler drops the
        // probability and counting branches of `evaluate`.
        let every_time = Trigger {
            threshold: Trigger::ALWAYS,
            expires_at_ns: fast.trigger.expires_at_ns,
            ..Trigger::default()
        };
        if trigger::evaluate(fast.slot, &every_time) {
            return Verdict::Drop;
        }
        // The lease or the rule's TTL ran out: the same rule in the set
        // below does not fire either (and is not counted), the others may.
    }
    let active = active.set % RULE_SETS;
    let Some(set) = IFACE_RULES.get(active) else {
        return Verdict::Pass;
    };
    // Any other catch-all (a probability, a count), from the set.
    let catch_all = &set.catch_all[HOOK & 7];
    if catch_all.mask != 0
        && (catch_all.every_frame != 0 || parse::is_ip(data, end))
        && trigger::evaluate(catch_all.slot, &catch_all.trigger)
    {
        return Verdict::Drop;
    }
    let first = active * MAX_PACKET_RULES;
    let Some(flow) = parse::ethernet(data, end) else {
        // Not IP (ARP, LLDP, ...) or too short to parse: only the drops
        // that take every frame are candidates.
        return drop_frame(set.frame_masks[HOOK & 7] & !catch_all.mask, first);
    };
    let flow = &flow;
    let mut mask = set.masks[HOOK & 7]
        & !catch_all.mask
        & set.proto_masks[proto_class(flow.proto) & (NR_PROTO_CLASSES - 1)]
        & set.dport_masks[usize::from(flow.dport) & (DPORT_BUCKETS - 1)];
    // The common case, one candidate, without a call; more go through
    // bpf_loop (see `run`). Two inline candidates made the verifier walk
    // every pair of paths through the actions: past its one-million
    // instruction budget.
    if mask == 0 {
        return Verdict::Pass;
    }
    let index = lowest_bit(mask);
    mask &= mask - 1;
    if let Some(rule) = IFACE_RULE_TABLE.get(first + index)
        && check(rule, flow, pkt) == Verdict::Drop
    {
        return Verdict::Drop;
    }
    if mask == 0 {
        return Verdict::Pass;
    }
    let mut state = SetLoop {
        mask,
        first,
        flow,
        pkt,
        drop: false,
    };
    // SAFETY: as in `run`.
    unsafe {
        bpf_loop(
            MAX_PACKET_RULES,
            set_step::<P> as *mut c_void,
            (&raw mut state).cast(),
            0,
        )
    };
    if state.drop {
        Verdict::Drop
    } else {
        Verdict::Pass
    }
}

/// What [`set_step`] works on, on the caller's stack.
struct SetLoop<'a, P> {
    mask: u64,
    /// Where the set's rules start in [`IFACE_RULE_TABLE`].
    first: u32,
    flow: &'a Flow,
    pkt: &'a mut P,
    drop: bool,
}

/// The bpf_loop callback of [`run_interface`]: the lowest candidate left.
extern "C" fn set_step<P: Packet>(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the SetLoop that `run_interface` passed to
    // bpf_loop, alive and not otherwise borrowed for the loop's duration.
    let state = unsafe { &mut *ctx.cast::<SetLoop<'_, P>>() };
    if state.mask == 0 {
        return 1;
    }
    let index = lowest_bit(state.mask);
    state.mask &= state.mask - 1;
    if let Some(rule) = IFACE_RULE_TABLE.get(state.first + index)
        && check(rule, state.flow, state.pkt) == Verdict::Drop
    {
        state.drop = true;
        return 1;
    }
    0
}

/// A frame that is not IP against `mask`, the drops of its hook that take
/// every frame: each has no filter, so only its trigger decides, in rule
/// order. Such a rule is rarely not its hook's first (the catch-all, done
/// by then), so the mask is almost always empty here.
#[inline(always)]
fn drop_frame(mask: u64, first: u32) -> Verdict {
    if mask == 0 {
        return Verdict::Pass;
    }
    let mut state = FrameLoop {
        mask,
        first,
        drop: false,
    };
    // SAFETY: as in `run`.
    unsafe {
        bpf_loop(
            MAX_PACKET_RULES,
            frame_step as *mut c_void,
            (&raw mut state).cast(),
            0,
        )
    };
    if state.drop {
        Verdict::Drop
    } else {
        Verdict::Pass
    }
}

/// What [`frame_step`] works on, on the caller's stack.
struct FrameLoop {
    mask: u64,
    first: u32,
    drop: bool,
}

/// The bpf_loop callback of [`drop_frame`]: the lowest rule left.
extern "C" fn frame_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the FrameLoop that `drop_frame` passed to bpf_loop,
    // alive and not otherwise borrowed for the loop's duration.
    let state = unsafe { &mut *ctx.cast::<FrameLoop>() };
    if state.mask == 0 {
        return 1;
    }
    let index = lowest_bit(state.mask);
    state.mask &= state.mask - 1;
    if let Some(rule) = IFACE_RULE_TABLE.get(state.first + index)
        && trigger::evaluate(rule.slot, &rule.trigger)
    {
        state.drop = true;
        return 1;
    }
    0
}

/// What the bpf_loop callback works on, on the caller's stack.
struct LoopState<'a, P> {
    /// Candidate rules not yet evaluated.
    mask: u64,
    target: u64,
    flow: &'a Flow,
    pkt: &'a mut P,
    drop: bool,
}

/// Evaluates the lowest candidate rule left; stops when none is left or a
/// rule dropped the packet.
extern "C" fn rule_step<P: Packet>(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the LoopState that `run` passed to bpf_loop, alive
    // and not otherwise borrowed for the duration of the loop.
    let state = unsafe { &mut *ctx.cast::<LoopState<'_, P>>() };
    if state.mask == 0 {
        return 1;
    }
    let index = lowest_bit(state.mask);
    state.mask &= state.mask - 1;
    if step(state.target, index, state.flow, state.pkt) == Verdict::Drop {
        state.drop = true;
        return 1;
    }
    0
}

/// One candidate rule.
#[inline(always)]
fn step<P: Packet>(target: u64, index: u32, flow: &Flow, pkt: &mut P) -> Verdict {
    let key = PacketRuleKey {
        target,
        index,
        _pad: 0,
    };
    let Some(rule) = PACKET_RULES.get_ptr(&key) else {
        // The daemon publishes rules before the masks that point at them
        // and withdraws the masks first: only a removal racing with this
        // packet gets here. Not logged: an aya-log call anywhere in the
        // packet programs costs each interface's first fault 50-170 ms of
        // verification, whatever the log level (measured; see design.md).
        return Verdict::Pass;
    };
    // SAFETY: as for `masks`: a replaced rule stays intact until the end of
    // this RCU read section.
    check(unsafe { &*rule }, flow, pkt)
}

/// One candidate rule: its filters, then its fault.
#[inline(always)]
fn check<P: Packet>(rule: &PacketRule, flow: &Flow, pkt: &mut P) -> Verdict {
    if !rule.accepts(flow.proto, flow.sport, flow.dport)
        || !rule.src.contains(&flow.src)
        || !rule.dst.contains(&flow.dst)
    {
        return Verdict::Pass;
    }
    apply(rule, flow, pkt)
}

/// Evaluates one matching rule's trigger and delivers its fault.
#[inline(always)]
fn apply<P: Packet>(rule: &PacketRule, flow: &Flow, pkt: &mut P) -> Verdict {
    match rule.action {
        ACTION_DROP => {
            if trigger::evaluate(rule.slot, &rule.trigger) {
                return Verdict::Drop;
            }
        }
        ACTION_CORRUPT => {
            // A packet without the chosen region (say, a bare TCP ACK for
            // `payload`) is not a candidate: it counts nowhere.
            let Some(pos) = corrupt_position(rule, flow, pkt.len()) else {
                return Verdict::Pass;
            };
            if trigger::evaluate(rule.slot, &rule.trigger) {
                let mask = if rule.xor_mask != 0 {
                    rule.xor_mask
                } else {
                    1 << (random() & 7)
                };
                pkt.corrupt(
                    flow,
                    pos,
                    mask,
                    rule.flags & injector_common::packet::RULE_FIX_CHECKSUM != 0,
                );
            }
        }
        ACTION_DUPLICATE => {
            if trigger::evaluate(rule.slot, &rule.trigger) {
                pkt.duplicate();
            }
        }
        ACTION_DELAY => {
            if trigger::evaluate(rule.slot, &rule.trigger) {
                let delay = jittered(rule);
                let now = now();
                let base = max(pkt.departure(), now);
                if pkt.set_departure(base + delay) {
                    record_delay(rule.slot, base + delay - now);
                }
            }
        }
        ACTION_RATE if trigger::evaluate(rule.slot, &rule.trigger) => return pace(rule, pkt),
        _ => {}
    }
    Verdict::Pass
}

/// Earliest departure time pacing (as sch_fq and Cilium's bandwidth
/// manager do): each packet leaves no earlier than the previous one plus its
/// own transmission time at the rate; packets that would leave later than
/// the horizon are dropped, which is what bounds the queue.
#[inline(always)]
fn pace<P: Packet>(rule: &PacketRule, pkt: &mut P) -> Verdict {
    let Some(next) = RATE_STATE.get_ptr_mut(rule.slot) else {
        return Verdict::Pass;
    };
    let now = now();
    // SAFETY: array value, lives as long as the map; see RATE_STATE for the
    // (accepted) race between CPUs.
    let t_last = unsafe { core::ptr::read_volatile(next) };
    let start = max(max(t_last, now), pkt.departure());
    if start - now > rule.horizon_ns {
        if let Some(stats) = FAULT_STATS.get_ptr_mut(rule.slot) {
            // SAFETY: per-CPU value, nothing else runs on this CPU.
            unsafe { (*stats).overflows += 1 };
        }
        return Verdict::Drop;
    }
    let rate = if rule.rate_bytes == 0 {
        1
    } else {
        rule.rate_bytes
    };
    let cost = u64::from(pkt.len()) * 1_000_000_000 / rate;
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(next, start + cost) };
    if start > now && pkt.set_departure(start) {
        record_delay(rule.slot, start - now);
    }
    Verdict::Pass
}

/// Where to flip bits: a byte offset from the start of the packet data, if
/// the packet has the rule's region and the offset lies inside it.
#[inline(always)]
fn corrupt_position(rule: &PacketRule, flow: &Flow, len: u32) -> Option<u32> {
    let (start, end) = match rule.region {
        REGION_HEADERS => (flow.l3, flow.payload),
        REGION_ANY => (flow.l3, len),
        _ => (flow.payload, len),
    };
    if end <= start {
        return None;
    }
    let size = end - start;
    let offset = if rule.offset == OFFSET_RANDOM {
        random() % size
    } else {
        rule.offset
    };
    (offset < size).then_some(start + offset)
}

/// The rule's delay with jitter applied, never negative.
#[inline(always)]
fn jittered(rule: &PacketRule) -> u64 {
    let j = rule.jitter_ns;
    if j == 0 {
        return rule.delay_ns;
    }
    let (magnitude, negative) = if rule.flags & RULE_JITTER_NORMAL != 0 {
        // Irwin-Hall: the sum of four uniform u32s is close to normal with
        // mean 2^33 and standard deviation 2^32 / sqrt(3); scale it so one
        // standard deviation is `j`. Truncated at ±3.46 sigma.
        let sum =
            u64::from(random()) + u64::from(random()) + u64::from(random()) + u64::from(random());
        let (dev, negative) = if sum >= 1 << 33 {
            (sum - (1 << 33), false)
        } else {
            ((1 << 33) - sum, true)
        };
        // dev / (2^32 / sqrt 3) * j, in steps that stay within 64 bits for
        // j up to 2^40 ns (18 minutes).
        (((dev >> 16) * 1732 / 1000 * (j >> 8)) >> 8, negative)
    } else {
        // Uniform in [-j, j].
        let r = u64::from(random()) % (2 * j + 1);
        if r >= j {
            (r - j, false)
        } else {
            (j - r, true)
        }
    };
    if negative {
        rule.delay_ns.saturating_sub(magnitude)
    } else {
        rule.delay_ns + magnitude
    }
}

#[inline(always)]
fn record_delay(slot: u32, ns: u64) {
    let Some(hist) = DELAY_HIST.get_ptr_mut(&slot) else {
        return;
    };
    let us = ns / 1000;
    let bucket = if us == 0 {
        0
    } else {
        (63 - us.leading_zeros()) as usize
    };
    let bucket = if bucket >= DELAY_BUCKETS {
        DELAY_BUCKETS - 1
    } else {
        bucket
    };
    // SAFETY: per-CPU value, nothing else runs on this CPU; the index is
    // bounded above.
    unsafe {
        (*hist).buckets[bucket] += 1;
        (*hist).sum_ns += ns;
    }
}

/// Index of the lowest set bit of a non-zero mask, without a loop (BPF has
/// no count-trailing-zeros instruction).
#[inline(always)]
fn lowest_bit(mask: u64) -> u32 {
    let b = mask.isolate_lowest_one();
    let mut n = 0;
    if b & 0xffff_ffff_0000_0000 != 0 {
        n += 32;
    }
    if b & 0xffff_0000_ffff_0000 != 0 {
        n += 16;
    }
    if b & 0xff00_ff00_ff00_ff00 != 0 {
        n += 8;
    }
    if b & 0xf0f0_f0f0_f0f0_f0f0 != 0 {
        n += 4;
    }
    if b & 0xcccc_cccc_cccc_cccc != 0 {
        n += 2;
    }
    if b & 0xaaaa_aaaa_aaaa_aaaa != 0 {
        n += 1;
    }
    n
}

#[inline(always)]
fn max(a: u64, b: u64) -> u64 {
    if a > b { a } else { b }
}

#[inline(always)]
fn random() -> u32 {
    // SAFETY: helper without arguments.
    unsafe { bpf_get_prandom_u32() }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments. CLOCK_MONOTONIC, the clock of
    // skb->tstamp departure times.
    unsafe { bpf_ktime_get_ns() }
}
