//! Faults end when they should: TTL, remove, clear, SIGTERM, SIGKILL; and
//! nothing of ours stays attached.

use std::{
    thread::sleep,
    time::{Duration, Instant},
};

use injectord_tests::*;
use serde_json::json;

fn refused(cg: &TestCgroup) -> bool {
    let r = cg.connects("udp", "127.0.0.1", 9, 1);
    r.total_failed() == 1
}

#[test]
fn ttl_expiry_removes_the_fault() {
    let d = Daemon::start_without_interface_pool();
    let cg = TestCgroup::new("ttl");
    let started = Instant::now();
    d.inject(json!({
        "name": "short",
        "target": {"cgroup": cg.rel},
        "fault": {"type": "connect_error", "errno": "ECONNREFUSED"},
        // Long enough for the check below to start its process in the
        // cgroup before the expiry: in a TCG guest on a loaded machine
        // that took more than 1.5 s.
        "duration": "4s",
    }));
    assert!(refused(&cg), "refused within the TTL");
    let got = d.call("get", json!({"name": "short"})).unwrap();
    assert!(got["expires_in_ms"].as_u64().unwrap() <= 4000);
    while started.elapsed() < Duration::from_millis(5000) {
        sleep(Duration::from_millis(100));
    }
    assert!(!refused(&cg), "fault still fires after its TTL");
    // The kernel stops at the expiry itself; the daemon's timer removes
    // the fault, polled: a stalled TCG guest may run it late.
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.call("list", json!(null)).unwrap()["faults"] != json!([]) || cg.bpf_programs() != "" {
        assert!(
            Instant::now() < deadline,
            "the fault outlived its TTL: programs {:?}",
            cg.bpf_programs()
        );
        sleep(Duration::from_millis(50));
    }
}

#[test]
fn remove_and_clear_take_effect_before_the_reply() {
    let d = Daemon::start_without_interface_pool();
    let a = TestCgroup::new("rm-a");
    let b = TestCgroup::new("rm-b");
    let id = d.inject(connect_fault(&a, json!({})));
    d.inject(json!({"name": "bee", "target": {"cgroup": b.rel},
        "fault": {"type": "connect_error", "errno": "EPERM"}}));
    assert!(refused(&a) && refused(&b));

    let removed = d.call("remove", json!({"id": id})).unwrap();
    assert_eq!(removed["removed"]["id"], id);
    assert!(!refused(&a));
    assert!(refused(&b));
    assert_eq!(d.error_code("remove", json!({"id": id})), "not_found");

    assert_eq!(d.call("clear", json!(null)).unwrap()["removed"], 1);
    assert!(!refused(&b));
    assert_eq!(a.bpf_programs(), "");
    assert_eq!(b.bpf_programs(), "");
}

#[test]
fn sigterm_removes_all_faults_and_exits_zero() {
    let mut d = Daemon::start_without_interface_pool();
    let cg = TestCgroup::new("term");
    d.inject(connect_fault(&cg, json!({})));
    assert!(refused(&cg));
    assert_ne!(cg.bpf_programs(), "");
    d.signal(libc::SIGTERM);
    let status = d.wait();
    assert!(status.success(), "exit status {status}");
    assert!(!refused(&cg));
    assert_eq!(cg.bpf_programs(), "");
    assert!(!d.socket.exists(), "socket file left behind");
}

#[test]
fn sigkill_leaves_nothing_attached() {
    let mut d = Daemon::start_without_interface_pool();
    let cg = TestCgroup::new("kill");
    d.inject(connect_fault(&cg, json!({})));
    assert!(refused(&cg));
    d.signal(libc::SIGKILL);
    d.wait();
    // bpf_links are released with the last fd; give the kernel's deferred
    // release a moment.
    // (Polled: room for a stalled TCG guest.)
    let deadline = Instant::now() + Duration::from_secs(15);
    while refused(&cg) && Instant::now() < deadline {
        sleep(Duration::from_millis(50));
    }
    assert!(!refused(&cg), "fault outlived a SIGKILLed daemon");
    assert_eq!(cg.bpf_programs(), "");
    // A new daemon starts on the stale socket.
    let again = d.spawn().unwrap();
    let mut again = KillOnDrop(again);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Client::connect(&d.socket).is_err() {
        assert!(again.0.try_wait().unwrap().is_none(), "restart failed");
        assert!(Instant::now() < deadline);
        sleep(Duration::from_millis(20));
    }
    let _ = &mut again;
}

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        if let Err(stuck) = wait_with_limit(&mut self.0, EXIT_LIMIT) {
            eprintln!("the restarted injectord did not exit on SIGTERM: {stuck}");
        }
    }
}

#[test]
fn second_daemon_on_the_same_socket_refuses_to_start() {
    let d = Daemon::start_without_interface_pool();
    let out = d.spawn().unwrap().wait_with_output().unwrap();
    assert!(!out.status.success());
    let logs = d.logs();
    assert!(logs.contains("already serving"), "{logs}");
    // the first one still works
    d.call("status", json!(null)).unwrap();
}

#[test]
fn socket_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let d = Daemon::start_without_interface_pool();
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn kernel_stops_firing_at_expiry_even_if_the_daemon_is_stalled() {
    // A lease longer than the TTL, so that what stops the fault is its
    // expiry, not the frozen daemon's lease (tested in lease.rs).
    let d = Daemon::builder()
        .without_interface_pool()
        .args(&["--lease", "30s"])
        .start()
        .expect("starting injectord");
    let cg = TestCgroup::new("stalled");
    // Long enough that a slow VM starts the probing client well within it.
    let ttl = Duration::from_secs(4);
    let injected = Instant::now();
    d.inject(json!({
        "target": {"cgroup": cg.rel},
        "fault": {"type": "connect_error", "errno": "ECONNREFUSED"},
        "duration": "4s",
    }));
    // Freeze the daemon so its TTL timer cannot run.
    d.signal(libc::SIGSTOP);
    assert!(refused(&cg), "the fault must fire before its expiry");
    assert!(injected.elapsed() < ttl, "probe too slow to prove anything");
    sleep((injected + ttl + Duration::from_millis(300)).saturating_duration_since(Instant::now()));
    let after = cg.connects("udp", "127.0.0.1", 9, 1);
    d.signal(libc::SIGCONT);
    assert_eq!(after.ok, 1, "the kernel fired past the expiry: {after:?}");
}
