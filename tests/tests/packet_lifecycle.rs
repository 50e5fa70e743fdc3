//! Packet faults never outlive their reason to exist: remove, TTL, SIGTERM
//! and SIGKILL all restore clean traffic and leave no program, filter or
//! qdisc of ours, and what another tool attached before us is still there.

use std::time::{Duration, Instant};

use injectord_tests::{net::*, *};
use serde_json::json;

/// Another tool's state on a.eth0: a clsact filter (a classic BPF program
/// that matches nothing, at priority 5, in both directions).
fn other_tool(link: &Link) {
    link.a
        .run_ok("tc", &["qdisc", "add", "dev", "eth0", "clsact"]);
    for dir in ["ingress", "egress"] {
        link.a.run_ok(
            "tc",
            &[
                "filter",
                "add",
                "dev",
                "eth0",
                dir,
                "prio",
                "5",
                "bpf",
                "bytecode",
                "1,6 0 0 0,",
            ],
        );
    }
}

fn faults(link: &Link) -> [serde_json::Value; 3] {
    [
        json!({"name": "loss", "target": {"interface": "eth0", "netns": link.a.name},
               "fault": {"type": "packet_drop", "direction": "both", "protocol": "icmp"}}),
        json!({"name": "dup", "target": {"interface": "eth0", "netns": link.a.name},
               "fault": {"type": "packet_duplicate", "direction": "ingress", "protocol": "udp"}}),
        json!({"name": "xdp", "target": {"interface": "eth0", "netns": link.b.name},
               "fault": {"type": "packet_drop", "direction": "ingress", "protocol": "icmp", "hook": "xdp"},
               "trigger": {"probability": 0.5}}),
    ]
}

/// Waits (up to 15 s: polled, with room for a stalled TCG guest) until
/// both ends look as they did before the faults.
fn assert_restored(link: &Link, before: &(Attachments, Attachments), how: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = (link.a.attachments("eth0"), link.b.attachments("eth0"));
        if now == *before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{how}: devices not restored\nbefore: {before:#?}\nnow: {now:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        ping_all(&link.a, B_IP, 5, "0.1").received,
        5,
        "{how}: traffic must be clean"
    );
}

fn check_all_ways_out(daemon_args: &[&str]) {
    let link = Link::new("life");
    other_tool(&link);
    let before = (link.a.attachments("eth0"), link.b.attachments("eth0"));
    assert!(!before.0.has_ours() && !before.1.has_ours());

    let faulted = |d: &Daemon| {
        for f in faults(&link) {
            d.inject(f);
        }
        let a = link.a.attachments("eth0");
        assert!(a.has_ours(), "{a:?}");
        assert_eq!(ping(&link.a, B_IP, 3, "0.1").1, 0, "faults must bite");
        // The other tool's filters are still in place while we run.
        assert!(a.egress_filters.contains("pref 5"), "{a:?}");
    };

    // remove
    let d = Daemon::start_with(daemon_args);
    faulted(&d);
    for name in ["loss", "dup", "xdp"] {
        d.call("remove", json!({"name": name})).unwrap();
    }
    assert_restored(&link, &before, "remove");

    // TTL
    for mut f in faults(&link) {
        f["duration"] = json!("700ms");
        d.inject(f);
    }
    std::thread::sleep(Duration::from_millis(700));
    assert_restored(&link, &before, "TTL");
    drop(d);

    // SIGTERM
    let mut d = Daemon::start_with(daemon_args);
    faulted(&d);
    d.signal(libc::SIGTERM);
    assert!(d.wait().success());
    assert_restored(&link, &before, "SIGTERM");

    // SIGKILL: links die with the process; netlink state (clsact filters)
    // is undone by the reaper.
    let mut d = Daemon::start_with(daemon_args);
    faulted(&d);
    d.signal(libc::SIGKILL);
    d.wait();
    assert_restored(&link, &before, "SIGKILL");
}

#[test]
fn every_way_out_restores_the_devices_tcx_or_default() {
    check_all_ways_out(&[]);
}

#[test]
fn every_way_out_restores_the_devices_with_clsact_filters() {
    check_all_ways_out(&["--tc-attach", "clsact"]);
}

#[test]
fn installed_fq_is_removed_even_after_sigkill() {
    let d = Daemon::start();
    let caps = d.call("capabilities", json!(null)).unwrap();
    let fq = caps["backends"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "sch_fq" && c["available"] == true);
    let link = Link::new("fq");
    let spec = json!({"name": "slow", "target": {"interface": "eth0", "netns": link.a.name},
                      "fault": {"type": "packet_delay", "delay": "5ms"}});
    if !fq {
        assert_eq!(d.error_code("inject", spec), "unsupported_kernel");
        return;
    }
    // Without install_fq the error says how to get fq.
    let err = d.client().call("inject", spec.clone()).unwrap_err();
    let err = err.downcast_ref::<ErrorResponse>().unwrap();
    assert_eq!(err.code, "unsupported_target");
    assert!(err.message.contains("install_fq"), "{}", err.message);
    // Someone else's configured root qdisc is never replaced.
    link.b.run_ok(
        "tc",
        &[
            "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "tbf", "rate", "1gbit", "burst",
            "64k", "latency", "50ms",
        ],
    );
    let mut theirs = spec.clone();
    theirs["target"]["netns"] = json!(link.b.name);
    theirs["fault"]["install_fq"] = json!(true);
    assert_eq!(d.error_code("inject", theirs), "conflict");
    assert!(link.b.attachments("eth0").qdiscs.contains("tbf"));

    let before = link.a.attachments("eth0");
    let mut mine = spec;
    mine["fault"]["install_fq"] = json!(true);
    let mut d = d;
    d.inject(mine);
    assert!(link.a.attachments("eth0").qdiscs.contains("qdisc fq"));
    d.signal(libc::SIGKILL);
    d.wait();
    // Polled: room for a stalled TCG guest.
    let deadline = Instant::now() + Duration::from_secs(15);
    while link.a.attachments("eth0") != before {
        assert!(
            Instant::now() < deadline,
            "fq left behind: {:?}",
            link.a.attachments("eth0")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The address of the macvlan device in b of
/// [`another_xdp_program_is_left_alone_and_ingress_drops_use_tc`].
const MV_IP: &str = "10.99.0.3";

/// Where another program holds a device's XDP, an ingress drop goes
/// through TC (the device is a macvlan, since a veth's drops go to TC
/// anyway), and `"hook": "xdp"` there is refused, naming why.
#[test]
fn another_xdp_program_is_left_alone_and_ingress_drops_use_tc() {
    let link = Link::new("xdp-other");
    link.b.run_ok(
        "ip",
        &[
            "link", "add", "mv0", "link", "eth0", "type", "macvlan", "mode", "bridge",
        ],
    );
    link.b
        .run_ok("ip", &["addr", "add", &format!("{MV_IP}/24"), "dev", "mv0"]);
    link.b.run_ok("ip", &["link", "set", "mv0", "up"]);
    // Only mv0 answers ARP for its address (by default eth0 would too,
    // and a's packets for MV_IP would never reach mv0's hooks).
    link.b
        .run_ok("sysctl", &["-qw", "net.ipv4.conf.eth0.arp_ignore=1"]);
    assert_eq!(ping_all(&link.a, MV_IP, 3, "0.1").received, 3);
    // "Another tool": this test process attaches an XDP program (the
    // do-nothing probe from injectord's object) to b's mv0 and holds it.
    let ns = std::fs::File::open(link.b.path()).unwrap();
    let mut ebpf = aya::Ebpf::load(injectord::kernel::OBJECT).unwrap();
    let prog: &mut aya::programs::Xdp = ebpf
        .program_mut(injector_common::probe::PROBE_XDP)
        .unwrap()
        .try_into()
        .unwrap();
    prog.load().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            use std::os::fd::AsFd as _;
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            prog.attach(c"mv0", aya::programs::XdpMode::Skb).unwrap();
        })
        .join()
        .unwrap();
    });
    let before = link.b.attachments("mv0");
    assert!(before.xdp.contains("probe_xdp"), "{before:?}");

    let d = Daemon::start();
    let on_mv0 = json!({"interface": "mv0", "netns": link.b.name});
    let insisted = d
        .call(
            "inject",
            json!({"target": on_mv0,
                   "fault": {"type": "packet_drop", "direction": "ingress", "protocol": "icmp", "hook": "xdp"}}),
        )
        .unwrap_err()
        .downcast::<ErrorResponse>()
        .unwrap();
    assert_eq!(insisted.data["field"], "fault.hook", "{insisted:?}");
    assert!(
        insisted.message.contains("XDP cannot be used"),
        "{insisted:?}"
    );
    let id = d.inject(json!({"name": "in", "target": on_mv0,
                             "fault": {"type": "packet_drop", "direction": "ingress", "protocol": "icmp"}}));
    let view = d.call("get", json!({"id": id})).unwrap();
    assert!(
        view["interface"]["xdp"]
            .as_str()
            .unwrap()
            .starts_with("unavailable"),
        "{view}"
    );
    assert_eq!(view["interface"]["veth"], false, "{view}");
    assert_eq!(
        ping(&link.a, MV_IP, 3, "0.1").1,
        0,
        "the drop works through TC"
    );
    assert!(link.b.attachments("mv0").xdp.contains("probe_xdp"));
    d.call("remove", json!({"id": id})).unwrap();
    assert_eq!(
        link.b.attachments_when("mv0", |a| *a == before),
        before,
        "the other program stays, ours is gone"
    );
    assert_eq!(ping_all(&link.a, MV_IP, 3, "0.1").received, 3);
}
