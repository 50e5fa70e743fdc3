//! `cargo xtask bench`, packet half: the per-packet cost of the XDP and TC
//! programs (BPF_PROG_TEST_RUN, by the `packet_bench` example), drop
//! throughput on a veth pair against iptables and nftables, and the latency
//! a flow that no fault targets sees with 10,000 faults installed.

use std::{
    path::{Path, PathBuf},
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

/// How the generator hands frames to a.eth0 (and so how b receives them).
enum Generator {
    /// An AF_PACKET socket (this binary's `bench-worker blast`): b receives
    /// finished skbs, as from a local sender or a container next door.
    Skb,
    /// XDP live frames (the `packet_bench` example's `xdpgen`, at this
    /// path): b receives bare frames, as from a NIC, and builds an skb only
    /// for what reaches its stack.
    XdpFrames(PathBuf),
}

/// The packet generator: frames from a.eth0 to b, `seconds` long; returns
/// frames per second sent.
fn blast(pair: &Pair, generator: &Generator, seconds: f64) -> anyhow::Result<f64> {
    let me = std::env::current_exe()?;
    let mut cmd: Vec<&str> = match generator {
        Generator::Skb => vec![me.to_str().context("utf-8 path")?, "bench-worker", "blast"],
        Generator::XdpFrames(example) => vec![example.to_str().context("utf-8 path")?, "xdpgen"],
    };
    let (src, dst) = (pair.mac(&pair.a)?, pair.mac(&pair.b)?);
    let seconds = seconds.to_string();
    cmd.extend(["eth0", &src, &dst, &seconds]);
    let out = pair.exec(&pair.a, &cmd)?;
    Ok(out.trim().parse::<f64>()?)
}

/// Packets per second the dropper at b handled: three runs of `seconds`,
/// the median of (counter delta / time). `counter` reads the dropper's own
/// count. Returns (handled/s, offered/s).
fn drop_rate(
    pair: &Pair,
    generator: &Generator,
    seconds: f64,
    mut counter: impl FnMut() -> anyhow::Result<u64>,
) -> anyhow::Result<(f64, f64)> {
    let mut runs = Vec::new();
    for _ in 0..3 {
        let before = counter()?;
        let offered = blast(pair, generator, seconds)?;
        // Let the receiving NAPI thread drain its ring.
        std::thread::sleep(Duration::from_millis(200));
        let handled = (counter()? - before) as f64 / seconds;
        runs.push((handled, offered));
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(runs[1])
}

/// First number after `key` in `text`.
fn number_after(text: &str, key: &str) -> anyhow::Result<u64> {
    text.split(key)
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no {key:?} in {text}"))
}

pub fn run(bin: &Path, dir: &Path) -> anyhow::Result<()> {
    let example = build_packet_bench()?;
    program_cost(&example)?;
    for generator in [Generator::Skb, Generator::XdpFrames(example)] {
        drop_throughput(bin, dir, &generator)?;
    }
    latency(bin, dir)?;
    Ok(())
}

/// Builds the `packet_bench` example (program cost and the XDP traffic
/// generator) and returns its path.
fn build_packet_bench() -> anyhow::Result<PathBuf> {
    let status = crate::cargo()
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "injectord",
            "--example",
            "packet_bench",
        ])
        .status()
        .context("building the packet_bench example")?;
    if !status.success() {
        bail!("building packet_bench failed");
    }
    Ok(crate::root().join("target/release/examples/packet_bench"))
}

fn program_cost(example: &Path) -> anyhow::Result<()> {
    eprintln!("[bench] per-packet program cost (BPF_PROG_TEST_RUN)");
    let status = Command::new(example)
        .status()
        .context("running the packet_bench example")?;
    if !status.success() {
        bail!("packet_bench failed");
    }
    Ok(())
}

fn drop_throughput(bin: &Path, dir: &Path, generator: &Generator) -> anyhow::Result<()> {
    eprintln!("[bench] 100% drop throughput on a veth pair");
    let seconds = 3.0;
    // b's eth0 processes its packets in a NAPI kernel thread (veth with GRO
    // on, threaded NAPI), off the generator's CPU: what b can drop per
    // second then shows the dropper's own cost, not the sender's.
    let receiver = |pair: &Pair| -> anyhow::Result<()> {
        pair.exec(&pair.b, &["ethtool", "-K", "eth0", "gro", "on"])?;
        pair.exec(
            &pair.b,
            &["sh", "-c", "echo 1 > /sys/class/net/eth0/threaded"],
        )?;
        Ok(())
    };
    let mut rows: Vec<(&str, (f64, f64))> = Vec::new();
    {
        let pair = Pair::new("none")?;
        receiver(&pair)?;
        let rx = || -> anyhow::Result<u64> {
            let out = pair.exec(
                &pair.b,
                &["cat", "/sys/class/net/eth0/statistics/rx_packets"],
            )?;
            Ok(out.trim().parse()?)
        };
        rows.push((
            "no dropper: received, up the stack to a closed UDP port",
            drop_rate(&pair, generator, seconds, rx)?,
        ));
    }
    {
        let pair = Pair::new("ipt")?;
        receiver(&pair)?;
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
        let count = || -> anyhow::Result<u64> {
            let out = pair.exec(
                &pair.b,
                &[
                    "iptables",
                    "-t",
                    "raw",
                    "-L",
                    "PREROUTING",
                    "-v",
                    "-x",
                    "-n",
                ],
            )?;
            let line = out
                .lines()
                .find(|l| l.contains("DROP"))
                .context("no DROP rule")?;
            Ok(line
                .split_whitespace()
                .next()
                .context("no count")?
                .parse()?)
        };
        rows.push((
            "iptables raw PREROUTING -m statistic --probability 1 -j DROP",
            drop_rate(&pair, generator, seconds, count)?,
        ));
    }
    {
        let pair = Pair::new("nft")?;
        receiver(&pair)?;
        pair.exec(
            &pair.b,
            &[
                "nft",
                "add table inet bench; add chain inet bench pre { type filter hook prerouting priority raw; }; add rule inet bench pre meta l4proto udp numgen random mod 100 <= 99 counter drop",
            ],
        )?;
        let count = || -> anyhow::Result<u64> {
            let out = pair.exec(&pair.b, &["nft", "list", "chain", "inet", "bench", "pre"])?;
            number_after(&out, "packets")
        };
        rows.push((
            "nftables raw prerouting numgen random mod 100 <= 99 drop",
            drop_rate(&pair, generator, seconds, count)?,
        ));
    }
    {
        let pair = Pair::new("inj")?;
        receiver(&pair)?;
        let mut d = Daemon::start(bin, dir)?;
        let id = d.call(
            "inject",
            json!({"target": {"interface": "eth0", "netns": pair.b},
                   "fault": {"type": "packet_drop", "direction": "ingress", "protocol": "udp"}}),
        )?["id"]
            .clone();
        let count = || -> anyhow::Result<u64> {
            Ok(d.call("get", json!({"id": id}))?["activations"]
                .as_u64()
                .unwrap_or(0))
        };
        rows.push((
            "injectord packet_drop ingress (XDP)",
            drop_rate(&pair, generator, seconds, count)?,
        ));
    }
    let ipt = rows[1].1.0;
    let how = match generator {
        Generator::Skb => "a raw-socket generator (b receives skbs)",
        Generator::XdpFrames(_) => {
            "an XDP live-frames generator (b receives frames, as from a NIC)"
        }
    };
    println!(
        "\n100% drop of 64-byte UDP frames from {how}, a.eth0 -> b.eth0; b handles its packets in a NAPI thread (median of 3 x {seconds} s)"
    );
    println!(
        "{:<62} {:>12} {:>12} {:>12}",
        "at b", "handled/s", "offered/s", "vs iptables"
    );
    for (name, (handled, offered)) in &rows {
        println!(
            "{name:<62} {handled:>12.0} {offered:>12.0} {:>12.2}",
            handled / ipt
        );
    }
    Ok(())
}

/// Latency of a flow no fault targets: without faults, with 10,000 faults
/// elsewhere (other cgroups, another interface), then with faults for
/// other traffic on the interface the flow crosses.
fn latency(bin: &Path, dir: &Path) -> anyhow::Result<()> {
    eprintln!("[bench] latency of an untargeted flow");
    let pair = Pair::new("lat")?;
    let other = Pair::new("lat-other")?;
    // UDP request/response between a and b, timed per round trip in ns
    // (bench-worker rtt/echo); p50 and p99 in us, median of 5 runs.
    let me = std::env::current_exe()?;
    let me = me.to_str().context("utf-8 path")?.to_string();
    let mut echo = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.b,
            &me,
            "bench-worker",
            "echo",
            "9999",
        ])
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let ping = |pair: &Pair| -> anyhow::Result<(f64, f64)> {
        let mut runs = Vec::new();
        for _ in 0..5 {
            let out = pair.exec(
                &pair.a,
                &[&me, "bench-worker", "rtt", "10.97.0.2", "9999", "20000"],
            )?;
            let v: Vec<f64> = out
                .split_whitespace()
                .filter_map(|t| t.parse().ok())
                .collect();
            runs.push((v[0], v[1]));
        }
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(runs[2])
    };
    let mut rows = vec![("no faults".to_string(), ping(&pair)?)];

    let mut d = Daemon::start(bin, dir)?;
    let mount = cgroup2_mount()?;
    let base = format!("injectord-bench-lat-{}", std::process::id());
    let _base = Cg::new(&mount, &base)?;
    let mut cgs = Vec::new();
    let mut faults = 0;
    for port in 0..40u16 {
        d.call(
            "inject",
            json!({"target": {"interface": "eth0", "netns": other.a},
                   "fault": {"type": "packet_drop", "direction": "both", "protocol": "udp", "dst_port": 20000 + port}}),
        )?;
        faults += 1;
    }
    while faults < 10_000 {
        let i = cgs.len();
        cgs.push(Cg::new(&mount, &format!("{base}/c{i}"))?);
        for dir in ["ingress", "egress"] {
            d.call(
                "inject",
                json!({"target": {"cgroup": format!("{base}/c{i}")},
                       "fault": {"type": "packet_drop", "direction": dir, "protocol": "udp"}}),
            )?;
            faults += 1;
        }
    }
    rows.push((
        "10,000 faults elsewhere (4,980 cgroups, another veth)".into(),
        ping(&pair)?,
    ));
    for port in 0..63u16 {
        d.call(
            "inject",
            json!({"target": {"interface": "eth0", "netns": pair.a},
                   "fault": {"type": "packet_drop", "protocol": "udp", "dst_port": 30000 + port}}),
        )?;
    }
    rows.push((
        "+ 63 UDP faults for other ports on a.eth0 egress (TC on the path)".into(),
        ping(&pair)?,
    ));
    d.call(
        "inject",
        json!({"target": {"interface": "eth0", "netns": pair.b},
               "fault": {"type": "packet_drop", "direction": "ingress", "protocol": "udp", "dst_port": 9}}),
    )?;
    rows.push((
        "+ a UDP fault for another port on b.eth0 ingress (XDP on the path)".into(),
        ping(&pair)?,
    ));
    drop(d);
    drop(cgs);
    let _ = echo.kill();
    let _ = echo.wait();
    let base_us = rows[0].1.0;
    println!(
        "\nRTT of an untargeted UDP request/response flow a -> b:9999 (20,000 round trips, median of 5 runs)"
    );
    println!(
        "{:<62} {:>10} {:>10} {:>8}",
        "", "p50 us", "p99 us", "p50 ratio"
    );
    for (name, (p50, p99)) in &rows {
        println!("{name:<62} {p50:>10.1} {p99:>10.1} {:>8.3}", p50 / base_us);
    }
    Ok(())
}
