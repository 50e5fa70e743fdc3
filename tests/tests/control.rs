//! The control socket under bad input: every mistake gets its own error
//! code, and the daemon and its active faults carry on.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
};

use injectord_tests::*;
use serde_json::{Value, json};

#[test]
fn bad_input_gets_specific_errors_and_active_fault_keeps_firing() {
    let d = Daemon::start();
    let cg = TestCgroup::new("bad");
    d.inject(json!({
        "name": "steady",
        "target": {"cgroup": cg.rel},
        "fault": {"type": "connect_error", "errno": "ECONNREFUSED"},
    }));
    let still_firing = || {
        assert_eq!(
            cg.connects("udp", "127.0.0.1", 9, 2).failed("ECONNREFUSED"),
            2,
            "the active fault stopped firing"
        );
    };
    let ok_fault = json!({"type": "connect_error", "errno": "ECONNREFUSED"});
    let spec = |extra: Value| {
        let mut s = json!({"target": {"cgroup": cg.rel}, "fault": ok_fault});
        s.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        s
    };

    // A malformed line, on a raw connection that stays usable afterwards.
    let stream = UnixStream::connect(&d.socket).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    let mut ask = |line: &str| -> Value {
        writeln!(w, "{line}").unwrap();
        let mut resp = String::new();
        reader.read_line(&mut resp).unwrap();
        serde_json::from_str(&resp).unwrap()
    };
    let r = ask("{\"jsonrpc\": \"2.0\", \"method\": ");
    assert_eq!(r["error"]["data"]["code"], "parse_error");
    assert_eq!(r["error"]["code"], -32700);
    let r = ask("[1, 2]");
    assert_eq!(r["error"]["data"]["code"], "invalid_request");
    let r = ask(r#"{"jsonrpc": "2.0", "id": 7, "method": "status"}"#);
    assert_eq!(r["id"], 7);
    assert!(r["result"]["faults_active"].is_number());
    still_firing();

    let cases = [
        (
            "unknown method",
            "frobnicate",
            json!({}),
            "method_not_found",
        ),
        (
            "unknown field",
            "inject",
            spec(json!({"triger": {"probability": 0.5}})),
            "unknown_field",
        ),
        (
            "unknown errno name",
            "inject",
            json!({"target": {"cgroup": cg.rel}, "fault": {"type": "connect_error", "errno": "ENOTREAL"}}),
            "unknown_errno",
        ),
        (
            "probability 1.5",
            "inject",
            spec(json!({"trigger": {"probability": 1.5}})),
            "invalid_value",
        ),
        (
            "missing cgroup",
            "inject",
            json!({"target": {"cgroup": "injectord-tests/does/not/exist"}, "fault": ok_fault}),
            "target_not_found",
        ),
        (
            "unknown container",
            "inject",
            json!({"target": {"container": "fedcba9876543210fedc"}, "fault": ok_fault}),
            "container_not_found",
        ),
        (
            "root cgroup without force",
            "inject",
            json!({"target": {"cgroup": "/"}, "fault": ok_fault}),
            "forbidden_target",
        ),
        (
            "pid 1 without force",
            "inject",
            json!({"target": {"pid": 1}, "fault": ok_fault}),
            "forbidden_target",
        ),
        (
            "missing pid",
            "inject",
            json!({"target": {"pid": 999_999_999u32}, "fault": ok_fault}),
            "target_not_found",
        ),
        (
            "unknown fault type",
            "inject",
            json!({"target": {"cgroup": cg.rel}, "fault": {"type": "disk_full"}}),
            "unknown_fault_type",
        ),
        (
            "missing field",
            "inject",
            json!({"target": {"cgroup": cg.rel}}),
            "invalid_spec",
        ),
        (
            "duplicate name",
            "inject",
            spec(json!({"name": "steady"})),
            "name_taken",
        ),
        (
            "get of nothing",
            "get",
            json!({"name": "nope"}),
            "not_found",
        ),
        (
            "bad selector",
            "get",
            json!({"nombre": "x"}),
            "invalid_params",
        ),
        (
            "zero duration",
            "inject",
            spec(json!({"duration": "0s"})),
            "invalid_value",
        ),
        (
            "port out of range",
            "inject",
            json!({"target": {"cgroup": cg.rel}, "fault": {"type": "connect_error", "errno": 1, "port": 70000}}),
            "invalid_value",
        ),
    ];
    for (what, method, params, code) in cases {
        let err = d.call(method, params).expect_err(what);
        let err = err.downcast_ref::<ErrorResponse>().expect(what);
        assert_eq!(err.code, code, "{what}: {}", err.message);
        assert!(!err.message.is_empty(), "{what}: empty message");
        println!("{what:<28} {code:<20} {}", err.message);
        still_firing();
    }

    // The field path of a nested mistake is reported.
    let err = d
        .call("inject", spec(json!({"trigger": {"probability": 1.5}})))
        .unwrap_err();
    let err = err.downcast_ref::<ErrorResponse>().unwrap();
    assert_eq!(err.data["field"], "trigger.probability");
    assert!(err.message.contains("1.5"));

    let (evals, acts) = d.counters("steady", "connect_error");
    assert_eq!(evals, acts);
    assert!(evals >= 2 * 17);
}

#[test]
fn spec_can_be_wrapped_in_params_spec() {
    let d = Daemon::start();
    let cg = TestCgroup::new("wrapped");
    let r = d
        .call(
            "inject",
            json!({"spec": {"name": "w", "target": {"cgroup": cg.rel},
                "fault": {"type": "connect_error", "errno": "EPERM"}}}),
        )
        .unwrap();
    assert_eq!(r["name"], "w");
    let got = d.call("get", json!({"id": r["id"]})).unwrap();
    assert_eq!(got["spec"]["fault"]["errno"], "EPERM");
    assert_eq!(cg.connects("udp", "127.0.0.1", 9, 1).failed("EPERM"), 1);
}
