//! Packet rules in the kernel: the per-target rule table, and the maps the
//! packet programs read (rule masks per hook, rules, source and destination
//! LPM tries, rate-limit state, delay histograms).
//!
//! Shared by the cgroup_skb backend (targets are cgroup ids, one object for
//! all cgroups, rules published entry by entry in hash maps and LPM tries)
//! and the interface backend (a private object per interface, whose rules
//! are published whole, as a [`RuleSet`] swapped in at once).

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{
        Array, HashMap, MapData, PerCpuHashMap, PerCpuValues,
        lpm_trie::{Key, LpmTrie},
    },
};
use injector_common::{
    FAMILY_INET6, Prefix,
    packet::{
        ACTION_DELAY, ACTION_RATE, ActiveSet, AddrMask, CatchAll, DELAY_HIST, DPORT_BUCKETS,
        DelayHistogram, IFACE_ACTIVE, IFACE_RULE_TABLE, IFACE_RULES, LPM_TARGET_BITS, LpmData,
        MAX_PACKET_RULES, NR_HOOKS, NR_IFACE_HOOKS, NR_PROTO_CLASSES, PACKET_DST, PACKET_PORTS,
        PACKET_RULES, PACKET_SRC, PACKET_TARGETS, PROTO_ANY, PacketRule, PacketRuleKey,
        PacketTarget, PortKey, RATE_STATE, RULE_SETS, RuleSet, proto_class,
    },
};
use ipnet::IpNet;

use crate::{error::Error, kernel::grace};

/// One kernel rule: the hooks it runs at (bit per hook), its prefixes and
/// the rule proper.
#[derive(Clone, Debug)]
pub struct RuleEntry {
    pub hooks: u8,
    pub src: Option<IpNet>,
    pub dst: Option<IpNet>,
    pub rule: PacketRule,
}

/// The rules of one target, by index (the bit in the kernel's masks).
#[derive(Default)]
pub struct TargetRules {
    entries: BTreeMap<u32, RuleEntry>,
    /// LPM keys currently in the kernel for this target.
    src_keys: Vec<Key<LpmData>>,
    dst_keys: Vec<Key<LpmData>>,
    /// Ports currently in the port index for this target.
    port_keys: Vec<u16>,
}

impl TargetRules {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn free_indices(&self, n: usize) -> Option<Vec<u32>> {
        let free: Vec<u32> = (0..MAX_PACKET_RULES)
            .filter(|i| !self.entries.contains_key(i))
            .take(n)
            .collect();
        (free.len() == n).then_some(free)
    }
}

/// The packet maps of one loaded object.
pub struct PacketMaps {
    publish: Publish,
    rate: Array<MapData, u64>,
    hist: PerCpuHashMap<MapData, u32, DelayHistogram>,
}

/// How an object's programs read their rules.
enum Publish {
    /// The cgroup programs: entry by entry, by target.
    ByTarget(TargetMaps),
    /// An interface's programs: whole rule sets.
    Sets(RuleSets),
}

struct TargetMaps {
    targets: HashMap<MapData, u64, PacketTarget>,
    rules: HashMap<MapData, PacketRuleKey, PacketRule>,
    src: LpmTrie<MapData, LpmData, u64>,
    dst: LpmTrie<MapData, LpmData, u64>,
    ports: HashMap<MapData, PortKey, u64>,
}

/// An interface object's rule sets: the daemon writes a whole set where
/// no program reads, then names it in force with one array write; packets
/// see the old rules or the new, never a mix.
struct RuleSets {
    sets: Array<MapData, RuleSet>,
    table: Array<MapData, PacketRule>,
    /// What `IFACE_ACTIVE` holds: `active.set` is the set in force.
    active: Array<MapData, ActiveSet>,
    value: ActiveSet,
    /// Per set, when it was last taken out of force: it is written again
    /// only after a grace period since (programs that read it before the
    /// switch may still run until then).
    retired: [Option<grace::Ticket>; RULE_SETS as usize],
    /// When fast catch-alls were last switched off: the same, for their
    /// slots and triggers.
    fast_retired: Option<grace::Ticket>,
}

impl PacketMaps {
    /// The maps of the object the cgroup programs share.
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let publish = {
            let mut take = |name: &str| ebpf.take_map(name).with_context(|| format!("map {name}"));
            Publish::ByTarget(TargetMaps {
                targets: HashMap::try_from(take(PACKET_TARGETS)?)?,
                rules: HashMap::try_from(take(PACKET_RULES)?)?,
                src: LpmTrie::try_from(take(PACKET_SRC)?)?,
                dst: LpmTrie::try_from(take(PACKET_DST)?)?,
                ports: HashMap::try_from(take(PACKET_PORTS)?)?,
            })
        };
        Self::with(ebpf, publish)
    }

    /// The maps of an interface's own object.
    pub fn take_interface(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let publish = {
            let mut take = |name: &str| ebpf.take_map(name).with_context(|| format!("map {name}"));
            Publish::Sets(RuleSets {
                sets: Array::try_from(take(IFACE_RULES)?)?,
                table: Array::try_from(take(IFACE_RULE_TABLE)?)?,
                active: Array::try_from(take(IFACE_ACTIVE)?)?,
                value: ActiveSet::default(),
                retired: [None; RULE_SETS as usize],
                fast_retired: None,
            })
        };
        Self::with(ebpf, publish)
    }

    fn with(ebpf: &mut Ebpf, publish: Publish) -> anyhow::Result<Self> {
        let mut take = |name: &str| ebpf.take_map(name).with_context(|| format!("map {name}"));
        Ok(Self {
            publish,
            rate: Array::try_from(take(RATE_STATE)?)?,
            hist: PerCpuHashMap::try_from(take(DELAY_HIST)?)?,
        })
    }

    /// Publishes `entries` for `target`; returns their rule indices. A
    /// packet never sees a half-installed fault.
    pub fn add(
        &mut self,
        target: u64,
        set: &mut TargetRules,
        entries: Vec<RuleEntry>,
        nr_cpus: usize,
    ) -> Result<Vec<u32>, Error> {
        let indices = set.free_indices(entries.len()).ok_or_else(|| {
            Error::Capacity(format!(
                "a target holds at most {MAX_PACKET_RULES} packet rules; remove some first"
            ))
        })?;
        let slot = entries[0].rule.slot;
        if entries.iter().any(|e| e.rule.action == ACTION_RATE) {
            self.rate.set(slot, &0, 0).map_err(Error::map(RATE_STATE))?;
        }
        if entries
            .iter()
            .any(|e| matches!(e.rule.action, ACTION_DELAY | ACTION_RATE))
        {
            let zero = PerCpuValues::try_from(vec![DelayHistogram::default(); nr_cpus])
                .map_err(|e| Error::io("per-CPU values", e))?;
            self.hist
                .insert(&slot, zero, 0)
                .map_err(Error::map(DELAY_HIST))?;
        }
        for (index, mut entry) in indices.iter().zip(entries) {
            entry.rule.src = addr_mask_of(entry.src);
            entry.rule.dst = addr_mask_of(entry.dst);
            set.entries.insert(*index, entry);
        }
        let result = match &mut self.publish {
            Publish::ByTarget(maps) => maps.add(target, set, &indices),
            Publish::Sets(sets) => sets.publish(set),
        };
        if let Err(e) = result {
            self.remove(target, set, &indices, slot);
            return Err(e);
        }
        Ok(indices)
    }

    /// Withdraws rules; programs stop looking at them at once.
    pub fn remove(&mut self, target: u64, set: &mut TargetRules, indices: &[u32], slot: u32) {
        for index in indices {
            set.entries.remove(index);
        }
        match &mut self.publish {
            Publish::ByTarget(maps) => maps.remove(target, set, indices),
            Publish::Sets(sets) => {
                if let Err(e) = sets.publish(set) {
                    tracing::error!(error = %e, "publishing packet rules");
                }
            }
        }
        let _ = self.hist.remove(&slot);
    }

    /// Sums a delay histogram over CPUs.
    pub fn histogram(&self, slot: u32) -> Option<DelayHistogram> {
        let per_cpu = self.hist.get(&slot, 0).ok()?;
        Some(
            per_cpu
                .iter()
                .fold(DelayHistogram::default(), |mut acc, h| {
                    for (a, b) in acc.buckets.iter_mut().zip(h.buckets) {
                        *a += b;
                    }
                    acc.sum_ns += h.sum_ns;
                    acc
                }),
        )
    }
}

impl TargetMaps {
    /// Rules and prefixes first, the masks that make programs look at them
    /// last.
    fn add(&mut self, target: u64, set: &mut TargetRules, indices: &[u32]) -> Result<(), Error> {
        for index in indices {
            if let Some(entry) = set.entries.get(index) {
                self.rules
                    .insert(&rule_key(target, *index), &entry.rule, 0)
                    .map_err(Error::map(PACKET_RULES))?;
            }
        }
        self.sync_prefixes(target, set)?;
        self.sync_masks(target, set)
    }

    /// Masks first (programs stop looking at once), then the rules and
    /// prefixes.
    fn remove(&mut self, target: u64, set: &mut TargetRules, indices: &[u32]) {
        if let Err(e) = self.sync_masks(target, set) {
            tracing::error!(error = %e, target, "updating packet rule masks");
        }
        for index in indices {
            let _ = self.rules.remove(&rule_key(target, *index));
        }
        if let Err(e) = self.sync_prefixes(target, set) {
            tracing::error!(error = %e, target, "updating packet prefixes");
        }
    }

    fn sync_masks(&mut self, target: u64, set: &TargetRules) -> Result<(), Error> {
        if set.entries.is_empty() {
            let _ = self.targets.remove(&target);
            return Ok(());
        }
        let (hooks, protos) = candidate_masks(set);
        let mut masks = PacketTarget {
            masks: hooks,
            proto_masks: protos,
            ..PacketTarget::default()
        };
        // Up to this many prefixed rules, checking each candidate's prefix
        // is cheaper than an LPM lookup (and does not depend on how many
        // other targets share the trie).
        const PRUNE_ABOVE: usize = 4;
        let prefixed = |pick: fn(&RuleEntry) -> bool| -> u64 {
            let bits: Vec<u32> = set
                .entries
                .iter()
                .filter(|(_, e)| pick(e))
                .map(|(i, _)| *i)
                .collect();
            if bits.len() > PRUNE_ABOVE {
                bits.iter().fold(0, |m, i| m | 1 << i)
            } else {
                0
            }
        };
        masks.src_filtered = prefixed(|e| e.src.is_some());
        masks.dst_filtered = prefixed(|e| e.dst.is_some());
        masks.port_indexed = prefixed(|e| e.rule.dport[0] == e.rule.dport[1]);
        self.targets
            .insert(&target, &masks, 0)
            .map_err(Error::map(PACKET_TARGETS))
    }

    fn sync_prefixes(&mut self, target: u64, set: &mut TargetRules) -> Result<(), Error> {
        let src = prefix_values(target, set.entries.iter().map(|(i, e)| (*i, e.src)));
        let dst = prefix_values(target, set.entries.iter().map(|(i, e)| (*i, e.dst)));
        set.src_keys =
            sync_trie(&mut self.src, &set.src_keys, src).map_err(Error::map(PACKET_SRC))?;
        set.dst_keys =
            sync_trie(&mut self.dst, &set.dst_keys, dst).map_err(Error::map(PACKET_DST))?;
        // The port index: for each single destination port, its rules.
        let mut ports: BTreeMap<u16, u64> = BTreeMap::new();
        for (index, e) in &set.entries {
            if e.rule.dport[0] == e.rule.dport[1] {
                *ports.entry(e.rule.dport[0]).or_default() |= 1 << index;
            }
        }
        for (port, mask) in &ports {
            self.ports
                .insert(&port_key(target, *port), mask, 0)
                .map_err(Error::map(PACKET_PORTS))?;
        }
        for port in &set.port_keys {
            if !ports.contains_key(port) {
                let _ = self.ports.remove(&port_key(target, *port));
            }
        }
        set.port_keys = ports.into_keys().collect();
        Ok(())
    }
}

impl RuleSets {
    /// Writes the rules of `set` into the set not in force, then puts it in
    /// force.
    ///
    /// The hooks' fast catch-alls ([`ActiveSet::fast`]) go with it: one
    /// the new set does not have first is switched off before the switch,
    /// one it has is switched on after. Each write of `IFACE_ACTIVE`
    /// changes one field, and a program that finds a fast entry on acts as
    /// the set in force does (or did, a moment before): a packet sees the
    /// old rules or the new.
    fn publish(&mut self, set: &TargetRules) -> Result<(), Error> {
        let value = rule_set(set);
        let fast = fast_catch_alls(&value);
        let current = self.value.set;
        let next = (current + 1) % RULE_SETS;
        if let Some(ticket) = self.retired[next as usize].take() {
            grace::wait(ticket);
        }
        let mut off = false;
        for (entry, wanted) in self.value.fast.iter_mut().zip(&fast) {
            if entry.mask != 0 && entry != wanted {
                entry.mask = 0;
                off = true;
            }
        }
        if off {
            self.write_active()?;
            self.fast_retired = Some(grace::retire());
        }
        // The rules first, then the masks that make programs look at
        // them, then the switch.
        for (index, entry) in &set.entries {
            self.table
                .set(next * MAX_PACKET_RULES + index, &entry.rule, 0)
                .map_err(Error::map(IFACE_RULE_TABLE))?;
        }
        self.sets
            .set(next, &*value, 0)
            .map_err(Error::map(IFACE_RULES))?;
        self.value.set = next;
        self.write_active()?;
        // The set just taken out of force may still be read by programs
        // that looked it up before the switch.
        self.retired[current as usize] = Some(grace::retire());
        let on: Vec<usize> = (0..NR_IFACE_HOOKS)
            .filter(|&hook| fast[hook].mask != 0 && self.value.fast[hook].mask == 0)
            .collect();
        if on.is_empty() {
            return Ok(());
        }
        // Programs that found an entry on may still read its slot and
        // trigger until a grace period after it went off.
        if let Some(ticket) = self.fast_retired.take() {
            grace::wait(ticket);
        }
        // Slots and triggers while the entries are off, then the switch
        // on: a packet that finds one on reads its new slot and trigger.
        // (x86 keeps stores in order, even those of one `rep movsb`
        // against another's; a weakly ordered CPU needs a grace period
        // between the two writes.)
        for &hook in &on {
            self.value.fast[hook] = CatchAll {
                mask: 0,
                ..fast[hook]
            };
        }
        self.write_active()?;
        #[cfg(not(target_arch = "x86_64"))]
        grace::wait(grace::retire());
        for &hook in &on {
            self.value.fast[hook].mask = fast[hook].mask;
        }
        self.write_active()
    }

    fn write_active(&mut self) -> Result<(), Error> {
        self.active
            .set(0, &self.value, 0)
            .map_err(Error::map(IFACE_ACTIVE))
    }
}

/// Per interface hook, the set's catch-all if it fires at every event
/// (what [`ActiveSet::fast`] may hold), or an entry that is off.
fn fast_catch_alls(value: &RuleSet) -> [CatchAll; NR_IFACE_HOOKS] {
    std::array::from_fn(|hook| {
        let catch_all = value.catch_all[hook];
        if catch_all.mask != 0 && catch_all.trigger.fires_every_time() {
            catch_all
        } else {
            CatchAll::default()
        }
    })
}

/// The rule set the programs read for `set`.
fn rule_set(set: &TargetRules) -> Box<RuleSet> {
    let mut value = Box::<RuleSet>::default();
    let (hooks, protos) = candidate_masks(set);
    value.masks = hooks;
    value.proto_masks = protos;
    for (catch_all, mask) in value.catch_all.iter_mut().zip(hooks) {
        let first = mask.isolate_lowest_one();
        if first == 0 {
            continue;
        }
        if let Some(entry) = set
            .entries
            .get(&first.trailing_zeros())
            .filter(|e| e.rule.drops_everything())
        {
            *catch_all = CatchAll {
                mask: first,
                slot: entry.rule.slot,
                every_frame: u32::from(entry.rule.takes_every_frame()),
                trigger: entry.rule.trigger,
            };
        }
    }
    for (index, entry) in &set.entries {
        if entry.rule.takes_every_frame() {
            for (hook, frames) in value.frame_masks.iter_mut().enumerate() {
                if entry.hooks & (1 << hook) != 0 {
                    *frames |= 1u64 << index;
                }
            }
        }
    }
    for (index, entry) in &set.entries {
        let bit = 1u64 << index;
        let [low, high] = entry.rule.dport;
        if usize::from(high.saturating_sub(low)) + 1 >= DPORT_BUCKETS {
            value.dport_masks.iter_mut().for_each(|m| *m |= bit);
        } else {
            for port in low..=high {
                value.dport_masks[usize::from(port) % DPORT_BUCKETS] |= bit;
            }
        }
    }
    value
}

/// The candidate masks of a target's rules: by hook, and by protocol class.
fn candidate_masks(set: &TargetRules) -> ([u64; NR_HOOKS], [u64; NR_PROTO_CLASSES]) {
    let (mut hooks, mut protos) = ([0u64; NR_HOOKS], [0u64; NR_PROTO_CLASSES]);
    for (index, entry) in &set.entries {
        for (hook, mask) in hooks.iter_mut().enumerate() {
            if entry.hooks & (1 << hook) != 0 {
                *mask |= 1 << index;
            }
        }
        // `icmp` rules carry PROTO_ICMP and match ICMPv6 too: both are one
        // class. A rule for a protocol without a class of its own sits in
        // class 0 and checks its number per packet.
        for (class, mask) in protos.iter_mut().enumerate() {
            if entry.rule.proto == PROTO_ANY || class == proto_class(entry.rule.proto) {
                *mask |= 1 << index;
            }
        }
    }
    (hooks, protos)
}

fn port_key(target: u64, port: u16) -> PortKey {
    PortKey {
        target,
        port,
        _pad: [0; 6],
    }
}

fn rule_key(target: u64, index: u32) -> PacketRuleKey {
    PacketRuleKey {
        target,
        index,
        _pad: 0,
    }
}

/// For each distinct prefix among the rules (no prefix: the target's
/// catch-all), the mask of rules whose prefix covers it. A longest-prefix
/// match then yields exactly the rules whose prefix contains the address.
fn prefix_values(
    target: u64,
    rules: impl Iterator<Item = (u32, Option<IpNet>)> + Clone,
) -> Vec<(Key<LpmData>, u64)> {
    let mut prefixes: Vec<Option<IpNet>> = rules.clone().map(|(_, p)| p).collect();
    prefixes.sort();
    prefixes.dedup();
    prefixes
        .into_iter()
        .map(|p| {
            let mask = rules
                .clone()
                .filter(|(_, q)| match (q, p) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(q), Some(p)) => q.contains(&p),
                })
                .fold(0u64, |m, (i, _)| m | 1 << i);
            (lpm_key(target, p), mask)
        })
        .collect()
}

fn sync_trie(
    trie: &mut LpmTrie<MapData, LpmData, u64>,
    old: &[Key<LpmData>],
    new: Vec<(Key<LpmData>, u64)>,
) -> Result<Vec<Key<LpmData>>, aya::maps::MapError> {
    for (key, mask) in &new {
        trie.insert(key, mask, 0)?;
    }
    for key in old {
        if !new.iter().any(|(k, _)| same_key(k, key)) {
            let _ = trie.remove(key);
        }
    }
    Ok(new.into_iter().map(|(k, _)| k).collect())
}

fn same_key(a: &Key<LpmData>, b: &Key<LpmData>) -> bool {
    a.prefix_len() == b.prefix_len() && a.data() == b.data()
}

/// A rule's prefix, IPv4 mapped into IPv6 as the programs see addresses.
fn addr_mask_of(net: Option<IpNet>) -> AddrMask {
    let Some(net) = net else {
        return AddrMask::ANY;
    };
    let key = lpm_key(0, Some(net));
    let prefix = Prefix {
        family: FAMILY_INET6,
        prefix_len: (key.prefix_len() - LPM_TARGET_BITS) as u8,
        _pad: [0; 2],
        addr: key.data().addr,
    };
    AddrMask::of(&prefix).expect("an IPv6 prefix has a mask form")
}

/// The LPM key of a prefix of `target` (IPv4 as `::ffff:a.b.c.d/96+len`).
fn lpm_key(target: u64, prefix: Option<IpNet>) -> Key<LpmData> {
    let mut data = LpmData {
        target: target.to_be_bytes(),
        addr: [0; 4],
    };
    let bits = match prefix {
        None => 0,
        Some(net) => {
            let (octets, bits) = match net.network() {
                IpAddr::V4(a) => (
                    a.to_ipv6_mapped().octets(),
                    96 + u32::from(net.prefix_len()),
                ),
                IpAddr::V6(a) => (a.octets(), u32::from(net.prefix_len())),
            };
            let (chunks, _) = octets.as_chunks::<4>();
            for (word, chunk) in data.addr.iter_mut().zip(chunks) {
                *word = u32::from_ne_bytes(*chunk);
            }
            bits
        }
    };
    Key::new(LPM_TARGET_BITS + bits, data)
}

#[cfg(test)]
mod tests {
    use injector_common::packet::{ACTION_DROP, RULE_EVERY_FRAME};

    use super::*;

    #[test]
    fn longest_match_values_cover_shorter_prefixes() {
        let net = |s: &str| Some(s.parse::<IpNet>().unwrap());
        let rules = vec![
            (0, net("10.0.0.0/8")),
            (1, net("10.1.0.0/16")),
            (2, None),
            (3, net("fd00::/64")),
        ];
        let values = prefix_values(7, rules.into_iter());
        let mask_of = |p: Option<IpNet>| {
            let k = lpm_key(7, p);
            values.iter().find(|(key, _)| same_key(key, &k)).unwrap().1
        };
        assert_eq!(mask_of(None), 0b0100);
        assert_eq!(mask_of(net("10.0.0.0/8")), 0b0101);
        assert_eq!(mask_of(net("10.1.0.0/16")), 0b0111);
        assert_eq!(mask_of(net("fd00::/64")), 0b1100);
        assert_eq!(lpm_key(7, net("10.0.0.0/8")).prefix_len(), 64 + 96 + 8);
    }

    #[test]
    fn rule_sets_bucket_rules_by_destination_port() {
        let entry = |dport: [u16; 2], hooks: u8, proto: u8| RuleEntry {
            hooks,
            src: None,
            dst: None,
            rule: PacketRule {
                proto,
                sport: [0, u16::MAX],
                dport,
                ..PacketRule::default()
            },
        };
        let mut set = TargetRules::default();
        set.entries.insert(0, entry([9, 9], 1, 17));
        set.entries.insert(1, entry([0, u16::MAX], 2, PROTO_ANY));
        set.entries.insert(2, entry([100, 131], 1, 6));
        set.entries.insert(5, entry([1000, 1063], 1, 17));
        let v = rule_set(&set);
        // Port 9: rule 0, the any-port rule 1 and the 64-port range 5.
        assert_eq!(v.dport_masks[9], 0b10_0011);
        // 100..=131 covers buckets 36..=63 and 0..=3.
        assert_eq!(v.dport_masks[40] & 0b100, 0b100);
        assert_eq!(v.dport_masks[2] & 0b100, 0b100);
        assert_eq!(v.dport_masks[10] & 0b100, 0);
        assert_eq!(v.masks[0], 0b10_0101);
        assert_eq!(v.masks[1], 0b10);
        // UDP's class: the UDP rules and the any-protocol one.
        assert_eq!(v.proto_masks[proto_class(17)], 0b10_0011);
    }

    #[test]
    fn drops_of_every_frame_are_non_ip_frames_candidates_and_skip_the_ethertype() {
        let drop = |flags: u8, hooks: u8| RuleEntry {
            hooks,
            src: None,
            dst: None,
            rule: PacketRule {
                action: ACTION_DROP,
                proto: PROTO_ANY,
                flags,
                sport: [0, u16::MAX],
                dport: [0, u16::MAX],
                ..PacketRule::default()
            },
        };
        let mut set = TargetRules::default();
        // Hook 0: an IP-only drop first, a drop of every frame behind it.
        set.entries.insert(0, drop(0, 0b01));
        set.entries.insert(1, drop(RULE_EVERY_FRAME, 0b11));
        let v = rule_set(&set);
        assert_eq!(v.frame_masks[0], 0b10);
        assert_eq!(v.frame_masks[1], 0b10);
        assert_eq!((v.catch_all[0].mask, v.catch_all[0].every_frame), (0b01, 0));
        assert_eq!((v.catch_all[1].mask, v.catch_all[1].every_frame), (0b10, 1));
        // A port filter makes it an IP rule, whatever the flag says.
        let mut filtered = drop(RULE_EVERY_FRAME, 0b01);
        filtered.rule.dport = [53, 53];
        let mut set = TargetRules::default();
        set.entries.insert(0, filtered);
        assert_eq!(rule_set(&set).frame_masks[0], 0);
    }

    #[test]
    fn rule_prefixes_map_ipv4_into_ipv6() {
        let p = addr_mask_of(Some("10.1.0.0/16".parse().unwrap()));
        let mapped = |a: [u8; 4]| {
            let o = std::net::Ipv4Addr::from(a).to_ipv6_mapped().octets();
            let (c, _) = o.as_chunks::<4>();
            [0, 1, 2, 3].map(|i| u32::from_ne_bytes(c[i]))
        };
        // ::ffff:10.1.0.0/112: the first 96 bits and 16 of the last word.
        let last = u32::from_ne_bytes([255, 255, 0, 0]);
        assert_eq!(p.mask, [u32::MAX, u32::MAX, u32::MAX, last]);
        assert!(p.contains(&mapped([10, 1, 200, 3])));
        assert!(!p.contains(&mapped([10, 2, 0, 1])));
        // IPv4 in IPv6: an IPv6 address with the same last word is not in it.
        assert!(!p.contains(&[0, 0, 0, mapped([10, 1, 0, 0])[3]]));
        assert!(addr_mask_of(None).contains(&mapped([1, 2, 3, 4])));
    }
}
