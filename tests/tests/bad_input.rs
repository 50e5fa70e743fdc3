//! Every bad input the daemon is known to get, in one table: each with
//! the stable error code it must answer with and the field it must name.
//! Meanwhile a connect fault on a cgroup and a packet fault on an
//! interface keep firing, and nothing else is installed.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::PathBuf,
    time::{Duration, Instant},
};

use injectord_tests::{net::*, *};
use serde_json::{Value, json};

/// What is sent: a call over the client, or a raw line.
enum Input {
    Call(&'static str, Value),
    /// A line as bytes (it may not be UTF-8), and the `id` its answer
    /// must carry.
    Line(Vec<u8>, Value),
}

struct Case {
    what: &'static str,
    input: Input,
    code: &'static str,
    /// The field `error.data.field` must name; `None`: no field.
    field: Option<&'static str>,
}

fn inject(what: &'static str, spec: Value, code: &'static str, field: &'static str) -> Case {
    Case {
        what,
        input: Input::Call("inject", spec),
        code,
        field: Some(field),
    }
}

fn call(what: &'static str, method: &'static str, params: Value, code: &'static str) -> Case {
    Case {
        what,
        input: Input::Call(method, params),
        code,
        field: None,
    }
}

fn line(what: &'static str, line: impl Into<Vec<u8>>, id: Value, code: &'static str) -> Case {
    Case {
        what,
        input: Input::Line(line.into(), id),
        code,
        field: None,
    }
}

/// Text that must never reach a person: Rust's Debug forms of our types,
/// and serde's names for them.
const DEBUG_FORMS: &[&str] = &[
    "Some(",
    "None",
    "Name(",
    "(\"",
    "Cidr(",
    "IfName(",
    "Netns(",
    "Errno(",
    "struct ",
    "Raw",
    "TargetSpec",
    "TriggerSpec",
    "NonZero",
];

/// A FIFO and a plain file, removed on drop.
struct Files {
    fifo: PathBuf,
    plain: PathBuf,
}

impl Files {
    fn new() -> Self {
        let dir = std::env::temp_dir();
        let fifo = dir.join(unique("injectord-fifo"));
        let plain = dir.join(unique("injectord-plain"));
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        std::fs::write(&plain, "not a namespace").unwrap();
        Self { fifo, plain }
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.fifo);
        let _ = std::fs::remove_file(&self.plain);
    }
}

#[test]
fn every_bad_input_gets_its_code_and_field_and_active_faults_keep_firing() {
    let d = Daemon::start();
    let cg = TestCgroup::new("bad");
    let link = Link::new("bad");
    let files = Files::new();
    d.inject(json!({
        "name": "steady",
        "target": {"cgroup": cg.rel},
        "fault": {"type": "connect_error", "errno": "ECONNREFUSED"},
    }));
    d.inject(json!({
        "name": "keep",
        "target": {"interface": "eth0", "netns": link.a.name},
        "fault": {"type": "packet_drop", "protocol": "icmp"},
    }));
    let still_firing = || {
        assert_eq!(
            cg.connects("udp", "127.0.0.1", 9, 2).failed("ECONNREFUSED"),
            2,
            "the active connect fault stopped firing"
        );
    };

    let ok_fault = json!({"type": "connect_error", "errno": "ECONNREFUSED"});
    let on_cg = |fault: Value| json!({"target": {"cgroup": cg.rel}, "fault": fault});
    let spec = |extra: Value| {
        let mut s = on_cg(ok_fault.clone());
        s.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        s
    };
    let with_target = |target: Value| json!({"target": target, "fault": ok_fault});
    let drop_with = |target: Value| json!({"target": target, "fault": {"type": "packet_drop"}});
    let iface = json!({"interface": "eth0", "netns": link.a.name});
    let on_iface = |fault: Value| json!({"target": iface, "fault": fault});
    let errno = |e: Value| on_cg(json!({"type": "connect_error", "errno": e}));
    let netns = |ns: &str| drop_with(json!({"interface": "eth0", "netns": ns}));
    let fifo = files.fifo.display().to_string();
    let plain = files.plain.display().to_string();
    let tmp = std::env::temp_dir().display().to_string();
    let request = |s: &str| s.as_bytes().to_vec();

    let cases = [
        // The JSON-RPC envelope.
        line(
            "not JSON",
            "{\"jsonrpc\": \"2.0\", \"method\": ",
            Value::Null,
            "parse_error",
        ),
        line(
            "not UTF-8",
            b"{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \"st\xffatus\"}".to_vec(),
            Value::Null,
            "parse_error",
        ),
        line("a number", "42", Value::Null, "invalid_request"),
        line("an empty batch", "[]", Value::Null, "invalid_request"),
        line(
            "id an object",
            request(r#"{"jsonrpc": "2.0", "id": {"a": 1}, "method": "status"}"#),
            Value::Null,
            "invalid_request",
        ),
        line(
            "id an array",
            request(r#"{"jsonrpc": "2.0", "id": [1], "method": "status"}"#),
            Value::Null,
            "invalid_request",
        ),
        line(
            "id a boolean",
            request(r#"{"jsonrpc": "2.0", "id": true, "method": "status"}"#),
            Value::Null,
            "invalid_request",
        ),
        line(
            "no jsonrpc member",
            request(r#"{"id": 5, "method": "status"}"#),
            json!(5),
            "invalid_request",
        ),
        line(
            "jsonrpc 1.0",
            request(r#"{"jsonrpc": "1.0", "id": "a", "method": "status"}"#),
            json!("a"),
            "invalid_request",
        ),
        line(
            "method a number",
            request(r#"{"jsonrpc": "2.0", "id": 6, "method": 6}"#),
            json!(6),
            "invalid_request",
        ),
        line(
            "no method",
            request(r#"{"jsonrpc": "2.0", "id": 7}"#),
            json!(7),
            "invalid_request",
        ),
        line(
            "params a string",
            request(r#"{"jsonrpc": "2.0", "id": 8, "method": "list", "params": "all"}"#),
            json!(8),
            "invalid_request",
        ),
        line(
            "invalid and without id: still answered",
            request(r#"{"jsonrpc": "2.0", "method": 9}"#),
            Value::Null,
            "invalid_request",
        ),
        call(
            "unknown method",
            "frobnicate",
            json!({}),
            "method_not_found",
        ),
        call(
            "get of nothing",
            "get",
            json!({"name": "nope"}),
            "not_found",
        ),
        call(
            "bad selector",
            "get",
            json!({"nombre": "x"}),
            "invalid_params",
        ),
        // The envelope of a spec.
        inject(
            "unknown field",
            spec(json!({"triger": {"probability": 0.5}})),
            "unknown_field",
            "triger",
        ),
        inject(
            "missing target",
            json!({"fault": ok_fault}),
            "invalid_spec",
            "target",
        ),
        inject(
            "missing fault",
            json!({"target": {"cgroup": cg.rel}}),
            "invalid_spec",
            "fault",
        ),
        call(
            "spec as an array (inject takes named params)",
            "inject",
            json!([{"target": {"cgroup": cg.rel}, "fault": ok_fault}]),
            "invalid_params",
        ),
        inject(
            "spec as a string",
            json!({"spec": "connect_error"}),
            "invalid_spec",
            "",
        ),
        inject(
            "bad name",
            spec(json!({"name": "no spaces"})),
            "invalid_value",
            "name",
        ),
        inject(
            "duplicate name",
            spec(json!({"name": "steady"})),
            "name_taken",
            "name",
        ),
        inject(
            "zero duration",
            spec(json!({"duration": "0s"})),
            "invalid_value",
            "duration",
        ),
        inject(
            "unreadable duration",
            spec(json!({"duration": "forever"})),
            "invalid_value",
            "duration",
        ),
        inject(
            "probability 1.5",
            spec(json!({"trigger": {"probability": 1.5}})),
            "invalid_value",
            "trigger.probability",
        ),
        inject(
            "every_nth 0",
            spec(json!({"trigger": {"every_nth": 0}})),
            "invalid_value",
            "trigger.every_nth",
        ),
        inject(
            "trigger not an object",
            spec(json!({"trigger": 3})),
            "invalid_spec",
            "trigger",
        ),
        inject(
            "unknown trigger field",
            spec(json!({"trigger": {"sometimes": true}})),
            "unknown_field",
            "trigger.sometimes",
        ),
        // Targets: their form.
        inject(
            "empty target",
            with_target(json!({})),
            "invalid_value",
            "target",
        ),
        inject(
            "two targets",
            with_target(json!({"interface": "eth0", "cgroup": "x"})),
            "invalid_value",
            "target",
        ),
        inject(
            "target not an object",
            with_target(json!("eth0")),
            "invalid_spec",
            "target",
        ),
        inject(
            "unknown target field",
            with_target(json!({"cgroup": cg.rel, "namespace": "x"})),
            "unknown_field",
            "target.namespace",
        ),
        inject(
            "netns without interface",
            with_target(json!({"cgroup": cg.rel, "netns": "x"})),
            "invalid_value",
            "target.netns",
        ),
        inject(
            "pid 0",
            with_target(json!({"pid": 0})),
            "invalid_value",
            "target.pid",
        ),
        inject(
            "pid a string",
            with_target(json!({"pid": "1"})),
            "invalid_spec",
            "target.pid",
        ),
        inject(
            "container id not hex",
            with_target(json!({"container": "not-a-container"})),
            "invalid_value",
            "target.container",
        ),
        inject(
            "interface name with a slash",
            drop_with(json!({"interface": "eth0/x"})),
            "invalid_value",
            "target.interface",
        ),
        inject(
            "netns with ..",
            netns("/run/netns/../x"),
            "invalid_value",
            "target.netns",
        ),
        inject(
            "cgroup path with ..",
            with_target(json!({"cgroup": "a/../b"})),
            "invalid_value",
            "target.cgroup",
        ),
        // Targets: what they resolve to.
        inject(
            "missing cgroup",
            with_target(json!({"cgroup": "injectord-tests/does/not/exist"})),
            "target_not_found",
            "target.cgroup",
        ),
        inject(
            "cgroup path that is a file",
            with_target(json!({"cgroup": format!("{}/cgroup.procs", cg.rel)})),
            "invalid_value",
            "target.cgroup",
        ),
        inject(
            "root cgroup without force",
            with_target(json!({"cgroup": "/"})),
            "forbidden_target",
            "target.cgroup",
        ),
        inject(
            "pid 1 without force",
            with_target(json!({"pid": 1})),
            "forbidden_target",
            "target.pid",
        ),
        inject(
            "pid 2, a kernel thread",
            with_target(json!({"pid": 2})),
            "unsupported_target",
            "target.pid",
        ),
        inject(
            "pid 2 even with force",
            json!({"target": {"pid": 2}, "fault": ok_fault, "force": true}),
            "unsupported_target",
            "target.pid",
        ),
        inject(
            "missing pid",
            with_target(json!({"pid": 999_999_999u32})),
            "target_not_found",
            "target.pid",
        ),
        inject(
            "unknown container",
            with_target(json!({"container": "fedcba9876543210fedc"})),
            "container_not_found",
            "target.container",
        ),
        inject(
            "missing interface",
            drop_with(json!({"interface": "nope0", "netns": link.a.name})),
            "target_not_found",
            "target.interface",
        ),
        inject(
            "missing netns",
            netns("no-such-netns"),
            "target_not_found",
            "target.netns",
        ),
        inject(
            "netns a FIFO (must not block)",
            netns(&fifo),
            "invalid_value",
            "target.netns",
        ),
        inject(
            "netns a plain file",
            netns(&plain),
            "invalid_value",
            "target.netns",
        ),
        inject(
            "netns a directory",
            netns(&tmp),
            "invalid_value",
            "target.netns",
        ),
        inject(
            "netns a mount namespace",
            netns("/proc/self/ns/mnt"),
            "invalid_value",
            "target.netns",
        ),
        inject(
            "connect_error on an interface",
            json!({"target": iface, "fault": ok_fault}),
            "unsupported_target",
            "target",
        ),
        inject(
            "packet_corrupt on a cgroup without processes",
            on_cg(json!({"type": "packet_corrupt"})),
            "unsupported_target",
            "target",
        ),
        // The fault object.
        inject(
            "missing fault type",
            on_cg(json!({"errno": 1})),
            "invalid_spec",
            "fault.type",
        ),
        inject(
            "fault type not a string",
            on_cg(json!({"type": 1})),
            "invalid_spec",
            "fault.type",
        ),
        inject(
            "unknown fault type",
            on_cg(json!({"type": "disk_full"})),
            "unknown_fault_type",
            "fault.type",
        ),
        inject(
            "unknown fault field",
            on_cg(json!({"type": "connect_error", "errno": 1, "prot": 1})),
            "unknown_field",
            "fault.prot",
        ),
        inject(
            "missing errno",
            on_cg(json!({"type": "connect_error"})),
            "invalid_spec",
            "fault.errno",
        ),
        inject(
            "unknown errno name",
            errno(json!("ENOTREAL")),
            "unknown_errno",
            "fault.errno",
        ),
        inject("errno 0", errno(json!(0)), "invalid_value", "fault.errno"),
        inject(
            "errno 4096",
            errno(json!(4096)),
            "invalid_value",
            "fault.errno",
        ),
        inject(
            "ERESTARTSYS by name",
            errno(json!("ERESTARTSYS")),
            "invalid_value",
            "fault.errno",
        ),
        inject(
            "512 (ERESTARTSYS) by number",
            errno(json!(512)),
            "invalid_value",
            "fault.errno",
        ),
        inject(
            "529 (EIOCBQUEUED) by number",
            errno(json!(529)),
            "invalid_value",
            "fault.errno",
        ),
        inject(
            "ENOTSUPP (524, kernel-only) by name",
            errno(json!("ENOTSUPP")),
            "invalid_value",
            "fault.errno",
        ),
        inject(
            "port out of range",
            on_cg(json!({"type": "connect_error", "errno": 1, "port": 70000})),
            "invalid_value",
            "fault.port",
        ),
        inject(
            "port 0",
            on_cg(json!({"type": "connect_error", "errno": 1, "port": 0})),
            "invalid_value",
            "fault.port",
        ),
        inject(
            "bad address",
            on_cg(json!({"type": "connect_error", "errno": 1, "address": "10.0.0.300"})),
            "invalid_value",
            "fault.address",
        ),
        inject(
            "prefix /33",
            on_iface(json!({"type": "packet_drop", "dst": "10.0.0.0/33"})),
            "invalid_value",
            "fault.dst",
        ),
        inject(
            "bad src",
            on_iface(json!({"type": "packet_drop", "src": "nowhere"})),
            "invalid_value",
            "fault.src",
        ),
        inject(
            "reversed port range",
            on_iface(json!({"type": "packet_drop", "dst_port": "90-80"})),
            "invalid_value",
            "fault.dst_port",
        ),
        inject(
            "src_port 0",
            on_iface(json!({"type": "packet_drop", "src_port": 0})),
            "invalid_value",
            "fault.src_port",
        ),
        inject(
            "unknown protocol",
            on_iface(json!({"type": "packet_drop", "protocol": "carrier-pigeon"})),
            "invalid_value",
            "fault.protocol",
        ),
        inject(
            "unknown direction",
            on_iface(json!({"type": "packet_drop", "direction": "sideways"})),
            "invalid_value",
            "fault.direction",
        ),
        inject(
            "misspelt filter field",
            on_iface(json!({"type": "packet_drop", "dport": 80})),
            "unknown_field",
            "fault.dport",
        ),
        inject(
            "delay missing",
            on_iface(json!({"type": "packet_delay"})),
            "invalid_spec",
            "fault.delay",
        ),
        inject(
            "delay 11s",
            on_iface(json!({"type": "packet_delay", "delay": "11s"})),
            "invalid_value",
            "fault.delay",
        ),
        inject(
            "bad jitter",
            on_iface(json!({"type": "packet_delay", "delay": "5ms", "jitter": "a bit"})),
            "invalid_value",
            "fault.jitter",
        ),
        inject(
            "unknown distribution",
            on_iface(json!({"type": "packet_delay", "delay": "5ms", "distribution": "pareto"})),
            "invalid_value",
            "fault.distribution",
        ),
        inject(
            "delay on ingress",
            on_iface(json!({"type": "packet_delay", "delay": "5ms", "direction": "ingress"})),
            "unsupported_target",
            "fault.direction",
        ),
        inject(
            "bad rate",
            on_iface(json!({"type": "bandwidth_limit", "rate": "3 furlongs"})),
            "invalid_value",
            "fault.rate",
        ),
        inject(
            "bad max_delay",
            on_iface(json!({"type": "bandwidth_limit", "rate": "1mbit", "max_delay": "0s"})),
            "invalid_value",
            "fault.max_delay",
        ),
        inject(
            "mask 0",
            on_iface(json!({"type": "packet_corrupt", "mask": 0})),
            "invalid_value",
            "fault.mask",
        ),
        inject(
            "unknown region",
            on_iface(json!({"type": "packet_corrupt", "region": "trailer"})),
            "invalid_value",
            "fault.region",
        ),
        inject(
            "offset past u16",
            on_iface(json!({"type": "packet_corrupt", "offset": 70000})),
            "invalid_value",
            "fault.offset",
        ),
        // Specs that could never fire.
        inject(
            "payload offset past the MTU (1500)",
            on_iface(json!({"type": "packet_corrupt", "offset": 1500})),
            "invalid_value",
            "fault.offset",
        ),
        inject(
            "UDP payload offset past MTU minus IPv4 and UDP headers",
            on_iface(json!({"type": "packet_corrupt", "protocol": "udp", "offset": 1472})),
            "invalid_value",
            "fault.offset",
        ),
        inject(
            "packet offset past the MTU",
            on_iface(json!({"type": "packet_corrupt", "region": "any", "offset": 1500})),
            "invalid_value",
            "fault.offset",
        ),
        inject(
            "header offset past the longest IPv4 headers",
            on_iface(
                json!({"type": "packet_corrupt", "dst": "10.0.0.0/8", "region": "headers", "offset": 120}),
            ),
            "invalid_value",
            "fault.offset",
        ),
        inject(
            "IPv4 src with IPv6 dst",
            on_iface(json!({"type": "packet_drop", "src": "10.0.0.0/8", "dst": "fd00::/64"})),
            "invalid_value",
            "fault.dst",
        ),
        inject(
            "IPv6 src with IPv4 dst",
            on_iface(json!({"type": "partition", "src": "fd00::1", "dst": "10.0.0.1"})),
            "invalid_value",
            "fault.dst",
        ),
        inject(
            "dst_port with icmp",
            on_iface(json!({"type": "packet_drop", "protocol": "icmp", "dst_port": 80})),
            "invalid_value",
            "fault.dst_port",
        ),
        inject(
            "src_port with icmp",
            on_iface(json!({"type": "packet_corrupt", "protocol": "icmp", "src_port": "1-1024"})),
            "invalid_value",
            "fault.src_port",
        ),
        inject(
            "partition errno on an interface",
            on_iface(json!({"type": "partition", "dst": "10.0.0.1", "errno": "ECONNRESET"})),
            "invalid_value",
            "fault.errno",
        ),
    ];

    // Raw lines go over one connection, which must stay usable.
    let stream = UnixStream::connect(&d.socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    let mut send = |line: &[u8]| -> Value {
        w.write_all(line).unwrap();
        w.write_all(b"\n").unwrap();
        let mut resp = String::new();
        reader.read_line(&mut resp).unwrap();
        serde_json::from_str(&resp).unwrap_or_else(|e| panic!("{e}: {resp:?}"))
    };

    for case in &cases {
        let what = case.what;
        let started = Instant::now();
        let (code, message, data) = match &case.input {
            Input::Call(method, params) => {
                let err = d.call(method, params.clone()).expect_err(what);
                let err = err
                    .downcast_ref::<ErrorResponse>()
                    .unwrap_or_else(|| panic!("{what}: not an error response: {err:#}"));
                (err.code.clone(), err.message.clone(), err.data.clone())
            }
            Input::Line(bytes, id) => {
                let r = send(bytes);
                assert_eq!(r["jsonrpc"], "2.0", "{what}: {r}");
                assert_eq!(&r["id"], id, "{what}: {r}");
                let e = &r["error"];
                (
                    e["data"]["code"].as_str().unwrap_or("?").to_string(),
                    e["message"].as_str().unwrap_or_default().to_string(),
                    e["data"].clone(),
                )
            }
        };
        println!("{what:<58} {code:<20} {message}");
        assert_eq!(code, case.code, "{what}: {message}");
        assert!(!message.is_empty(), "{what}: empty message");
        match case.field {
            Some("") | None => assert!(data.get("field").is_none(), "{what}: {data}"),
            Some(field) => {
                assert_eq!(data["field"], field, "{what}: {message}");
                assert!(
                    message.starts_with(&format!("{field}: ")),
                    "{what}: the message does not start with the field {field}: {message}"
                );
            }
        }
        for form in DEBUG_FORMS {
            assert!(!message.contains(form), "{what}: {form:?} in {message}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: took {:?}",
            started.elapsed()
        );
        still_firing();
    }

    // The raw connection still answers.
    let r = send(br#"{"jsonrpc": "2.0", "id": 7, "method": "status"}"#);
    assert_eq!(r["result"]["faults_active"], 2, "{r}");
    assert_eq!(
        ping(&link.a, B_IP, 2, "0.1").1,
        0,
        "the active packet fault keeps working"
    );
    let (evals, acts) = d.counters("steady", "connect_error");
    assert_eq!(evals, acts);
    assert!(evals >= 2 * cases.len() as u64);
}
