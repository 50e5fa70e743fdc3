//! `cargo xtask bench`: what injectord costs the processes it is not aimed
//! at, how fast a fault switches on, and how much memory the daemon needs.
//! Figures are ratios against a baseline measured in the same run.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    path::Path,
    process::ChildStdout,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use injectord_tests::{Client, Daemon, TestCgroup, monotonic_ns, net::parse_mac};
use serde_json::json;

use crate::build_daemon;

/// The daemon under measurement: the binary just built, logging only
/// warnings (to the terminal), so that logging costs nothing measurable.
pub fn start_daemon(bin: &Path) -> anyhow::Result<Daemon> {
    start_daemon_with(bin, &[])
}

/// The same, with extra daemon arguments.
pub fn start_daemon_with(bin: &Path, args: &[&str]) -> anyhow::Result<Daemon> {
    Daemon::builder()
        .binary(bin)
        .log("warn")
        .log_to_stderr()
        .args(args)
        .start()
}

/// This binary: its hidden `bench-worker` subcommand is every process the
/// benchmark runs inside a cgroup or a network namespace.
pub fn this_binary() -> anyhow::Result<String> {
    let me = std::env::current_exe()?;
    Ok(me.to_str().context("utf-8 path")?.to_string())
}

/// ns per connect() to a closed local port, median of `rounds` runs.
fn connect_cost(cg: &TestCgroup, port: u16, iterations: u32, rounds: usize) -> anyhow::Result<f64> {
    let (port, n) = (port.to_string(), iterations.to_string());
    worker_ns(cg, None, &["bench-worker", "connect", &port, &n], rounds)
}

/// The median over `rounds` runs of what a bench worker prints (ns per
/// iteration), run in `cg` as this binary with `args`, or under
/// `wrapper` (a program and its arguments, given ours after them).
pub fn worker_ns(
    cg: &TestCgroup,
    wrapper: Option<(&str, &[&str])>,
    args: &[&str],
    rounds: usize,
) -> anyhow::Result<f64> {
    let me = this_binary()?;
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let out = match wrapper {
            Some((program, before)) => {
                let mut all: Vec<&str> = before.to_vec();
                all.push(&me);
                all.extend_from_slice(args);
                cg.run(program, &all)
            }
            None => cg.run(&me, args),
        };
        if !out.status.success() {
            bail!(
                "bench worker failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        samples.push(String::from_utf8_lossy(&out.stdout).trim().parse::<f64>()?);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

fn closed_port() -> anyhow::Result<u16> {
    // Bind and drop: the kernel will not hand this port out again soon, and
    // nothing listens on it, so connect() gets a RST (ECONNREFUSED).
    let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?.port())
}

pub fn run(iterations: u32, injects: u32, only: &str) -> anyhow::Result<()> {
    let bin = build_daemon()?;
    // ping, iptables, nft, python3...: what the tests install on a fresh
    // machine, the packet and switch parts use too.
    crate::deps::ensure_test_tools()?;
    if only == "all" || only == "packet" {
        crate::bench_net::run(&bin)?;
    }
    // Parts of it alone (also run by `packet`).
    if only == "drop" {
        crate::bench_net::drops(&bin)?;
    }
    if only == "switch" {
        crate::bench_switch::run(&bin, 50)?;
    }
    if only == "all" || only == "block" {
        crate::bench_block::run(&bin)?;
    }
    if only == "all" || only == "syscall" {
        crate::bench_syscall::run(&bin, iterations, closed_port()?)?;
    }
    if only != "all" && only != "connect" {
        return Ok(());
    }
    let base = TestCgroup::at(&format!("injectord-bench-{}", std::process::id()));
    let a = base.child("a");
    let port = closed_port()?;
    let rounds = 5;
    let mut rows: Vec<(String, f64)> = Vec::new();

    eprintln!("[bench] connect() cost, {iterations} calls x {rounds} rounds per row");
    rows.push((
        "no daemon".into(),
        connect_cost(&a, port, iterations, rounds)?,
    ));

    let d = start_daemon(&bin)?;
    // One connection for every call, as before: the round trips measured
    // below must not include connecting.
    let mut rpc = d.client();
    let mut others: Vec<TestCgroup> = Vec::new();
    let mut faults = 0usize;
    // Two faults (two ports) per other cgroup: each targeted cgroup costs the
    // daemon two bpf_link fds, and the open-file hard limit here is 20,000.
    for target in [1usize, 100, 10_000] {
        while faults < target {
            let i = faults / 2;
            if faults.is_multiple_of(2) {
                others.push(base.child(&format!("o{i}")));
            }
            rpc.call(
                "inject",
                json!({"target": {"cgroup": others[i].rel},
                       "fault": {"type": "connect_error", "errno": "ECONNREFUSED",
                                 "port": port.wrapping_add((faults % 2) as u16).max(1)}}),
            )?;
            faults += 1;
        }
        rows.push((
            format!("{target} faults on {} other cgroups", others.len()),
            connect_cost(&a, port, iterations, rounds)?,
        ));
    }
    let rss_10k = d.rss_kib();
    // A fault on A itself for another port: the program runs, looks up, misses.
    rpc.call(
        "inject",
        json!({"name": "other-port", "target": {"cgroup": a.rel},
               "fault": {"type": "connect_error", "errno": "EPERM", "port": port.wrapping_add(1).max(1)}}),
    )?;
    rows.push((
        "fault on A, other port (program runs, no match)".into(),
        connect_cost(&a, port, iterations, rounds)?,
    ));
    rpc.call("remove", json!({"name": "other-port"}))?;
    rpc.call(
        "inject",
        json!({"name": "all", "target": {"cgroup": a.rel},
               "fault": {"type": "connect_error", "errno": "ECONNREFUSED"}}),
    )?;
    rows.push((
        "matching fault refusing every call".into(),
        connect_cost(&a, port, iterations, rounds)?,
    ));
    rpc.call("clear", json!(null))?;

    let base_ns = rows[0].1;
    println!(
        "\nconnect() to a closed local port from cgroup A (median of {rounds} x {iterations} calls)"
    );
    println!("{:<50} {:>10} {:>8}", "scenario", "ns/call", "ratio");
    for (name, ns) in &rows {
        println!("{name:<50} {ns:>10.0} {:>8.3}", ns / base_ns);
    }
    println!(
        "daemon resident memory with 10,000 faults: {:.1} MiB",
        rss_10k as f64 / 1024.0
    );

    // Control-plane round trip alone: inject and remove on an idle cgroup.
    let idle = base.child("idle");
    let (mut inj, mut rem) = (Vec::new(), Vec::new());
    for _ in 0..injects {
        let t0 = Instant::now();
        rpc.call(
            "inject",
            json!({"name": "rtt", "target": {"cgroup": idle.rel},
                   "fault": {"type": "connect_error", "errno": "ECONNREFUSED", "port": port}}),
        )?;
        let t1 = Instant::now();
        rpc.call("remove", json!({"name": "rtt"}))?;
        inj.push((t1 - t0).as_nanos() as u64);
        rem.push(t1.elapsed().as_nanos() as u64);
    }
    drop(idle);
    for (what, v) in [("inject", &mut inj), ("remove", &mut rem)] {
        let (p50, p99) = percentiles(v);
        println!(
            "control plane: {what} round trip over {injects} calls: p50 {p50:.0} us, p99 {p99:.0} us"
        );
    }

    // Control-plane latency: inject -> first refused connect seen by a
    // client looping on connect().
    let t = base.child("latency");
    let mut lat = activation_latency(&t, &mut rpc, port, injects)?;
    let (p50, p99) = percentiles(&mut lat);
    println!(
        "control plane: inject -> first activation seen by a client looping on connect(), over {injects} injects: p50 {p50:.0} us, p99 {p99:.0} us"
    );
    drop(rpc);
    drop(d);
    drop(others);
    drop(t);
    Ok(())
}

/// ns from sending each of `injects` injects on `cg` to the first refused
/// connect() that a watcher looping in `cg` sees.
fn activation_latency(
    cg: &TestCgroup,
    rpc: &mut Client,
    port: u16,
    injects: u32,
) -> anyhow::Result<Vec<u64>> {
    let mut watcher = cg.spawn(
        &this_binary()?,
        &["bench-worker", "watch", &port.to_string()],
    );
    let stdout = watcher.stdout.take();
    let measure = || -> anyhow::Result<Vec<u64>> {
        let mut lines = BufReader::new(stdout.context("watcher stdout")?);
        let mut lat = Vec::with_capacity(injects as usize);
        for _ in 0..injects {
            let t0 = monotonic_ns();
            rpc.call(
                "inject",
                json!({"name": "lat", "target": {"cgroup": cg.rel},
                       "fault": {"type": "connect_error", "errno": "ECONNREFUSED", "port": port}}),
            )?;
            let t1 = read_transition(&mut lines, "fail")?;
            lat.push(t1.saturating_sub(t0));
            rpc.call("remove", json!({"name": "lat"}))?;
            read_transition(&mut lines, "ok")?;
        }
        Ok(lat)
    };
    let lat = measure();
    let _ = watcher.kill();
    let _ = watcher.wait();
    lat
}

fn read_transition(lines: &mut BufReader<ChildStdout>, want: &str) -> anyhow::Result<u64> {
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            bail!("watcher exited");
        }
        if let Some((kind, ns)) = line.trim().split_once(' ')
            && kind == want
        {
            return Ok(ns.parse()?);
        }
    }
}

/// The processes the benchmark runs inside cgroups.
pub fn worker_main(args: &[String]) -> anyhow::Result<()> {
    match args {
        [cmd, port, n] if cmd == "connect" => {
            let port: u16 = port.parse()?;
            let n: u32 = n.parse()?;
            let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
            // warm up
            for _ in 0..1000 {
                let _ = std::net::TcpStream::connect(addr);
            }
            let t = Instant::now();
            for _ in 0..n {
                let _ = std::net::TcpStream::connect(addr);
            }
            println!("{}", t.elapsed().as_nanos() as f64 / f64::from(n));
            Ok(())
        }
        [cmd, port] if cmd == "watch" => {
            let port: u16 = port.parse()?;
            let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
            // One UDP socket, connect() again and again: each call runs the
            // cgroup connect hook. Yielding between calls keeps this loop from
            // starving the daemon on a 2-core machine.
            let sock = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            let mut failing = false;
            let mut out = std::io::stdout().lock();
            loop {
                let now_failing = sock.connect(addr).is_err();
                if now_failing != failing {
                    failing = now_failing;
                    writeln!(
                        out,
                        "{} {}",
                        if failing { "fail" } else { "ok" },
                        monotonic_ns()
                    )?;
                    out.flush()?;
                }
                std::thread::yield_now();
            }
        }
        [cmd, kind, port, n] if cmd == "syscalls" => {
            crate::bench_syscall::worker(kind, port.parse()?, n.parse()?)
        }
        [cmd, ifname, src, dst, seconds] if cmd == "blast" => {
            let pps = blast(ifname, &parse_mac(src)?, &parse_mac(dst)?, seconds.parse()?)?;
            println!("{pps}");
            Ok(())
        }
        [cmd, port] if cmd == "echo" => {
            let sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port.parse::<u16>()?))?;
            crate::bench_switch::grow_receive_buffer(&sock);
            let mut buf = [0u8; 2048];
            loop {
                let (n, from) = sock.recv_from(&mut buf)?;
                sock.send_to(&buf[..n], from)?;
            }
        }
        [cmd, host, port] if cmd == "probe" => crate::bench_switch::probe(host, port.parse()?),
        [cmd, host, port, n] if cmd == "rtt" => {
            let sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            sock.connect((host.as_str(), port.parse::<u16>()?))?;
            sock.set_read_timeout(Some(Duration::from_secs(1)))?;
            let n: usize = n.parse()?;
            let mut buf = [0u8; 64];
            let mut samples = Vec::with_capacity(n);
            for i in 0..n + 1000 {
                let t = Instant::now();
                sock.send(&buf)?;
                sock.recv(&mut buf)?;
                if i >= 1000 {
                    samples.push(t.elapsed().as_nanos() as u64);
                }
            }
            let (p50, p99) = percentiles(&mut samples);
            println!("{p50} {p99}");
            Ok(())
        }
        _ => bail!(
            "usage: bench-worker connect PORT N | syscalls openat|connect PORT N | watch PORT | blast IF SRC DST SECONDS | echo PORT | probe HOST PORT | rtt HOST PORT N"
        ),
    }
}

/// p50 and p99 of nanosecond samples, in microseconds.
pub fn percentiles(v: &mut [u64]) -> (f64, f64) {
    v.sort_unstable();
    let at = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)] as f64 / 1000.0;
    (at(0.5), at(0.99))
}

/// Sends 64-byte UDP frames (10.97.0.1:1234 -> 10.97.0.2:9) out of
/// `ifname` through an AF_PACKET socket, 64 per sendmmsg(), for `seconds`;
/// returns frames per second.
fn blast(ifname: &str, src: &[u8; 6], dst: &[u8; 6], seconds: f64) -> anyhow::Result<f64> {
    let mut frame = injectord_tests::net::bench_frame(*src, *dst);

    let name = std::ffi::CString::new(ifname)?;
    // SAFETY: plain syscalls on a socket we own, with valid pointers.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        if ifindex == 0 {
            bail!("no interface {ifname}");
        }
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            bail!("socket(AF_PACKET): {}", std::io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(dst);
        let mut iov = libc::iovec {
            iov_base: frame.as_mut_ptr().cast(),
            iov_len: frame.len(),
        };
        let mut msgs: Vec<libc::mmsghdr> = (0..64)
            .map(|_| {
                let mut m: libc::mmsghdr = std::mem::zeroed();
                m.msg_hdr.msg_name = (&raw mut addr).cast();
                m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
                m.msg_hdr.msg_iov = &raw mut iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let start = Instant::now();
        let mut sent = 0u64;
        while Instant::now() < deadline {
            let n = libc::sendmmsg(fd, msgs.as_mut_ptr(), 64, 0);
            if n > 0 {
                sent += n as u64;
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        libc::close(fd);
        Ok(sent as f64 / elapsed)
    }
}
