//! syscall_error: a named syscall fails with the errno in one cgroup and
//! its descendants, on whichever backend this kernel has (kprobe
//! override, BPF LSM, cgroup programs); where none reaches a syscall the
//! fault is refused, naming why.

use injectord_tests::{
    workload::{Filesystem, Scratch},
    *,
};
use serde_json::{Value, json};

/// Runs each operation in a python process in `cg` and returns, per
/// operation, "ok" or the errno's name. Operations: `open:PATH` (create),
/// `read:PATH`, `fsync:PATH` (create), `mkdir:PATH`, `socket`,
/// `sock:FAMILY:TYPE` (inet, inet6, unix; stream, dgram), `listen:FAMILY`,
/// `udp:HOST:PORT` (sendto), `bind:HOST:PORT` (UDP), `tcpbind:HOST:PORT`,
/// `getsockopt` (UDP), `getsockopt:FAMILY` (TCP), `getrandom`, `uname`.
fn ops(cg: &TestCgroup, ops: &[&str]) -> Vec<String> {
    const SCRIPT: &str = r#"
import errno, json, os, socket, sys
FAM = {"inet": socket.AF_INET, "inet6": socket.AF_INET6, "unix": socket.AF_UNIX}
TYP = {"stream": socket.SOCK_STREAM, "dgram": socket.SOCK_DGRAM}
res = []
for op in sys.argv[1:]:
    kind, _, arg = op.partition(":")
    try:
        if kind == "open":
            os.close(os.open(arg, os.O_RDONLY | os.O_CREAT, 0o644))
        elif kind == "read":
            open(arg).read()
        elif kind == "fsync":
            fd = os.open(arg, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.write(fd, b"x")
                os.fsync(fd)
            finally:
                os.close(fd)
        elif kind == "mkdir":
            os.mkdir(arg)
        elif kind == "sock":
            fam, typ = arg.split(":")
            socket.socket(FAM[fam], TYP[typ]).close()
        elif kind == "listen":
            with socket.socket(FAM[arg], socket.SOCK_STREAM) as s:
                s.listen()
        elif kind == "tcpbind":
            host, port = arg.rsplit(":", 1)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, int(port)))
        elif kind == "socket":
            socket.socket().close()
        elif kind == "getsockopt" and arg:
            with socket.socket(FAM[arg], socket.SOCK_STREAM) as s:
                s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        elif kind == "getsockopt":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 0)
            s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        elif kind == "udp":
            host, port = arg.rsplit(":", 1)
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", (host, int(port)))
        elif kind == "bind":
            host, port = arg.rsplit(":", 1)
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind((host, int(port)))
        elif kind == "getrandom":
            os.getrandom(8)
        elif kind == "uname":
            os.uname()
        res.append("ok")
    except OSError as e:
        res.append(errno.errorcode.get(e.errno, str(e.errno)))
print(json.dumps(res))
"#;
    let mut args = vec!["-c", SCRIPT];
    args.extend_from_slice(ops);
    // A fixed hash seed: python must not need getrandom() to start.
    let out = cg
        .command("python3", &args)
        .env("PYTHONHASHSEED", "0")
        .output()
        .expect("python3");
    assert!(out.status.success(), "python failed: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

fn fault(name: &str, cg: &TestCgroup, fault: Value) -> Value {
    json!({"name": name, "target": {"cgroup": cg.rel}, "fault": fault})
}

fn backend_of(d: &Daemon, name: &str) -> String {
    let f = d.call("get", json!({"name": name})).unwrap();
    f["backend"]
        .as_str()
        .unwrap_or_else(|| panic!("no backend in {f}"))
        .to_string()
}

#[test]
fn socket_fails_in_the_target_and_its_descendants_only() {
    let d = Daemon::start_without_interface_pool();
    let parent = TestCgroup::new("sc-socket");
    let target = parent.child("target");
    let nested = target.child("a/b");
    let sibling = parent.child("sibling");
    d.inject(fault(
        "sock",
        &target,
        json!({"type": "syscall_error", "syscall": "socket", "errno": "EACCES"}),
    ));
    println!("socket() backend: {}", backend_of(&d, "sock"));
    assert_eq!(ops(&target, &["socket", "socket"]), ["EACCES", "EACCES"]);
    assert_eq!(ops(&nested, &["socket"]), ["EACCES"]);
    // Only socket(): other calls in the target are untouched.
    assert_eq!(ops(&target, &["uname", "getrandom"]), ["ok", "ok"]);
    assert_eq!(ops(&sibling, &["socket"]), ["ok"]);
    let outside = std::process::Command::new("python3")
        .args(["-c", "import socket; socket.socket()"])
        .status()
        .unwrap();
    assert!(outside.success());
    assert_eq!(d.counters("sock", "syscall_error"), (3, 3));
}

#[test]
fn a_proc_sys_read_fails_for_that_name_only_through_the_sysctl_hook() {
    let d = Daemon::start_without_interface_pool();
    let cg = TestCgroup::new("sc-sysctl");
    let sibling = TestCgroup::new("sc-sysctl-sibling");
    d.inject(fault(
        "hostname",
        &cg,
        json!({"type": "syscall_error", "syscall": "read", "errno": "EIO",
               "path": "/proc/sys/kernel/hostname"}),
    ));
    let f = d.call("get", json!({"name": "hostname"})).unwrap();
    assert_eq!(f["backend"], "cgroup", "{f}");
    assert_eq!(f["hook"], "cgroup/sysctl", "{f}");
    assert!(f["also_hits"].to_string().contains("pread64"), "{f}");
    assert_eq!(
        ops(
            &cg,
            &[
                "read:/proc/sys/kernel/hostname",
                "read:/proc/sys/kernel/ostype",
                "read:/etc/hostname"
            ]
        ),
        ["EIO", "ok", "ok"]
    );
    assert_eq!(ops(&sibling, &["read:/proc/sys/kernel/hostname"]), ["ok"]);
    assert_eq!(d.counters("hostname", "syscall_error"), (1, 1));
}

#[test]
fn udp_sends_bind_and_getsockopt_fail_with_their_filters() {
    let d = Daemon::start_without_interface_pool();
    let cg = TestCgroup::new("sc-sock-calls");
    d.inject(fault(
        "send",
        &cg,
        json!({"type": "syscall_error", "syscall": "sendto", "errno": "ENETDOWN",
               "address": "127.0.0.2/32", "port": 5353}),
    ));
    d.inject(fault(
        "bind",
        &cg,
        json!({"type": "syscall_error", "syscall": "bind", "errno": "EADDRINUSE", "port": 5454}),
    ));
    d.inject(fault(
        "sockopt",
        &cg,
        json!({"type": "syscall_error", "syscall": "getsockopt", "errno": "ENOPROTOOPT"}),
    ));
    for name in ["send", "bind"] {
        assert_eq!(
            backend_of(&d, name),
            "cgroup",
            "address filters are the cgroup hooks'"
        );
    }
    assert_eq!(
        ops(
            &cg,
            &[
                "udp:127.0.0.2:5353",
                "udp:127.0.0.3:5353",
                "udp:127.0.0.2:5354",
                "bind:127.0.0.1:5454",
                "bind:127.0.0.1:5455",
                "getsockopt",
            ]
        ),
        ["ENETDOWN", "ok", "ok", "EADDRINUSE", "ok", "ENOPROTOOPT"]
    );
    assert_eq!(d.counters("send", "syscall_error"), (1, 1));
    assert_eq!(d.counters("bind", "syscall_error"), (1, 1));
}

#[test]
fn a_trigger_after_n_fails_exactly_the_later_calls() {
    let d = Daemon::start_without_interface_pool();
    let cg = TestCgroup::new("sc-after");
    d.inject(json!({
        "name": "third", "target": {"cgroup": cg.rel},
        "trigger": {"after": 2, "max_activations": 2},
        "fault": {"type": "syscall_error", "syscall": "socket", "errno": "EMFILE"},
    }));
    assert_eq!(
        ops(&cg, &["socket", "socket", "socket", "socket", "socket"]),
        ["ok", "ok", "EMFILE", "EMFILE", "ok"]
    );
    assert_eq!(d.counters("third", "syscall_error"), (5, 2));
}

#[test]
fn openat_fails_under_a_path_prefix_where_kprobe_or_lsm_exist() {
    let d = Daemon::start_without_interface_pool();
    let cg = TestCgroup::new("sc-openat");
    let sibling = TestCgroup::new("sc-openat-sibling");
    let dir = Scratch::new("sc-openat");
    let data = dir.file("data");
    std::fs::create_dir_all(&data).unwrap();
    let spec = fault(
        "open",
        &cg,
        json!({"type": "syscall_error", "syscall": "openat", "errno": "EIO", "path": data}),
    );
    if !d.has_backend("syscall_kprobe_override") && !d.has_backend("syscall_lsm") {
        let err = d.call("inject", spec).unwrap_err().to_string();
        assert!(err.contains("unsupported_kernel"), "{err}");
        assert!(
            err.contains("openat") && err.contains("CONFIG_BPF_KPROBE_OVERRIDE"),
            "{err}"
        );
        return;
    }
    d.inject(spec);
    println!("openat backend: {}", backend_of(&d, "open"));
    let inside = format!("open:{data}/f");
    let deeper = format!("open:{data}/sub");
    let beside = format!("open:{data}base");
    let other = format!("open:{}", dir.file("other"));
    assert_eq!(
        ops(&cg, &[&inside, &beside, &other, &deeper]),
        ["EIO", "ok", "ok", "EIO"]
    );
    assert_eq!(ops(&sibling, &[&inside]), ["ok"]);
    // Evaluations count every openat whose path matched.
    assert_eq!(d.counters("open", "syscall_error"), (2, 2));
}

#[test]
fn mkdir_fails_on_lsm_and_override_kernels_and_is_refused_elsewhere() {
    let d = Daemon::start_without_interface_pool();
    let cg = TestCgroup::new("sc-mkdir");
    let dir = Scratch::new("sc-mkdir");
    let spec = fault(
        "mkdir",
        &cg,
        json!({"type": "syscall_error", "syscall": "mkdir", "errno": "ENOSPC"}),
    );
    if !d.has_backend("syscall_kprobe_override") && !d.has_backend("syscall_lsm") {
        let err = d.call("inject", spec).unwrap_err().to_string();
        assert!(err.contains("mkdir") && err.contains("BPF LSM"), "{err}");
        return;
    }
    d.inject(spec);
    let a = format!("mkdir:{}", dir.file("a"));
    assert_eq!(ops(&cg, &[&a]), ["ENOSPC"]);
    assert!(!std::path::Path::new(&dir.file("a")).exists());
}

#[test]
fn a_syscall_without_a_hook_fails_only_where_override_exists() {
    let d = Daemon::start_without_interface_pool();
    let cg = TestCgroup::new("sc-getrandom");
    let spec = fault(
        "rng",
        &cg,
        json!({"type": "syscall_error", "syscall": "getrandom", "errno": "EAGAIN"}),
    );
    if !d.has_backend("syscall_kprobe_override") {
        let err = d.call("inject", spec).unwrap_err().to_string();
        assert!(err.contains("unsupported_kernel"), "{err}");
        assert!(
            err.contains("getrandom") && err.contains("no LSM hook runs inside getrandom"),
            "{err}"
        );
        return;
    }
    d.inject(spec);
    assert_eq!(backend_of(&d, "rng"), "kprobe");
    assert_eq!(ops(&cg, &["getrandom", "uname"]), ["EAGAIN", "ok"]);
    d.inject(fault(
        "uname",
        &cg,
        json!({"type": "syscall_error", "syscall": "uname", "errno": "EFAULT"}),
    ));
    assert_eq!(ops(&cg, &["uname"]), ["EFAULT"]);
}

#[test]
fn impossible_syscall_specs_get_specific_errors_and_nothing_else_breaks() {
    let d = Daemon::start_without_interface_pool();
    let cg = TestCgroup::new("sc-bad");
    d.inject(fault(
        "keep",
        &cg,
        json!({"type": "syscall_error", "syscall": "socket", "errno": "EACCES"}),
    ));
    let cases = [
        (
            json!({"syscall": "opnat", "errno": "EIO"}),
            "unknown syscall \"opnat\"",
        ),
        (
            json!({"syscall": "getrandom", "errno": "EIO", "path": "/x"}),
            "getrandom takes no path argument",
        ),
        (
            json!({"syscall": "read", "errno": "EIO", "path": "/etc"}),
            "for /proc/sys files only",
        ),
        (
            json!({"syscall": "openat", "errno": "EIO", "port": 80}),
            "port filters work on connect",
        ),
        (
            json!({"syscall": "openat", "errno": "EIO", "path": ""}),
            "must not be empty",
        ),
        (
            json!({"syscall": "getrandom", "errno": "EIO", "device": "8:1"}),
            "getrandom acts on no file",
        ),
        (
            json!({"syscall": "openat", "errno": "EIO", "device": "8"}),
            "expected \"major:minor\"",
        ),
        (
            json!({"syscall": "openat", "errno": "EIO", "device": "4096:0"}),
            "majors are below 4096",
        ),
        (
            json!({"syscall": "openat", "errno": "EIO", "family": "inet"}),
            "openat is not a socket call",
        ),
        (
            json!({"syscall": "socket", "errno": "EIO", "socket_type": "udp"}),
            "unknown variant `udp`",
        ),
        (
            json!({"syscall": "connect", "errno": "EIO", "family": "inet6",
                   "address": "10.0.0.0/8"}),
            "IPv4 prefix",
        ),
    ];
    for (mut f, want) in cases {
        f["type"] = json!("syscall_error");
        let err = d
            .call("inject", fault("bad", &cg, f.clone()))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{f}: {err}");
    }
    // A second rule for the same syscall and cgroup is a conflict.
    let err = d
        .call(
            "inject",
            fault(
                "again",
                &cg,
                json!({"type": "syscall_error", "syscall": "socket", "errno": "EPERM"}),
            ),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("conflict") && err.contains("keep"), "{err}");
    assert_eq!(ops(&cg, &["socket"]), ["EACCES"]);
}

#[test]
fn memory_growth_fails_with_enomem_where_bpf_lsm_exists() {
    let d = Daemon::start_without_interface_pool();
    let cg = TestCgroup::new("sc-memory");
    let sibling = TestCgroup::new("sc-memory-sibling");
    let spec = fault("mem", &cg, json!({"type": "memory_error"}));
    if !d.has_backend("syscall_lsm") {
        let err = d.call("inject", spec).unwrap_err().to_string();
        assert!(
            err.contains("unsupported_kernel") && err.contains("memory_error needs BPF LSM"),
            "{err}"
        );
        return;
    }
    // Each process waits for the flag, then maps 1 MiB and allocates
    // 64 MiB (both mmap); python itself started before the fault.
    const SCRIPT: &str = r#"
import errno, mmap, os, sys, time
print("ready", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
res = []
try:
    mmap.mmap(-1, 1 << 20)
    res.append("ok")
except OSError as e:
    res.append(errno.errorcode[e.errno])
try:
    bytearray(64 << 20)
    res.append("ok")
except MemoryError:
    res.append("MemoryError")
print(" ".join(res), flush=True)
"#;
    let dir = Scratch::new("sc-memory");
    let flag = dir.file("go");
    // Started, and past their imports, before the fault exists.
    let started = |cg: &TestCgroup| {
        use std::io::BufRead as _;
        let mut child = cg.spawn("python3", &["-c", SCRIPT, &flag]);
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        (child, lines)
    };
    let (mut hit, mut hit_out) = started(&cg);
    let (mut miss, mut miss_out) = started(&sibling);
    d.inject(spec);
    std::fs::write(&flag, "").unwrap();
    assert_eq!(hit_out.next().unwrap().unwrap(), "ENOMEM MemoryError");
    assert_eq!(miss_out.next().unwrap().unwrap(), "ok ok");
    let _ = (hit.wait(), miss.wait());
    let (evaluations, activations) = d.counters("mem", "memory_error");
    assert!(
        activations >= 2 && evaluations == activations,
        "{evaluations} {activations}"
    );
}

#[test]
fn a_targeted_cgroups_syscall_latency_is_a_histogram_by_syscall_group() {
    // Without the flag nothing is timed: no tracepoint runs for anyone.
    let plain = Daemon::start_without_interface_pool();
    let cg0 = TestCgroup::new("sc-latency-off");
    plain.inject(fault(
        "watch",
        &cg0,
        json!({"type": "syscall_error", "syscall": "bind", "errno": "EACCES", "port": 1}),
    ));
    assert!(cg0.run("true", &[]).status.success());
    assert!(
        !plain
            .metrics()
            .keys()
            .any(|k| k.starts_with("injectord_syscall_latency")),
        "timed without --syscall-latency"
    );
    drop(plain);
    let d = Daemon::builder()
        .without_interface_pool()
        .args(&["--syscall-latency"])
        .start()
        .expect("starting injectord");
    let cg = TestCgroup::new("sc-latency");
    let sibling = TestCgroup::new("sc-latency-sibling");
    // Any cgroup fault makes its target watched; this one never fires.
    d.inject(fault(
        "watch",
        &cg,
        json!({"type": "syscall_error", "syscall": "bind", "errno": "EACCES", "port": 1}),
    ));
    let script = "import time\nfor _ in range(10): time.sleep(0.02)\nfor _ in range(100): open('/etc/hostname').close()";
    for c in [&cg, &sibling] {
        assert!(c.run("python3", &["-c", script]).status.success());
    }
    let m = d.metrics();
    let series = |name: &str, cgroup: &str, group: &str| {
        m.get(&format!(
            "injectord_syscall_latency_seconds_{name}{{cgroup=\"{cgroup}\",syscalls=\"{group}\"}}"
        ))
        .copied()
    };
    let rel = format!("/{}", cg.rel.trim_start_matches('/'));
    let file_calls =
        series("count", &rel, "file").unwrap_or_else(|| panic!("no file series: {m:?}"));
    assert!(file_calls >= 100.0, "{file_calls}");
    // time.sleep is clock_nanosleep: 10 calls of 20 ms or more.
    let slept = series("sum", &rel, "other").unwrap();
    assert!(slept >= 0.2, "{slept}");
    // Buckets are cumulative and end in +Inf holding every call.
    let inf = m
        .iter()
        .find(|(k, _)| {
            k.starts_with("injectord_syscall_latency_seconds_bucket{")
                && k.contains(&format!("cgroup=\"{rel}\""))
                && k.contains("syscalls=\"file\"")
                && k.contains("le=\"+Inf\"")
        })
        .map(|(_, v)| *v);
    assert_eq!(inf, Some(file_calls), "{m:?}");
    let sibling_rel = format!("/{}", sibling.rel.trim_start_matches('/'));
    assert!(
        series("count", &sibling_rel, "file").is_none(),
        "the sibling is not watched"
    );
    // With its last fault gone, the cgroup is no longer watched.
    d.call("remove", json!({"name": "watch"})).unwrap();
    assert!(series("count", &rel, "file").is_some());
    let m = d.metrics();
    assert!(
        !m.keys().any(|k| k.contains(&format!("cgroup=\"{rel}\""))),
        "{m:?}"
    );
}

/// Asserts that `spec` is refused as unsupported here, with a message
/// holding each of `want`.
fn refused(d: &Daemon, spec: Value, want: &[&str]) {
    let err = d.call("inject", spec).unwrap_err().to_string();
    assert!(err.contains("unsupported_kernel"), "{err}");
    for w in want {
        assert!(err.contains(w), "{w:?} not in: {err}");
    }
    println!("refused as expected: {err}");
}

#[test]
fn a_device_filter_fails_calls_on_that_filesystem_only() {
    let d = Daemon::start_without_interface_pool();
    let cg = TestCgroup::new("sc-device");
    let sibling = TestCgroup::new("sc-device-sibling");
    let data = Filesystem::tmpfs("sc-device-data");
    let other = Filesystem::tmpfs("sc-device-other");
    let dev = data.device();
    println!("data disk {dev}, other filesystem {}", other.device());
    let lsm = d.has_backend("syscall_lsm");
    let kprobe = d.has_backend("syscall_kprobe_override");

    // openat: only the LSM hook sees the file (at the syscall's entry the
    // kernel has not looked the path up yet).
    let spec = fault(
        "open-data",
        &cg,
        json!({"type": "syscall_error", "syscall": "openat", "errno": "EIO", "device": dev}),
    );
    if lsm {
        d.inject(spec);
        assert_eq!(backend_of(&d, "open-data"), "lsm");
        let (on, off, again) = (data.file("f"), other.file("f"), data.file("g"));
        assert_eq!(
            ops(
                &cg,
                &[
                    &format!("open:{on}"),
                    &format!("open:{off}"),
                    &format!("open:{again}")
                ]
            ),
            ["EIO", "ok", "EIO"]
        );
        assert_eq!(ops(&sibling, &[&format!("open:{on}")]), ["ok"]);
        // Only the opens on the data disk were evaluated: python's own
        // opens of its modules are on another filesystem.
        assert_eq!(d.counters("open-data", "syscall_error"), (2, 2));
        d.call("remove", json!({"name": "open-data"})).unwrap();
    } else {
        refused(&d, spec, &["openat", "cannot filter by device"]);
    }

    // read: the kprobe finds the file behind the descriptor, the LSM's
    // file_permission hook sees it.
    std::fs::write(data.file("r"), "on the data disk").unwrap();
    std::fs::write(other.file("r"), "elsewhere").unwrap();
    let spec = fault(
        "read-data",
        &cg,
        json!({"type": "syscall_error", "syscall": "read", "errno": "EIO", "device": dev}),
    );
    if lsm || kprobe {
        d.inject(spec);
        let backend = backend_of(&d, "read-data");
        println!("read with a device filter: {backend}");
        assert_eq!(backend, if kprobe { "kprobe" } else { "lsm" });
        assert_eq!(
            ops(
                &cg,
                &[
                    &format!("read:{}", data.file("r")),
                    &format!("read:{}", other.file("r"))
                ]
            ),
            ["EIO", "ok"]
        );
        assert_eq!(
            ops(&sibling, &[&format!("read:{}", data.file("r"))]),
            ["ok"]
        );
        assert_eq!(d.counters("read-data", "syscall_error"), (1, 1));
    } else {
        refused(&d, spec, &["read", "cannot filter by device"]);
    }

    // fsync: no LSM hook runs inside it; only the kprobe reaches it.
    let spec = fault(
        "fsync-data",
        &cg,
        json!({"type": "syscall_error", "syscall": "fsync", "errno": "EIO", "device": dev}),
    );
    if kprobe {
        d.inject(spec);
        assert_eq!(backend_of(&d, "fsync-data"), "kprobe");
        assert_eq!(
            ops(
                &cg,
                &[
                    &format!("fsync:{}", data.file("s")),
                    &format!("fsync:{}", other.file("s"))
                ]
            ),
            ["EIO", "ok"]
        );
        assert_eq!(d.counters("fsync-data", "syscall_error"), (1, 1));
    } else {
        refused(&d, spec, &["fsync", "no LSM hook runs inside fsync"]);
    }
}

#[test]
fn socket_family_and_type_filters_pick_the_sockets() {
    let d = Daemon::start_without_interface_pool();
    let cg = TestCgroup::new("sc-sockf");
    let sibling = TestCgroup::new("sc-sockf-sibling");
    let lsm = d.has_backend("syscall_lsm");

    // socket(): on every kernel (the kprobe and socket_create read the
    // arguments, cgroup/sock_create the new socket).
    d.inject(fault(
        "no-v6",
        &cg,
        json!({"type": "syscall_error", "syscall": "socket", "errno": "EAFNOSUPPORT",
               "family": "inet6"}),
    ));
    println!("socket() with a family filter: {}", backend_of(&d, "no-v6"));
    assert_eq!(
        ops(
            &cg,
            &[
                "sock:inet6:stream",
                "sock:inet:stream",
                "sock:inet6:dgram",
                "sock:unix:stream"
            ]
        ),
        ["EAFNOSUPPORT", "ok", "EAFNOSUPPORT", "ok"]
    );
    assert_eq!(ops(&sibling, &["sock:inet6:stream"]), ["ok"]);
    assert_eq!(d.counters("no-v6", "syscall_error"), (2, 2));
    d.call("remove", json!({"name": "no-v6"})).unwrap();
    d.inject(fault(
        "no-udp",
        &cg,
        json!({"type": "syscall_error", "syscall": "socket", "errno": "EMFILE",
               "socket_type": "dgram"}),
    ));
    assert_eq!(
        ops(
            &cg,
            &["sock:inet:dgram", "sock:inet:stream", "sock:inet6:dgram"]
        ),
        ["EMFILE", "ok", "EMFILE"]
    );
    d.call("remove", json!({"name": "no-udp"})).unwrap();

    // bind by type: cgroup/bind4 reads the socket's type, the LSM hook the
    // socket's.
    d.inject(fault(
        "tcp-bind",
        &cg,
        json!({"type": "syscall_error", "syscall": "bind", "errno": "EADDRINUSE",
               "socket_type": "stream"}),
    ));
    println!("bind with a type filter: {}", backend_of(&d, "tcp-bind"));
    assert_eq!(
        ops(&cg, &["tcpbind:127.0.0.1:0", "bind:127.0.0.1:0"]),
        ["EADDRINUSE", "ok"]
    );

    // getsockopt by family.
    d.inject(fault(
        "v6-opts",
        &cg,
        json!({"type": "syscall_error", "syscall": "getsockopt", "errno": "ENOPROTOOPT",
               "family": "inet6"}),
    ));
    println!(
        "getsockopt with a family filter: {}",
        backend_of(&d, "v6-opts")
    );
    assert_eq!(
        ops(&cg, &["getsockopt:inet6", "getsockopt:inet"]),
        ["ENOPROTOOPT", "ok"]
    );

    // listen: only the LSM hook sees the socket; no cgroup program runs.
    let spec = fault(
        "v6-listen",
        &cg,
        json!({"type": "syscall_error", "syscall": "listen", "errno": "EADDRINUSE",
               "family": "inet6"}),
    );
    if lsm {
        d.inject(spec);
        assert_eq!(backend_of(&d, "v6-listen"), "lsm");
        assert_eq!(
            ops(&cg, &["listen:inet6", "listen:inet"]),
            ["EADDRINUSE", "ok"]
        );
    } else {
        refused(
            &d,
            spec,
            &["listen", "cgroup programs: none runs inside listen"],
        );
    }

    // cgroup/sock_create runs for IPv4 and IPv6 sockets only: a unix
    // family filter needs a backend that sees every socket.
    let spec = fault(
        "unix",
        &cg,
        json!({"type": "syscall_error", "syscall": "socket", "errno": "EMFILE",
               "family": "unix"}),
    );
    if lsm || d.has_backend("syscall_kprobe_override") {
        d.inject(spec);
        assert_eq!(
            ops(&cg, &["sock:unix:stream", "sock:inet:dgram"]),
            ["EMFILE", "ok"]
        );
    } else {
        refused(
            &d,
            spec,
            &["socket", "IPv4 and IPv6 sockets only, not family unix"],
        );
    }
}
