//! `./x bench --only block`: what the block family costs direct I/O on a
//! loop device (no daemon, the histograms on, faults aimed at another
//! cgroup on the same device), how exactly io_delay holds a task, and
//! how much daemon CPU a delayed millisecond takes. Ratios against the
//! baseline measured in the same run.

use std::{path::Path, time::Instant};

use anyhow::bail;
use injectord_tests::{Daemon, TestCgroup, workload::LoopDevice};
use serde_json::json;

use crate::bench::{start_daemon, start_daemon_with};

/// 4 KiB direct reads per round (the device holds them all).
const READS: u32 = 32768;

/// Times `READS` direct 4 KiB reads by dd in `cg`; reads per second.
fn iops(cg: &TestCgroup, dev: &str) -> anyhow::Result<f64> {
    let start = Instant::now();
    let out = cg
        .command(
            "dd",
            &[
                &format!("if={dev}"),
                "of=/dev/null",
                "bs=4k",
                &format!("count={READS}"),
                "iflag=direct",
            ],
        )
        .output()?;
    if !out.status.success() {
        bail!("dd: {out:?}");
    }
    Ok(f64::from(READS) / start.elapsed().as_secs_f64())
}

/// Timed direct reads in python: each read's latency in ms, sorted.
fn timed_reads(cg: &TestCgroup, dev: &str, n: u32) -> anyhow::Result<Vec<f64>> {
    const SCRIPT: &str = r#"
import mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 4096)
for i in range(int(sys.argv[2])):
    t = time.monotonic()
    os.preadv(fd, [buf], i * 4096)
    print((time.monotonic() - t) * 1000)
"#;
    let out = cg
        .command("python3", &["-c", SCRIPT, dev, &n.to_string()])
        .output()?;
    if !out.status.success() {
        bail!("python: {out:?}");
    }
    let mut v: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    v.sort_by(f64::total_cmp);
    Ok(v)
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

/// The daemon's CPU time so far, in seconds: every thread's time on a
/// CPU (`/proc/PID/task/*/schedstat`, in ns).
fn cpu_s(d: &Daemon) -> anyhow::Result<f64> {
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{}/task", d.pid()))? {
        let stat = std::fs::read_to_string(t?.path().join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(ns as f64 * 1e-9)
}

pub fn run(bin: &Path) -> anyhow::Result<()> {
    let base = TestCgroup::at(&format!("injectord-bench-blk-{}", std::process::id()));
    let (a, other) = (base.child("a"), base.child("other"));
    let disk = LoopDevice::new("bench-blk", READS / 256 + 1);
    let rounds = 7;
    eprintln!(
        "[bench] block I/O: dd, {READS} direct 4 KiB reads of a loop device; {rounds} rounds, each row once per round"
    );
    // Rows interleaved round by round, so that a slow spell of the
    // machine hits every row alike.
    let mut rows: [Vec<f64>; 4] = Default::default();
    let mut errors = false;
    for _ in 0..rounds {
        rows[0].push(iops(&a, &disk.dev)?);
        let off = start_daemon_with(bin, &["--no-block-latency"])?;
        rows[1].push(iops(&a, &disk.dev)?);
        drop(off);
        let d = start_daemon(bin)?;
        rows[2].push(iops(&a, &disk.dev)?);
        d.call(
            "inject",
            json!({"name": "elsewhere-delay", "target": {"cgroup": other.rel},
                   "fault": {"type": "io_delay", "device": disk.dev, "delay": "5ms"}}),
        )?;
        errors = d
            .call(
                "inject",
                json!({"name": "elsewhere-error", "target": {"cgroup": other.rel},
                       "fault": {"type": "io_error", "device": disk.dev}}),
            )
            .is_ok();
        rows[3].push(iops(&a, &disk.dev)?);
    }
    let [none, quiet, hist, elsewhere] = rows.map(|mut v| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    });
    let d = start_daemon(bin)?;
    println!();
    println!(
        "block I/O cost ({READS} direct 4 KiB reads by dd, median of {rounds}; ratio to no daemon)"
    );
    println!("{:<58} {:>10} {:>7}", "scenario", "reads/s", "ratio");
    for (what, v) in [
        ("no daemon".to_string(), none),
        ("daemon, histograms off (--no-block-latency)".into(), quiet),
        ("daemon, histograms on (the default)".into(), hist),
        (
            format!(
                "histograms on + io_delay{} on another cgroup",
                if errors { " and io_error" } else { "" }
            ),
            elsewhere,
        ),
    ] {
        println!("{what:<58} {v:>10.0} {:>7.3}", v / none);
    }

    // io_delay accuracy, and the daemon's CPU per delayed millisecond.
    let baseline = timed_reads(&a, &disk.dev, 200)?;
    let b50 = pct(&baseline, 0.5);
    println!();
    println!(
        "io_delay accuracy (python, direct 4 KiB reads; added = measured - baseline p50 {b50:.3} ms)"
    );
    println!(
        "{:>10} {:>6} {:>12} {:>12} {:>14}",
        "requested", "reads", "added p50", "added p99", "daemon CPU/ms"
    );
    for (delay_ms, n) in [(1u32, 1000u32), (5, 300), (20, 100)] {
        d.call(
            "inject",
            json!({"name": "acc", "target": {"cgroup": a.rel},
                   "fault": {"type": "io_delay", "device": disk.dev, "delay": format!("{delay_ms}ms")}}),
        )?;
        let cpu0 = cpu_s(&d)?;
        let v = timed_reads(&a, &disk.dev, n)?;
        let cpu = cpu_s(&d)? - cpu0;
        d.call("remove", json!({"name": "acc"}))?;
        let delayed_ms = f64::from(n * delay_ms);
        println!(
            "{:>8} ms {n:>6} {:>9.3} ms {:>9.3} ms {:>11.2} us",
            delay_ms,
            pct(&v, 0.5) - b50,
            pct(&v, 0.99) - b50,
            cpu * 1e6 / delayed_ms
        );
    }
    Ok(())
}
