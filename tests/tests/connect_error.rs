//! connect() errors: aimed at one cgroup, filtered by address and port,
//! counted exactly.

use injectord_tests::*;
use serde_json::json;

#[test]
fn target_gets_errno_and_sibling_connects_fine() {
    let d = Daemon::start_without_interface_pool();
    let parent = TestCgroup::new("basic");
    let target = parent.child("target");
    let sibling = parent.child("sibling");
    let port = tcp_sink("127.0.0.1:0");
    d.inject(json!({
        "name": "refuse",
        "target": {"cgroup": target.rel},
        "fault": {"type": "connect_error", "errno": "ECONNREFUSED"},
    }));

    // python, TCP to a live listener
    let hit = target.connects("tcp", "127.0.0.1", port, 5);
    assert_eq!(hit.failed("ECONNREFUSED"), 5, "{hit:?}");
    let miss = sibling.connects("tcp", "127.0.0.1", port, 5);
    assert_eq!(miss.ok, 5, "{miss:?}");

    // curl: exit code 7 is "failed to connect"
    let url = format!("http://127.0.0.1:{port}/");
    let out = target.run("curl", &["-sS", "--max-time", "5", &url]);
    assert_eq!(out.status.code(), Some(7), "curl in target: {out:?}");

    // only the targeted cgroup's calls are evaluated
    assert_eq!(d.counters("refuse", "connect_error"), (6, 6));
}

#[test]
fn errno_by_number_and_descendants_are_hit() {
    let d = Daemon::start_without_interface_pool();
    let target = TestCgroup::new("errno-num");
    let grandchild = target.child("a/b");
    d.inject(connect_fault(&target, json!({"errno": 110})));
    let r = grandchild.connects("udp", "127.0.0.1", 53, 3);
    assert_eq!(r.failed("ETIMEDOUT"), 3, "{r:?}");
}

#[test]
fn address_and_port_filters_match_only_what_they_name() {
    let d = Daemon::start_without_interface_pool();
    let cg = TestCgroup::new("filters");
    d.inject(connect_fault(
        &cg,
        json!({"address": "127.0.0.2/32", "port": 4242}),
    ));
    d.inject(connect_fault(
        &cg,
        json!({"address": "::1", "port": 4343, "errno": "EHOSTUNREACH"}),
    ));
    d.inject(connect_fault(
        &cg,
        json!({"address": "127.10.0.0/16", "errno": "ENETUNREACH"}),
    ));

    let case = |host: &str, port: u16| cg.connects("udp", host, port, 1);
    // v4 host + port
    assert_eq!(case("127.0.0.2", 4242).failed("ECONNREFUSED"), 1);
    assert_eq!(case("127.0.0.3", 4242).ok, 1);
    assert_eq!(case("127.0.0.2", 4243).ok, 1);
    // v6 host + port
    assert_eq!(case("::1", 4343).failed("EHOSTUNREACH"), 1);
    assert_eq!(case("::1", 4242).ok, 1);
    assert_eq!(case("127.0.0.1", 4343).ok, 1);
    // v4 prefix, any port
    assert_eq!(case("127.10.200.7", 9).failed("ENETUNREACH"), 1);
    assert_eq!(case("127.11.0.1", 9).ok, 1);
    // a v4 prefix does not match v6 destinations
    assert_eq!(case("::1", 9).ok, 1);
}

#[test]
fn probability_lands_within_four_sigma_and_matches_metrics() {
    let d = Daemon::start_without_interface_pool();
    let cg = TestCgroup::new("prob");
    d.inject(json!({
        "name": "p30",
        "target": {"cgroup": cg.rel},
        "fault": {"type": "connect_error", "errno": "ECONNREFUSED"},
        "trigger": {"probability": 0.3},
    }));
    let n = 20_000u64;
    let r = cg.connects("udp", "127.0.0.1", 9, n as u32);
    let hits = r.failed("ECONNREFUSED");
    assert_eq!(hits + r.ok, n, "{:?}", r.errors);
    let sigma = (n as f64 * 0.3 * 0.7).sqrt();
    let dev = (hits as f64 - 0.3 * n as f64).abs();
    println!(
        "probability 0.3 over {n}: {hits} hits, {:.2} sigma off",
        dev / sigma
    );
    assert!(
        dev <= 4.0 * sigma,
        "{hits} of {n} is {:.1} sigma from 30%",
        dev / sigma
    );
    assert_eq!(d.counters("p30", "connect_error"), (n, hits));
}

#[test]
fn every_nth_after_and_max_activations_are_exact() {
    let d = Daemon::start_without_interface_pool();
    // Kept to the end: a fault ends when its cgroup is removed.
    let mut cgroups = Vec::new();
    for (name, trigger, expected) in [
        (
            "nth",
            json!({"every_nth": 5}),
            "....X....X....X....X....X....X".to_string(),
        ),
        (
            "after",
            json!({"after": 10}),
            format!("{}{}", ".".repeat(10), "X".repeat(20)),
        ),
        (
            "max",
            json!({"max_activations": 7}),
            format!("{}{}", "X".repeat(7), ".".repeat(23)),
        ),
        (
            "combined",
            json!({"after": 2, "every_nth": 3, "max_activations": 4}),
            format!("{}{}", "....X..X..X..X", ".".repeat(16)),
        ),
    ] {
        let cg = TestCgroup::new(name);
        d.inject(json!({
            "name": name,
            "target": {"cgroup": cg.rel},
            "fault": {"type": "connect_error", "errno": "ECONNREFUSED"},
            "trigger": trigger,
        }));
        let r = cg.connects("udp", "127.0.0.1", 9, 30);
        assert_eq!(r.pattern, expected, "{name}");
        let fired = expected.matches('X').count() as u64;
        assert_eq!(r.failed("ECONNREFUSED"), fired, "{name}");
        assert_eq!(d.counters(name, "connect_error"), (30, fired), "{name}");
        cgroups.push(cg);
    }
    let list = d.call("list", json!(null)).unwrap();
    let max = list["faults"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "max")
        .unwrap();
    assert_eq!(max["state"], "exhausted");
}

#[test]
fn pid_target_resolves_to_the_process_cgroup() {
    let d = Daemon::start_without_interface_pool();
    let cg = TestCgroup::new("pid");
    let mut sleeper = cg.spawn("sleep", &["30"]);
    d.inject(json!({
        "target": {"pid": sleeper.id()},
        "fault": {"type": "connect_error", "errno": "ECONNRESET"},
    }));
    let got = d.call("list", json!(null)).unwrap();
    assert_eq!(got["faults"][0]["cgroup"]["path"], format!("/{}", cg.rel));
    assert_eq!(
        cg.connects("udp", "127.0.0.1", 9, 1).failed("ECONNRESET"),
        1
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

#[test]
fn several_faults_on_one_cgroup_and_conflicts() {
    let d = Daemon::start_without_interface_pool();
    let cg = TestCgroup::new("multi");
    d.inject(connect_fault(&cg, json!({"port": 1001, "errno": "EACCES"})));
    d.inject(connect_fault(&cg, json!({"port": 1002, "errno": "EPERM"})));
    assert_eq!(cg.connects("udp", "127.0.0.1", 1001, 1).failed("EACCES"), 1);
    assert_eq!(cg.connects("udp", "127.0.0.1", 1002, 1).failed("EPERM"), 1);
    assert_eq!(cg.connects("udp", "127.0.0.1", 1003, 1).ok, 1);
    assert_eq!(
        d.error_code("inject", connect_fault(&cg, json!({"port": 1001}))),
        "conflict"
    );
}
