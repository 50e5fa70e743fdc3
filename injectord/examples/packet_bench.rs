//! Cost per packet of the XDP and TC packet programs, by BPF_PROG_TEST_RUN
//! with a large repeat count, against do-nothing XDP_PASS / TC "next"
//! programs from the same object, with 0, 1, 1,000 and 10,000 faults
//! installed for other targets in the same maps. Run by `./x bench`.
//!
//! It is also the drop benchmark's NIC-like traffic generator: `xdpgen`
//! runs a program that returns XDP_TX under BPF_PROG_TEST_RUN in
//! live-frames mode, with IF as the ingress device, so the frames leave
//! through IF as a driver hands them over (on a veth, the peer receives
//! frames, not skbs), and prints frames sent per second.
//!
//! Usage: packet_bench [REPEAT] | packet_bench xdpgen IF SRC_MAC DST_MAC SECONDS

use std::time::{Duration, Instant};

use anyhow::Context as _;
use aya::{
    EbpfLoader,
    maps::Array,
    programs::{SchedClassifier, TestRun as _, TestRunAttrs, TestRunOptions, Xdp},
};
use injector_common::{
    LEASE_SLOT, Trigger,
    bench::BENCH_XDP_TX,
    globals, maps,
    packet::{HOOK_TC_EGRESS, HOOK_XDP, PACKET_TC_EGRESS, PACKET_XDP},
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
    let repeat: u32 = args
        .first()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2_000_000);
    let nr_cpus = aya::util::nr_cpus()
        .map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?
        .get() as usize;
    let (ebpf, mut maps) = load_object(true)?;
    let data = frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let run = |name: &'static str| run_program(&ebpf, name, &data, repeat);

    let base_xdp = run(PROBE_XDP)?;
    let base_tc = run(PROBE_TC)?;
    println!("packet program cost, BPF_PROG_TEST_RUN x {repeat}, median of 5 (64-byte UDP frame)");
    println!(
        "{:<58} {:>9} {:>7} {:>9} {:>7}",
        "scenario", "XDP ns", "ratio", "TC ns", "ratio"
    );
    let row = |name: &str, x: f64, t: f64| {
        println!(
            "{name:<58} {x:>9.1} {:>7.2} {t:>9.1} {:>7.2}",
            x / base_xdp,
            t / base_tc
        );
    };
    row(
        "baseline: XDP_PASS / TC next, no lookups",
        base_xdp,
        base_tc,
    );

    // A fault on this target (0, a per-interface object's own) that matches
    // the packet but never fires (probability 0): the whole evaluation
    // path, every packet. Then faults on other targets, each with its own
    // target id, rule and prefixes, in the same maps.
    row(
        "no fault on this target (one hash lookup, miss)",
        run(PACKET_XDP)?,
        run(PACKET_TC_EGRESS)?,
    );
    let mut own = TargetRules::default();
    let never = Trigger {
        threshold: 0,
        ..trigger()
    };
    let p = plan(
        json!({"type": "packet_drop", "direction": "both", "protocol": "udp",
                        "dst": "10.0.0.0/8", "dst_port": 9}),
    )?;
    maps.add(
        0,
        &mut own,
        p.entries(1 << HOOK_XDP, 1 << HOOK_TC_EGRESS, 0, never),
        nr_cpus,
    )?;
    let mut sets: Vec<TargetRules> = Vec::new();
    let mut installed = 0usize;
    for want in [0usize, 1, 1_000, 10_000] {
        while installed < want {
            let i = installed + 1;
            let p = plan(
                json!({"type": "packet_drop", "direction": "both", "protocol": "udp",
                                "dst": format!("10.{}.{}.0/24", (i >> 8) & 255, i & 255),
                                "dst_port": 9}),
            )?;
            let entries = p.entries(1 << HOOK_XDP, 1 << HOOK_TC_EGRESS, i as u32, trigger());
            let mut set = TargetRules::default();
            maps.add(i as u64, &mut set, entries, nr_cpus)?;
            sets.push(set);
            installed += 1;
        }
        row(
            &format!("matching fault (p=0) here + {want} faults on other targets"),
            run(PACKET_XDP)?,
            run(PACKET_TC_EGRESS)?,
        );
    }
    // The same fault without an address filter: no LPM lookup at all.
    maps.remove(0, &mut own, &[0], 0);
    let p = plan(
        json!({"type": "packet_drop", "direction": "both", "protocol": "udp", "dst_port": 9}),
    )?;
    maps.add(
        0,
        &mut own,
        p.entries(1 << HOOK_XDP, 1 << HOOK_TC_EGRESS, 0, never),
        nr_cpus,
    )?;
    row(
        "matching fault (p=0) filtering on port only + 10000 others",
        run(PACKET_XDP)?,
        run(PACKET_TC_EGRESS)?,
    );

    // What the lease check costs: a matching fault in a copy of the object
    // whose programs skip the check, next to the same in this copy.
    let (off, mut off_maps) = load_object(false)?;
    let p = plan(
        json!({"type": "packet_drop", "direction": "both", "protocol": "udp",
                        "dst": "10.0.0.0/8", "dst_port": 9}),
    )?;
    off_maps.add(
        0,
        &mut TargetRules::default(),
        p.entries(1 << HOOK_XDP, 1 << HOOK_TC_EGRESS, 0, never),
        nr_cpus,
    )?;
    maps.remove(0, &mut own, &[0], 0);
    maps.add(
        0,
        &mut own,
        p.entries(1 << HOOK_XDP, 1 << HOOK_TC_EGRESS, 0, never),
        nr_cpus,
    )?;
    row(
        "matching fault (p=0) + 10000 others, lease checked",
        run(PACKET_XDP)?,
        run(PACKET_TC_EGRESS)?,
    );
    row(
        "matching fault (p=0), no lease check (LEASE_CHECK=0)",
        run_program(&off, PACKET_XDP, &data, repeat)?,
        run_program(&off, PACKET_TC_EGRESS, &data, repeat)?,
    );
    Ok(())
}

/// Loads the object with the packet programs and the do-nothing probes,
/// its lease granted for good (no daemon renews it here), or with the
/// lease check skipped (`lease_check` false: the verifier prunes it).
fn load_object(lease_check: bool) -> anyhow::Result<(aya::Ebpf, PacketMaps)> {
    let check = u8::from(lease_check);
    let mut ebpf = EbpfLoader::new()
        .override_global(globals::LEASE_CHECK, &check, true)
        .load(OBJECT)
        .context("loading the object")?;
    let mut lease: Array<_, u64> =
        Array::try_from(ebpf.map_mut(maps::LEASE).context(maps::LEASE)?)?;
    lease.set(LEASE_SLOT, &u64::MAX, 0)?;
    let maps = PacketMaps::take(&mut ebpf)?;
    for name in [PROBE_XDP, PACKET_XDP] {
        let p: &mut Xdp = ebpf.program_mut(name).context(name)?.try_into()?;
        p.load()?;
    }
    for name in [PROBE_TC, PACKET_TC_EGRESS] {
        let p: &mut SchedClassifier = ebpf.program_mut(name).context(name)?.try_into()?;
        p.load()?;
    }
    Ok((ebpf, maps))
}

/// ns per run of program `name`, median of 5 test runs of `repeat`.
fn run_program(ebpf: &aya::Ebpf, name: &str, data: &[u8], repeat: u32) -> anyhow::Result<f64> {
    let mut samples = Vec::new();
    for _ in 0..5 {
        let opts = TestRunOptions {
            data_in: Some(data),
            repeat,
            ..TestRunOptions::default()
        };
        let prog = ebpf.program(name).with_context(|| name.to_string())?;
        let d: Duration = if let Ok(p) = <&Xdp>::try_from(prog) {
            p.test_run(opts)?.duration
        } else {
            <&SchedClassifier>::try_from(prog)?.test_run(opts)?.duration
        };
        samples.push(d.as_nanos() as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[2])
}

fn trigger() -> Trigger {
    Trigger {
        threshold: Trigger::ALWAYS,
        ..Trigger::default()
    }
}
