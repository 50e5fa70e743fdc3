//! The syscall family's benchmark: a native loop of syscalls (openat +
//! close of one file; connect() to a closed local port, which is socket +
//! connect + close) in cgroup A, with no daemon, with faults aimed at
//! other cgroups, with A's own syscall latency histogram on, with a
//! matching fault firing at probability 0.5, and under `strace -f -e
//! inject=...` doing the same injection (every second call; also with
//! `--seccomp-bpf`, strace's fastest mode). Figures are ns per iteration
//! and ratios in one run.

use injectord_tests::{Daemon, TestCgroup};
use serde_json::{Value, json};

use crate::{
    bench::{start_daemon, worker_ns},
    deps,
};

/// One loop: its worker argument, the syscall a fault aims at, a fault
/// for it (probability 0.5 is added), and strace's injection.
struct Loop {
    worker: &'static str,
    syscall: &'static str,
    fault: Value,
    strace_inject: &'static str,
}

fn loops(port: u16) -> [Loop; 2] {
    [
        Loop {
            worker: "openat",
            syscall: "openat",
            fault: json!({"type": "syscall_error", "syscall": "openat", "errno": "EIO",
                          "path": "/etc/hostname"}),
            strace_inject: "openat:error=EIO:when=2+2",
        },
        Loop {
            worker: "connect",
            syscall: "connect",
            fault: json!({"type": "syscall_error", "syscall": "connect", "errno": "ECONNREFUSED",
                          "port": port}),
            strace_inject: "connect:error=ECONNREFUSED:when=2+2",
        },
    ]
}

/// ns per iteration of the worker loop in `cg`, median of `rounds`;
/// `strace` wraps the worker in strace with that injection.
fn cost(
    cg: &TestCgroup,
    worker: &str,
    port: u16,
    iterations: u32,
    rounds: usize,
    strace: Option<(&str, bool)>,
) -> anyhow::Result<f64> {
    let (port, n) = (port.to_string(), iterations.to_string());
    let args = ["bench-worker", "syscalls", worker, &port, &n];
    let Some((inject, seccomp)) = strace else {
        return worker_ns(cg, None, &args, rounds);
    };
    let spec = format!("inject={inject}");
    let mut before = vec!["-f", "-qq", "-o", "/dev/null"];
    if seccomp {
        before.push("--seccomp-bpf");
    }
    before.extend(["-e", &spec]);
    worker_ns(cg, Some(("strace", &before)), &args, rounds)
}

pub fn run(bin: &std::path::Path, iterations: u32, port: u16) -> anyhow::Result<()> {
    deps::ensure(&[("strace", "strace")], &[])?;
    let base = TestCgroup::at(&format!("injectord-bench-sc-{}", std::process::id()));
    let a = base.child("a");
    let rounds = 3;
    eprintln!("[bench] syscall loops, {iterations} iterations x {rounds} rounds per row");
    let mut table: Vec<(String, &'static str, Option<f64>, String)> = Vec::new();
    for l in loops(port) {
        let mut row = |scenario: &str, ns: anyhow::Result<f64>| {
            let (ns, note) = match ns {
                Ok(ns) => (Some(ns), String::new()),
                Err(e) => (None, format!("{e:#}")),
            };
            table.push((scenario.to_string(), l.worker, ns, note));
        };
        row(
            "no daemon",
            cost(&a, l.worker, port, iterations, rounds, None),
        );
        let d = start_daemon(bin)?;
        let others: Vec<TestCgroup> = (0..100).map(|i| base.child(&format!("o{i}"))).collect();
        // The loop's own fault where this kernel reaches its syscall, else
        // one it does reach (socket(), on every kernel).
        let mut elsewhere = l.fault.clone();
        elsewhere["errno"] = json!("EPERM");
        let probe = d.call(
            "inject",
            json!({"name": "probe", "target": {"cgroup": others[0].rel}, "fault": elsewhere}),
        );
        if probe.is_err() {
            elsewhere = json!({"type": "syscall_error", "syscall": "socket", "errno": "EPERM"});
        } else {
            d.call("remove", json!({"name": "probe"}))?;
        }
        for o in &others {
            d.call(
                "inject",
                json!({"target": {"cgroup": o.rel}, "fault": elsewhere}),
            )?;
        }
        row(
            &format!(
                "100 {} faults on other cgroups",
                elsewhere["syscall"].as_str().unwrap_or("?")
            ),
            cost(&a, l.worker, port, iterations, rounds, None),
        );
        let matching = d.call(
            "inject",
            json!({"name": "half", "target": {"cgroup": a.rel}, "fault": l.fault,
                   "trigger": {"probability": 0.5}}),
        );
        match matching {
            Ok(_) => {
                let backend = backend(&d, "half");
                row(
                    &format!("matching fault, p=0.5 ({backend})"),
                    cost(&a, l.worker, port, iterations, rounds, None),
                );
                d.call("remove", json!({"name": "half"}))?;
            }
            Err(e) => row(
                "matching fault, p=0.5",
                Err(anyhow::anyhow!("refused here: {e:#}")),
            ),
        }
        drop(d);
        // The same faults elsewhere with --syscall-latency: every task's
        // syscalls now pass the raw_syscalls tracepoints.
        let d = crate::bench::start_daemon_with(bin, &["--syscall-latency"])?;
        for o in &others {
            d.call(
                "inject",
                json!({"target": {"cgroup": o.rel}, "fault": elsewhere}),
            )?;
        }
        row(
            "same, daemon with --syscall-latency",
            cost(&a, l.worker, port, iterations, rounds, None),
        );
        // A fault on A that never fires: A's own syscalls are timed.
        d.call(
            "inject",
            json!({"name": "watch-a", "target": {"cgroup": a.rel},
                   "fault": {"type": "syscall_error", "syscall": "bind", "errno": "EPERM", "port": 1}}),
        )?;
        row(
            "+ A's own syscall latency histogram",
            cost(&a, l.worker, port, iterations, rounds, None),
        );
        drop(d);
        drop(others);
        // strace stopping only at the injected syscall (its fastest
        // mode), then as the issue names it (stopping at every syscall):
        // the ratios are against the latter.
        for (seccomp, name) in [
            (
                true,
                format!("strace -f --seccomp-bpf -e inject={}", l.syscall),
            ),
            (
                false,
                format!("strace -f -e inject={} (every 2nd)", l.syscall),
            ),
        ] {
            let ns = cost(
                &a,
                l.worker,
                port,
                iterations,
                rounds,
                Some((l.strace_inject, seccomp)),
            );
            row(&name, ns);
        }
    }
    println!("\nsyscall loops in cgroup A: ns per iteration (median of {rounds} x {iterations})");
    println!(
        "{:<8} {:<50} {:>10} {:>9} {:>12}",
        "loop", "scenario", "ns/iter", "vs none", "vs strace"
    );
    for worker in ["openat", "connect"] {
        let rows: Vec<_> = table.iter().filter(|r| r.1 == worker).collect();
        let none = rows.first().and_then(|r| r.2);
        let strace = rows.last().and_then(|r| r.2);
        for (scenario, _, ns, note) in rows {
            match ns {
                Some(ns) => println!(
                    "{worker:<8} {scenario:<50} {ns:>10.0} {:>9.3} {:>11.1}x",
                    none.map_or(f64::NAN, |b| ns / b),
                    strace.map_or(f64::NAN, |s| s / ns),
                ),
                None => println!("{worker:<8} {scenario:<50} {:>10} {note}", "-"),
            }
        }
    }
    Ok(())
}

fn backend(d: &Daemon, name: &str) -> String {
    d.call("get", json!({"name": name}))
        .ok()
        .and_then(|f| f["backend"].as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// `bench-worker syscalls openat|connect PORT N`: the loop, printing ns
/// per iteration.
pub fn worker(kind: &str, port: u16, n: u32) -> anyhow::Result<()> {
    use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let once = || match kind {
        "openat" => drop(std::fs::File::open("/etc/hostname")),
        _ => drop(TcpStream::connect(addr)),
    };
    for _ in 0..1000 {
        once();
    }
    let t = std::time::Instant::now();
    for _ in 0..n {
        once();
    }
    println!("{}", t.elapsed().as_nanos() as f64 / f64::from(n));
    Ok(())
}
