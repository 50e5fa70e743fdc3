//! `cargo xtask bench`, packet half: the per-packet cost of the XDP and TC
//! programs (BPF_PROG_TEST_RUN, by the `packet_bench` example), drop
//! throughput on a veth pair against iptables and nftables, and the latency
//! a flow that no fault targets sees with 10,000 faults installed.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::bench::{Cg, Daemon, cgroup2_mount};

/// Two namespaces joined by veth `eth0` <-> `eth0`, deleted on drop.
struct Pair {
    a: String,
    b: String,
}

impl Pair {
    fn new(tag: &str) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let p = Self {
            a: format!("bench-{tag}-{pid}-a"),
            b: format!("bench-{tag}-{pid}-b"),
        };
        for ns in [&p.a, &p.b] {
            sh("ip", &["netns", "add", ns])?;
            sh("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        sh(
            "ip",
            &[
                "-n", &p.a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
                &p.b,
            ],
        )?;
        for (ns, ip) in [(&p.a, "10.97.0.1/24"), (&p.b, "10.97.0.2/24")] {
            sh("ip", &["-n", ns, "addr", "add", ip, "dev", "eth0"])?;
            sh("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
        }
        Ok(p)
    }

    fn exec(&self, ns: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["netns", "exec", ns];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    fn mac(&self, ns: &str) -> anyhow::Result<String> {
        Ok(self
            .exec(ns, &["cat", "/sys/class/net/eth0/address"])?
            .trim()
            .to_string())
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The packet generator: raw frames from a.eth0 to b, `seconds` long, in
/// this binary's `bench-worker blast` mode; returns packets per second.
fn blast(pair: &Pair, seconds: f64) -> anyhow::Result<f64> {
    let me = std::env::current_exe()?;
    let me = me.to_str().context("utf-8 path")?;
    let (src, dst) = (pair.mac(&pair.a)?, pair.mac(&pair.b)?);
    let mut samples = Vec::new();
    for _ in 0..3 {
        let out = pair.exec(
            &pair.a,
            &[
                me,
                "bench-worker",
                "blast",
                "eth0",
                &src,
                &dst,
                &seconds.to_string(),
            ],
        )?;
        samples.push(out.trim().parse::<f64>()?);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[1])
}

pub fn run(bin: &Path, dir: &Path) -> anyhow::Result<()> {
    program_cost()?;
    drop_throughput(bin, dir)?;
    latency(bin, dir)?;
    Ok(())
}

fn program_cost() -> anyhow::Result<()> {
    eprintln!("[bench] per-packet program cost (BPF_PROG_TEST_RUN)");
    let status = Command::new("cargo")
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "injectord",
            "--example",
            "packet_bench",
        ])
        .status()
        .context("running the packet_bench example")?;
    if !status.success() {
        bail!("packet_bench failed");
    }
    Ok(())
}

fn drop_throughput(bin: &Path, dir: &Path) -> anyhow::Result<()> {
    eprintln!("[bench] 100% drop throughput on a veth pair");
    let seconds = 3.0;
    let mut rows: Vec<(&str, f64)> = Vec::new();
    {
        let pair = Pair::new("none")?;
        rows.push((
            "no drop: frames go up the stack to a closed UDP port",
            blast(&pair, seconds)?,
        ));
    }
    {
        let pair = Pair::new("ipt")?;
        pair.exec(
            &pair.b,
            &[
                "iptables",
                "-t",
                "raw",
                "-A",
                "PREROUTING",
                "-i",
                "eth0",
                "-p",
                "udp",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                "1",
                "-j",
                "DROP",
            ],
        )?;
        rows.push((
            "iptables raw PREROUTING -m statistic (p=1) -j DROP",
            blast(&pair, seconds)?,
        ));
    }
    {
        let pair = Pair::new("nft")?;
        pair.exec(
            &pair.b,
            &[
                "nft",
                "add table inet bench; add chain inet bench pre { type filter hook prerouting priority raw; }; add rule inet bench pre meta l4proto udp numgen random mod 100 < 100 drop",
            ],
        )?;
        rows.push((
            "nftables prerouting (raw) numgen random mod 100 < 100 drop",
            blast(&pair, seconds)?,
        ));
    }
    {
        let pair = Pair::new("inj")?;
        let mut d = Daemon::start(bin, dir)?;
        d.call(
            "inject",
            json!({"target": {"interface": "eth0", "netns": pair.b},
                   "fault": {"type": "packet_drop", "direction": "ingress", "protocol": "udp"}}),
        )?;
        rows.push((
            "injectord packet_drop ingress (XDP)",
            blast(&pair, seconds)?,
        ));
    }
    let ipt = rows[1].1;
    println!(
        "\n100% drop of UDP frames sent by a raw-socket generator, a.eth0 -> b.eth0 (median of 3 x {seconds} s)"
    );
    println!(
        "{:<62} {:>12} {:>14}",
        "dropping at b", "packets/s", "vs iptables"
    );
    for (name, pps) in &rows {
        println!("{name:<62} {pps:>12.0} {:>14.2}", pps / ipt);
    }
    Ok(())
}

/// Latency of a flow no fault targets, with and without 10,000 faults:
/// 63 on the interface it crosses (other ports) and the rest on other
/// cgroups.
fn latency(bin: &Path, dir: &Path) -> anyhow::Result<()> {
    eprintln!("[bench] latency of an untargeted flow");
    let pair = Pair::new("lat")?;
    let ping = |pair: &Pair| -> anyhow::Result<(f64, f64)> {
        let mut avgs = Vec::new();
        let mut mdevs = Vec::new();
        for _ in 0..3 {
            let out = pair.exec(
                &pair.a,
                &["ping", "-q", "-n", "-f", "-c", "20000", "10.97.0.2"],
            )?;
            let stats = out
                .lines()
                .find(|l| l.starts_with("rtt"))
                .and_then(|l| l.split("= ").nth(1))
                .context("no ping summary")?;
            let v: Vec<f64> = stats
                .split(['/', ' '])
                .filter_map(|t| t.parse().ok())
                .collect();
            avgs.push(v[1] * 1000.0);
            mdevs.push(v[3] * 1000.0);
        }
        avgs.sort_by(f64::total_cmp);
        mdevs.sort_by(f64::total_cmp);
        Ok((avgs[1], mdevs[1]))
    };
    let none = ping(&pair)?;
    let mut d = Daemon::start(bin, dir)?;
    for port in 0..63u16 {
        d.call(
            "inject",
            json!({"target": {"interface": "eth0", "netns": pair.a},
                   "fault": {"type": "packet_drop", "direction": "both", "protocol": "udp", "dst_port": 20000 + port}}),
        )?;
    }
    let mount = cgroup2_mount()?;
    let base = format!("injectord-bench-lat-{}", std::process::id());
    let _base = Cg::new(&mount, &base)?;
    let mut cgs = Vec::new();
    let mut faults = 63;
    while faults < 10_000 {
        let i = cgs.len();
        cgs.push(Cg::new(&mount, &format!("{base}/c{i}"))?);
        for dir in ["ingress", "egress"] {
            if faults < 10_000 {
                d.call(
                    "inject",
                    json!({"target": {"cgroup": format!("{base}/c{i}")},
                           "fault": {"type": "packet_drop", "direction": dir}}),
                )?;
                faults += 1;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let loaded = ping(&pair)?;
    drop(d);
    drop(cgs);
    println!("\nRTT of an untargeted ping flood across a.eth0 (20,000 echoes, median of 3)");
    println!(
        "{:<62} {:>10} {:>10} {:>8}",
        "", "avg us", "mdev us", "ratio"
    );
    println!(
        "{:<62} {:>10.1} {:>10.1} {:>8.3}",
        "no faults", none.0, none.1, 1.0
    );
    println!(
        "{:<62} {:>10.1} {:>10.1} {:>8.3}",
        "10,000 faults (63 on a.eth0 for other ports, rest on cgroups)",
        loaded.0,
        loaded.1,
        loaded.0 / none.0
    );
    let _ = fs::remove_dir_all(dir.join("lat"));
    Ok(())
}
