//! The control socket: JSON-RPC 2.0 as specified (notifications, ids,
//! batches), and what specs accept. Bad input, case by case, is in
//! `bad_input.rs`.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
};

use injectord_tests::*;
use serde_json::{Value, json};

/// A raw connection: sends lines, reads response lines.
struct Raw {
    reader: BufReader<UnixStream>,
    w: UnixStream,
}

impl Raw {
    fn new(d: &Daemon) -> Self {
        let stream = UnixStream::connect(&d.socket).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        Self {
            reader: BufReader::new(stream.try_clone().unwrap()),
            w: stream,
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.w, "{line}").unwrap();
    }

    fn read(&mut self) -> Value {
        let mut resp = String::new();
        self.reader.read_line(&mut resp).unwrap();
        serde_json::from_str(&resp).unwrap_or_else(|e| panic!("{e}: {resp:?}"))
    }

    fn ask(&mut self, line: &str) -> Value {
        self.send(line);
        self.read()
    }
}

/// Bad inputs, with their codes and fields, are in `bad_input.rs`; this
/// is the protocol itself, as JSON-RPC 2.0 defines it.
#[test]
fn json_rpc_2_0_notifications_ids_and_batches() {
    let d = Daemon::start_without_interface_pool();
    let cg = TestCgroup::new("rpc");
    let mut raw = Raw::new(&d);

    // Notifications (no "id") get no response, whether they work or fail.
    // Responses come in order on a connection, so the next line read
    // answers the request sent after them.
    raw.send(r#"{"jsonrpc": "2.0", "method": "status"}"#);
    raw.send(r#"{"jsonrpc": "2.0", "method": "frobnicate"}"#);
    raw.send(r#"{"jsonrpc": "2.0", "method": "get", "params": {"name": "nope"}}"#);
    raw.send(&format!(
        r#"{{"jsonrpc": "2.0", "method": "inject", "params": {{"name": "quiet", "target": {{"cgroup": "{}"}}, "fault": {{"type": "connect_error", "errno": "EPERM"}}}}}}"#,
        cg.rel
    ));
    raw.send(r#"{"jsonrpc": "2.0", "method": "inject", "params": {"fault": {}}}"#);
    let r = raw.ask(r#"{"jsonrpc": "2.0", "id": "after", "method": "list"}"#);
    assert_eq!(r["id"], "after", "a notification was answered: {r}");
    // The notification did its work.
    let faults = r["result"]["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 1, "{r}");
    assert_eq!(faults[0]["name"], "quiet");

    // Ids: a string, a number (integral or not) or null, echoed as given.
    for id in [
        json!("a-string"),
        json!(42),
        json!(-1),
        json!(1.5),
        json!(null),
    ] {
        let r = raw.ask(&json!({"jsonrpc": "2.0", "id": id, "method": "status"}).to_string());
        assert_eq!(r["id"], id, "{r}");
        assert!(r["result"]["faults_active"].is_number(), "{r}");
        assert!(r.get("error").is_none(), "{r}");
        assert_eq!(r["jsonrpc"], "2.0");
    }
    // An error response carries the request's id too.
    let r = raw.ask(r#"{"jsonrpc": "2.0", "id": "e", "method": "frobnicate"}"#);
    assert_eq!(r["id"], "e");
    assert_eq!(r["error"]["code"], -32601);
    assert!(r.get("result").is_none(), "{r}");
    // An object or array is no id: invalid_request, answered with id null.
    for id in [json!({"a": 1}), json!([1])] {
        let r = raw.ask(&json!({"jsonrpc": "2.0", "id": id, "method": "status"}).to_string());
        assert_eq!(r["id"], Value::Null, "{r}");
        assert_eq!(r["error"]["code"], -32600, "{r}");
        assert_eq!(r["error"]["data"]["code"], "invalid_request", "{r}");
    }
    // "params": null is taken as absent.
    let r = raw.ask(r#"{"jsonrpc": "2.0", "id": 3, "method": "list", "params": null}"#);
    assert!(r["result"]["faults"].is_array(), "{r}");

    // A batch: one array of responses, in order, without the
    // notifications'; invalid members are answered with id null.
    let r = raw.ask(
        r#"[{"jsonrpc": "2.0", "id": 1, "method": "status"},
            {"jsonrpc": "2.0", "method": "status"},
            {"jsonrpc": "2.0", "id": 2, "method": "frobnicate"},
            1,
            {"jsonrpc": "2.0", "id": 3, "method": "get", "params": {"name": "quiet"}}]"#
            .replace('\n', " ")
            .as_str(),
    );
    let r = r.as_array().unwrap_or_else(|| panic!("not an array: {r}"));
    assert_eq!(r.len(), 4, "{r:?}");
    assert_eq!(r[0]["id"], 1);
    assert!(r[0]["result"]["faults_active"].is_number());
    assert_eq!(r[1]["id"], 2);
    assert_eq!(r[1]["error"]["data"]["code"], "method_not_found");
    assert_eq!(r[2]["id"], Value::Null);
    assert_eq!(r[2]["error"]["data"]["code"], "invalid_request");
    assert_eq!(r[3]["id"], 3);
    assert_eq!(r[3]["result"]["name"], "quiet");
    // JSON-RPC's own example: every member of [1, 2, 3] is invalid.
    let r = raw.ask("[1, 2, 3]");
    let r = r.as_array().unwrap();
    assert_eq!(r.len(), 3);
    for each in r {
        assert_eq!(each["id"], Value::Null);
        assert_eq!(each["error"]["code"], -32600);
    }
    // A batch of notifications only gets nothing back.
    raw.send(r#"[{"jsonrpc": "2.0", "method": "status"}, {"jsonrpc": "2.0", "method": "list"}]"#);
    let r = raw.ask(r#"{"jsonrpc": "2.0", "id": "last", "method": "status"}"#);
    assert_eq!(
        r["id"], "last",
        "a batch of notifications was answered: {r}"
    );
}

#[test]
fn errno_aliases_are_accepted_as_the_errno_they_name() {
    let d = Daemon::start_without_interface_pool();
    for (alias, canonical) in [
        ("EWOULDBLOCK", "EAGAIN"),
        ("ENOTSUP", "EOPNOTSUPP"),
        ("EDEADLOCK", "EDEADLK"),
    ] {
        let cg = TestCgroup::new("alias");
        d.inject(json!({"name": alias, "target": {"cgroup": cg.rel},
            "fault": {"type": "connect_error", "errno": alias}}));
        let got = d.call("get", json!({"name": alias})).unwrap();
        assert_eq!(got["spec"]["fault"]["errno"], canonical);
        // Python names some of these numbers by the alias.
        let c = cg.connects("udp", "127.0.0.1", 9, 1);
        assert_eq!(c.failed(alias) + c.failed(canonical), 1, "{alias}: {c:?}");
        d.call("remove", json!({"name": alias})).unwrap();
    }
}

#[test]
fn spec_can_be_wrapped_in_params_spec() {
    let d = Daemon::start_without_interface_pool();
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
