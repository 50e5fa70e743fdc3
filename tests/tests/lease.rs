//! Nothing outlives the daemon, even when its whole process group or
//! cgroup is killed (the reaper with it): what stays in the kernel is inert
//! within the lease, and the next daemon on the socket undoes it from its
//! predecessor's journal.

use std::time::{Duration, Instant};

use injectord_tests::{net::*, *};
use serde_json::{Value, json};

/// The lease the daemons here run with (the default).
const LEASE: Duration = Duration::from_secs(1);

/// What the faults below leave on the devices: the partition's clsact
/// filters at a.eth0's egress and ingress (a veth's ingress drops run in
/// TC) and the clsact qdisc, and on kernels with sch_fq an fq root qdisc.
fn inject_netlink_faults(d: &Daemon, link: &Link, fq: bool) {
    d.inject(
        json!({"name": "cut", "target": {"interface": "eth0", "netns": link.a.name},
                    "fault": {"type": "partition", "dst": B_IP}}),
    );
    if fq {
        d.inject(
            json!({"name": "slow", "target": {"interface": "eth0", "netns": link.a.name},
                        "fault": {"type": "packet_delay", "delay": "5ms", "protocol": "udp",
                                  "install_fq": true}}),
        );
    }
    assert_eq!(
        ping(&link.a, B_IP, 3, "0.2").1,
        0,
        "the partition must bite"
    );
}

/// Waits until a -> b pings get through again, while our filters are still
/// on a.eth0: the lease made them inert. Returns how long that took.
fn assert_inert_within_lease(link: &Link, killed: Instant) -> Duration {
    let deadline = killed + LEASE + Duration::from_secs(2);
    loop {
        if ping(&link.a, B_IP, 1, "0.1").1 == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "traffic still cut {:?} after the kill",
            killed.elapsed()
        );
    }
    let took = killed.elapsed();
    let now = link.a.attachments("eth0");
    assert!(
        now.has_ours(),
        "the filters are expected to stay until the next start (the reaper was killed too): {now:?}"
    );
    assert_eq!(
        ping_all(&link.a, B_IP, 5, "0.1").received,
        5,
        "traffic must be clean"
    );
    took
}

/// Restarts the daemon on the same socket and checks that it undid what
/// its predecessor left, counted it, and that the devices are as before.
fn assert_recovered(d: &mut Daemon, link: &Link, before: &(Attachments, Attachments), fq: bool) {
    d.restart().unwrap();
    let now = (link.a.attachments("eth0"), link.b.attachments("eth0"));
    assert_eq!(now, *before, "the next start must leave nothing behind");
    let status = d.call("status", json!(null)).unwrap();
    // The partition's two filters and the clsact qdisc, and the fq.
    let expected = 3 + u64::from(fq);
    assert_eq!(status["recovered"]["undone"], expected, "{status}");
    assert_eq!(status["recovered"]["failed"], 0, "{status}");
    let m = d.metrics();
    assert_eq!(
        m.get("injectord_recovered_total{outcome=\"undone\"}"),
        Some(&(expected as f64)),
        "{m:?}"
    );
    // The new daemon works, and its own start left nothing pending.
    d.inject(
        json!({"name": "again", "target": {"interface": "eth0", "netns": link.a.name},
                    "fault": {"type": "packet_drop", "protocol": "icmp"}}),
    );
    assert_eq!(ping(&link.a, B_IP, 2, "0.2").1, 0);
    d.call("remove", json!({"name": "again"})).unwrap();
    assert_eq!(ping_all(&link.a, B_IP, 2, "0.2").received, 2);
}

#[test]
fn a_killed_process_group_leaves_only_inert_state_and_the_next_start_undoes_it() {
    let link = Link::new("lease-pg");
    let before = (link.a.attachments("eth0"), link.b.attachments("eth0"));
    let mut d = Daemon::builder()
        .own_process_group()
        .args(&["--tc-attach", "clsact"])
        .start()
        .unwrap();
    let fq = d.has_backend("sch_fq");
    inject_netlink_faults(&d, &link, fq);
    assert!(
        link.a
            .attachments("eth0")
            .egress_filters
            .contains("packet_")
    );
    // What systemd's final SIGKILL, `timeout -s KILL` or `kill -9 -PGID` do.
    d.signal_group(libc::SIGKILL);
    let killed = Instant::now();
    d.wait();
    let took = assert_inert_within_lease(&link, killed);
    println!("traffic clean {took:?} after the kill (lease {LEASE:?})");
    if fq {
        assert!(link.a.attachments("eth0").qdiscs.contains("qdisc fq"));
    }
    assert_recovered(&mut d, &link, &before, fq);
}

#[test]
fn a_killed_cgroup_leaves_only_inert_state_and_the_next_start_undoes_it() {
    let link = Link::new("lease-cg");
    let before = (link.a.attachments("eth0"), link.b.attachments("eth0"));
    // The daemon's own cgroup, as a service or a container has one.
    let unit = TestCgroup::new("injectord-unit");
    let mut d = Daemon::builder()
        .in_cgroup(&unit.path)
        .args(&["--tc-attach", "clsact"])
        .start()
        .unwrap();
    let fq = d.has_backend("sch_fq");
    inject_netlink_faults(&d, &link, fq);
    let procs = std::fs::read_to_string(unit.path.join("cgroup.procs")).unwrap();
    assert_eq!(
        procs.lines().count(),
        2,
        "the daemon and its reaper: {procs}"
    );
    std::fs::write(unit.path.join("cgroup.kill"), "1").unwrap();
    let killed = Instant::now();
    d.wait();
    let took = assert_inert_within_lease(&link, killed);
    println!("traffic clean {took:?} after cgroup.kill (lease {LEASE:?})");
    assert_recovered(&mut d, &link, &before, fq);
    let _: Value = d.call("status", json!(null)).unwrap();
}
