//! Host packages the tests need, installed with apt only when missing.

use std::process::Command;

use anyhow::Context as _;

use crate::sh;

/// (command that must exist, Debian package providing it)
const TOOLS: &[(&str, &str)] = &[
    ("curl", "curl"),
    ("bpftool", "bpftool"),
    // The tests set up namespaces, veths and qdiscs with these and check
    // the daemon's work with them; the daemon itself needs neither.
    ("ip", "iproute2"),
    ("tc", "iproute2"),
    ("/usr/bin/python3", "python3"),
    // Packet-fault tests and benchmarks.
    ("ping", "iputils-ping"),
    ("iperf3", "iperf3"),
    ("ethtool", "ethtool"),
    ("nft", "nftables"),
    ("iptables", "iptables"),
    ("nsenter", "util-linux"),
    // Metrics tests: a real Prometheus scrapes the daemon and runs the
    // dashboard's queries; promtool lints a scrape; Python's strict
    // OpenMetrics parser reads one.
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    (
        "/usr/lib/python3/dist-packages/prometheus_client/openmetrics/parser.py",
        "python3-prometheus-client",
    ),
    // Fault-spec tests: the workloads of the library's FMEA rows, each run
    // by the test in a network namespace of its own. dnsmasq-base is the
    // daemon without Debian's service for it; nginx-light is the small
    // build (it has WebDAV PUT, which the upload test uses).
    ("/usr/sbin/nginx", "nginx-light"),
    ("/usr/sbin/haproxy", "haproxy"),
    ("/usr/sbin/dnsmasq", "dnsmasq-base"),
    ("/usr/sbin/keepalived", "keepalived"),
    // Experiment tests: Chromium renders the HTML report headless and
    // takes the screenshot that the test checks for the plots.
    ("chromium", "chromium"),
];

pub fn have(cmd: &str) -> bool {
    if cmd.starts_with('/') {
        return std::path::Path::new(cmd).exists();
    }
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs the missing packages among `tools` (plus `extra` packages that
/// have no command to check).
pub fn ensure(tools: &[(&str, &str)], extra: &[&str]) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = tools
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.extend(extra.iter().filter(|p| !dpkg_installed(p)));
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("[x] apt-get install {}", missing.join(" "));
    sh(Command::new("apt-get").arg("update").arg("-q")).context("apt-get update")?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

pub fn ensure_test_tools() -> anyhow::Result<()> {
    ensure(TOOLS, &[])
}
