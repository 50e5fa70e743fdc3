//! Cost per packet of the XDP and TC packet programs, by BPF_PROG_TEST_RUN
//! with a large repeat count, against do-nothing XDP_PASS / TC "next"
//! programs from the same object, with 0, 1, 1,000 and 10,000 faults
//! installed for other targets in the same maps. Run by `./x bench`.
//!
//! Usage: packet_bench [REPEAT]

use std::time::Duration;

use anyhow::Context as _;
use aya::{
    EbpfLoader,
    programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use injector_common::{HOOK_TC_EGRESS, HOOK_XDP, Trigger};
use injectord::{
    backend::packet::{PacketMaps, PacketPlan, TargetRules},
    datapath::OBJECT,
    spec::FaultSpec,
};
use serde_json::json;

/// Ethernet + IPv4 + UDP, 10.0.0.1:1234 -> 10.0.0.2:9, 64 bytes.
fn frame() -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&50u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&1234u16.to_be_bytes());
    udp[2..4].copy_from_slice(&9u16.to_be_bytes());
    udp[4..6].copy_from_slice(&30u16.to_be_bytes());
    f
}

fn plan(fault: serde_json::Value) -> anyhow::Result<PacketPlan> {
    let spec = FaultSpec::from_params(json!({"target": {"interface": "eth0"}, "fault": fault}))
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    PacketPlan::of(&spec.fault).context("not a packet fault")
}

fn main() -> anyhow::Result<()> {
    let repeat: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2_000_000);
    let mut ebpf = EbpfLoader::new()
        .load(OBJECT)
        .context("loading the object")?;
    let nr_cpus = aya::util::nr_cpus()
        .map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?
        .get() as usize;
    let mut maps = PacketMaps::take(&mut ebpf)?;
    for name in ["probe_xdp", "packet_xdp"] {
        let p: &mut Xdp = ebpf.program_mut(name).context(name)?.try_into()?;
        p.load()?;
    }
    for name in ["probe_tc", "packet_tc_egress"] {
        let p: &mut SchedClassifier = ebpf.program_mut(name).context(name)?.try_into()?;
        p.load()?;
    }
    let data = frame();
    let run = |name: &'static str| -> anyhow::Result<f64> {
        let mut samples = Vec::new();
        for _ in 0..5 {
            let opts = TestRunOptions {
                data_in: Some(&data),
                repeat,
                ..TestRunOptions::default()
            };
            let prog = ebpf.program(name).context(name)?;
            let d: Duration = if let Ok(p) = <&Xdp>::try_from(prog) {
                p.test_run(opts)?.duration
            } else {
                <&SchedClassifier>::try_from(prog)?.test_run(opts)?.duration
            };
            samples.push(d.as_nanos() as f64);
        }
        samples.sort_by(f64::total_cmp);
        Ok(samples[2])
    };

    let base_xdp = run("probe_xdp")?;
    let base_tc = run("probe_tc")?;
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
        run("packet_xdp")?,
        run("packet_tc_egress")?,
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
    )
    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
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
            maps.add(i as u64, &mut set, entries, nr_cpus)
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            sets.push(set);
            installed += 1;
        }
        row(
            &format!("matching fault (p=0) here + {want} faults on other targets"),
            run("packet_xdp")?,
            run("packet_tc_egress")?,
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
    )
    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    row(
        "matching fault (p=0) filtering on port only + 10000 others",
        run("packet_xdp")?,
        run("packet_tc_egress")?,
    );
    Ok(())
}

fn trigger() -> Trigger {
    Trigger {
        threshold: Trigger::ALWAYS,
        ..Trigger::default()
    }
}
