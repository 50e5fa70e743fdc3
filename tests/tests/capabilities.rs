//! `capabilities` reports every backend, and the suite records this
//! kernel's row of the backend x kernel matrix.

use injectord_tests::*;
use serde_json::{Value, json};

const BACKENDS: [&str; 23] = [
    "cgroup_sock_addr",
    "bpf_set_retval",
    "cgroup_skb",
    "bpf_lsm",
    "kprobe",
    "bpf_override_return",
    "xdp",
    "tcx",
    "clsact",
    "sch_fq",
    "tracepoints",
    "bpf_send_signal",
    "bpf_loop",
    "syscall_kprobe_override",
    "syscall_lsm",
    "syscall_cgroup",
    "process_kill",
    "process_pause",
    "block_io_latency",
    "io_error_block",
    "io_error_file",
    "io_delay",
    "io_throttle",
];

#[test]
fn capabilities_cover_every_backend_and_are_recorded() {
    let d = Daemon::start_without_interface_pool();
    let caps = d.call("capabilities", json!(null)).unwrap();
    let backends = caps["backends"].as_array().unwrap();
    for name in BACKENDS {
        let c = backends
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {caps}"));
        assert!(c["available"].is_boolean());
        assert!(
            !c["detail"].as_str().unwrap_or_default().is_empty(),
            "{name}: a backend must say why it is (un)available"
        );
        println!(
            "{name:<20} {:<4} {}",
            if c["available"] == true { "yes" } else { "no" },
            c["detail"].as_str().unwrap()
        );
    }
    // connect_error needs these; every kernel of the matrix (6.1+) has them.
    for needed in ["cgroup_sock_addr", "bpf_set_retval"] {
        let c = backends.iter().find(|c| c["name"] == needed).unwrap();
        assert_eq!(c["available"], true, "{needed}: {}", c["detail"]);
    }
    // The syscall family's backends stand on the kernel-wide probes: where
    // those say a mechanism works, the family's programs must load too.
    let available = |name: &str| {
        backends
            .iter()
            .any(|c| c["name"] == name && c["available"] == true)
    };
    for (family_backend, needs) in [
        ("syscall_lsm", &["bpf_lsm"][..]),
        (
            "syscall_kprobe_override",
            &["kprobe", "bpf_override_return"][..],
        ),
        ("syscall_cgroup", &["bpf_set_retval"][..]),
        ("io_error_file", &["syscall_lsm"][..]),
        ("io_error_block", &["syscall_kprobe_override"][..]),
        // Raw tracepoints exist on every kernel of the matrix.
        ("block_io_latency", &[][..]),
        ("io_delay", &["bpf_send_signal"][..]),
    ] {
        if needs.iter().all(|n| available(n)) {
            assert!(
                available(family_backend),
                "{family_backend} must load where {needs:?} do: {caps}"
            );
        }
    }
    if let Some(dir) = matrix_dir() {
        let label = std::env::var("INJECTORD_KERNEL_LABEL")
            .unwrap_or_else(|_| caps["kernel"].as_str().unwrap_or("unknown").to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let row: Value = json!({"label": label, "capabilities": caps});
        std::fs::write(dir.join(format!("{label}.json")), row.to_string()).unwrap();
    }
}

#[test]
fn status_reports_the_daemon() {
    let d = Daemon::start_without_interface_pool();
    let s = d.call("status", json!(null)).unwrap();
    assert_eq!(s["pid"], d.pid());
    assert_eq!(s["faults_active"], 0);
    assert!(s["cgroup2_mount"].as_str().unwrap().starts_with('/'));
    let m = d.metrics();
    assert_eq!(m.get("injectord_faults_active"), Some(&0.0));
    assert!(
        m.keys().any(|k| k.starts_with("injectord_build_info{")),
        "{m:?}"
    );
}
