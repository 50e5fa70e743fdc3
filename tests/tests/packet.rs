//! Packet faults against real traffic between network namespaces: veth
//! pairs and a bridge, ping, a numbered-UDP counter, iperf3, an HTTP server
//! and curl.

use std::time::Duration;

use injectord_tests::{net::*, *};
use serde_json::{Value, json};

const IDLE: Duration = Duration::from_millis(1500);
/// Idle limit for a receiver fed by two senders in turn: the second one's
/// Python must start before the receiver gives up, which on a busy VM took
/// longer than [`IDLE`].
const BETWEEN_SENDERS: Duration = Duration::from_secs(6);

/// Packets a fault evaluated and acted on, from /metrics.
fn packets(d: &Daemon, name: &str, kind: &str, outcome: &str) -> u64 {
    let m = d.metrics();
    let key = format!(
        "injectord_packets_total{{fault=\"{name}\",type=\"{kind}\",outcome=\"{outcome}\"}}"
    );
    m.get(&key)
        .copied()
        .unwrap_or_else(|| panic!("{key} missing: {m:?}")) as u64
}

#[test]
fn egress_drop_is_binomial_counted_and_spares_other_flows() {
    let d = Daemon::start();
    let link = Link::new("drop");
    d.inject(json!({
        "name": "loss30",
        "target": {"interface": "eth0", "netns": link.a.name},
        "fault": {"type": "packet_drop", "protocol": "udp", "dst_port": 7001},
        "trigger": {"probability": 0.3},
    }));
    let n = 20_000;
    let hit = udp_receiver(&link.b, 7001, IDLE);
    let spared = udp_receiver(&link.b, 7002, IDLE);
    udp_send(&link.a, B_IP, 7001, n, 20_000);
    udp_send(&link.a, B_IP, 7002, 5_000, 20_000);
    let (hit, spared) = (finish_udp(hit), finish_udp(spared));

    assert_binomial(n - hit.received, n, 0.3, "dropped");
    assert_eq!(spared.received, 5_000, "the other flow must keep 0% loss");
    // Every datagram of the flow was evaluated; every missing one was
    // dropped by us (the counter matches what the receiver saw).
    assert_eq!(packets(&d, "loss30", "packet_drop", "evaluated"), n);
    assert_eq!(
        packets(&d, "loss30", "packet_drop", "dropped"),
        n - hit.received
    );
}

#[test]
fn ingress_drop_at_xdp_hits_ipv6_icmp_only() {
    let d = Daemon::start();
    let link = Link::new("xdp");
    let id = d.inject(json!({
        "name": "icmp6-in",
        "target": {"interface": "eth0", "netns": link.b.name},
        "fault": {"type": "packet_drop", "direction": "ingress", "protocol": "icmp", "src": "fd99::/64", "hook": "xdp"},
    }));
    let view = d.call("get", json!({"id": id})).unwrap();
    assert_eq!(view["interface"]["xdp"], "attached", "{view}");
    assert!(link.b.attachments("eth0").xdp.contains("xdp"));

    let (_, rx6, ..) = ping(&link.a, B_IP6, 5, "0.2");
    assert_eq!(rx6, 0, "ICMPv6 from fd99::/64 must be dropped");
    let rx4 = ping_all(&link.a, B_IP, 5, "0.2").received;
    assert_eq!(rx4, 5, "IPv4 ICMP does not match the src filter");
    // Neighbour discovery is ICMPv6 too, so the echo requests may never
    // leave a: whatever matched was dropped, IPv4 never matched.
    let dropped = packets(&d, "icmp6-in", "packet_drop", "dropped");
    assert!(dropped > 0);
    assert_eq!(dropped, packets(&d, "icmp6-in", "packet_drop", "evaluated"));

    // HTTP over the same link is untouched.
    let mut server = link
        .b
        .spawn("python3", &["-m", "http.server", "8080", "--bind", "::"]);
    let mut ok = false;
    for _ in 0..50 {
        let out = link.a.run(
            "curl",
            &[
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
                &format!("http://{B_IP}:8080/"),
            ],
        );
        if String::from_utf8_lossy(&out.stdout) == "200" {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
    assert!(ok, "curl over the faulted link must work");
}

/// On a veth an ingress drop runs at TC unless `hook` says `xdp`; either
/// way the drop acts; and a hook where it means nothing is refused with
/// the field named.
#[test]
fn hook_puts_ingress_drops_at_tc_or_xdp() {
    let d = Daemon::start();
    let link = Link::new("hook");
    let on_b = json!({"interface": "eth0", "netns": link.b.name});
    for hook in [None, Some("tc"), Some("xdp")] {
        let label = hook.unwrap_or("default");
        let mut fault = json!({"type": "packet_drop", "direction": "ingress", "protocol": "icmp",
                               "dst": format!("{B_IP}/32")});
        if let Some(h) = hook {
            fault["hook"] = json!(h);
        }
        let id = d.inject(json!({"name": label, "target": on_b, "fault": fault}));
        let view = d.call("get", json!({"id": id})).unwrap();
        assert_eq!(view["interface"]["veth"], true, "{view}");
        let want_xdp = hook == Some("xdp");
        let on_xdp = view["interface"]["xdp"] == "attached";
        assert_eq!(on_xdp, want_xdp, "{label}: {view}");
        let now = link.b.attachments("eth0");
        assert_eq!(now.xdp.contains("prog/xdp"), want_xdp, "{label}: {now:?}");
        // (Program names are cut to 15 bytes.)
        assert_eq!(
            now.tcx[0].contains("packet_tc_ingre")
                || now.ingress_filters.contains("packet_tc_ingre"),
            !want_xdp,
            "{label}: {now:?}"
        );
        let (tx, rx, ..) = ping(&link.a, B_IP, 5, "0.2");
        assert_eq!(
            (tx, rx),
            (5, 0),
            "{label}: the echo requests must be dropped"
        );
        assert_eq!(packets(&d, label, "packet_drop", "dropped"), 5);
        d.call("remove", json!({"id": id})).unwrap();
        // Programs go in the background; the next fault waits for that.
        link.b.attachments_when("eth0", |a| {
            !a.xdp.contains("prog/xdp") && !a.tcx[0].contains("packet")
        });
    }
    assert_eq!(ping_all(&link.a, B_IP, 3, "0.2").received, 3);

    let refused = |fault: Value, target: Value| {
        let err = d
            .call("inject", json!({"target": target, "fault": fault}))
            .unwrap_err()
            .downcast::<ErrorResponse>()
            .unwrap();
        assert_eq!(err.data["field"], "fault.hook", "{err:?}");
        err.message
    };
    let egress = refused(
        json!({"type": "packet_drop", "direction": "egress", "hook": "tc"}),
        on_b.clone(),
    );
    assert!(egress.contains("no ingress side"), "{egress}");
    let cg = TestCgroup::new("hook");
    let on_cgroup = refused(
        json!({"type": "packet_drop", "direction": "ingress", "hook": "xdp"}),
        json!({"cgroup": cg.rel}),
    );
    assert!(on_cgroup.contains("cgroup_skb"), "{on_cgroup}");
    let bad = d
        .call(
            "inject",
            json!({"target": on_b, "fault": {"type": "packet_drop", "hook": "nic"}}),
        )
        .unwrap_err()
        .downcast::<ErrorResponse>()
        .unwrap();
    assert_eq!(bad.data["field"], "fault.hook", "{bad:?}");
    // Nothing of the refused faults stayed.
    let list = d.call("list", json!(null)).unwrap();
    assert_eq!(list["faults"].as_array().map(Vec::len), Some(0), "{list}");
}

/// A drop without filters is evaluated before the packet is parsed (the
/// catch-all fast path): it must still take every IP packet and only IP
/// packets (ARP gets through), count each packet once, and hand what it
/// lets through to the device's other rules in order.
#[test]
fn a_drop_without_filters_takes_every_ip_packet_and_spares_arp() {
    let d = Daemon::start();
    let link = Link::new("catchall");
    let on_b = json!({"interface": "eth0", "netns": link.b.name});
    for hook in ["xdp", "tc"] {
        let all = d.inject(json!({"name": format!("all-{hook}"), "target": on_b,
            "fault": {"type": "packet_drop", "direction": "ingress", "hook": hook}}));
        // Forget b's address, so the pings must ask ARP first.
        link.a.run_ok("ip", &["neigh", "flush", "all"]);
        let (tx, rx, ..) = ping(&link.a, B_IP, 5, "0.2");
        assert_eq!((tx, rx), (5, 0), "{hook}: every echo request dropped");
        let neigh = link.a.run_ok("ip", &["neigh", "show", B_IP]);
        assert!(
            neigh.contains("lladdr"),
            "{hook}: ARP is not IP and must get through: {neigh:?}"
        );
        // (The link's own IPv6 chatter, neighbour discovery and MLD, is IP
        // too: at least the five requests, all dropped.)
        let view = d.call("get", json!({"id": all})).unwrap();
        assert!(view["evaluations"].as_u64() >= Some(5), "{hook}: {view}");
        assert_eq!(view["activations"], view["evaluations"], "{hook}: {view}");
        d.call("remove", json!({"id": all})).unwrap();
        link.b.attachments_when("eth0", |a| {
            !a.xdp.contains("prog/xdp") && !a.tcx[0].contains("packet")
        });
    }

    // The catch-all first at p = 0.5, an ICMP drop second: each echo
    // request is the first's to evaluate once, and what it spares is the
    // second's (as is IPv6 chatter: ICMPv6, which `icmp` covers).
    let half = d.inject(json!({"name": "half", "target": on_b,
        "fault": {"type": "packet_drop", "direction": "ingress", "hook": "xdp"},
        "trigger": {"probability": 0.5}}));
    let icmp = d.inject(json!({"name": "icmp", "target": on_b,
        "fault": {"type": "packet_drop", "direction": "ingress", "hook": "xdp", "protocol": "icmp"}}));
    let n = 40;
    let (tx, rx, ..) = ping(&link.a, B_IP, n, "0.02");
    assert_eq!((tx, rx), (u64::from(n), 0));
    let half = d.call("get", json!({"id": half})).unwrap();
    let icmp = d.call("get", json!({"id": icmp})).unwrap();
    let (evaluated, fired) = (
        half["evaluations"].as_u64().unwrap(),
        half["activations"].as_u64().unwrap(),
    );
    assert!(evaluated >= u64::from(n), "{half}");
    assert!(fired > 0 && fired < evaluated, "{half}");
    assert_eq!(
        icmp["evaluations"].as_u64(),
        Some(evaluated - fired),
        "{icmp}"
    );
    assert_eq!(icmp["activations"], icmp["evaluations"], "{icmp}");
}

/// `"protocol": "all"` drops every frame, ARP included, as a pulled cable
/// would: first on its hook (the fast path, which never reads the frame)
/// and behind another rule (where a frame that is not IP has the drops
/// that take every frame as its only candidates).
#[test]
fn a_drop_of_every_frame_takes_arp_too_first_or_behind_another_rule() {
    let d = Daemon::start();
    let link = Link::new("everyframe");
    let on_b = json!({"interface": "eth0", "netns": link.b.name});
    let unresolved = |what: &str| {
        // Forget b's address, so the pings must ask ARP first, and a's
        // on b, whose own probes of a stale entry would teach a b's.
        link.a.run_ok("ip", &["neigh", "flush", "all"]);
        link.b.run_ok("ip", &["neigh", "flush", "all"]);
        let (tx, rx, ..) = ping(&link.a, B_IP, 3, "0.2");
        assert_eq!((tx, rx), (3, 0), "{what}: nothing answered");
        let neigh = link.a.run_ok("ip", &["neigh", "show", B_IP]);
        assert!(
            !neigh.contains("lladdr"),
            "{what}: ARP must be dropped too: {neigh:?}"
        );
    };
    for hook in ["xdp", "tc"] {
        let all = d.inject(json!({"name": format!("all-{hook}"), "target": on_b,
            "fault": {"type": "packet_drop", "direction": "ingress", "hook": hook, "protocol": "all"}}));
        unresolved(hook);
        let view = d.call("get", json!({"id": all})).unwrap();
        assert!(view["evaluations"].as_u64() >= Some(1), "{hook}: {view}");
        assert_eq!(view["activations"], view["evaluations"], "{hook}: {view}");
        assert_eq!(view["spec"]["fault"]["protocol"], "all", "{hook}: {view}");
        d.call("remove", json!({"id": all})).unwrap();
        link.b.attachments_when("eth0", |a| {
            !a.xdp.contains("prog/xdp") && !a.tcx[0].contains("packet")
        });
        let (tx, rx, ..) = ping(&link.a, B_IP, 2, "0.2");
        assert_eq!((tx, rx), (2, 2), "{hook}: the link is back once removed");
    }

    // Behind a UDP drop, which no frame here is for.
    let udp = d.inject(json!({"name": "udp", "target": on_b,
        "fault": {"type": "packet_drop", "direction": "ingress", "hook": "xdp", "protocol": "udp"}}));
    let all = d.inject(json!({"name": "all", "target": on_b,
        "fault": {"type": "packet_drop", "direction": "ingress", "hook": "xdp", "protocol": "all"}}));
    unresolved("behind a UDP drop");
    let all = d.call("get", json!({"id": all})).unwrap();
    assert!(all["evaluations"].as_u64() >= Some(1), "{all}");
    assert_eq!(all["activations"], all["evaluations"], "{all}");
    let udp = d.call("get", json!({"id": udp})).unwrap();
    assert_eq!(udp["evaluations"], 0, "{udp}");

    // Only a whole-interface drop can take frames that are not IP.
    let cg = TestCgroup::new("everyframe");
    for (fault, target, field) in [
        (
            json!({"type": "packet_drop", "protocol": "all", "dst_port": 53}),
            on_b.clone(),
            "fault.dst_port",
        ),
        (
            json!({"type": "packet_drop", "protocol": "all", "src": "10.0.0.0/8"}),
            on_b.clone(),
            "fault.src",
        ),
        (
            json!({"type": "packet_duplicate", "protocol": "all"}),
            on_b.clone(),
            "fault.protocol",
        ),
        (
            json!({"type": "packet_drop", "protocol": "all"}),
            json!({"cgroup": cg.rel}),
            "fault.protocol",
        ),
    ] {
        let err = d
            .call("inject", json!({"target": target, "fault": fault}))
            .unwrap_err()
            .downcast::<ErrorResponse>()
            .unwrap();
        assert_eq!(err.data["field"], field, "{fault}: {err:?}");
        assert!(err.message.contains("\"all\""), "{fault}: {err:?}");
    }
}

/// A whole-device drop that fires every time is decided from the first
/// thing the programs read (see `ActiveSet` in injector-common), kept in
/// step with the rule set: a second catch-all takes over when the first
/// goes, a rule put first hands the catch-all to the rule set and back,
/// and a TTL ends it.
#[test]
fn whole_device_drops_hand_over_in_order_and_expire() {
    let d = Daemon::start();
    let link = Link::new("handover");
    let on_b = json!({"interface": "eth0", "netns": link.b.name});
    let all = |name: &str| {
        json!({"name": name, "target": on_b,
            "fault": {"type": "packet_drop", "direction": "ingress", "hook": "xdp"}})
    };
    let stats = |name: &str| {
        let v = d.call("get", json!({"name": name})).unwrap();
        (
            v["evaluations"].as_u64().unwrap(),
            v["activations"].as_u64().unwrap(),
        )
    };
    let all_dropped = |what: &str| {
        let (tx, rx, ..) = ping(&link.a, B_IP, 5, "0.05");
        assert_eq!((tx, rx), (5, 0), "{what}: every echo request dropped");
    };

    d.inject(all("first"));
    d.inject(all("second"));
    all_dropped("two catch-alls");
    let (evaluated, fired) = stats("first");
    assert!(
        fired >= 5 && fired == evaluated,
        "first: {evaluated} {fired}"
    );
    assert_eq!(stats("second"), (0, 0), "the first decides every packet");

    d.call("remove", json!({"name": "first"})).unwrap();
    all_dropped("the second alone");
    let (evaluated, fired) = stats("second");
    assert!(
        fired >= 5 && fired == evaluated,
        "second: {evaluated} {fired}"
    );

    // A UDP drop takes the first free rule index, ahead of the catch-all:
    // the echo requests are still the catch-all's, now from the rule set.
    d.inject(json!({"name": "udp", "target": on_b,
        "fault": {"type": "packet_drop", "direction": "ingress", "hook": "xdp", "protocol": "udp"}}));
    let before = stats("second").1;
    all_dropped("behind a UDP rule");
    let (evaluated, fired) = stats("second");
    assert!(
        fired >= before + 5 && fired == evaluated,
        "second: {evaluated} {fired}"
    );
    assert_eq!(stats("udp"), (0, 0), "no UDP sent");
    udp_send(&link.a, B_IP, 7150, 100, 10_000);
    assert_eq!(stats("udp"), (100, 100), "the UDP rule comes first for UDP");
    d.call("remove", json!({"name": "udp"})).unwrap();
    let before = stats("second").1;
    all_dropped("the catch-all first again");
    assert!(stats("second").1 >= before + 5);

    d.call("remove", json!({"name": "second"})).unwrap();
    let (tx, rx, ..) = ping(&link.a, B_IP, 3, "0.05");
    assert_eq!((tx, rx), (3, 3), "no fault left");

    let mut brief = all("brief");
    brief["duration"] = json!("1s");
    d.inject(brief);
    all_dropped("within the TTL");
    std::thread::sleep(Duration::from_millis(1500));
    let (tx, rx, ..) = ping(&link.a, B_IP, 3, "0.05");
    assert_eq!((tx, rx), (3, 3), "past the TTL");
}

#[test]
fn corruption_reaches_the_receiver() {
    let d = Daemon::start();
    let link = Link::new("corrupt");
    // With checksums fixed up the application sees changed bytes: exactly
    // one per activation (offset 50 lies in the pattern, after the
    // sequence number).
    d.inject(json!({
        "name": "flip",
        "target": {"interface": "eth0", "netns": link.b.name},
        "fault": {"type": "packet_corrupt", "direction": "ingress", "protocol": "udp", "offset": 50, "fix_checksum": true},
        "trigger": {"probability": 0.5},
    }));
    let rx = udp_receiver(&link.b, 7100, IDLE);
    udp_send(&link.a, B_IP, 7100, 4_000, 20_000);
    let r = finish_udp(rx);
    assert_eq!(r.received, 4_000, "fixed-up checksums: nothing is dropped");
    let corrupted = packets(&d, "flip", "packet_corrupt", "corrupted");
    assert_eq!(r.changed, corrupted, "{r:?}");
    assert_binomial(corrupted, 4_000, 0.5, "corrupted");
    d.call("remove", json!({"name": "flip"})).unwrap();

    // Left wrong, the receiving stack drops them and counts checksum
    // errors. The sender computes checksums itself (as a NIC does), so the
    // receiver has one to check.
    link.a.run_ok("ethtool", &["-K", "eth0", "tx", "off"]);
    d.inject(json!({
        "name": "flip-raw",
        "target": {"interface": "eth0", "netns": link.b.name},
        "fault": {"type": "packet_corrupt", "direction": "ingress", "protocol": "udp"},
        "trigger": {"probability": 0.5},
    }));
    let before = link.b.snmp("Udp", "InCsumErrors");
    let rx = udp_receiver(&link.b, 7101, IDLE);
    udp_send(&link.a, B_IP, 7101, 4_000, 20_000);
    let r = finish_udp(rx);
    let errors = link.b.snmp("Udp", "InCsumErrors") - before;
    let corrupted = packets(&d, "flip-raw", "packet_corrupt", "corrupted");
    assert_eq!(
        errors, corrupted,
        "each corrupted datagram fails its checksum"
    );
    assert_eq!(r.received + errors, 4_000);
    assert_eq!(
        r.changed, 0,
        "no corrupted datagram reaches the application"
    );
}

#[test]
fn duplicates_arrive() {
    let d = Daemon::start();
    let link = Link::new("dup");
    d.inject(json!({
        "name": "twice",
        "target": {"interface": "eth0", "netns": link.a.name},
        "fault": {"type": "packet_duplicate", "protocol": "udp", "dst": B_IP, "dst_port": "7200-7201"},
        "trigger": {"probability": 0.25},
    }));
    let rx = udp_receiver(&link.b, 7200, IDLE);
    udp_send(&link.a, B_IP, 7200, 8_000, 20_000);
    let r = finish_udp(rx);
    let dups = packets(&d, "twice", "packet_duplicate", "duplicated");
    assert_eq!(r.duplicates, dups, "{r:?}");
    assert_eq!(r.received, 8_000 + dups);
    assert_binomial(dups, 8_000, 0.25, "duplicated");
    // And at ingress (TC, since XDP cannot copy).
    d.inject(json!({
        "name": "twice-in",
        "target": {"interface": "eth0", "netns": link.b.name},
        "fault": {"type": "packet_duplicate", "direction": "ingress", "protocol": "udp"},
    }));
    let rx = udp_receiver(&link.b, 7210, IDLE);
    udp_send(&link.a, B_IP, 7210, 1_000, 20_000);
    let r = finish_udp(rx);
    assert_eq!((r.received, r.duplicates), (2_000, 1_000), "{r:?}");
}

#[test]
fn delay_moves_ping_rtt_or_is_refused_without_sch_fq() {
    let d = Daemon::start();
    let link = Link::new("delay");
    let spec = json!({
        "name": "slow",
        "target": {"interface": "eth0", "netns": link.a.name},
        "fault": {"type": "packet_delay", "delay": "50ms", "jitter": "10ms", "install_fq": true},
    });
    if !d.has_backend("sch_fq") {
        let err = d.client().call("inject", spec).unwrap_err();
        let err = err.downcast_ref::<ErrorResponse>().expect("error response");
        assert_eq!(err.code, "unsupported_kernel");
        assert!(err.message.contains("sch_fq"), "{}", err.message);
        println!("refused as expected: {}", err.message);
        return;
    }
    let base = ping_all(&link.a, B_IP, 10, "0.05");
    assert_eq!(base.received, 10, "{base:?}");
    d.inject(spec);
    assert!(link.a.attachments("eth0").qdiscs.contains("fq"));
    let slow = ping_all(&link.a, B_IP, 40, "0.05");
    assert_eq!(slow.received, 40, "delay must not lose packets: {slow:?}");
    // Medians, not means: a TCG guest stalls a sample by 100 ms now and
    // then. Uniform 40-60 ms puts the median of 40 within ±6 ms (4 sigma),
    // its quartiles 10 ms apart; no delayed packet is back in under 40 ms.
    let added = median(&slow.rtts) - median(&base.rtts);
    assert!((44.0..=56.0).contains(&added), "RTT grew by {added:.1} ms");
    assert!(
        slow.rtts.iter().all(|ms| *ms >= 40.0),
        "faster than the delay: {slow:?}"
    );
    let mut sorted = slow.rtts.clone();
    sorted.sort_by(f64::total_cmp);
    let spread = sorted[30] - sorted[10];
    assert!(spread > 4.0, "jitter must spread RTTs: {sorted:?}");
    let m = d.metrics();
    let count = m
        .get("injectord_injected_delay_seconds_count{fault=\"slow\",type=\"packet_delay\"}")
        .copied()
        .unwrap_or(0.0);
    assert!(count >= 40.0, "delay histogram: {count}");
    d.call("remove", json!({"name": "slow"})).unwrap();
    let after = link
        .a
        .attachments_when("eth0", |a| !a.qdiscs.contains("fq"));
    assert!(!after.qdiscs.contains("fq"), "fq must go: {after:?}");
}

#[test]
fn rate_limit_holds_or_is_refused_without_sch_fq() {
    let d = Daemon::start();
    let link = Link::new("rate");
    let spec = json!({
        "name": "thin",
        "target": {"interface": "eth0", "netns": link.a.name},
        "fault": {"type": "bandwidth_limit", "rate": "20mbit", "install_fq": true},
    });
    if !d.has_backend("sch_fq") {
        let err = d.client().call("inject", spec).unwrap_err();
        let err = err.downcast_ref::<ErrorResponse>().expect("error response");
        assert_eq!(err.code, "unsupported_kernel");
        assert!(err.message.contains("sch_fq"), "{}", err.message);
        return;
    }
    d.inject(spec);
    let mut server = link.b.spawn("iperf3", &["-s", "-1", "-J"]);
    std::thread::sleep(Duration::from_millis(300));
    let out = link.a.run_ok("iperf3", &["-c", B_IP, "-t", "4", "-J"]);
    let _ = server.kill();
    let _ = server.wait();
    let v: Value = serde_json::from_str(&out).expect("iperf3 JSON");
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap();
    // The limit caps the rate; a stalled TCG guest only lowers it (a
    // second's stall in 4 s takes a quarter), so the floor is generous.
    assert!(
        (14e6..=22e6).contains(&bps),
        "TCP throughput {:.1} Mbit/s, limit 20",
        bps / 1e6
    );
    // UDP offered at twice the rate: what arrives holds the limit.
    let mut server = link.b.spawn("iperf3", &["-s", "-1", "-J"]);
    std::thread::sleep(Duration::from_millis(300));
    let out = link
        .a
        .run_ok("iperf3", &["-c", B_IP, "-u", "-b", "40M", "-t", "4", "-J"]);
    let _ = server.kill();
    let _ = server.wait();
    let v: Value = serde_json::from_str(&out).expect("iperf3 JSON");
    let sum = &v["end"]["sum"];
    let sent_bps = sum["bits_per_second"].as_f64().unwrap();
    let lost = sum["lost_percent"].as_f64().unwrap();
    let got_bps = sent_bps * (1.0 - lost / 100.0);
    assert!(
        (14e6..=22e6).contains(&got_bps),
        "UDP offered {:.1} Mbit/s, received {:.1} Mbit/s, limit 20",
        sent_bps / 1e6,
        got_bps / 1e6
    );
    // A local sender is held back by its socket buffer (paced packets stay
    // charged to it in fq), so the excess mostly never leaves iperf3; what
    // the limiter did shows as delayed packets.
    assert!(packets(&d, "thin", "bandwidth_limit", "delayed") > 0);
}

#[test]
fn partition_cuts_both_directions_and_connect_fails_fast() {
    let d = Daemon::start();
    let link = Link::new("part");
    // On an interface: the far side's address, both directions.
    d.inject(json!({
        "name": "cut",
        "target": {"interface": "eth0", "netns": link.a.name},
        "fault": {"type": "partition", "dst": B_IP},
    }));
    assert_eq!(ping(&link.a, B_IP, 3, "0.2").1, 0, "a -> b must be cut");
    assert_eq!(ping(&link.b, A_IP, 3, "0.2").1, 0, "b -> a must be cut");
    assert_eq!(
        ping_all(&link.a, B_IP6, 3, "0.2").received,
        3,
        "other addresses pass"
    );
    d.call("remove", json!({"name": "cut"})).unwrap();
    assert_eq!(ping_all(&link.a, B_IP, 3, "0.2").received, 3);

    // On a cgroup: its packets to the peer are dropped and connect()
    // fails at once with the chosen errno.
    let cg = TestCgroup::new("partition");
    d.inject(json!({
        "name": "cut-cg",
        "target": {"cgroup": cg.rel},
        "fault": {"type": "partition", "dst": B_IP, "errno": "EHOSTUNREACH"},
    }));
    let out = cg.run(
        "ip",
        &[
            "netns",
            "exec",
            &link.a.name,
            "python3",
            helper("connect.py").to_str().unwrap(),
            "tcp",
            B_IP,
            "80",
            "3",
        ],
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("connect.py output");
    assert_eq!(v["errors"]["EHOSTUNREACH"], 3, "{v}");
    let rx = udp_receiver(&link.b, 7300, IDLE);
    udp_send_in(&cg, &link.a, B_IP, 7300, 100, 10_000);
    udp_send(&link.a, B_IP, 7300, 100, 10_000);
    let r = finish_udp(rx);
    assert_eq!(
        r.received, 100,
        "only the cgroup's datagrams are cut: {r:?}"
    );
}

#[test]
fn cgroup_target_hits_only_that_container_on_a_shared_bridge() {
    let d = Daemon::start();
    let br = Bridge::new("cg", 2);
    let parent = TestCgroup::new("pods");
    let (pod_a, pod_b) = (parent.child("a"), parent.child("b"));
    d.inject(json!({
        "name": "pod-a-loss",
        "target": {"cgroup": pod_a.rel},
        "fault": {"type": "packet_drop", "direction": "egress", "protocol": "udp"},
        "trigger": {"probability": 0.5},
    }));
    let rx = udp_receiver(&br.hub, 7400, BETWEEN_SENDERS);
    udp_send_in(&pod_a, &br.containers[0], HUB_IP, 7400, 4_000, 20_000);
    udp_send_in(&pod_b, &br.containers[1], HUB_IP, 7400, 4_000, 20_000);
    let r = finish_udp(rx);
    let from = |ip: &str| r.from_source(ip);
    assert_eq!(
        from("10.98.0.3"),
        4_000,
        "the neighbour is untouched: {r:?}"
    );
    assert_binomial(4_000 - from("10.98.0.2"), 4_000, 0.5, "pod a dropped");
    assert_eq!(
        packets(&d, "pod-a-loss", "packet_drop", "dropped"),
        4_000 - from("10.98.0.2")
    );
}

#[test]
fn many_prefixed_faults_on_one_interface_match_only_their_prefix() {
    // More than four prefixed rules: the LPM tries prune candidates first.
    let d = Daemon::start();
    let link = Link::new("lpm");
    for (i, dst) in [
        "10.1.0.0/16",
        "10.2.0.0/16",
        "10.99.0.0/30",
        "fd00::/8",
        "192.0.2.0/24",
        "10.99.0.2",
    ]
    .iter()
    .enumerate()
    {
        d.inject(json!({
            "name": format!("lpm{i}"),
            "target": {"interface": "eth0", "netns": link.a.name},
            "fault": {"type": "packet_drop", "protocol": "udp", "dst": dst, "dst_port": 7500 + i},
        }));
    }
    // Port 7505 with dst 10.99.0.2: rule lpm5 (a /32) matches; port 7502
    // matches lpm2 (10.99.0.0/30 covers .2); port 7500 (10.1.0.0/16) not.
    let rx: Vec<_> = [7500u16, 7502, 7505]
        .iter()
        .map(|p| udp_receiver_within(&link.b, *p, IDLE, Duration::from_secs(15)))
        .collect();
    for p in [7500u16, 7502, 7505] {
        udp_send(&link.a, B_IP, p, 200, 20_000);
    }
    let got: Vec<u64> = rx.into_iter().map(|r| finish_udp(r).received).collect();
    assert_eq!(got, vec![200, 0, 0]);
    assert_eq!(packets(&d, "lpm2", "packet_drop", "dropped"), 200);
    assert_eq!(packets(&d, "lpm5", "packet_drop", "dropped"), 200);
    assert_eq!(packets(&d, "lpm0", "packet_drop", "evaluated"), 0);
}

#[test]
fn many_port_faults_on_one_interface_hit_only_their_port() {
    // More than four single-port rules: the port index picks candidates.
    let d = Daemon::start();
    let link = Link::new("ports");
    for i in 0..10u16 {
        d.inject(json!({
            "name": format!("port{i}"),
            "target": {"interface": "eth0", "netns": link.a.name},
            "fault": {"type": "packet_drop", "protocol": "udp", "dst_port": 7600 + i},
        }));
    }
    d.inject(json!({
        "name": "range",
        "target": {"interface": "eth0", "netns": link.a.name},
        "fault": {"type": "packet_duplicate", "protocol": "udp", "dst_port": "7603-7620"},
    }));
    let rx: Vec<_> = [7603u16, 7615, 7650]
        .iter()
        .map(|p| udp_receiver_within(&link.b, *p, IDLE, Duration::from_secs(15)))
        .collect();
    for p in [7603u16, 7615, 7650] {
        udp_send(&link.a, B_IP, p, 100, 20_000);
    }
    let got: Vec<(u64, u64)> = rx
        .into_iter()
        .map(|r| {
            let r = finish_udp(r);
            (r.received, r.duplicates)
        })
        .collect();
    // 7603: dropped by port3 (drops end the walk before the duplicate);
    // 7615: only the range duplicates it; 7650: untouched.
    assert_eq!(got, vec![(0, 0), (200, 100), (100, 0)]);
    assert_eq!(packets(&d, "port3", "packet_drop", "dropped"), 100);
    assert_eq!(packets(&d, "port4", "packet_drop", "evaluated"), 0);
}

/// Waits until process `pid` lives in network namespace `ns`.
fn wait_in_netns(pid: u32, ns: &Netns) {
    use std::os::unix::fs::MetadataExt as _;
    let want = std::fs::metadata(ns.path()).unwrap().ino();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .map(|m| m.ino())
        .ok()
        != Some(want)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "pid {pid} never entered {}",
            ns.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn container_cgroup_takes_rewrites_and_delay_on_its_own_device() {
    let d = Daemon::start();
    let br = Bridge::new("ctr", 2);
    let parent = TestCgroup::new("ctrs");
    let (pod_a, pod_b, host_svc) = (parent.child("a"), parent.child("b"), parent.child("svc"));
    // Pod a's long-lived process lives in its own namespace, as a
    // container's does; the service lives in the daemon's.
    let c0 = &br.containers[0];
    let mut keeper = pod_a.spawn("ip", &["netns", "exec", &c0.name, "sleep", "600"]);
    wait_in_netns(keeper.id(), c0);
    let mut svc = host_svc.spawn("sleep", &["600"]);
    let before = (c0.attachments("eth0"), br.containers[1].attachments("eth0"));

    d.inject(json!({
        "name": "pod-a-dup",
        "target": {"cgroup": pod_a.rel},
        "fault": {"type": "packet_duplicate", "direction": "egress", "protocol": "udp"},
    }));
    assert!(c0.attachments("eth0").has_ours(), "on pod a's own device");
    assert_eq!(br.containers[1].attachments("eth0"), before.1);
    let got = d.call("get", json!({"name": "pod-a-dup"})).unwrap();
    assert!(
        got["cgroup"]["path"]
            .as_str()
            .is_some_and(|p| p.ends_with(&pod_a.rel)),
        "{got}"
    );
    assert_eq!(got["interface"]["interface"], "eth0", "{got}");
    assert!(
        got["interface"]["label"]
            .as_str()
            .is_some_and(|l| l.contains(&format!("/proc/{}/ns/net", keeper.id()))),
        "{got}"
    );

    let rx = udp_receiver(&br.hub, 7500, BETWEEN_SENDERS);
    udp_send_in(&pod_a, c0, HUB_IP, 7500, 1_000, 10_000);
    udp_send_in(&pod_b, &br.containers[1], HUB_IP, 7500, 1_000, 10_000);
    let r = finish_udp(rx);
    let from = |ip: &str| r.from_source(ip);
    assert_eq!(
        from("10.98.0.2"),
        2_000,
        "every datagram of pod a twice: {r:?}"
    );
    assert_eq!(
        from("10.98.0.3"),
        1_000,
        "the neighbour is untouched: {r:?}"
    );
    assert_eq!(
        packets(&d, "pod-a-dup", "packet_duplicate", "duplicated"),
        1_000
    );

    let delay = json!({
        "name": "pod-a-slow",
        "target": {"cgroup": pod_a.rel},
        "fault": {"type": "packet_delay", "delay": "50ms", "protocol": "icmp", "install_fq": true},
    });
    if d.has_backend("sch_fq") {
        d.inject(delay);
        let slow = ping_all(c0, HUB_IP, 10, "0.1");
        let fast = ping_all(&br.containers[1], HUB_IP, 10, "0.1");
        assert_eq!(slow.received, 10, "{slow:?}");
        // Every delayed reply takes 50 ms or more; medians judge the rest,
        // as a TCG guest stalls one ping now and then (means did not).
        assert!(
            slow.rtts.iter().all(|ms| *ms >= 45.0) && median(&slow.rtts) < 90.0,
            "pod a's RTTs {:?} ms",
            slow.rtts
        );
        assert!(median(&fast.rtts) < 20.0, "pod b's RTTs {:?} ms", fast.rtts);
        d.call("remove", json!({"name": "pod-a-slow"})).unwrap();
    } else {
        assert_eq!(d.error_code("inject", delay), "unsupported_kernel");
    }
    d.call("remove", json!({"name": "pod-a-dup"})).unwrap();
    assert_eq!(
        (
            c0.attachments_when("eth0", |a| *a == before.0),
            br.containers[1].attachments("eth0")
        ),
        before,
        "removal restores pod a's device"
    );

    // A cgroup in the daemon's own namespace has no device of its own.
    let err = d
        .client()
        .call(
            "inject",
            json!({"target": {"cgroup": host_svc.rel}, "fault": {"type": "packet_corrupt"}}),
        )
        .unwrap_err();
    let err = err.downcast_ref::<ErrorResponse>().unwrap();
    assert_eq!(err.code, "unsupported_target");
    assert!(
        err.message.contains("daemon's network namespace"),
        "{}",
        err.message
    );
    for child in [&mut keeper, &mut svc] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A cgroup partition is two installs (cgroup_skb rules, then a connect
/// rule); when the second is refused, the first is undone with it.
#[test]
fn a_refused_partition_leaves_nothing_on_the_cgroup() {
    let d = Daemon::start();
    let cg = TestCgroup::new("part-rollback");
    d.inject(json!({
        "name": "blocker",
        "target": {"cgroup": cg.rel},
        "fault": {"type": "connect_error", "errno": "EPERM"},
    }));
    let connect_only = cg.bpf_programs();
    assert!(connect_only.contains("connect4"), "{connect_only}");
    let err = d.error_code(
        "inject",
        json!({"name": "cut", "target": {"cgroup": cg.rel},
               "fault": {"type": "partition", "dst": "10.0.0.0/8"}}),
    );
    assert_eq!(err, "conflict");
    assert_eq!(
        cg.bpf_programs(),
        connect_only,
        "the partition's cgroup_skb programs must be gone again"
    );
    let list = d.call("list", json!(null)).unwrap();
    assert_eq!(list["faults"].as_array().unwrap().len(), 1, "{list}");
    d.call("remove", json!({"name": "blocker"})).unwrap();
    assert_eq!(cg.bpf_programs(), "");
    // Nothing of the refused install blocks a later one.
    d.inject(json!({"name": "cut", "target": {"cgroup": cg.rel},
                    "fault": {"type": "partition", "dst": "10.0.0.0/8"}}));
    let both = cg.bpf_programs();
    assert!(
        both.contains("packet_cgroup") && both.contains("connect4"),
        "{both}"
    );
}
