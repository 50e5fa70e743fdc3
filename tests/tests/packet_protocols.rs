//! The `protocol` filter beyond TCP, UDP and ICMP: the protocols NFV runs
//! (VRRP, SCTP, GRE, ESP, OSPF), by name and by number, on IPv4 and on
//! IPv6 past extension headers, at every hook. The frames are built by
//! hand (tests/helpers/frames.py) so that no kernel module for SCTP or GRE
//! is needed: the host kernel has neither.

use std::{collections::HashMap, process::Child, time::Duration};

use injectord_tests::{net::*, *};
use serde_json::{Value, json};

const IDLE: Duration = Duration::from_millis(1500);

/// One flow of hand-built frames: what `frames.py send` takes.
fn flow(tag: &str, src: &str, dst: &str, proto: u8, ext: &[&str], dport: u16) -> Value {
    json!({"tag": tag, "src": src, "dst": dst, "proto": proto, "ext": ext,
           "sport": 40000, "dport": dport, "count": 50})
}

/// Starts the frame counter on `ns`'s eth0.
fn counter(ns: &Netns) -> Child {
    counter_idle(ns, IDLE)
}

/// A frame counter that stops after `idle` without a frame, or at a frame
/// tagged "end".
fn counter_idle(ns: &Netns, idle: Duration) -> Child {
    let mut child = ns.spawn(
        "python3",
        &[
            helper("frames.py").to_str().expect("utf-8"),
            "recv",
            "eth0",
            &idle.as_secs_f64().to_string(),
        ],
    );
    wait_line(&mut child, "ready").expect("frame counter ready");
    child
}

/// Frames counted per tag.
fn counted(child: Child) -> HashMap<String, u64> {
    let out = child.wait_with_output().expect("frame counter");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "frames.py output {:?} / {:?}: {e}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
        .collect()
}

/// Sends `flows` from `from`'s eth0 to `to`'s eth0 and returns what `to`
/// counted.
fn exchange(from: &Netns, to: &Netns, flows: &[Value]) -> HashMap<String, u64> {
    let rx = counter(to);
    from.run_ok(
        "python3",
        &[
            helper("frames.py").to_str().expect("utf-8"),
            "send",
            "eth0",
            &to.mac("eth0"),
            &Value::from(flows.to_vec()).to_string(),
        ],
    );
    counted(rx)
}

/// Packets a fault acted on (`outcome`), from /metrics.
fn packets(d: &Daemon, name: &str, kind: &str, outcome: &str) -> u64 {
    let key = format!(
        "injectord_packets_total{{fault=\"{name}\",type=\"{kind}\",outcome=\"{outcome}\"}}"
    );
    d.metrics().get(&key).copied().unwrap_or(0.0) as u64
}

/// Each flow's count, against what it should be.
fn assert_counts(got: &HashMap<String, u64>, want: &[(&str, u64)]) {
    let wrong: Vec<String> = want
        .iter()
        .filter(|(tag, n)| got.get(*tag).copied().unwrap_or(0) != *n)
        .map(|(tag, n)| format!("{tag}: {} (want {n})", got.get(*tag).copied().unwrap_or(0)))
        .collect();
    assert!(wrong.is_empty(), "{wrong:?}; all counts: {got:?}");
}

#[test]
fn protocols_by_name_and_number_hit_only_their_packets() {
    let d = Daemon::start();
    let link = Link::new("proto");
    let on_a = json!({"interface": "eth0", "netns": link.a.name});
    d.inject(json!({"name": "no-vrrp", "target": on_a,
                    "fault": {"type": "packet_drop", "protocol": "vrrp"}}));
    // S1AP: SCTP to 36412, by number.
    d.inject(json!({"name": "no-s1ap", "target": on_a,
                    "fault": {"type": "packet_drop", "protocol": 132, "dst_port": 36412}}));
    // A spec reads back as written: a name as the name, a number as the
    // number.
    let proto_of = |name: &str| {
        d.call("get", json!({"name": name})).unwrap()["spec"]["fault"]["protocol"].clone()
    };
    assert_eq!(proto_of("no-vrrp"), json!("vrrp"));
    assert_eq!(proto_of("no-s1ap"), json!(132));

    let (a4, b4, a6) = (A_IP, B_IP, A_IP6);
    let all_ext = ["hop", "dst", "rt", "frag0"];
    let flows = [
        flow("vrrp4", a4, "224.0.0.18", 112, &[], 0),
        flow("vrrp6", a6, "ff02::12", 112, &["hop"], 0),
        // Five extension headers: one more than the parser walks.
        flow(
            "vrrp6-deep",
            a6,
            "ff02::12",
            112,
            &["hop", "dst", "rt", "frag0", "dst"],
            0,
        ),
        flow("s1ap4", a4, b4, 132, &[], 36412),
        flow("s1ap6", a6, B_IP6, 132, &all_ext, 36412),
        // A later fragment has no SCTP header, so no ports to match.
        flow("s1ap6-later", a6, B_IP6, 132, &["frag1"], 36412),
        flow("diameter4", a4, b4, 132, &[], 3868),
        flow("udp4", a4, b4, 17, &[], 36412),
        flow("tcp6", a6, B_IP6, 6, &["dst"], 36412),
        flow("gre4", a4, b4, 47, &[], 0),
        flow("esp6", a6, B_IP6, 50, &["hop"], 0),
        flow("ospf4", a4, "224.0.0.5", 89, &[], 0),
    ];
    let got = exchange(&link.a, &link.b, &flows);
    assert_counts(
        &got,
        &[
            ("vrrp4", 0),
            ("vrrp6", 0),
            ("vrrp6-deep", 50),
            ("s1ap4", 0),
            ("s1ap6", 0),
            ("s1ap6-later", 50),
            ("diameter4", 50),
            ("udp4", 50),
            ("tcp6", 50),
            ("gre4", 50),
            ("esp6", 50),
            ("ospf4", 50),
        ],
    );
    assert_eq!(packets(&d, "no-vrrp", "packet_drop", "dropped"), 100);
    assert_eq!(packets(&d, "no-s1ap", "packet_drop", "dropped"), 100);
}

/// At ingress a drop runs in XDP and a duplicate in TC: both parse alike.
#[test]
fn ingress_filters_gre_at_xdp_and_esp_at_tc() {
    let d = Daemon::start();
    let link = Link::new("proto-in");
    let on_b = json!({"interface": "eth0", "netns": link.b.name});
    d.inject(json!({"name": "no-gre", "target": on_b,
                    "fault": {"type": "packet_drop", "direction": "ingress", "protocol": "gre", "hook": "xdp"}}));
    d.inject(json!({"name": "esp-twice", "target": on_b,
                    "fault": {"type": "packet_duplicate", "direction": "ingress", "protocol": "ESP"}}));
    let flows = [
        flow("gre4", A_IP, B_IP, 47, &[], 0),
        flow("gre6", A_IP6, B_IP6, 47, &["dst", "frag0"], 0),
        flow("esp4", A_IP, B_IP, 50, &[], 0),
        flow("esp6", A_IP6, B_IP6, 50, &["rt"], 0),
        flow("ah4", A_IP, B_IP, 51, &[], 0),
        flow("sctp6", A_IP6, B_IP6, 132, &[], 2905),
    ];
    // The counter sits between XDP and TC: what XDP drops never reaches
    // it, and a copy TC makes passes it a second time.
    let got = exchange(&link.a, &link.b, &flows);
    assert_counts(
        &got,
        &[
            ("gre4", 0),
            ("gre6", 0),
            ("esp4", 100),
            ("esp6", 100),
            ("ah4", 50),
            ("sctp6", 50),
        ],
    );
    assert_eq!(packets(&d, "no-gre", "packet_drop", "dropped"), 100);
    assert_eq!(
        packets(&d, "esp-twice", "packet_duplicate", "duplicated"),
        100
    );
}

/// A cgroup's raw sockets (what an OSPF or VRRP daemon uses) are filtered
/// by protocol number in cgroup_skb; the rest of the cgroup's traffic and
/// other processes' traffic pass.
#[test]
fn cgroup_rule_by_number_hits_that_protocol_of_that_cgroup() {
    let d = Daemon::start();
    let link = Link::new("proto-cg");
    let cg = TestCgroup::new("proto-cg");
    d.inject(json!({"name": "no-ospf", "target": {"cgroup": cg.rel},
                    "fault": {"type": "packet_drop", "direction": "both", "protocol": 89}}));
    // Four senders, each a new python process: under load one can take
    // longer to start than any idle wait, so the last one ends the count.
    let rx = counter_idle(&link.b, Duration::from_secs(60));
    let raw = |cg: Option<&TestCgroup>, dst: &str, proto: &str, tag: &str, n: &str| {
        let frames = helper("frames.py");
        let args = [
            "netns",
            "exec",
            &link.a.name,
            "python3",
            frames.to_str().expect("utf-8"),
            "raw",
            dst,
            proto,
            tag,
            n,
        ];
        let out = match cg {
            Some(cg) => cg.run("ip", &args),
            None => std::process::Command::new("ip")
                .args(args)
                .output()
                .expect("ip netns exec"),
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    raw(Some(&cg), B_IP, "89", "ospf4", "50");
    raw(Some(&cg), B_IP6, "89", "ospf6", "50");
    raw(Some(&cg), B_IP, "47", "gre4", "50");
    raw(None, B_IP, "89", "ospf4-other", "50");
    raw(None, B_IP, "47", "end", "1");
    assert_counts(
        &counted(rx),
        &[
            ("ospf4", 0),
            ("ospf6", 0),
            ("gre4", 50),
            ("ospf4-other", 50),
        ],
    );
    assert_eq!(packets(&d, "no-ospf", "packet_drop", "dropped"), 100);
}

#[test]
fn protocol_values_that_no_packet_carries_are_refused() {
    let d = Daemon::start();
    let cg = TestCgroup::new("proto-bad");
    let refuse = |fault: Value| {
        let err = d
            .client()
            .call(
                "inject",
                json!({"target": {"cgroup": cg.rel}, "fault": fault}),
            )
            .unwrap_err();
        let err = err.downcast_ref::<ErrorResponse>().expect("error response");
        let field = err.data["field"].as_str().unwrap_or_default().to_string();
        (err.code.clone(), field, err.message.clone())
    };
    for bad in [json!("carrier-pigeon"), json!(256), json!(44), json!(-1)] {
        let (code, field, message) = refuse(json!({"type": "packet_drop", "protocol": bad}));
        assert_eq!(
            (code.as_str(), field.as_str()),
            ("invalid_value", "fault.protocol"),
            "{bad}: {message}"
        );
    }
    // Ports only exist on TCP, UDP and SCTP.
    let (code, field, message) =
        refuse(json!({"type": "packet_drop", "protocol": "vrrp", "dst_port": 80}));
    assert_eq!(
        (code.as_str(), field.as_str()),
        ("invalid_value", "fault.dst_port"),
        "{message}"
    );
    assert!(message.contains("VRRP has no ports"), "{message}");
}
