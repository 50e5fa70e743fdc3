//! Harness for the end-to-end tests and the benchmarks (`./x bench`):
//! starts the real `injectord` binary, makes real cgroups, network
//! namespaces and veth pairs, runs real programs inside them.
//!
//! It drives the daemon from outside, over the control socket
//! (`injectord-client`) and /metrics, and does not link the daemon crate,
//! so xtask uses it without building the eBPF programs.
//!
//! The daemon binary comes from `INJECTORD_BIN` (set by `cargo xtask test`),
//! else `target/release/injectord`, else `target/debug/injectord`, unless
//! [`DaemonBuilder::binary`] names one.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::Child,
    sync::atomic::{AtomicU32, Ordering},
};

pub use injectord_client::{Client, ErrorResponse};
use serde_json::{Value, json};

mod cgroup;
mod daemon;
pub mod net;
mod process;
mod serial;
pub mod workload;

pub use cgroup::{Connects, TestCgroup, cgroup2_mount};
pub use daemon::{
    Daemon, DaemonBuilder, EXIT_LIMIT, daemon_binary, http_get, thread_stacks, wait_with_limit,
};
pub use process::{state, wait_for};
pub use serial::serial;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process and call.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn helper(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("helpers")
        .join(name)
}

/// A connect_error spec on a cgroup.
pub fn connect_fault(cgroup: &TestCgroup, fault: Value) -> Value {
    let mut f = json!({"type": "connect_error", "errno": "ECONNREFUSED"});
    if let (Some(obj), Some(extra)) = (f.as_object_mut(), fault.as_object()) {
        obj.extend(extra.clone());
    }
    json!({"target": {"cgroup": cgroup.rel}, "fault": f})
}

/// A TCP listener on loopback that accepts and drops connections in the
/// background, so connects to it succeed unless a fault interferes.
pub fn tcp_sink(addr: &str) -> u16 {
    let l = std::net::TcpListener::bind(addr).expect("bind");
    let port = l.local_addr().expect("local addr").port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            drop(s);
        }
    });
    port
}

/// Reads lines from a child until one contains `needle` (or EOF).
pub fn wait_line(child: &mut Child, needle: &str) -> Option<String> {
    let out = child.stdout.as_mut()?;
    let mut r = BufReader::new(out);
    let mut line = String::new();
    while r.read_line(&mut line).ok()? > 0 {
        if line.contains(needle) {
            return Some(line);
        }
        line.clear();
    }
    None
}

/// Whether this runs in one of the matrix's emulated (TCG) guests, where
/// a timer or a sleep overshoots by milliseconds whenever the host is busy:
/// by xtask's kernel label, else by the CPU QEMU emulates.
pub fn emulated() -> bool {
    match std::env::var("INJECTORD_KERNEL_LABEL") {
        Ok(label) => !label.starts_with("host-"),
        Err(_) => {
            std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains("QEMU Virtual CPU"))
        }
    }
}

/// Where the capability matrix rows go (set by `cargo xtask test`).
pub fn matrix_dir() -> Option<PathBuf> {
    std::env::var_os("INJECTORD_MATRIX_DIR").map(PathBuf::from)
}

/// CLOCK_MONOTONIC in nanoseconds: comparable across processes, so a
/// helper's timestamp can be set against the caller's.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A helper's JSON object of counts (`{"ECONNREFUSED": 3}`), as pairs;
/// entries that are not counts read as 0.
fn counts<C: FromIterator<(String, u64)>>(v: &Value) -> C {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect()
}

/// The median of `samples` (the upper one of an even count); NaN if empty.
/// Robust where a stalled guest (QEMU TCG on a busy machine) makes a
/// few samples slow.
pub fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Asserts that `x` successes of `n` trials with probability `p` lie within
/// four standard deviations of `n p`: |x - n p| <= 4 sqrt(n p (1-p)).
pub fn assert_binomial(x: u64, n: u64, p: f64, what: &str) {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (x as f64 - mean).abs() <= 4.0 * sd,
        "{what}: {x} of {n}, expected {mean:.1} ± {:.1} (4 sigma)",
        4.0 * sd
    );
}
