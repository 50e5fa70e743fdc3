//! `cargo xtask bench`, packet half: how fast an interface fault switches
//! on and off, seen from the traffic. A looping UDP sender in one end of a
//! veth pair (`bench-worker probe`) sends a numbered probe every 50 us to
//! an echo server at the other end and prints, with CLOCK_MONOTONIC send
//! times, when its probes stop and start getting answers; the benchmark
//! times `inject` -> first lost probe and `remove` -> first answered one,
//! as the connect benchmark times inject -> first refused connect.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, UdpSocket},
    os::fd::AsRawFd as _,
    path::Path,
    process::{Child, ChildStdout},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use injectord_tests::{Client, monotonic_ns, net::Link};
use serde_json::{Value, json};

use crate::bench::{percentiles, start_daemon, this_binary};

/// The echo server's port at b.
const ECHO_PORT: u16 = 9999;
/// Time between probes: the resolution of every figure here.
const PROBE_INTERVAL: Duration = Duration::from_micros(50);
/// A probe unanswered this long is lost. Generous, so a sender or echo
/// server that waits for a CPU a few ms is not taken for a fault; it only
/// delays when the loss is reported, not the send time reported.
const LOST_AFTER: Duration = Duration::from_millis(50);
/// Between rounds: the daemon's background work (refilling what a first
/// fault used up) gets the time a real user's next fault would give it.
const PAUSE: Duration = Duration::from_millis(300);

/// One scenario: a fault that cuts the probes, on a device whose state
/// before the fault the scenario sets.
struct Scenario {
    row: &'static str,
    /// Where the fault goes: b's device (ingress of the probes) or a's.
    on_b: bool,
    fault: Value,
    /// Another fault kept on the same device during the rounds, so the
    /// measured one is not the device's first.
    resident: Option<Value>,
}

fn scenarios() -> Vec<Scenario> {
    // Ingress drops in XDP, as the rows say (a veth's default is TC).
    let udp_drop = |dir: &str| {
        let mut f = json!({"type": "packet_drop", "direction": dir, "protocol": "udp", "dst_port": ECHO_PORT});
        if dir == "ingress" {
            f["hook"] = json!("xdp");
        }
        f
    };
    vec![
        Scenario {
            row: "packet_drop ingress (XDP), device with a fault already",
            on_b: true,
            fault: udp_drop("ingress"),
            resident: Some(
                json!({"type": "packet_drop", "direction": "ingress", "protocol": "udp", "dst_port": 9, "hook": "xdp"}),
            ),
        },
        Scenario {
            row: "packet_drop ingress (XDP), first fault on the device",
            on_b: true,
            fault: udp_drop("ingress"),
            resident: None,
        },
        Scenario {
            row: "packet_drop egress (TC), first fault on the device",
            on_b: false,
            fault: udp_drop("egress"),
            resident: None,
        },
        Scenario {
            row: "partition (TC egress + XDP), first fault on the device",
            on_b: false,
            fault: json!({"type": "partition", "dst": crate::bench_net::BENCH_SUBNET.b, "hook": "xdp"}),
            resident: None,
        },
    ]
}

pub fn run(bin: &Path, rounds: usize) -> anyhow::Result<()> {
    eprintln!(
        "[bench] inject/remove -> first/last effect of interface faults, {rounds} rounds each"
    );
    let pair = crate::bench_net::veth_pair("switch");
    let me = this_binary()?;
    let mut echo = pair
        .b
        .spawn(&me, &["bench-worker", "echo", &ECHO_PORT.to_string()]);
    let mut prober = pair.a.spawn(
        &me,
        &[
            "bench-worker",
            "probe",
            crate::bench_net::BENCH_SUBNET.b,
            &ECHO_PORT.to_string(),
        ],
    );
    let rows = measure_all(bin, &pair, &mut prober, rounds);
    for child in [&mut prober, &mut echo] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let rows = rows?;
    println!(
        "\nInterface faults switching on and off, seen by a UDP sender probing every {} us across a veth pair ({rounds} rounds, {} ms apart)",
        PROBE_INTERVAL.as_micros(),
        PAUSE.as_millis()
    );
    println!(
        "{:<56} {:>10} {:>10} {:>10} {:>10} {:>7} {:>10} {:>10}",
        "",
        "on p50 us",
        "on p99 us",
        "off p50 us",
        "off p99 us",
        "strays",
        "rm p50 us",
        "rm p99 us"
    );
    for (row, mut on, mut off, strays, mut removed) in rows {
        let (on50, on99) = percentiles(&mut on);
        let (off50, off99) = percentiles(&mut off);
        let (rm50, rm99) = percentiles(&mut removed);
        println!(
            "{row:<56} {on50:>10.0} {on99:>10.0} {off50:>10.0} {off99:>10.0} {strays:>7} {rm50:>10.0} {rm99:>10.0}"
        );
    }
    println!(
        "on: inject sent -> first lost probe; off: remove sent -> first answered probe (send times); strays: losses between rounds; rm: remove's round trip"
    );
    Ok(())
}

/// A scenario's row: on and off latencies (ns), and how many losses came
/// between rounds (after a remove's first answered probe, before the next
/// inject): a detach that disturbed traffic would show there; and the
/// round trips of the `remove` calls (ns).
type Row = (&'static str, Vec<u64>, Vec<u64>, usize, Vec<u64>);

/// The prober's transitions, as they come: ("fail" | "ok", send time).
type Transitions = mpsc::Receiver<(String, u64)>;

/// Reads the prober's lines on a thread of their own, so a wait for one
/// can time out.
fn transitions(stdout: ChildStdout) -> Transitions {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Some((kind, ns)) = line.trim().split_once(' ')
                && let Ok(ns) = ns.parse()
                && tx.send((kind.to_string(), ns)).is_err()
            {
                return;
            }
        }
    });
    rx
}

fn next(rx: &Transitions, within: Duration) -> anyhow::Result<(String, u64)> {
    rx.recv_timeout(within)
        .map_err(|e| anyhow::anyhow!("no change from the prober within {within:?}: {e}"))
}

fn measure_all(
    bin: &Path,
    pair: &Link,
    prober: &mut Child,
    rounds: usize,
) -> anyhow::Result<Vec<Row>> {
    let rx = transitions(prober.stdout.take().context("prober stdout")?);
    // The probes must be answered before anything is measured.
    first_answer(&rx)?;
    let d = start_daemon(bin)?;
    // A daemon that has been up a moment, not one still starting.
    std::thread::sleep(Duration::from_secs(2));
    let mut rpc = d.client();
    let mut rows = Vec::new();
    for s in scenarios() {
        let ns = if s.on_b { &pair.b.name } else { &pair.a.name };
        let target = json!({"interface": "eth0", "netns": ns});
        if let Some(resident) = &s.resident {
            rpc.call(
                "inject",
                json!({"name": "resident", "target": target, "fault": resident}),
            )?;
        }
        let spec = json!({"name": "switch", "target": target, "fault": s.fault});
        let (mut on, mut off, mut strays, mut removed) = (Vec::new(), Vec::new(), 0, Vec::new());
        let mut waited = Duration::ZERO;
        for _ in 0..rounds {
            std::thread::sleep(PAUSE);
            if s.resident.is_none() {
                waited += pool_refilled(&mut rpc)?;
            }
            let t0 = monotonic_ns();
            rpc.call("inject", spec.clone())?;
            on.push(first_loss(&rx, t0, &mut strays)?.saturating_sub(t0));
            let t1 = monotonic_ns();
            rpc.call("remove", json!({"name": "switch"}))?;
            removed.push(monotonic_ns() - t1);
            off.push(first_answer(&rx)?.saturating_sub(t1));
        }
        if s.resident.is_some() {
            rpc.call("remove", json!({"name": "resident"}))?;
        }
        if !waited.is_zero() {
            eprintln!(
                "[bench] {}: waited {:.1} s in all for the daemon's interface pool to refill",
                s.row,
                waited.as_secs_f64()
            );
        }
        rows.push((s.row, on, off, strays, removed));
    }
    Ok(rows)
}

/// Waits (up to 60 s) until the daemon's pool of interface copies is full
/// again, as it is when first faults do not come in a burst; returns how
/// long. A daemon without a pool (`status` has no `interface_pool`)
/// returns at once.
pub fn pool_refilled(rpc: &mut Client) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let status = rpc.call("status", json!(null))?;
        let pool = &status["interface_pool"];
        if pool.is_null() || pool["ready"] == pool["size"] {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the daemon's interface pool did not refill within 60 s: {pool}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The send time of the first probe the fault injected at `t0` cut;
/// counts the losses that ended before it in `strays`.
fn first_loss(rx: &Transitions, t0: u64, strays: &mut usize) -> anyhow::Result<u64> {
    loop {
        let (kind, ns) = next(rx, Duration::from_secs(10))?;
        if kind != "fail" {
            continue;
        }
        if ns >= t0 {
            return Ok(ns);
        }
        // A loss that began before the inject: probes in flight when the
        // rule appeared (the effect came at once), unless an answer ends
        // it, which makes it a stray loss (a busy machine).
        match rx.recv_timeout(LOST_AFTER * 2) {
            Ok(_) => *strays += 1,
            Err(mpsc::RecvTimeoutError::Timeout) => return Ok(t0),
            Err(e) => bail!("the prober exited: {e}"),
        }
    }
}

/// The send time of the first answered probe after a loss.
fn first_answer(rx: &Transitions) -> anyhow::Result<u64> {
    loop {
        let (kind, ns) = next(rx, Duration::from_secs(10))?;
        if kind == "ok" {
            return Ok(ns);
        }
    }
}

/// `bench-worker probe HOST PORT`: sends a numbered UDP probe every
/// [`PROBE_INTERVAL`] to an echo server (sleeping in between) and prints `fail <ns>` when a
/// probe goes unanswered after a run of answered ones, `ok <ns>` when one
/// is answered after a run of lost ones; `ns` is the probe's send time
/// (CLOCK_MONOTONIC). Runs until killed.
pub fn probe(host: &str, port: u16) -> anyhow::Result<()> {
    const RING: usize = 1 << 16;
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    sock.connect((host, port))?;
    sock.set_nonblocking(true)?;
    grow_receive_buffer(&sock);
    // Wake-ups to the microsecond, not the default 50 us slack.
    // SAFETY: prctl with plain integer arguments.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong) };
    let interval = PROBE_INTERVAL.as_nanos() as u64;
    let lost_after = LOST_AFTER.as_nanos() as u64;
    // Per sequence number (mod RING): its send time, and whether its echo
    // came back (holding the number, so a stale cell never counts).
    let mut sent = vec![0u64; RING];
    let mut answered = vec![u64::MAX; RING];
    let (mut next, mut oldest, mut next_send) = (0u64, 0u64, 0u64);
    // Starts "failing", so the first answer prints `ok`: the caller waits
    // for it before measuring.
    let mut failing = true;
    let mut out = std::io::stdout().lock();
    let mut buf = [0u8; 64];
    loop {
        let now = monotonic_ns();
        if now >= next_send && next - oldest < RING as u64 {
            let cell = (next % RING as u64) as usize;
            sent[cell] = now;
            // A send error (a refused or dropped send) is a probe that
            // goes unanswered, which is what it is.
            let _ = sock.send(&next.to_le_bytes());
            next += 1;
            next_send = now + interval;
        }
        while let Ok(n) = sock.recv(&mut buf) {
            if n == 8 {
                let seq = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
                if (oldest..next).contains(&seq) {
                    answered[(seq % RING as u64) as usize] = seq;
                }
            }
        }
        // Settle probes in order: answered, or lost once overdue.
        while oldest < next {
            let cell = (oldest % RING as u64) as usize;
            let change = if answered[cell] == oldest {
                failing.then_some("ok")
            } else if now.saturating_sub(sent[cell]) > lost_after {
                (!failing).then_some("fail")
            } else {
                break;
            };
            if let Some(kind) = change {
                failing = kind == "fail";
                writeln!(out, "{kind} {}", sent[cell])?;
                out.flush()?;
            }
            oldest += 1;
        }
        // Sleeps until the next send or an echo: a spinning sender would
        // take a core from the daemon it times on a 2-core machine.
        wait_readable(&sock, next_send.saturating_sub(monotonic_ns()));
    }
}

/// Waits up to `ns` for the socket to become readable.
fn wait_readable(sock: &UdpSocket, ns: u64) {
    let mut fds = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: ppoll on one pollfd and a timespec that live across the
    // call; no signal mask.
    unsafe { libc::ppoll(&raw mut fds, 1, &raw const timeout, std::ptr::null()) };
}

/// Room for a few ms of echoes: the probe rate must not overflow the
/// socket while this process waits for a CPU.
pub fn grow_receive_buffer(sock: &UdpSocket) {
    let size: libc::c_int = 4 << 20;
    // SAFETY: setsockopt on a socket we own, with a pointer to an int
    // that lives across the call and its size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const size).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
