//! `cargo xtask bench`, packet half: the per-packet cost of the XDP and TC
//! programs (BPF_PROG_TEST_RUN, by the `packet_bench` example), drop
//! throughput on a veth pair against iptables and nftables, and the latency
//! a flow that no fault targets sees with 10,000 faults installed; then
//! how fast interface faults switch on and off (`bench_switch.rs`).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use injectord_tests::{
    TestCgroup,
    net::{Link, Netns, Subnet},
};
use serde_json::json;

use crate::bench::{start_daemon, this_binary};

/// The benchmark's veth pair: the generators (`bench-worker blast` and the
/// `packet_bench` example's `xdpgen`) write 10.97.0.1 -> 10.97.0.2 into
/// their frames.
pub const BENCH_SUBNET: Subnet = Subnet {
    a: "10.97.0.1",
    b: "10.97.0.2",
    a6: "fd97::1",
    b6: "fd97::2",
};

/// Two namespaces joined by veth `eth0` <-> `eth0` on [`BENCH_SUBNET`],
/// deleted on drop.
pub fn veth_pair(tag: &str) -> Link {
    Link::on(&format!("bench-{tag}"), &BENCH_SUBNET)
}

/// How the generator hands frames to a.eth0 (and so how b receives them).
enum Generator {
    /// An AF_PACKET socket (this binary's `bench-worker blast`): b receives
    /// finished skbs, as from a local sender or a container next door.
    Skb,
    /// XDP live frames (the `packet_bench` example's `xdpgen`, at this
    /// path): b receives bare frames, as from a NIC, and builds an skb only
    /// for what reaches its stack. With `one_cpu`, the generator and b's
    /// NAPI thread are pinned to CPU 0: b returns each dropped frame to
    /// the generator's page pool on the same CPU, where on two CPUs that
    /// pool's spin lock is contended, more so the longer the dropper
    /// takes (40-50% of both CPUs in a profile of the UDP row), which
    /// magnifies every nanosecond of the dropper's own. A NIC's frames go
    /// back to its own queue's pool, on the CPU that dropped them.
    XdpFrames { example: PathBuf, one_cpu: bool },
}

impl Generator {
    fn one_cpu(&self) -> bool {
        matches!(self, Self::XdpFrames { one_cpu: true, .. })
    }
}

/// The pids of the kernel's threaded-NAPI threads (`napi/<dev>-<id>`).
fn napi_threads() -> std::collections::BTreeSet<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().into_string().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            comm.starts_with("napi/").then_some(pid)
        })
        .collect()
}

/// The packet generator: frames from a.eth0 to b, `seconds` long; returns
/// frames per second sent.
fn blast(pair: &Link, generator: &Generator, seconds: f64) -> anyhow::Result<f64> {
    let me = this_binary()?;
    let mut cmd: Vec<&str> = match generator {
        Generator::Skb => vec![&me, "bench-worker", "blast"],
        Generator::XdpFrames { example, one_cpu } => {
            let run = vec![example.to_str().context("utf-8 path")?, "xdpgen"];
            if *one_cpu {
                [vec!["taskset", "-c", "0"], run].concat()
            } else {
                run
            }
        }
    };
    let (src, dst) = (pair.a.mac("eth0"), pair.b.mac("eth0"));
    let seconds = seconds.to_string();
    cmd.extend(["eth0", &src, &dst, &seconds]);
    let out = pair.a.run_ok(cmd[0], &cmd[1..]);
    Ok(out.trim().parse::<f64>()?)
}

/// Packets per second the dropper at b handled: three runs of `seconds`,
/// the median of (counter delta / time). `counter` reads the dropper's own
/// count. Returns (handled/s, offered/s).
fn drop_rate(
    pair: &Link,
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

pub fn run(bin: &Path) -> anyhow::Result<()> {
    let example = build_packet_bench()?;
    program_cost(&example)?;
    for generator in [
        Generator::Skb,
        Generator::XdpFrames {
            example: example.clone(),
            one_cpu: false,
        },
        Generator::XdpFrames {
            example,
            one_cpu: true,
        },
    ] {
        drop_throughput(bin, &generator)?;
    }
    latency(bin)?;
    crate::bench_switch::run(bin, 50)?;
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

/// A dropper in the kernel itself, to compare injectord with, at b.
struct KernelDropper {
    /// Names the veth pair it runs on.
    tag: &'static str,
    /// Its row in the table.
    row: &'static str,
    /// The command that installs it in b; empty for none.
    install: &'static [&'static str],
    /// How many packets it has handled so far, read in b.
    handled: fn(&Netns) -> anyhow::Result<u64>,
}

const KERNEL_DROPPERS: [KernelDropper; 3] = [
    KernelDropper {
        tag: "none",
        row: "no dropper: received, up the stack to a closed UDP port",
        install: &[],
        handled: |b| {
            Ok(
                b.run_ok("cat", &["/sys/class/net/eth0/statistics/rx_packets"])
                    .trim()
                    .parse()?,
            )
        },
    },
    KernelDropper {
        tag: "ipt",
        row: "iptables raw PREROUTING -m statistic --probability 1 -j DROP",
        install: &[
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
        handled: |b| {
            let out = b.run_ok(
                "iptables",
                &["-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"],
            );
            let line = out
                .lines()
                .find(|l| l.contains("DROP"))
                .context("no DROP rule")?;
            Ok(line
                .split_whitespace()
                .next()
                .context("no count")?
                .parse()?)
        },
    },
    KernelDropper {
        tag: "nft",
        row: "nftables raw prerouting numgen random mod 100 <= 99 drop",
        install: &[
            "nft",
            "add table inet bench; add chain inet bench pre { type filter hook prerouting priority raw; }; add rule inet bench pre meta l4proto udp numgen random mod 100 <= 99 counter drop",
        ],
        handled: |b| {
            let out = b.run_ok("nft", &["list", "chain", "inet", "bench", "pre"]);
            number_after(&out, "packets")
        },
    },
];

fn drop_throughput(bin: &Path, generator: &Generator) -> anyhow::Result<()> {
    eprintln!("[bench] 100% drop throughput on a veth pair");
    let seconds = 3.0;
    // b's eth0 processes its packets in a NAPI kernel thread (veth with GRO
    // on, threaded NAPI), off the generator's CPU: what b can drop per
    // second then shows the dropper's own cost, not the sender's.
    let receiver = |tag: &str| -> Link {
        let pair = veth_pair(tag);
        pair.b.run_ok("ethtool", &["-K", "eth0", "gro", "on"]);
        let before = napi_threads();
        pair.b
            .run_ok("sh", &["-c", "echo 1 > /sys/class/net/eth0/threaded"]);
        if generator.one_cpu() {
            for pid in napi_threads().difference(&before) {
                crate::sh(Command::new("taskset").args(["-pc", "0", pid]))
                    .expect("pinning b's NAPI thread");
            }
        }
        pair
    };
    let mut rows: Vec<(&str, (f64, f64))> = Vec::new();
    for dropper in &KERNEL_DROPPERS {
        let pair = receiver(dropper.tag);
        if let [program, args @ ..] = dropper.install {
            pair.b.run_ok(program, args);
        }
        rows.push((
            dropper.row,
            drop_rate(&pair, generator, seconds, || (dropper.handled)(&pair.b))?,
        ));
    }
    let udp = |hook| json!({"type": "packet_drop", "direction": "ingress", "protocol": "udp", "hook": hook});
    for (tag, fault, row) in [
        (
            "inj",
            udp("xdp"),
            "injectord packet_drop ingress, UDP, \"hook\": \"xdp\"",
        ),
        (
            "inj-all",
            json!({"type": "packet_drop", "direction": "ingress", "hook": "xdp"}),
            "injectord packet_drop ingress, every IP packet, \"hook\": \"xdp\"",
        ),
        (
            "inj-tc",
            udp("tc"),
            "injectord packet_drop ingress, UDP, in TC (a veth's default)",
        ),
    ] {
        let pair = receiver(tag);
        let d = start_daemon(bin)?;
        let mut rpc = d.client();
        let id = rpc.call(
            "inject",
            json!({"target": {"interface": "eth0", "netns": pair.b.name}, "fault": fault}),
        )?["id"]
            .clone();
        // The daemon refills its pool of interface objects in the
        // background after a first fault: measured once that is over, as
        // a fault that runs for a while would be.
        crate::bench_switch::pool_refilled(&mut rpc)?;
        let count = || -> anyhow::Result<u64> {
            Ok(rpc.call("get", json!({"id": id}))?["activations"]
                .as_u64()
                .unwrap_or(0))
        };
        rows.push((row, drop_rate(&pair, generator, seconds, count)?));
    }
    if let Generator::XdpFrames { example, .. } = generator {
        // The references: a bare XDP_DROP, which looks at nothing, and
        // one that reads the ethertype first; veth counts what its XDP
        // program dropped.
        for (tag, mode, row) in [
            (
                "xdp-ip",
                "xdpdrop-ip",
                "an XDP_DROP of IPv4 frames by ethertype (reads the frame)",
            ),
            ("xdp", "xdpdrop", "a bare XDP_DROP program (the ceiling)"),
        ] {
            let pair = receiver(tag);
            let mut dropper = pair
                .b
                .spawn(example.to_str().context("utf-8 path")?, &[mode, "eth0"]);
            std::thread::sleep(Duration::from_millis(500));
            let drops = || -> anyhow::Result<u64> {
                let out = pair.b.run_ok("ethtool", &["-S", "eth0"]);
                Ok(out
                    .lines()
                    .filter(|l| {
                        l.trim_start()
                            .split(':')
                            .next()
                            .is_some_and(|k| k.ends_with("xdp_drops"))
                    })
                    .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
                    .sum())
            };
            let measured = drop_rate(&pair, generator, seconds, drops);
            let _ = dropper.kill();
            let _ = dropper.wait();
            rows.push((row, measured?));
        }
    }
    let ipt = rows[1].1.0;
    let how = match generator {
        Generator::Skb => "a raw-socket generator (b receives skbs)",
        Generator::XdpFrames { one_cpu: false, .. } => {
            "an XDP live-frames generator (b receives frames, as from a NIC)"
        }
        Generator::XdpFrames { one_cpu: true, .. } => {
            "an XDP live-frames generator on CPU 0, b's NAPI thread on CPU 0 too (frames go back to their pool on the CPU that dropped them, as a NIC's do)"
        }
    };
    println!(
        "\n100% drop of 64-byte UDP frames from {how}, a.eth0 -> b.eth0; b handles its packets in a NAPI thread (median of 3 x {seconds} s)"
    );
    let bare = rows
        .iter()
        .find(|(name, _)| name.starts_with("a bare XDP_DROP"))
        .map(|(_, (handled, _))| *handled);
    println!(
        "{:<62} {:>12} {:>12} {:>12} {:>12}",
        "at b", "handled/s", "offered/s", "vs iptables", "vs XDP_DROP"
    );
    for (name, (handled, offered)) in &rows {
        let vs_bare = bare.map_or("-".to_string(), |b| format!("{:.2}", handled / b));
        println!(
            "{name:<62} {handled:>12.0} {offered:>12.0} {:>12.2} {vs_bare:>12}",
            handled / ipt
        );
    }
    Ok(())
}

/// Latency of a flow no fault targets: without faults, with 10,000 faults
/// elsewhere (other cgroups, another interface), then with faults for
/// other traffic on the interface the flow crosses.
fn latency(bin: &Path) -> anyhow::Result<()> {
    eprintln!("[bench] latency of an untargeted flow");
    let pair = veth_pair("lat");
    let other = veth_pair("lat-other");
    // UDP request/response between a and b, timed per round trip in ns
    // (bench-worker rtt/echo); p50 and p99 in us, median of 5 runs.
    let me = this_binary()?;
    let mut echo = pair.b.spawn(&me, &["bench-worker", "echo", "9999"]);
    std::thread::sleep(Duration::from_millis(300));
    let rows = untargeted_rtts(bin, &pair, &other, &me);
    let _ = echo.kill();
    let _ = echo.wait();
    let rows = rows?;
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

/// The rows of [`latency`]'s table: p50 and p99 round trip (us) of
/// `bench-worker rtt` from `pair.a` to the echo server on `pair.b`, as
/// faults that do not match it pile up (some on `other`).
fn untargeted_rtts(
    bin: &Path,
    pair: &Link,
    other: &Link,
    me: &str,
) -> anyhow::Result<Vec<(String, (f64, f64))>> {
    let ping = |pair: &Link| -> (f64, f64) {
        let mut runs = Vec::new();
        for _ in 0..5 {
            let out = pair.a.run_ok(
                me,
                &["bench-worker", "rtt", BENCH_SUBNET.b, "9999", "20000"],
            );
            let v: Vec<f64> = out
                .split_whitespace()
                .filter_map(|t| t.parse().ok())
                .collect();
            runs.push((v[0], v[1]));
        }
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        runs[2]
    };
    let mut rows = vec![("no faults".to_string(), ping(pair))];

    let d = start_daemon(bin)?;
    let mut rpc = d.client();
    let base = TestCgroup::at(&format!("injectord-bench-lat-{}", std::process::id()));
    let mut cgs = Vec::new();
    let mut faults = 0;
    for port in 0..40u16 {
        rpc.call(
            "inject",
            json!({"target": {"interface": "eth0", "netns": other.a.name},
                   "fault": {"type": "packet_drop", "direction": "both", "protocol": "udp", "dst_port": 20000 + port}}),
        )?;
        faults += 1;
    }
    while faults < 10_000 {
        let cg = base.child(&format!("c{}", cgs.len()));
        for dir in ["ingress", "egress"] {
            rpc.call(
                "inject",
                json!({"target": {"cgroup": cg.rel},
                       "fault": {"type": "packet_drop", "direction": dir, "protocol": "udp"}}),
            )?;
            faults += 1;
        }
        cgs.push(cg);
    }
    rows.push((
        "10,000 faults elsewhere (4,980 cgroups, another veth)".into(),
        ping(pair),
    ));
    for port in 0..63u16 {
        rpc.call(
            "inject",
            json!({"target": {"interface": "eth0", "netns": pair.a.name},
                   "fault": {"type": "packet_drop", "protocol": "udp", "dst_port": 30000 + port}}),
        )?;
    }
    rows.push((
        "+ 63 UDP faults for other ports on a.eth0 egress (TC on the path)".into(),
        ping(pair),
    ));
    // b.eth0's ingress, one hook at a time: TC (any fault but a drop goes
    // there), then XDP (drops). On a veth, an XDP program moves the
    // device's receive path to NAPI, for every packet.
    rpc.call(
        "inject",
        json!({"name": "tc-ingress", "target": {"interface": "eth0", "netns": pair.b.name},
               "fault": {"type": "packet_corrupt", "direction": "ingress", "protocol": "udp", "dst_port": 9}}),
    )?;
    rows.push((
        "+ a UDP fault for another port on b.eth0 ingress (TC on the path)".into(),
        ping(pair),
    ));
    rpc.call("remove", json!({"name": "tc-ingress"}))?;
    rpc.call(
        "inject",
        json!({"target": {"interface": "eth0", "netns": pair.b.name},
               "fault": {"type": "packet_drop", "direction": "ingress", "protocol": "udp", "dst_port": 9,
                         "hook": "xdp"}}),
    )?;
    rows.push((
        "instead, a UDP drop for another port on b.eth0 ingress (XDP)".into(),
        ping(pair),
    ));
    drop(rpc);
    drop(d);
    drop(cgs);
    Ok(rows)
}
