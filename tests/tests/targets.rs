//! Pod and VM targets, resolved in cgroup trees laid out exactly as kubelet
//! (both cgroup drivers, every QoS class) and libvirt (with and without
//! systemd) lay them out, with real processes in them; and faults that end
//! when their target cgroup goes.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::Child,
    time::{Duration, Instant},
};

use injectord_tests::*;
use serde_json::{Value, json};

fn rand32() -> u32 {
    let mut b = [0u8; 4];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("/dev/urandom");
    u32::from_ne_bytes(b)
}

/// A random pod uid, as the API server makes them (a version 4 UUID).
fn pod_uid() -> String {
    let hex: String = (0..4).map(|_| format!("{:08x}", rand32())).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// A 64-hex-digit container id.
fn container_id() -> String {
    (0..8).map(|_| format!("{:08x}", rand32())).collect()
}

const DRIVERS: [&str; 2] = ["cgroupfs", "systemd"];
const QOS_CLASSES: [&str; 3] = ["guaranteed", "burstable", "besteffort"];

/// Where kubelet puts a pod's cgroup (pkg/kubelet/cm: `pod<uid>` in its
/// QoS class's cgroup; the systemd driver names each level a slice whose
/// name carries the path, with the uid's dashes as underscores).
fn pod_dir(driver: &str, qos: &str, uid: &str) -> String {
    let u = uid.replace('-', "_");
    match (driver, qos) {
        ("cgroupfs", "guaranteed") => format!("kubepods/pod{uid}"),
        ("cgroupfs", q) => format!("kubepods/{q}/pod{uid}"),
        ("systemd", "guaranteed") => format!("kubepods.slice/kubepods-pod{u}.slice"),
        ("systemd", q) => {
            format!("kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{u}.slice")
        }
        _ => unreachable!(),
    }
}

/// A container's cgroup in its pod, as containerd names it.
fn container_dir(driver: &str, id: &str) -> String {
    match driver {
        "systemd" => format!("cri-containerd-{id}.scope"),
        _ => id.to_string(),
    }
}

/// A pod as kubelet and containerd leave it running: its cgroup, and the
/// sandbox (pause) and one workload container, each a cgroup with a
/// process in it.
struct Pod {
    uid: String,
    cgroup: TestCgroup,
    sandbox: TestCgroup,
    app: TestCgroup,
    _procs: Vec<Child>,
}

impl Pod {
    fn start(root: &TestCgroup, driver: &str, qos: &str) -> Self {
        let uid = pod_uid();
        let cgroup = root.child(&pod_dir(driver, qos, &uid));
        let sandbox = cgroup.child(&container_dir(driver, &container_id()));
        let app = cgroup.child(&container_dir(driver, &container_id()));
        let procs = vec![
            sandbox.spawn("sleep", &["600"]),
            app.spawn("sleep", &["600"]),
        ];
        Self {
            uid,
            cgroup,
            sandbox,
            app,
            _procs: procs,
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        for p in &mut self._procs {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

fn connect_fault_on(target: Value, name: &str, port: u16) -> Value {
    json!({"name": name, "target": target,
        "fault": {"type": "connect_error", "errno": "ECONNREFUSED", "port": port}})
}

#[test]
fn pods_resolve_under_both_drivers_and_every_qos_class() {
    let d = Daemon::start_without_interface_pool();
    let root = TestCgroup::new("pods");
    let port = tcp_sink("127.0.0.1:0");
    for driver in DRIVERS {
        for qos in QOS_CLASSES {
            let pod = Pod::start(&root, driver, qos);
            let name = format!("pod-{driver}-{qos}");
            // Upper case is the same uid.
            let id = d.inject(connect_fault_on(
                json!({"pod": pod.uid.to_uppercase()}),
                &name,
                port,
            ));
            let got = d.call("get", json!({ "id": id })).unwrap();
            let what = format!("{driver}/{qos}: {got}");
            assert_eq!(
                got["cgroup"]["path"],
                format!("/{}", pod.cgroup.rel),
                "{what}"
            );
            assert_eq!(got["pod"]["uid"], pod.uid, "{what}");
            assert_eq!(got["pod"]["driver"], driver, "{what}");
            assert_eq!(got["pod"]["qos"], qos, "{what}");
            assert_eq!(got["spec"]["target"], json!({"pod": pod.uid}), "{what}");
            let listed = d.call("list", json!(null)).unwrap();
            assert!(
                listed["faults"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f["name"] == name.as_str()
                        && f["cgroup"]["path"] == format!("/{}", pod.cgroup.rel)),
                "{what}: {listed}"
            );
            let c = pod.app.connects("tcp", "127.0.0.1", port, 3);
            assert_eq!(c.failed("ECONNREFUSED"), 3, "{what}: {c:?}");
            d.call("remove", json!({ "id": id })).unwrap();
        }
    }
}

/// A fault on one pod reaches every container of that pod, and nothing
/// in the sibling pod next to it or outside kubepods.
#[test]
fn a_pod_fault_hits_its_containers_and_nothing_else() {
    let d = Daemon::start_without_interface_pool();
    let root = TestCgroup::new("podscope");
    let outside = root.child("system.slice/vnf-manager.service");
    let port = tcp_sink("127.0.0.1:0");
    for driver in DRIVERS {
        let pod = Pod::start(&root, driver, "burstable");
        let sibling = Pod::start(&root, driver, "burstable");
        let name = format!("refused-{driver}");
        d.inject(connect_fault_on(json!({"pod": pod.uid}), &name, port));
        for (who, cg) in [("the app", &pod.app), ("the sandbox", &pod.sandbox)] {
            let c = cg.connects("tcp", "127.0.0.1", port, 5);
            assert_eq!(c.failed("ECONNREFUSED"), 5, "{driver}: {who}: {c:?}");
        }
        for (who, cg) in [("the sibling pod", &sibling.app), ("outside", &outside)] {
            let c = cg.connects("tcp", "127.0.0.1", port, 5);
            assert_eq!((c.ok, c.total_failed()), (5, 0), "{driver}: {who}: {c:?}");
        }
        assert_eq!(
            d.counters(&name, "connect_error"),
            (10, 10),
            "{driver}: only the pod's 10 connects count"
        );
    }
}

#[test]
fn pod_errors_name_the_uid_and_where_kubelet_would_have_put_it() {
    let d = Daemon::start_without_interface_pool();
    let root = TestCgroup::new("poderr");
    let spec =
        |uid: &str| json!({"target": {"pod": uid}, "fault": {"type": "connect_error", "errno": 1}});
    let err = |uid: &str| -> ErrorResponse {
        let e = d.call("inject", spec(uid)).unwrap_err();
        e.downcast::<ErrorResponse>().expect("an error response")
    };

    let e = err("pod1b2c3d4e-5f60");
    assert_eq!(e.code, "invalid_value", "{}", e.message);
    assert_eq!(e.data["field"], "target.pod");
    assert!(e.message.contains("must be a UUID"), "{}", e.message);

    let uid = pod_uid();
    let u = uid.replace('-', "_");
    let e = err(&uid);
    assert_eq!(e.code, "target_not_found", "{}", e.message);
    assert_eq!(e.data["field"], "target.pod");
    for place in [
        format!("kubepods/pod{uid}"),
        format!("kubepods/burstable/pod{uid}"),
        format!("kubepods/besteffort/pod{uid}"),
        format!("kubepods.slice/kubepods-pod{u}.slice"),
        format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"),
        format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice"),
    ] {
        assert!(e.message.contains(&place), "{place} missing: {}", e.message);
    }

    // The same uid under both drivers (a node whose kubelet changed
    // drivers and left the old tree): which one is meant is not guessed.
    let a = root.child(&pod_dir("cgroupfs", "burstable", &uid));
    let b = root.child(&pod_dir("systemd", "besteffort", &uid));
    let e = err(&uid);
    assert_eq!(e.code, "ambiguous_target", "{}", e.message);
    assert!(
        e.message.contains(&a.rel) && e.message.contains(&b.rel),
        "{}",
        e.message
    );
    let candidates = e.data["details"]["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 2, "{candidates:?}");
    // A cgroup target picks one.
    d.inject(json!({"target": {"cgroup": a.rel}, "fault": {"type": "connect_error", "errno": 1}}));
}

/// A copy of `sleep` named as QEMU's binary, so that a process of it is
/// known by name as a VM's emulator is; removed on drop.
struct FakeQemu {
    dir: PathBuf,
    bin: PathBuf,
}

impl FakeQemu {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("injectord-fake-qemu"));
        fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("qemu-system-x86_64");
        let sleep = ["/bin/sleep", "/usr/bin/sleep"]
            .into_iter()
            .find(|p| fs::metadata(p).is_ok())
            .expect("sleep(1)");
        fs::copy(sleep, &bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir, bin }
    }

    /// Starts it in `cg` and waits until it is QEMU by name (the shell
    /// that puts it there has exec'd).
    fn start_in(&self, cg: &TestCgroup) -> Child {
        let child = cg.spawn(self.bin.to_str().unwrap(), &["600"]);
        let comm = format!("/proc/{}/comm", child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fs::read_to_string(&comm)
            .unwrap_or_default()
            .starts_with("qemu-system")
        {
            assert!(Instant::now() < deadline, "{comm} never became qemu");
            std::thread::sleep(Duration::from_millis(5));
        }
        child
    }
}

impl Drop for FakeQemu {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A VM's cgroups as libvirt lays them out: (layout, the machine cgroup's
/// path, the cgroup QEMU's main thread is in).
fn vm_layouts(id: u32, machine_tail: &str) -> Vec<(&'static str, String, String)> {
    let scope = format!(
        "machine.slice/machine-qemu\\x2d{id}\\x2d{}.scope",
        machine_tail.replace('-', "\\x2d")
    );
    let plain = format!("machine/qemu-{id}-{machine_tail}.libvirt-qemu");
    vec![
        // Newer libvirt under systemd (virCgroupNewNested): a "libvirt" cgroup of its
        // own inside the scope that systemd-machined made.
        (
            "systemd",
            scope.clone(),
            format!("{scope}/libvirt/emulator"),
        ),
        // Older libvirt under systemd.
        ("systemd", scope.clone(), format!("{scope}/emulator")),
        // libvirt without systemd.
        ("cgroupfs", plain.clone(), format!("{plain}/emulator")),
    ]
}

#[test]
fn vm_targets_resolve_in_both_libvirt_layouts_and_name_their_qemu() {
    let d = Daemon::start_without_interface_pool();
    let qemu = FakeQemu::new();
    let port = tcp_sink("127.0.0.1:0");
    let outside = TestCgroup::new("vm-outside");
    for n in 0..vm_layouts(0, "").len() {
        let root = TestCgroup::new("vms");
        // libvirt drops the '_' and the space, keeps the '-' and the '.'.
        let tag = unique("edge");
        let name = format!("vnf_{tag} .lab");
        let tail = format!("vnf{tag}.lab");
        let id = 40 + n as u32;
        let (driver, scope, emulator) = vm_layouts(id, &tail).remove(n);
        let emulator = root.child(&emulator);
        let vcpus: Vec<TestCgroup> = ["vcpu0", "vcpu1"]
            .iter()
            .map(|v| {
                TestCgroup::at(&format!(
                    "{}/{v}",
                    emulator.rel.trim_end_matches("/emulator")
                ))
            })
            .collect();
        let mut qemu_proc = qemu.start_in(&emulator);
        // Another VM on the same host, with a name that is a prefix of
        // this one's.
        let other_tail = format!("vnf{tag}");
        let (_, _, other_emulator) = vm_layouts(id + 100, &other_tail)
            .into_iter()
            .nth(n)
            .unwrap();
        let other_emulator = root.child(&other_emulator);
        let mut other_proc = qemu.start_in(&other_emulator);
        assert_eq!(vcpus.len(), 2);

        let fault = format!("vm-{n}");
        let fid = d.inject(connect_fault_on(json!({ "vm": name }), &fault, port));
        let got = d.call("get", json!({ "id": fid })).unwrap();
        let what = format!("{driver} layout {n}: {got}");
        assert_eq!(
            got["cgroup"]["path"],
            format!("/{}/{scope}", root.rel),
            "{what}"
        );
        assert_eq!(got["vm"]["name"], name, "{what}");
        assert_eq!(got["vm"]["machine"], format!("qemu-{id}-{tail}"), "{what}");
        assert_eq!(got["vm"]["domain_id"], id, "{what}");
        assert_eq!(got["vm"]["driver"], driver, "{what}");
        assert_eq!(got["vm"]["qemu_pid"], qemu_proc.id(), "{what}");

        let c = emulator.connects("tcp", "127.0.0.1", port, 4);
        assert_eq!(c.failed("ECONNREFUSED"), 4, "{what}: {c:?}");
        for (who, cg) in [("the other VM", &other_emulator), ("outside", &outside)] {
            let c = cg.connects("tcp", "127.0.0.1", port, 4);
            assert_eq!((c.ok, c.total_failed()), (4, 0), "{what}: {who}: {c:?}");
        }
        d.call("remove", json!({ "id": fid })).unwrap();
        for p in [&mut qemu_proc, &mut other_proc] {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

#[test]
fn vm_names_libvirt_makes_alike_are_ambiguous_and_missing_ones_say_where_they_looked() {
    let d = Daemon::start_without_interface_pool();
    let root = TestCgroup::new("vmclash");
    let tag = unique("web").replace('-', "");
    // "web_1..." and "web1..." both become the machine name qemu-N-web1...
    let a = root.child(&format!(
        "machine.slice/machine-qemu\\x2d5\\x2d{tag}.scope/libvirt/emulator"
    ));
    let b = root.child(&format!("machine/qemu-6-{tag}.libvirt-qemu/emulator"));
    let spec =
        |vm: &str| json!({"target": {"vm": vm}, "fault": {"type": "connect_error", "errno": 1}});
    for vm in [tag.clone(), format!("{}_{}", &tag[..3], &tag[3..])] {
        let e = d.call("inject", spec(&vm)).unwrap_err();
        let e = e.downcast_ref::<ErrorResponse>().unwrap();
        assert_eq!(e.code, "ambiguous_target", "{vm}: {}", e.message);
        assert_eq!(e.data["field"], "target.vm");
        let rel = |cg: &TestCgroup| cg.rel.rsplit_once('/').map(|(p, _)| p.to_string());
        for scope in [rel(&a), rel(&b)] {
            let scope = scope.unwrap();
            let scope = scope.trim_end_matches("/libvirt");
            assert!(e.message.contains(scope), "{scope}: {}", e.message);
        }
        let candidates = e.data["details"]["candidates"].as_array().unwrap();
        assert_eq!(candidates.len(), 2, "{candidates:?}");
        assert!(
            candidates
                .iter()
                .all(|c| c["vm"]["machine"].as_str().unwrap().ends_with(&tag))
        );
    }
    let missing = format!("gone-{tag}");
    let e = d.call("inject", spec(&missing)).unwrap_err();
    let e = e.downcast_ref::<ErrorResponse>().unwrap();
    assert_eq!(e.code, "target_not_found", "{}", e.message);
    let escaped = missing.replace('-', "\\x2d");
    for place in [
        format!("machine-qemu\\x2d<id>\\x2d{escaped}.scope"),
        format!("qemu-<id>-{missing}.libvirt-qemu"),
    ] {
        assert!(e.message.contains(&place), "{place}: {}", e.message);
    }
}

/// The `injectord_faults_ended_total` sample for `reason`.
fn ended(d: &Daemon, reason: &str) -> u64 {
    let key = format!("injectord_faults_ended_total{{reason=\"{reason}\"}}");
    d.metrics()
        .get(&key)
        .copied()
        .unwrap_or_else(|| panic!("{key} missing")) as u64
}

fn listed(d: &Daemon, name: &str) -> bool {
    d.call("list", json!(null)).unwrap()["faults"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == name)
}

/// Waits up to 20 s for the fault to leave `list` (the check runs every
/// 250 ms; a TCG guest on a loaded machine once took over 2 s, and may
/// stall for seconds); how long it took.
fn gone_soon(d: &Daemon, name: &str) -> Duration {
    let start = Instant::now();
    while listed(d, name) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{name} still listed 20 s after its cgroup was removed\n{}",
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

#[test]
fn a_fault_ends_when_its_cgroup_is_removed_and_a_new_cgroup_there_is_not_hit() {
    let d = Daemon::start_without_interface_pool();
    let root = TestCgroup::new("gone");
    let parking = root.child("parking");
    let a = root.child("a");
    let b = root.child("b");
    let port = tcp_sink("127.0.0.1:0");
    let mut worker = a.spawn("sleep", &["600"]);
    d.inject(connect_fault_on(json!({"cgroup": a.rel}), "on-a", port));
    d.inject(connect_fault_on(json!({"cgroup": b.rel}), "on-b", port));
    assert_eq!(
        a.connects("tcp", "127.0.0.1", port, 2)
            .failed("ECONNREFUSED"),
        2
    );
    let before = ended(&d, "target_gone");

    // The cgroup empties (its process moves out) and is removed, with our
    // programs still attached to it.
    fs::write(parking.path.join("cgroup.procs"), worker.id().to_string()).unwrap();
    fs::remove_dir(&a.path).unwrap_or_else(|e| panic!("rmdir {}: {e}", a.path.display()));
    let took = gone_soon(&d, "on-a");
    println!("the fault ended {took:?} after its cgroup was removed");
    assert_eq!(ended(&d, "target_gone"), before + 1);
    let logs = d.logs();
    let warning = logs
        .lines()
        .find(|l| l.contains("WARN") && l.contains("on-a"))
        .unwrap_or_else(|| panic!("no warning names the fault:\n{logs}"));
    assert!(warning.contains(&format!("/{}", a.rel)), "{warning}");
    assert!(warning.contains("gone"), "{warning}");
    let status = d.call("status", json!(null)).unwrap();
    assert_eq!(
        status["faults_ended"]["target_gone"],
        before + 1,
        "{status}"
    );

    // A new cgroup at the same path is another cgroup: not hit.
    fs::create_dir(&a.path).unwrap();
    assert_eq!(
        a.bpf_programs(),
        "",
        "nothing is attached to the new cgroup"
    );
    let c = a.connects("tcp", "127.0.0.1", port, 3);
    assert_eq!((c.ok, c.total_failed()), (3, 0), "{c:?}");
    // The other fault is untouched.
    assert!(listed(&d, "on-b"));
    assert_eq!(
        b.connects("tcp", "127.0.0.1", port, 3)
            .failed("ECONNREFUSED"),
        3
    );

    // The other ends are counted too.
    let (removed, ttl) = (ended(&d, "removed"), ended(&d, "ttl"));
    d.call("remove", json!({"name": "on-b"})).unwrap();
    assert_eq!(ended(&d, "removed"), removed + 1);
    let mut short = connect_fault_on(json!({"cgroup": b.rel}), "short", port);
    short["duration"] = json!("200ms");
    d.inject(short);
    let start = Instant::now();
    while ended(&d, "ttl") == ttl {
        assert!(
            // Polled: room for a stalled TCG guest.
            start.elapsed() < Duration::from_secs(15),
            "the TTL end was not counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!listed(&d, "short"));
    assert_eq!(ended(&d, "target_gone"), before + 1);
    let _ = worker.kill();
    let _ = worker.wait();
}

/// The pod ends: kubelet kills its containers' processes and removes
/// their cgroups, then the pod's. Every fault on the pod ends with it; a
/// fault on the pod next to it stays.
#[test]
fn faults_on_a_pod_end_with_the_pod() {
    let d = Daemon::start_without_interface_pool();
    let root = TestCgroup::new("podends");
    let port = tcp_sink("127.0.0.1:0");
    for driver in DRIVERS {
        let mut pod = Pod::start(&root, driver, "besteffort");
        let neighbour = Pod::start(&root, driver, "besteffort");
        let (refused, other, next) = (
            format!("refused-{driver}"),
            format!("other-port-{driver}"),
            format!("neighbour-{driver}"),
        );
        d.inject(connect_fault_on(json!({"pod": pod.uid}), &refused, port));
        d.inject(connect_fault_on(json!({"pod": pod.uid}), &other, port + 1));
        d.inject(connect_fault_on(json!({"pod": neighbour.uid}), &next, port));
        let before = ended(&d, "target_gone");

        for p in &mut pod._procs {
            p.kill().unwrap();
            p.wait().unwrap();
        }
        for cg in [&pod.sandbox, &pod.app, &pod.cgroup] {
            // A killed process leaves its cgroup a moment after wait()
            // (polled: room for a stalled TCG guest).
            let deadline = Instant::now() + Duration::from_secs(15);
            while let Err(e) = fs::remove_dir(&cg.path) {
                assert!(
                    Instant::now() < deadline,
                    "rmdir {}: {e}",
                    cg.path.display()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        gone_soon(&d, &refused);
        gone_soon(&d, &other);
        assert_eq!(ended(&d, "target_gone"), before + 2, "{driver}");
        assert!(listed(&d, &next), "{driver}");
        let c = neighbour.app.connects("tcp", "127.0.0.1", port, 2);
        assert_eq!(c.failed("ECONNREFUSED"), 2, "{driver}: {c:?}");
        // Before the neighbour's cgroups go with it, so that its end is
        // not counted in the next round.
        d.call("remove", json!({ "name": next })).unwrap();
    }
}
