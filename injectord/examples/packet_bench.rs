//! Cost per packet of the packet programs, by BPF_PROG_TEST_RUN with a
//! large repeat count, against do-nothing programs from the same object:
//! an interface's XDP and TC programs with no rules, ten rules for other
//! ports, a matching rule that never fires (with and without the lease
//! check), several, and faults that fire; the cgroup_skb program with a
//! matching rule and 0, 1, 1,000 and 10,000 other cgroups' faults in the
//! same maps. Run by `./x bench`.
//!
//! It is also the drop benchmark's NIC-like traffic generator: `xdpgen`
//! runs a program that returns XDP_TX under BPF_PROG_TEST_RUN in
//! live-frames mode, with IF as the ingress device, so the frames leave
//! through IF as a driver hands them over (on a veth, the peer receives
//! frames, not skbs), and prints frames sent per second.
//!
//! `xdpdrop` attaches a bare XDP_DROP program to IF until killed: what a
//! dropper that looks at nothing achieves; `xdpdrop-ip` one that drops
//! IPv4 frames by their ethertype, the least a dropper that reads the
//! packet does; `xdpdrop-counted` one that also bumps a per-CPU counter,
//! and `xdpdrop-leased` one that also checks the lease, as every fault
//! does.
//!
//! Usage: packet_bench [REPEAT] | packet_bench xdpgen IF SRC_MAC DST_MAC SECONDS
//!        | packet_bench xdpdrop[-ip|-counted|-leased] IF

use std::time::{Duration, Instant};

use anyhow::Context as _;
use aya::{
    EbpfLoader,
    maps::Array,
    programs::{CgroupSkb, SchedClassifier, TestRun as _, TestRunAttrs, TestRunOptions, Xdp},
};
use injector_common::{
    LEASE_SLOT, Trigger,
    bench::{
        BENCH_CGROUP_SKB, BENCH_XDP_DROP, BENCH_XDP_DROP_COUNTED, BENCH_XDP_DROP_IP,
        BENCH_XDP_DROP_LEASED, BENCH_XDP_TX,
    },
    globals, maps,
    packet::{
        HOOK_CGROUP_EGRESS, HOOK_TC_EGRESS, HOOK_XDP, PACKET_CGROUP_EGRESS, PACKET_TC_EGRESS,
        PACKET_XDP,
    },
    probe::{PROBE_TC, PROBE_XDP},
};
use injectord::{
    family::{
        packet::{
            plan::PacketPlan,
            rules::{PacketMaps, TargetRules},
            spec::PacketFault,
        },
        params_as,
    },
    kernel::OBJECT,
    spec::FaultSpec,
};
use injectord_tests::net::{bench_frame as frame, parse_mac};
use serde_json::json;

/// Sends frames out of `ifname` as XDP frames for `seconds`, 2^20 per
/// BPF_PROG_TEST_RUN; returns frames per second.
fn xdp_generate(ifname: &str, src: [u8; 6], dst: [u8; 6], seconds: f64) -> anyhow::Result<f64> {
    const BATCH: u32 = 1 << 20;
    let ifindex =
        nix::net::if_::if_nametoindex(ifname).with_context(|| format!("no interface {ifname}"))?;
    let mut ebpf = EbpfLoader::new()
        .load(OBJECT)
        .context("loading the object")?;
    let prog: &mut Xdp = ebpf
        .program_mut(BENCH_XDP_TX)
        .context(BENCH_XDP_TX)?
        .try_into()?;
    prog.load()?;
    let data = frame(src, dst);
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex. XDP_TX goes out of the ingress.
    let ctx: Vec<u8> = [0, data.len() as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        prog.test_run(TestRunOptions {
            data_in: Some(&data),
            ctx_in: Some(&ctx),
            repeat: BATCH,
            attrs: TestRunAttrs::new().xdp_live_frames(0),
            ..TestRunOptions::default()
        })
        .context("live-frames test run (needs Linux 5.18)")?;
        sent += u64::from(BATCH);
    }
    Ok(sent as f64 / start.elapsed().as_secs_f64())
}

/// Attaches the reference dropper `program` to `ifname` and holds it until
/// killed.
fn xdp_drop(ifname: &str, program: &str) -> anyhow::Result<()> {
    let mut ebpf = EbpfLoader::new()
        .load(OBJECT)
        .context("loading the object")?;
    // The leased reference's lease never runs out.
    let mut lease: Array<_, u64> =
        Array::try_from(ebpf.map_mut(maps::LEASE).context(maps::LEASE)?)?;
    lease.set(LEASE_SLOT, &u64::MAX, 0)?;
    let prog: &mut Xdp = ebpf
        .program_mut(program)
        .context(program.to_string())?
        .try_into()?;
    prog.load()?;
    let ifindex =
        nix::net::if_::if_nametoindex(ifname).with_context(|| format!("no interface {ifname}"))?;
    // Native mode, as the daemon attaches on a veth.
    prog.attach(ifindex, aya::programs::xdp::XdpMode::Driver)
        .with_context(|| format!("attaching XDP_DROP to {ifname}"))?;
    println!("attached");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn plan(fault: serde_json::Value) -> anyhow::Result<PacketPlan> {
    let spec = FaultSpec::from_params(json!({"target": {"interface": "eth0"}, "fault": fault}))?;
    let fault = params_as::<PacketFault>(spec.fault.params()).context("not a packet fault")?;
    Ok(PacketPlan::of(fault))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, ifname, src, dst, seconds] = args.as_slice()
        && cmd == "xdpgen"
    {
        let pps = xdp_generate(ifname, parse_mac(src)?, parse_mac(dst)?, seconds.parse()?)?;
        println!("{pps}");
        return Ok(());
    }
    if let [cmd, ifname] = args.as_slice() {
        let program = match cmd.as_str() {
            "xdpdrop" => Some(BENCH_XDP_DROP),
            "xdpdrop-ip" => Some(BENCH_XDP_DROP_IP),
            "xdpdrop-counted" => Some(BENCH_XDP_DROP_COUNTED),
            "xdpdrop-leased" => Some(BENCH_XDP_DROP_LEASED),
            _ => None,
        };
        if let Some(program) = program {
            return xdp_drop(ifname, program);
        }
    }
    let repeat: u32 = args
        .first()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2_000_000);
    let nr_cpus = aya::util::nr_cpus()
        .map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?
        .get() as usize;
    let data = frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);

    // An interface's object, as the daemon loads one per interface.
    let (iface, mut maps) = load_object(true, Rules::Interface)?;
    let run = |ebpf: &aya::Ebpf, name: &'static str| run_program(ebpf, name, &data, repeat);
    let base_xdp = run(&iface, PROBE_XDP)?;
    let base_tc = run(&iface, PROBE_TC)?;
    println!(
        "packet program cost, BPF_PROG_TEST_RUN x {repeat}, median of 9 (64-byte UDP frame to port 9); +ns: median difference from the do-nothing program run just before"
    );
    println!(
        "{:<62} {:>7} {:>6} {:>7} {:>6}",
        "an interface's programs", "XDP ns", "+ns", "TC ns", "+ns"
    );
    let row = |name: &str, (x, dx): (f64, f64), (t, dt): (f64, f64)| {
        println!("{name:<62} {x:>7.1} {dx:>6.1} {t:>7.1} {dt:>6.1}");
    };
    let both = |ebpf: &aya::Ebpf| -> anyhow::Result<((f64, f64), (f64, f64))> {
        Ok((
            paired(ebpf, PACKET_XDP, PROBE_XDP, &data, repeat)?,
            paired(ebpf, PACKET_TC_EGRESS, PROBE_TC, &data, repeat)?,
        ))
    };
    row(
        "baseline: XDP_PASS / TC next, no lookups",
        (base_xdp, 0.0),
        (base_tc, 0.0),
    );
    let (x, t) = both(&iface)?;
    row("no rules", x, t);

    let never = Trigger {
        threshold: 0,
        ..trigger()
    };
    let hooks = (1 << HOOK_XDP, 1 << HOOK_TC_EGRESS);
    let mut own = TargetRules::default();
    let add = |maps: &mut PacketMaps,
               own: &mut TargetRules,
               fault: serde_json::Value,
               slot: u32,
               t: Trigger|
     -> anyhow::Result<Vec<u32>> {
        let p = plan(fault)?;
        Ok(maps.add(0, own, p.entries(hooks.0, hooks.1, slot, t), nr_cpus)?)
    };
    // Nine rules for other UDP ports (other port buckets), then the one
    // for this packet: the whole evaluation path, never firing.
    let mut others = Vec::new();
    for i in 0..10u32 {
        let port = 20_000 + 1 + i * 3;
        others.push(add(
            &mut maps,
            &mut own,
            json!({"type": "packet_drop", "direction": "both", "protocol": "udp", "dst_port": port}),
            1 + i,
            trigger(),
        )?);
    }
    let (x, t) = both(&iface)?;
    row("10 rules for other ports, none matching", x, t);
    for indices in others.drain(1..) {
        maps.remove(0, &mut own, &indices, 0);
    }
    let one = add(
        &mut maps,
        &mut own,
        json!({"type": "packet_drop", "direction": "both", "protocol": "udp",
               "dst": "10.0.0.0/8", "dst_port": 9}),
        20,
        never,
    )?;
    let (x, t) = both(&iface)?;
    row(
        "1 matching rule (p=0: the whole path, never fires) + 1 other",
        x,
        t,
    );
    let mut more = Vec::new();
    for i in 0..4u32 {
        more.push(add(
            &mut maps,
            &mut own,
            json!({"type": "packet_drop", "direction": "both", "protocol": "udp", "dst_port": 9}),
            21 + i,
            never,
        )?);
    }
    let (x, t) = both(&iface)?;
    row("5 matching rules (p=0; past the first, a bpf_loop)", x, t);
    for indices in more {
        maps.remove(0, &mut own, &indices, 0);
    }

    // The same matching rule in a copy whose programs skip the lease check.
    let (off, mut off_maps) = load_object(false, Rules::Interface)?;
    add(
        &mut off_maps,
        &mut TargetRules::default(),
        json!({"type": "packet_drop", "direction": "both", "protocol": "udp",
               "dst": "10.0.0.0/8", "dst_port": 9}),
        20,
        never,
    )?;
    let (x, t) = both(&off)?;
    row(
        "1 matching rule (p=0), no lease check (LEASE_CHECK=0)",
        x,
        t,
    );

    // Faults that fire on every packet.
    maps.remove(0, &mut own, &one, 0);
    let drop_all = add(
        &mut maps,
        &mut own,
        json!({"type": "packet_drop", "direction": "both", "protocol": "udp", "dst_port": 9}),
        30,
        trigger(),
    )?;
    expect_xdp(&iface, PACKET_XDP, &data, XDP_DROP)?;
    let (x, t) = both(&iface)?;
    row("drop, firing (XDP_DROP / TC redirect to nowhere)", x, t);
    maps.remove(0, &mut own, &drop_all, 0);
    // Alone on the device, as a catch-all must be to be its hook's first
    // rule.
    for indices in others.drain(..) {
        maps.remove(0, &mut own, &indices, 0);
    }
    for (protocol, what) in [
        (
            "any",
            "drop every IP packet, firing (decided on the ethertype)",
        ),
        (
            "all",
            "drop every frame, firing (\"protocol\": \"all\": the frame unread)",
        ),
    ] {
        let whole = add(
            &mut maps,
            &mut own,
            json!({"type": "packet_drop", "direction": "both", "protocol": protocol}),
            30,
            trigger(),
        )?;
        expect_xdp(&iface, PACKET_XDP, &data, XDP_DROP)?;
        let (x, t) = both(&iface)?;
        row(what, x, t);
        maps.remove(0, &mut own, &whole, 0);
    }
    // What the drop benchmark's reference droppers cost.
    for (what, program) in [
        ("reference: a bare XDP_DROP", BENCH_XDP_DROP),
        (
            "reference: XDP_DROP of IPv4 frames by ethertype",
            BENCH_XDP_DROP_IP,
        ),
        (
            "reference: ... and a per-CPU counter bumped",
            BENCH_XDP_DROP_COUNTED,
        ),
        (
            "reference: ... and the daemon's lease checked",
            BENCH_XDP_DROP_LEASED,
        ),
    ] {
        expect_xdp(&iface, program, &data, XDP_DROP)?;
        let (x, dx) = paired(&iface, program, PROBE_XDP, &data, repeat)?;
        println!("{what:<62} {x:>7.1} {dx:>6.1} {:>7} {:>6}", "-", "-");
    }
    for (what, fault) in [
        (
            "corrupt one payload byte, firing (TC; checksum fixed)",
            json!({"type": "packet_corrupt", "direction": "egress", "protocol": "udp", "dst_port": 9, "fix_checksum": true}),
        ),
        (
            "duplicate, firing (TC; a clone sent again)",
            json!({"type": "packet_duplicate", "direction": "egress", "protocol": "udp", "dst_port": 9}),
        ),
    ] {
        let p = plan(fault)?;
        let indices = maps.add(
            0,
            &mut own,
            p.entries(0, 1 << HOOK_TC_EGRESS, 31, trigger()),
            nr_cpus,
        )?;
        let (t, dt) = paired(&iface, PACKET_TC_EGRESS, PROBE_TC, &data, repeat)?;
        println!("{what:<62} {:>7} {:>6} {t:>7.1} {dt:>6.1}", "-", "-");
        maps.remove(0, &mut own, &indices, 0);
    }

    // The cgroup programs: one object for every targeted cgroup. A test
    // run's cgroup storage is fresh, so the program takes BENCH_CGROUP as
    // its target (see `load_object`).
    let (cg, mut cg_maps) = load_object(true, Rules::Cgroup)?;
    let base_cg = run(&cg, BENCH_CGROUP_SKB)?;
    println!();
    println!(
        "{:<62} {:>7} {:>6}",
        "the cgroup programs (egress)", "ns", "+ns"
    );
    let cg_row = |name: &str, (v, dv): (f64, f64)| println!("{name:<62} {v:>7.1} {dv:>6.1}");
    let cg_run = || paired(&cg, PACKET_CGROUP_EGRESS, BENCH_CGROUP_SKB, &data, repeat);
    cg_row("baseline: a do-nothing cgroup_skb program", (base_cg, 0.0));
    cg_row("the cgroup is not a target (one hash miss)", cg_run()?);
    let mut own = TargetRules::default();
    let p = plan(
        json!({"type": "packet_drop", "direction": "egress", "protocol": "udp",
               "dst": "10.0.0.0/8", "dst_port": 9}),
    )?;
    cg_maps.add(
        BENCH_TARGET,
        &mut own,
        p.entries(0, 1 << HOOK_CGROUP_EGRESS, 0, never),
        nr_cpus,
    )?;
    let mut sets: Vec<TargetRules> = Vec::new();
    let mut installed = 0usize;
    for want in [0usize, 1, 1_000, 10_000] {
        while installed < want {
            let i = installed + 1;
            let p = plan(
                json!({"type": "packet_drop", "direction": "egress", "protocol": "udp",
                       "dst": format!("10.{}.{}.0/24", (i >> 8) & 255, i & 255),
                       "dst_port": 9}),
            )?;
            let entries = p.entries(0, 1 << HOOK_CGROUP_EGRESS, i as u32, trigger());
            let mut set = TargetRules::default();
            cg_maps.add(i as u64, &mut set, entries, nr_cpus)?;
            sets.push(set);
            installed += 1;
        }
        cg_row(
            &format!("a matching rule (p=0) for this cgroup + {want} other cgroups'"),
            cg_run()?,
        );
    }
    Ok(())
}

/// The cgroup the cgroup rows' program runs for: above the ids of the
/// 10,000 other targets the rows install.
const BENCH_TARGET: u64 = 1 << 32;

/// Which rule maps a loaded copy's programs read.
#[derive(Clone, Copy)]
enum Rules {
    /// An interface's object (XDP, TC): whole rule sets.
    Interface,
    /// The shared object (cgroup_skb): rules by target.
    Cgroup,
}

/// Loads the object with the packet programs and the do-nothing probes,
/// its lease granted for good (no daemon renews it here), or with the
/// lease check skipped (`lease_check` false: the verifier prunes it).
fn load_object(lease_check: bool, rules: Rules) -> anyhow::Result<(aya::Ebpf, PacketMaps)> {
    let check = u8::from(lease_check);
    let mut ebpf = EbpfLoader::new()
        .override_global(globals::LEASE_CHECK, &check, true)
        .override_global(globals::BENCH_CGROUP, &BENCH_TARGET, true)
        .load(OBJECT)
        .context("loading the object")?;
    let mut lease: Array<_, u64> =
        Array::try_from(ebpf.map_mut(maps::LEASE).context(maps::LEASE)?)?;
    lease.set(LEASE_SLOT, &u64::MAX, 0)?;
    let maps = match rules {
        Rules::Interface => PacketMaps::take_interface(&mut ebpf)?,
        Rules::Cgroup => PacketMaps::take(&mut ebpf)?,
    };
    match rules {
        Rules::Interface => {
            for name in [
                PROBE_XDP,
                PACKET_XDP,
                BENCH_XDP_DROP,
                BENCH_XDP_DROP_IP,
                BENCH_XDP_DROP_COUNTED,
                BENCH_XDP_DROP_LEASED,
            ] {
                let p: &mut Xdp = ebpf.program_mut(name).context(name)?.try_into()?;
                p.load()?;
            }
            for name in [PROBE_TC, PACKET_TC_EGRESS] {
                let p: &mut SchedClassifier = ebpf.program_mut(name).context(name)?.try_into()?;
                p.load()?;
            }
        }
        Rules::Cgroup => {
            for name in [BENCH_CGROUP_SKB, PACKET_CGROUP_EGRESS] {
                let p: &mut CgroupSkb = ebpf.program_mut(name).context(name)?.try_into()?;
                p.load()?;
            }
        }
    }
    Ok((ebpf, maps))
}

/// ns per run of program `name`, median of 5 test runs of `repeat`.
fn run_program(ebpf: &aya::Ebpf, name: &str, data: &[u8], repeat: u32) -> anyhow::Result<f64> {
    let mut samples = (0..5)
        .map(|_| run_once(ebpf, name, data, repeat))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(median(&mut samples))
}

/// A program's cost and its cost over `base` (a do-nothing program of the
/// same type), measured in turn, nine times each: the median of the
/// differences of adjacent runs, so that a slow spell of the machine
/// (this VM's per-packet times drift by several ns from one minute to the
/// next) lands on both sides of a difference instead of on one row.
fn paired(
    ebpf: &aya::Ebpf,
    name: &str,
    base: &str,
    data: &[u8],
    repeat: u32,
) -> anyhow::Result<(f64, f64)> {
    let (mut values, mut diffs) = (Vec::new(), Vec::new());
    for _ in 0..9 {
        let b = run_once(ebpf, base, data, repeat)?;
        let v = run_once(ebpf, name, data, repeat)?;
        values.push(v);
        diffs.push(v - b);
    }
    Ok((median(&mut values), median(&mut diffs)))
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// `enum xdp_action`'s XDP_DROP.
const XDP_DROP: u32 = 1;

/// Fails unless the XDP program `name` returns `want` for `data`: a row
/// meant to time a drop times one (a rule left over from an earlier row
/// once made the catch-all row time the general path).
fn expect_xdp(ebpf: &aya::Ebpf, name: &str, data: &[u8], want: u32) -> anyhow::Result<()> {
    let prog: &Xdp = ebpf.program(name).context(name.to_string())?.try_into()?;
    let got = prog
        .test_run(TestRunOptions {
            data_in: Some(data),
            ..TestRunOptions::default()
        })?
        .return_value;
    anyhow::ensure!(got == want, "{name} returned {got}, not {want}");
    Ok(())
}

/// One BPF_PROG_TEST_RUN of `repeat` runs: the mean ns per run.
fn run_once(ebpf: &aya::Ebpf, name: &str, data: &[u8], repeat: u32) -> anyhow::Result<f64> {
    let opts = TestRunOptions {
        data_in: Some(data),
        repeat,
        ..TestRunOptions::default()
    };
    let prog = ebpf.program(name).with_context(|| name.to_string())?;
    let d: Duration = if let Ok(p) = <&Xdp>::try_from(prog) {
        p.test_run(opts)?.duration
    } else if let Ok(p) = <&CgroupSkb>::try_from(prog) {
        p.test_run(opts)?.duration
    } else {
        <&SchedClassifier>::try_from(prog)?.test_run(opts)?.duration
    };
    Ok(d.as_nanos() as f64)
}

fn trigger() -> Trigger {
    Trigger {
        threshold: Trigger::ALWAYS,
        ..Trigger::default()
    }
}
