//! `cargo xtask bench`, packet half: the per-packet cost of the XDP and TC
//! programs (BPF_PROG_TEST_RUN, by the `packet_bench` example), drop
//! throughput on a veth pair against iptables and nftables, and the latency
//! a flow that no fault targets sees with 10,000 faults installed; then
//! how fast interface faults switch on and off (`bench_switch.rs`).

use std::{
    path::{Path, PathBuf},
    process::Command,
    rc::Rc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use injectord_tests::{
    Client, TestCgroup,
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

/// CPU time (ns) the kernel thread `pid` has run so far
/// (`/proc/PID/schedstat`).
fn run_time_ns(pid: &str) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    stat.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no run time in /proc/{pid}/schedstat: {stat}"))
}

/// One run of `seconds` through `row`'s pair, its dropper put in place
/// first and taken away after: (handled/s, offered/s, ns of b's NAPI
/// thread per packet handled).
fn drop_sample(
    row: &mut DropRow,
    generator: &Generator,
    seconds: f64,
    rpc: &mut Client,
) -> anyhow::Result<(f64, f64, f64)> {
    row.attach(rpc)?;
    let before = row.handled(rpc)?;
    let cpu_before = run_time_ns(&row.napi)?;
    let offered = blast(&row.pair, generator, seconds)?;
    // Let the receiving NAPI thread drain its ring.
    std::thread::sleep(Duration::from_millis(200));
    let handled = row.handled(rpc)? - before;
    let cpu = run_time_ns(&row.napi)? - cpu_before;
    row.detach(rpc)?;
    Ok((
        handled as f64 / seconds,
        offered,
        cpu as f64 / handled.max(1) as f64,
    ))
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
    drop_tables(bin, &example)?;
    latency(bin)?;
    crate::bench_switch::run(bin, 50)?;
    Ok(())
}

/// The drop throughput tables alone (`./x bench --only drop`).
pub fn drops(bin: &Path) -> anyhow::Result<()> {
    drop_tables(bin, &build_packet_bench()?)
}

fn drop_tables(bin: &Path, example: &Path) -> anyhow::Result<()> {
    for generator in [
        Generator::Skb,
        Generator::XdpFrames {
            example: example.to_path_buf(),
            one_cpu: false,
        },
        Generator::XdpFrames {
            example: example.to_path_buf(),
            one_cpu: true,
        },
    ] {
        drop_throughput(bin, &generator)?;
    }
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

/// A row's dropper: where it lives and how it counts what it handled.
enum Dropper {
    /// In the kernel, installed once on a pair of its own; read in b by
    /// its own command.
    Kernel(fn(&Netns) -> anyhow::Result<u64>),
    /// A reference program of `packet_bench` (`xdpdrop*`), attached for
    /// each sample on the shared pair and counted by b's veth as XDP
    /// drops.
    Reference {
        example: PathBuf,
        mode: &'static str,
        held: Option<std::process::Child>,
    },
    /// An injectord fault, injected for each sample on the shared pair and
    /// counted by its activations.
    Fault {
        fault: serde_json::Value,
        id: Option<serde_json::Value>,
    },
}

/// A row of the drop table: a dropper, the pair it drops on, and its
/// samples.
struct DropRow {
    name: &'static str,
    pair: Rc<Link>,
    /// b's NAPI thread: whose CPU time per packet the table shows.
    napi: String,
    dropper: Dropper,
    samples: Vec<(f64, f64, f64)>,
}

impl DropRow {
    /// Puts a per-sample dropper in place at b: attached, counting, and
    /// the daemon idle again (its interface pool refilled).
    fn attach(&mut self, rpc: &mut Client) -> anyhow::Result<()> {
        let b = &self.pair.b;
        match &mut self.dropper {
            Dropper::Kernel(_) => {}
            Dropper::Reference {
                example,
                mode,
                held,
            } => {
                *held = Some(b.spawn(example.to_str().context("utf-8 path")?, &[mode, "eth0"]));
                wait_for_xdp(b, true)?;
            }
            Dropper::Fault { fault, id } => {
                *id = Some(
                    rpc.call(
                        "inject",
                        json!({"target": {"interface": "eth0", "netns": b.name}, "fault": fault}),
                    )?["id"]
                        .clone(),
                );
                // A fault that has just been injected has its interface
                // object from the pool, whose refill verifies a new one
                // in the background: measured once that is over, as a
                // fault that runs for a while would be.
                crate::bench_switch::pool_refilled(rpc)?;
            }
        }
        Ok(())
    }

    /// Takes a per-sample dropper away again, XDP program and all.
    fn detach(&mut self, rpc: &mut Client) -> anyhow::Result<()> {
        match &mut self.dropper {
            Dropper::Kernel(_) => return Ok(()),
            Dropper::Reference { held, .. } => {
                if let Some(mut child) = held.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            Dropper::Fault { id, .. } => {
                if let Some(id) = id.take() {
                    rpc.call("remove", json!({"id": id}))?;
                }
            }
        }
        wait_for_xdp(&self.pair.b, false)
    }

    fn handled(&self, rpc: &mut Client) -> anyhow::Result<u64> {
        match &self.dropper {
            Dropper::Kernel(read) => read(&self.pair.b),
            Dropper::Reference { .. } => {
                let out = self.pair.b.run_ok("ethtool", &["-S", "eth0"]);
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
            }
            Dropper::Fault { id, .. } => {
                let id = id.as_ref().context("the fault is not injected")?;
                Ok(rpc.call("get", json!({"id": id}))?["activations"]
                    .as_u64()
                    .unwrap_or(0))
            }
        }
    }

    /// Medians of the samples: (handled/s, offered/s, NAPI ns per packet).
    fn medians(&self) -> (f64, f64, f64) {
        let median = |f: fn(&(f64, f64, f64)) -> f64| {
            let mut v: Vec<f64> = self.samples.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        (median(|s| s.0), median(|s| s.1), median(|s| s.2))
    }
}

impl Drop for DropRow {
    fn drop(&mut self) {
        if let Dropper::Reference {
            held: Some(child), ..
        } = &mut self.dropper
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until b's eth0 has an XDP program (`attached`) or none.
fn wait_for_xdp(b: &Netns, attached: bool) -> anyhow::Result<()> {
    for _ in 0..500 {
        let out = b.run_ok("ip", &["link", "show", "dev", "eth0"]);
        if out.contains(" prog/xdp ") == attached {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!(
        "b's eth0 still {} an XDP program after 5 s",
        if attached { "lacks" } else { "has" }
    )
}

/// Rounds of [`drop_throughput`]: each takes one sample of every row in
/// turn, so a slow spell of this VM (its per-packet times drift by 10-20%
/// from minute to minute) lands on every row rather than on one.
const DROP_ROUNDS: usize = 7;

fn drop_throughput(bin: &Path, generator: &Generator) -> anyhow::Result<()> {
    eprintln!("[bench] 100% drop throughput on a veth pair");
    let seconds = 2.0;
    // b's eth0 processes its packets in a NAPI kernel thread (veth with GRO
    // on, threaded NAPI), off the generator's CPU unless pinned with it:
    // what b can drop per second then shows the dropper's own cost, not
    // the sender's.
    let receiver = |tag: &str| -> anyhow::Result<(Link, String)> {
        let pair = veth_pair(tag);
        pair.b.run_ok("ethtool", &["-K", "eth0", "gro", "on"]);
        let before = napi_threads();
        pair.b
            .run_ok("sh", &["-c", "echo 1 > /sys/class/net/eth0/threaded"]);
        let new: Vec<String> = napi_threads().difference(&before).cloned().collect();
        let [napi] = new.as_slice() else {
            bail!("expected one NAPI thread for b's eth0, found {new:?}");
        };
        if generator.one_cpu() {
            crate::sh(Command::new("taskset").args(["-pc", "0", napi]))
                .context("pinning b's NAPI thread")?;
        }
        Ok((pair, napi.clone()))
    };
    let mut rows: Vec<DropRow> = Vec::new();
    for dropper in &KERNEL_DROPPERS {
        let (pair, napi) = receiver(dropper.tag)?;
        if let [program, args @ ..] = dropper.install {
            pair.b.run_ok(program, args);
        }
        rows.push(DropRow {
            name: dropper.row,
            pair: Rc::new(pair),
            napi,
            dropper: Dropper::Kernel(dropper.handled),
            samples: Vec::new(),
        });
    }
    // The programs, injectord's and the references, take turns on one
    // pair: the same veth, the same NAPI thread, the same pages. On pairs
    // of their own, rows differed by up to 5% from where they ran alone.
    let (shared, napi) = receiver("xdp")?;
    let shared = Rc::new(shared);
    let d = start_daemon(bin)?;
    let mut rpc = d.client();
    let udp = |hook| json!({"type": "packet_drop", "direction": "ingress", "protocol": "udp", "hook": hook});
    for (fault, name) in [
        (
            udp("xdp"),
            "injectord packet_drop ingress, UDP, \"hook\": \"xdp\"",
        ),
        (
            json!({"type": "packet_drop", "direction": "ingress", "hook": "xdp"}),
            "injectord packet_drop ingress, every IP packet, \"hook\": \"xdp\"",
        ),
        (
            json!({"type": "packet_drop", "direction": "ingress", "protocol": "all", "hook": "xdp"}),
            "injectord packet_drop ingress, every frame (\"protocol\": \"all\"), \"hook\": \"xdp\"",
        ),
        (
            udp("tc"),
            "injectord packet_drop ingress, UDP, in TC (a veth's default)",
        ),
    ] {
        rows.push(DropRow {
            name,
            pair: shared.clone(),
            napi: napi.clone(),
            dropper: Dropper::Fault { fault, id: None },
            samples: Vec::new(),
        });
    }
    if let Generator::XdpFrames { example, .. } = generator {
        // The references, held by packet_bench: a bare XDP_DROP, which
        // looks at nothing; one that reads the ethertype first; one that
        // also counts each drop in a per-CPU counter, as every fault
        // does; and one that also checks the lease, as every fault does.
        for (mode, name) in [
            (
                "xdpdrop-ip",
                "reference: XDP_DROP of IPv4 frames by ethertype",
            ),
            (
                "xdpdrop-counted",
                "reference: ... and a per-CPU counter bumped",
            ),
            (
                "xdpdrop-leased",
                "reference: ... and the daemon's lease checked",
            ),
            ("xdpdrop", "a bare XDP_DROP program (the ceiling)"),
        ] {
            rows.push(DropRow {
                name,
                pair: shared.clone(),
                napi: napi.clone(),
                dropper: Dropper::Reference {
                    example: example.clone(),
                    mode,
                    held: None,
                },
                samples: Vec::new(),
            });
        }
    }
    for _ in 0..DROP_ROUNDS {
        for row in &mut rows {
            let sample = drop_sample(row, generator, seconds, &mut rpc)?;
            row.samples.push(sample);
        }
    }
    let ipt = rows[1].medians().0;
    let bare = rows
        .iter()
        .find(|r| r.name.starts_with("a bare XDP_DROP"))
        .map(DropRow::medians);
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
        "\n100% drop of 64-byte UDP frames from {how}, a.eth0 -> b.eth0; b handles its packets in a NAPI thread; medians of {DROP_ROUNDS} x {seconds} s, the rows taking turns, the XDP and TC programs (injectord's and the references) on one shared pair, each attached for its sample; ns/pkt: CPU time of b's NAPI thread per packet handled"
    );
    println!(
        "{:<62} {:>12} {:>12} {:>8} {:>11} {:>11} {:>12}",
        "at b", "handled/s", "offered/s", "ns/pkt", "vs iptables", "vs XDP_DROP", "/CPU vs DROP"
    );
    for row in &rows {
        let (handled, offered, ns) = row.medians();
        let (vs_bare, vs_bare_cpu) = bare.map_or(("-".into(), "-".into()), |(b, _, b_ns)| {
            (format!("{:.2}", handled / b), format!("{:.2}", b_ns / ns))
        });
        // Without XDP, a veth hands skbs from a local sender to the
        // backlog, not to its NAPI thread: no CPU time to show.
        let ns = if ns > 0.0 {
            format!("{ns:.1}")
        } else {
            "-".into()
        };
        println!(
            "{:<62} {handled:>12.0} {offered:>12.0} {ns:>8} {:>11.2} {vs_bare:>11} {vs_bare_cpu:>12}",
            row.name,
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
