//! Every spec of the fault library (`faultspecs/`), run as its file says
//! against the workload its FMEA row in `faultspecs/README.md` names, with
//! only the target replaced by the test's own (cgroup, container,
//! interface), checking the effect the row documents. Delay and rate specs
//! need sch_fq: on a kernel without it the test asserts the refusal
//! instead.

use std::{fs, path::Path, time::Duration};

use injectord_tests::{net::*, workload::*, *};
use serde_json::{Value, json};

const IDLE: Duration = Duration::from_millis(1500);

/// A spec file of the library, with its target replaced.
fn spec(file: &str, target: Value) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../faultspecs")
        .join(file);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut v: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    v["target"] = target;
    v
}

/// The spec's own fault name.
fn name_of(spec: &Value) -> String {
    spec["name"]
        .as_str()
        .expect("library specs are named")
        .to_string()
}

/// On a kernel without sch_fq, a delay or rate spec must be refused,
/// naming it; returns whether the kernel has it.
fn fq_or_refused(d: &Daemon, spec: &Value) -> bool {
    if d.has_backend("sch_fq") {
        return true;
    }
    let err = d.client().call("inject", spec.clone()).unwrap_err();
    let err = err.downcast_ref::<ErrorResponse>().expect("error response");
    assert_eq!(err.code, "unsupported_kernel", "{}", err.message);
    assert!(err.message.contains("sch_fq"), "{}", err.message);
    println!("refused as expected: {}", err.message);
    false
}

/// Packets a fault acted on (`outcome`), from /metrics.
fn packets(d: &Daemon, name: &str, kind: &str, outcome: &str) -> u64 {
    let key = format!(
        "injectord_packets_total{{fault=\"{name}\",type=\"{kind}\",outcome=\"{outcome}\"}}"
    );
    d.metrics().get(&key).copied().unwrap_or(0.0) as u64
}

#[test]
fn every_library_spec_has_a_test_here() {
    let source = include_str!("faultspecs.rs");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../faultspecs");
    let mut untested = Vec::new();
    let mut seen = 0;
    for area in fs::read_dir(&root).unwrap().flatten() {
        if !area.path().is_dir() {
            continue;
        }
        for file in fs::read_dir(area.path()).unwrap().flatten() {
            let rel = format!(
                "{}/{}",
                area.file_name().to_string_lossy(),
                file.file_name().to_string_lossy()
            );
            seen += 1;
            if !source.contains(&format!("\"{rel}\"")) {
                untested.push(rel);
            }
        }
    }
    assert!(seen >= 13, "only {seen} specs in {}", root.display());
    assert!(untested.is_empty(), "specs without a test: {untested:?}");
}

/// Split brain: keepalived's VRRP adverts (to 224.0.0.18) dropped both
/// ways on one node. Each node stops hearing the other, so both hold the
/// virtual address as MASTER; once the fault goes, the higher priority
/// wins back and the other returns to BACKUP.
#[test]
fn split_brain_peer_makes_both_keepalived_nodes_master() {
    let d = Daemon::start();
    let link = Link::new("vrrp");
    let (cg_a, cg_b) = (
        TestCgroup::new("keepalived-a"),
        TestCgroup::new("keepalived-b"),
    );
    let vip = "10.99.0.100";
    let advert = Duration::from_millis(200);
    let _a = keepalived(&link.a, &cg_a, 150, vip, advert);
    let _b = keepalived(&link.b, &cg_b, 100, vip, advert);
    // VRRPv3's master-down interval is three adverts plus a skew of under
    // one: a few adverts' time settles any change.
    let settle = Duration::from_secs(10);
    let one_master = || holds(&link.a, vip) && !holds(&link.b, vip);
    wait_until(settle, "a MASTER, b BACKUP", one_master);
    std::thread::sleep(advert * 5);
    assert!(one_master(), "the pair must be stable before the fault");

    let spec = spec("network/split-brain-peer.json", json!({"cgroup": cg_a.rel}));
    let id = d.inject(spec.clone());
    wait_until(settle, "both nodes MASTER (split brain)", || {
        holds(&link.a, vip) && holds(&link.b, vip)
    });
    std::thread::sleep(advert * 5);
    assert!(
        holds(&link.a, vip) && holds(&link.b, vip),
        "the split must last while the fault does"
    );
    let dropped = packets(&d, &name_of(&spec), "packet_drop", "dropped");
    assert!(dropped > 0, "adverts dropped: {dropped}");

    d.call("remove", json!({"id": id})).unwrap();
    wait_until(settle, "one MASTER again after removal", one_master);
}

/// connect.py in `ns`, inside `cg` if given: `{"ok": n, "errors": {...},
/// "pattern": "..X"}`.
fn connects(cg: Option<&TestCgroup>, ns: &Netns, host: &str, port: u16, count: u32) -> Value {
    let py = helper("connect.py");
    let (port, count) = (port.to_string(), count.to_string());
    let args = [
        "netns",
        "exec",
        &ns.name,
        "python3",
        py.to_str().expect("utf-8"),
        "tcp",
        host,
        &port,
        &count,
    ];
    let out = match cg {
        Some(cg) => cg.run("ip", &args),
        None => std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("ip netns exec"),
    };
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "connect.py: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `program args...` in `ns` inside `cg`; its stdout, and whether it
/// succeeded.
fn run_in(cg: &TestCgroup, ns: &Netns, program: &str, args: &[&str]) -> (String, bool) {
    let mut full = vec!["netns", "exec", &ns.name, program];
    full.extend_from_slice(args);
    let out = cg.run("ip", &full);
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.success(),
    )
}

/// A 64-hex-digit container id unique to this run.
fn container_id() -> String {
    let mut b = [0u8; 32];
    std::io::Read::read_exact(&mut fs::File::open("/dev/urandom").unwrap(), &mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Waits until process `pid` lives in network namespace `ns`.
fn wait_in_netns(pid: u32, ns: &Netns) {
    use std::os::unix::fs::MetadataExt as _;
    let want = fs::metadata(ns.path()).unwrap().ino();
    wait_until(Duration::from_secs(10), "process in its namespace", || {
        fs::metadata(format!("/proc/{pid}/ns/net"))
            .map(|m| m.ino())
            .ok()
            == Some(want)
    });
}

/// A backend refuses connections: the VNF's connects to 10.0.0.0/8:5432
/// fail at once with ECONNREFUSED, while a replica outside that range
/// still answers it (failover works) and other cgroups reach the database.
#[test]
fn dependency_refused_refuses_only_the_vnfs_database_connects() {
    let d = Daemon::start();
    let link = Link::new("db");
    // nginx stands in for the database: any listener on 5432 does.
    let _db = nginx(&link.b, 5432);
    let (vnf, other) = (TestCgroup::new("db-client"), TestCgroup::new("db-other"));
    let spec = spec(
        "network/dependency-refused.json",
        json!({"cgroup": vnf.rel}),
    );
    d.inject(spec.clone());

    let refused = connects(Some(&vnf), &link.a, B_IP, 5432, 20);
    assert_eq!(refused["errors"]["ECONNREFUSED"], 20, "{refused}");
    let replica = connects(Some(&vnf), &link.a, B_IP6, 5432, 20);
    assert_eq!(replica["ok"], 20, "the replica outside 10/8: {replica}");
    let others = connects(Some(&other), &link.a, B_IP, 5432, 20);
    assert_eq!(others["ok"], 20, "another cgroup: {others}");
    assert_eq!(d.counters(&name_of(&spec), "connect_error").1, 20);
}

/// DNS unreachable: a resolver in the VNF's cgroup cannot reach dnsmasq
/// (its connect() to port 53 fails with ENETUNREACH, and the C library's
/// lookup fails at once), while another cgroup resolves through it.
#[test]
fn dns_unreachable_fails_the_vnfs_lookups_only() {
    let d = Daemon::start();
    let link = Link::new("dns");
    let _dns = dnsmasq(&link.b, B_IP, "db.vnf.test", "10.99.0.50");
    let _conf = ResolvConf::new(&link.a, B_IP);
    let (vnf, other) = (TestCgroup::new("dns-vnf"), TestCgroup::new("dns-other"));
    let spec = spec("network/dns-unreachable.json", json!({"cgroup": vnf.rel}));
    d.inject(spec.clone());

    let dns = helper("dns.py");
    let resolve = |cg: &TestCgroup| -> Value {
        let (out, _) = run_in(
            cg,
            &link.a,
            "python3",
            &[dns.to_str().unwrap(), "db.vnf.test", B_IP],
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("dns.py: {e}: {out}"))
    };
    let failed = resolve(&vnf);
    assert_eq!(failed["query"]["errno"], "ENETUNREACH", "{failed}");
    assert!(failed["getaddrinfo"]["error"].is_string(), "{failed}");
    let resolved = resolve(&other);
    assert_eq!(resolved["query"]["ok"], "10.99.0.50", "{resolved}");
    assert_eq!(resolved["getaddrinfo"]["ok"], "10.99.0.50", "{resolved}");
    // Our query and at least one of the C library's.
    assert!(d.counters(&name_of(&spec), "connect_error").1 >= 2);
}

/// A flaky upstream resets 30% of connects to :8443. haproxy in the VNF's
/// cgroup retries them (`retries 5`), so its clients see no errors while
/// activations / evaluations stays near 0.3.
#[test]
fn flaky_upstream_is_absorbed_by_haproxy_retries() {
    let d = Daemon::start();
    let link = Link::new("flaky");
    let _upstream = nginx(&link.b, 8443);
    let cg = TestCgroup::new("haproxy");
    let _lb = haproxy(&link.a, &cg, 8080, &format!("{B_IP}:8443"), 5);
    let spec = spec(
        "network/flaky-upstream-30pct.json",
        json!({"cgroup": cg.rel}),
    );
    d.inject(spec.clone());

    let requests = 100;
    let mut args = vec!["-s", "-w", "%{http_code}\n", "--max-time", "10"];
    for _ in 0..requests {
        args.extend(["-o", "/dev/null", "http://127.0.0.1:8080/"]);
    }
    let out = link.a.run("curl", &args);
    let codes = String::from_utf8_lossy(&out.stdout).into_owned();
    let ok = codes.lines().filter(|c| *c == "200").count();
    // Six attempts all reset: 0.3^6 per request.
    assert!(
        ok >= requests - 1,
        "{ok} of {requests} requests answered: {codes}"
    );
    let (evaluations, activations) = d.counters(&name_of(&spec), "connect_error");
    assert!(evaluations >= requests as u64, "{evaluations} connects");
    assert_binomial(activations, evaluations, 0.3, "connects reset");
}

/// Connection attempts time out in a burst: the container's first 50
/// connects fail with ETIMEDOUT, then the fault stops by itself and shows
/// as exhausted.
#[test]
fn connect_timeout_burst_stops_after_fifty() {
    let d = Daemon::start();
    let link = Link::new("burst");
    let _web = nginx(&link.b, 8080);
    let root = TestCgroup::new("burst");
    let id = container_id();
    let ctr = root.child(&format!("system.slice/docker-{id}.scope"));
    let spec = spec(
        "network/connect-timeout-burst.json",
        json!({"container": &id[..12]}),
    );
    let fault = d.inject(spec);

    let c = connects(Some(&ctr), &link.a, B_IP, 8080, 60);
    assert_eq!(c["errors"]["ETIMEDOUT"], 50, "{c}");
    assert_eq!(
        c["pattern"],
        format!("{}{}", "X".repeat(50), ".".repeat(10))
    );
    let view = d.call("get", json!({"id": fault})).unwrap();
    assert_eq!(view["state"], "exhausted", "{view}");
    assert_eq!(view["activations"], 50, "{view}");
}

/// A broken IPv6 path: every IPv6 connect fails with EHOSTUNREACH, so a
/// dual-stack client (curl's happy eyeballs) falls back to IPv4 at once;
/// IPv4 is untouched.
#[test]
fn ipv6_blackhole_sends_happy_eyeballs_to_ipv4() {
    let d = Daemon::start();
    let link = Link::new("v6hole");
    let _web = nginx(&link.b, 8080);
    let app = TestCgroup::new("dual-stack");
    let spec = spec("network/ipv6-blackhole.json", json!({"cgroup": app.rel}));
    d.inject(spec.clone());

    let resolve = format!("dual.vnf.test:8080:[{B_IP6}],{B_IP}");
    let curl = |extra: &[&str]| {
        let mut args = vec![
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{remote_ip}",
            "--max-time",
            "5",
            "--resolve",
            &resolve,
        ];
        args.extend_from_slice(extra);
        args.push("http://dual.vnf.test:8080/");
        run_in(&app, &link.a, "curl", &args)
    };
    assert_eq!(curl(&[]).0, format!("200 {B_IP}"), "falls back to IPv4");
    let (out, ok) = curl(&["-6"]);
    assert!(!ok, "IPv6 alone must fail: {out}");
    let (_, v6_attempts) = d.counters(&name_of(&spec), "connect_error");
    assert!(v6_attempts >= 2, "{v6_attempts}");
    let v4 = connects(Some(&app), &link.a, B_IP, 8080, 20);
    assert_eq!(v4["ok"], 20, "{v4}");
    assert_eq!(
        d.counters(&name_of(&spec), "connect_error").1,
        v6_attempts,
        "IPv4 connects never match"
    );
}

/// A lossy link: 1% of packets lost in each direction (TC at egress, XDP
/// at ingress), silently; TCP recovers.
#[test]
fn link_loss_1pct_loses_one_percent_each_way_and_tcp_recovers() {
    let d = Daemon::start();
    let link = Link::new("loss");
    let web = nginx(&link.b, 8080);
    serve_file(&web, "blob", 2 << 20);
    let spec = spec(
        "network/link-loss-1pct.json",
        json!({"interface": "eth0", "netns": link.a.name}),
    );
    d.inject(spec.clone());

    let n = 20_000;
    let rx = udp_receiver(&link.b, 7001, IDLE);
    udp_send(&link.a, B_IP, 7001, n, 20_000);
    assert_binomial(n - finish_udp(rx).received, n, 0.01, "lost a -> b");
    let rx = udp_receiver(&link.a, 7002, IDLE);
    udp_send(&link.b, A_IP, 7002, n, 20_000);
    assert_binomial(n - finish_udp(rx).received, n, 0.01, "lost b -> a");

    let size = link.a.run_ok(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            "--max-time",
            "60",
            &format!("http://{B_IP}:8080/blob"),
        ],
    );
    assert_eq!(size, (2 << 20).to_string(), "the download completes");
    let name = name_of(&spec);
    let evaluated = packets(&d, &name, "packet_drop", "evaluated");
    let dropped = packets(&d, &name, "packet_drop", "dropped");
    assert_binomial(dropped, evaluated, 0.01, "dropped / evaluated");
}

/// A long-haul WAN path: 50 ms ± 10 ms (normal) on the way out.
#[test]
fn wan_latency_50ms_delays_the_way_out() {
    let d = Daemon::start();
    let link = Link::new("wan");
    let spec = spec(
        "network/wan-latency-50ms.json",
        json!({"interface": "eth0", "netns": link.a.name}),
    );
    if !fq_or_refused(&d, &spec) {
        return;
    }
    let (_, _, base, _) = ping(&link.a, B_IP, 10, "0.05");
    d.inject(spec.clone());
    let (tx, rx, avg, mdev) = ping(&link.a, B_IP, 40, "0.05");
    assert_eq!(tx, rx, "delay must not lose packets");
    // sigma 10 ms over 40 samples: the mean within ±6 ms (4 sigma).
    let added = avg - base;
    assert!((44.0..=56.0).contains(&added), "RTT grew by {added:.1} ms");
    assert!(
        mdev > 4.0,
        "normal jitter must spread RTTs (mdev {mdev} ms)"
    );
    let m = d.metrics();
    let series = |s: &str| {
        m.get(&format!(
            "injectord_injected_delay_seconds_{s}{{fault=\"{}\",type=\"packet_delay\"}}",
            name_of(&spec)
        ))
        .copied()
        .unwrap_or(0.0)
    };
    let (count, sum) = (series("count"), series("sum"));
    assert!(count >= 40.0, "histogram count {count}");
    let mean = sum / count;
    assert!(
        (0.044..=0.056).contains(&mean),
        "mean injected delay {mean} s"
    );
}

/// A thin uplink: egress paced to 10 Mbit/s.
#[test]
fn uplink_10mbit_paces_a_download() {
    let d = Daemon::start();
    let link = Link::new("uplink");
    let web = nginx(&link.a, 8080);
    serve_file(&web, "blob", 3_000_000);
    let spec = spec(
        "network/uplink-10mbit.json",
        json!({"interface": "eth0", "netns": link.a.name}),
    );
    if !fq_or_refused(&d, &spec) {
        return;
    }
    d.inject(spec.clone());
    let speed = link.b.run_ok(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{speed_download}",
            "--max-time",
            "30",
            &format!("http://{A_IP}:8080/blob"),
        ],
    );
    let bps = speed.trim().parse::<f64>().expect("curl speed") * 8.0;
    assert!(
        (9e6..=11e6).contains(&bps),
        "download at {:.2} Mbit/s through a 10 Mbit/s uplink",
        bps / 1e6
    );
    assert!(packets(&d, &name_of(&spec), "bandwidth_limit", "delayed") > 0);
}

/// Bit errors reaching the application: 0.1% of SIP datagrams (UDP
/// 5060-5061) arrive with a flipped bit and fixed checksums; other ports
/// are untouched.
#[test]
fn bit_flips_reach_the_sip_receiver() {
    let d = Daemon::start();
    let link = Link::new("sip");
    let spec = spec(
        "network/bit-flips-signalling.json",
        json!({"interface": "eth0", "netns": link.b.name}),
    );
    d.inject(spec.clone());
    let n = 20_000;
    let sip = udp_receiver(&link.b, 5060, IDLE);
    let other = udp_receiver(&link.b, 5070, IDLE);
    udp_send(&link.a, B_IP, 5060, n, 20_000);
    udp_send(&link.a, B_IP, 5070, 2_000, 20_000);
    let (sip, other) = (finish_udp(sip), finish_udp(other));
    assert_eq!(sip.received, n, "fixed checksums: nothing is dropped");
    let corrupted = packets(&d, &name_of(&spec), "packet_corrupt", "corrupted");
    assert_binomial(corrupted, n, 0.001, "corrupted");
    // A flip in the 8-byte sequence number rather than the 192-byte
    // pattern is not seen as a change, so changed <= corrupted.
    assert!(
        sip.changed <= corrupted && sip.changed * 4 >= corrupted * 3,
        "{sip:?}, {corrupted} corrupted"
    );
    assert_eq!((other.received, other.changed), (2_000, 0), "{other:?}");
}

/// Duplicated packets: 5% of UDP datagrams arrive twice.
#[test]
fn duplicate_5pct_sends_copies() {
    let d = Daemon::start();
    let link = Link::new("dup");
    let spec = spec(
        "network/duplicate-5pct.json",
        json!({"interface": "eth0", "netns": link.a.name}),
    );
    d.inject(spec.clone());
    let n = 8_000;
    let rx = udp_receiver(&link.b, 7200, IDLE);
    udp_send(&link.a, B_IP, 7200, n, 20_000);
    let r = finish_udp(rx);
    let dups = packets(&d, &name_of(&spec), "packet_duplicate", "duplicated");
    assert_eq!(r.duplicates, dups, "{r:?}");
    assert_eq!(r.received, n + dups);
    assert_binomial(dups, n, 0.05, "duplicated");
}

/// One pod's egress degraded: 20% of its TCP segments to :443 lost. Its
/// uploads still complete; its neighbour on the same bridge is untouched
/// (none of its segments even reach the fault).
#[test]
fn pod_egress_loss_hits_one_pod_and_spares_its_neighbour() {
    let d = Daemon::start();
    let br = Bridge::new("pods", 2);
    let _web = nginx(&br.hub, 443);
    let root = TestCgroup::new("pods");
    let id = container_id();
    let pod_a = root.child(&format!(
        "kubepods.slice/kubepods-burstable.slice/cri-containerd-{id}.scope"
    ));
    let pod_b = root.child("kubepods.slice/kubepods-burstable.slice/neighbour");
    let spec = spec(
        "network/pod-egress-loss-20pct.json",
        json!({"container": &id[..12]}),
    );
    d.inject(spec.clone());

    let files = Scratch::new("uploads");
    let body = files.write("body", &"x".repeat(100_000));
    let upload = |pod: &TestCgroup, ns: &Netns, tag: &str| -> String {
        let mut args = vec!["-s".to_string(), "-w".into(), "%{http_code}\n".into()];
        for i in 0..5 {
            args.extend([
                "-o".into(),
                "/dev/null".into(),
                "-T".into(),
                body.clone(),
                format!("http://{HUB_IP}:443/upload/{tag}{i}"),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_in(pod, ns, "curl", &args).0
    };
    let name = name_of(&spec);
    let counts = || {
        (
            packets(&d, &name, "packet_drop", "evaluated"),
            packets(&d, &name, "packet_drop", "dropped"),
        )
    };
    // A drop at cgroup_skb egress reaches TCP as local congestion: it
    // sends the segment again later, so the uploads complete.
    assert_eq!(upload(&pod_a, &br.containers[0], "a"), "201\n".repeat(5));
    // curl returns before pod a's connections are done with: their last
    // segments (FIN, a retransmission under TCG) still pass the fault.
    // Wait until pod a's counters have been still for a second (at most
    // 10 s), so that what follows can only be pod b's.
    let settle = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut last = counts();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let now = counts();
        if now == last || std::time::Instant::now() > settle {
            break;
        }
        last = now;
    }
    let (evaluated, dropped) = counts();
    assert!(evaluated >= 20, "{evaluated} segments of pod a evaluated");
    assert_binomial(dropped, evaluated, 0.2, "dropped / evaluated");
    assert_eq!(upload(&pod_b, &br.containers[1], "b"), "201\n".repeat(5));
    assert_eq!(
        counts(),
        (evaluated, dropped),
        "pod b's segments never match"
    );
}

/// One slow pod: 100 ms ± 20 ms on its outgoing TCP, on its own veth; the
/// pod next to it keeps its latency.
#[test]
fn pod_latency_100ms_slows_one_pod_only() {
    let d = Daemon::start();
    let br = Bridge::new("slowpod", 2);
    let _web = nginx(&br.hub, 8080);
    let root = TestCgroup::new("slowpod");
    let pod_a = root.child("kubepods.slice/kubepods-burstable.slice/example-pod");
    let pod_b = root.child("kubepods.slice/kubepods-burstable.slice/neighbour");
    // The pod's long-lived process lives in its own namespace, as a
    // container's does: that is how the daemon finds the pod's veth.
    let c0 = &br.containers[0];
    let mut keeper = pod_a.spawn("ip", &["netns", "exec", &c0.name, "sleep", "600"]);
    wait_in_netns(keeper.id(), c0);
    let spec = spec(
        "network/pod-latency-100ms.json",
        json!({"cgroup": pod_a.rel}),
    );
    if fq_or_refused(&d, &spec) {
        d.inject(spec);
        let connect_ms = |pod: &TestCgroup, ns: &Netns| -> Vec<f64> {
            (0..5)
                .map(|_| {
                    let (out, ok) = run_in(
                        pod,
                        ns,
                        "curl",
                        &[
                            "-s",
                            "-o",
                            "/dev/null",
                            "-w",
                            "%{time_connect}",
                            "--max-time",
                            "5",
                            &format!("http://{HUB_IP}:8080/"),
                        ],
                    );
                    assert!(ok, "curl: {out}");
                    out.trim().parse::<f64>().expect("time_connect") * 1000.0
                })
                .collect()
        };
        // The SYN leaves 80 to 120 ms late (uniform jitter).
        let slow = connect_ms(&pod_a, c0);
        assert!(
            slow.iter().all(|ms| (75.0..=150.0).contains(ms)),
            "pod a's connects: {slow:?} ms"
        );
        // Pod b's SYNs are not delayed: every connect is faster than the
        // fastest delayed one could be, and most are quick (a TCG guest
        // on a busy machine stalls one now and then for tens of ms).
        let mut fast = connect_ms(&pod_b, &br.containers[1]);
        fast.sort_by(f64::total_cmp);
        assert!(
            fast.iter().all(|ms| *ms < 75.0) && fast[fast.len() / 2] < 40.0,
            "pod b's connects: {fast:?} ms"
        );
    }
    let _ = keeper.kill();
    let _ = keeper.wait();
}
