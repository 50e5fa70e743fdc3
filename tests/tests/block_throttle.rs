//! io_throttle: a cgroup's direct I/O on a loop device is held to the
//! bandwidth and IOPS limits through the cgroup I/O controller this kernel
//! has (v2 `io.max`, or a v1 blkio cgroup on the hybrid host), a sibling
//! is not, and every file the fault wrote reads as before once it ends:
//! on remove, TTL expiry, SIGTERM, SIGKILL of the daemon and SIGKILL of
//! its process group. A kernel without the controller must refuse it,
//! naming why.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Stdio},
    time::{Duration, Instant},
};

use injectord_tests::{
    workload::{LoopDevice, python_command},
    *,
};
use serde_json::{Value, json};

/// Reads commands `read|write BS COUNT WARM` from stdin and does them
/// with O_DIRECT on the device (argv[1]), from offset 0 (wrapping at its
/// size): WARM operations first, unmeasured (they take the burst a
/// throttle grants a cgroup that was idle), then COUNT measured ones;
/// prints `{"bytes": .., "ops": .., "secs": ..}` for each.
const WORKER: &str = r#"
import json, mmap, os, sys, time
dev = sys.argv[1]
size = os.stat(dev).st_size or (64 << 20)
fd_size = os.open(dev, os.O_RDONLY)
size = os.lseek(fd_size, 0, os.SEEK_END)
os.close(fd_size)
print("ready", flush=True)
for line in sys.stdin:
    op, bs, count, warm = line.split()
    bs, count, warm = int(bs), int(count), int(warm)
    buf = mmap.mmap(-1, bs)
    buf.write(b"\x5a" * bs)
    fd = os.open(dev, (os.O_WRONLY if op == "write" else os.O_RDONLY) | os.O_DIRECT)
    off = 0
    for i in range(warm + count):
        if i == warm:
            t0 = time.monotonic()
        if op == "write":
            n = os.pwritev(fd, [buf], off)
        else:
            n = os.preadv(fd, [buf], off)
        assert n == bs, n
        off = (off + bs) % size
    secs = time.monotonic() - t0
    os.close(fd)
    print(json.dumps({"bytes": bs * count, "ops": count, "secs": secs}), flush=True)
"#;

/// A python process in a cgroup doing direct I/O on command.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    fn start(cg: &TestCgroup, dev: &str) -> Self {
        let mut child = python_command(cg, "python3", WORKER, &[dev])
            .stdin(Stdio::piped())
            .spawn()
            .expect("python3");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "worker did not start");
        Self {
            child,
            stdin,
            stdout,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Does `count` direct `op`s of `bs` bytes, after a tenth as many
    /// unmeasured: (bytes/s, ops/s, seconds).
    fn run(&mut self, op: &str, bs: u64, count: u64) -> (f64, f64, f64) {
        writeln!(self.stdin, "{op} {bs} {count} {}", count / 10).unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("worker said {line:?}: {e}"));
        let secs = v["secs"].as_f64().unwrap();
        (
            v["bytes"].as_f64().unwrap() / secs,
            v["ops"].as_f64().unwrap() / secs,
            secs,
        )
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lock ([`serial`]) each test of this file holds throughout. On pure
/// v2 a throttle may enable `io` on the shared ancestors of every test
/// cgroup (the root, `injectord-tests`) and disable it when it ends, which
/// would pull the controller from under another test's throttle; two
/// daemons on one host share that limit (see
/// family/block/throttle/v2.rs).
const ONE_AT_A_TIME: &str = "io-throttle";

const MIB: u64 = 1 << 20;

fn within(measured: f64, limit: f64, what: &str) {
    let err = (measured - limit).abs() / limit;
    println!(
        "{what}: {measured:.0}/s for a limit of {limit:.0}/s ({:+.1}%)",
        100.0 * (measured - limit) / limit
    );
    assert!(
        err <= 0.10,
        "{what}: {measured:.0}/s is not within 10% of {limit:.0}/s"
    );
}

fn unlimited(measured: f64, limit: f64, what: &str) {
    println!("{what}: {measured:.0}/s (limit elsewhere {limit:.0}/s)");
    assert!(
        measured > 2.0 * limit,
        "{what}: {measured:.0}/s looks limited (limit {limit:.0}/s)"
    );
}

/// Which controller the daemon says it uses (`"v2"` or `"v1"`), or why
/// none (then every io_throttle must be refused, naming it).
fn controller(d: &Daemon) -> Result<&'static str, String> {
    let caps = d.call("capabilities", Value::Null).unwrap();
    let c = caps["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "io_throttle")
        .expect("an io_throttle capability")
        .clone();
    let detail = c["detail"].as_str().unwrap().to_string();
    println!("io_throttle capability: {c}");
    if c["available"] != true {
        return Err(detail);
    }
    if detail.starts_with("cgroup v2 io.max") {
        Ok("v2")
    } else {
        assert!(detail.starts_with("cgroup v1 blkio"), "{detail}");
        Ok("v1")
    }
}

fn v1_blkio_mount() -> Option<PathBuf> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 3 && f[2] == "cgroup" && f[3].split(',').any(|o| o == "blkio"))
                .then(|| PathBuf::from(f[1]))
        })
}

fn read_or_absent(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| format!("<{e}>"))
}

/// Every file a throttle on `cg` may write, as text, to compare byte for
/// byte: v2: the target's io.max and each ancestor's subtree_control; v1:
/// the processes' blkio cgroups, the device's lines of the v1 root's
/// throttle files (the home in these tests) and whether
/// the blkio cgroup a throttle on `cg` makes exists.
fn snapshot(cg: &TestCgroup, pids: &[u32], dev: &str) -> String {
    let mut out = String::new();
    out += &format!("io.max: {}\n", read_or_absent(&cg.path.join("io.max")));
    let mount = cgroup2_mount();
    let mut p = cg.path.parent();
    while let Some(dir) = p {
        out += &format!(
            "{}/cgroup.subtree_control: {}\n",
            dir.display(),
            read_or_absent(&dir.join("cgroup.subtree_control"))
        );
        if dir == mount {
            break;
        }
        p = dir.parent();
    }
    for pid in pids {
        let cg_line = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        out += &format!("{pid}: {cg_line}");
    }
    if let Some(v1) = v1_blkio_mount() {
        for f in [
            "blkio.throttle.read_bps_device",
            "blkio.throttle.write_bps_device",
            "blkio.throttle.read_iops_device",
            "blkio.throttle.write_iops_device",
        ] {
            // The device's line only: tests run in parallel on the host.
            let text = read_or_absent(&v1.join(f));
            let line = text.lines().find(|l| l.starts_with(&format!("{dev} ")));
            out += &format!("{f}: {line:?}\n");
        }
        // The one a throttle on `cg` makes (tests run in parallel on the
        // host: others' are theirs).
        let id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cg.path).unwrap());
        let ours = v1.join(format!("injectord-throttle-{id}"));
        out += &format!("{}: {}\n", ours.display(), ours.exists());
    }
    out
}

/// Waits (up to 15 s: polled, with room for a stalled TCG guest) until
/// [`snapshot`] reads `before` again.
fn wait_for_snapshot(cg: &TestCgroup, pids: &[u32], dev: &str, before: &str, what: &str) {
    let t = Instant::now();
    loop {
        let now = snapshot(cg, pids, dev);
        if now == before {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "after {what}, not restored:\n{now}\nwas:\n{before}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("after {what}: restored in {:?}", t.elapsed());
}

fn throttle(cg: &TestCgroup, name: &str, fault: Value) -> Value {
    json!({"name": name, "target": {"cgroup": cg.rel}, "fault": fault})
}

/// (code, message) of a refused call.
fn refusal(d: &Daemon, params: Value) -> (String, String) {
    match d.call("inject", params) {
        Ok(v) => panic!("inject unexpectedly succeeded: {v}"),
        Err(e) => {
            let r = e
                .downcast_ref::<ErrorResponse>()
                .unwrap_or_else(|| panic!("not an error response: {e:#}"));
            (r.code.clone(), r.message.clone())
        }
    }
}

/// Where the kernel has no controller: the refusal names it; true if so
/// (the caller has nothing more to check).
fn refused_without_controller(d: &Daemon, cg: &TestCgroup, dev: &str) -> bool {
    match controller(d) {
        Ok(_) => false,
        Err(why) => {
            let (code, msg) = refusal(
                d,
                throttle(
                    cg,
                    "nope",
                    json!({"type": "io_throttle", "device": dev, "bps": MIB}),
                ),
            );
            assert_eq!(code, "unsupported_kernel", "{msg}");
            assert!(
                msg.contains(&why) && (msg.contains("io") || msg.contains("blkio")),
                "{msg}"
            );
            println!("refused as expected: {msg}");
            true
        }
    }
}

#[test]
fn bandwidth_is_held_to_the_limit_for_the_target_only_and_remove_restores_every_file() {
    let _one_at_a_time = serial(ONE_AT_A_TIME);
    let d = Daemon::start_without_interface_pool();
    let disk = LoopDevice::new("thr-bps", 64);
    let cg = TestCgroup::new("thr-bps");
    let sibling = TestCgroup::new("thr-bps-sib");
    if refused_without_controller(&d, &cg, &disk.dev) {
        return;
    }
    let mut w = Worker::start(&cg, &disk.dev);
    let mut s = Worker::start(&sibling, &disk.dev);
    let before = snapshot(&cg, &[w.pid(), s.pid()], &disk.numbers());
    let limit = 4 * MIB;
    d.inject(throttle(
        &cg,
        "bps",
        json!({"type": "io_throttle", "device": disk.dev, "bps": limit}),
    ));
    let f = d.call("get", json!({"name": "bps"})).unwrap();
    println!("get: {f}");
    assert!(
        f["controller"].as_str().unwrap().starts_with("cgroup v"),
        "{f}"
    );
    assert!(!f["files"].as_array().unwrap().is_empty(), "{f}");
    assert_eq!(f["device"], disk.numbers(), "{f}");
    // 10 MiB at 4 MiB/s: about 2.5 s each way.
    let (wbps, _, _) = w.run("write", 64 << 10, 160);
    within(wbps, limit as f64, "target's direct writes");
    let (rbps, _, _) = w.run("read", 64 << 10, 160);
    within(rbps, limit as f64, "target's direct reads");
    let (sw, _, _) = s.run("write", 64 << 10, 160);
    unlimited(sw, limit as f64, "sibling's direct writes");
    let (sr, _, _) = s.run("read", 64 << 10, 160);
    unlimited(sr, limit as f64, "sibling's direct reads");
    // A process that joins the target after the inject is held too (at
    // once on v2; within the sweep on v1).
    let mut late = Worker::start(&cg, &disk.dev);
    std::thread::sleep(Duration::from_millis(500));
    let (lw, _, _) = late.run("write", 64 << 10, 160);
    within(lw, limit as f64, "late joiner's direct writes");
    // One that leaves the target is not held any more (at once on v2;
    // within the sweep on v1).
    std::fs::write(sibling.path.join("cgroup.procs"), late.pid().to_string()).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (gone, _, _) = late.run("write", 64 << 10, 160);
    unlimited(
        gone,
        limit as f64,
        "direct writes of a process that left the target",
    );
    drop(late);
    d.call("remove", json!({"name": "bps"})).unwrap();
    let after = snapshot(&cg, &[w.pid(), s.pid()], &disk.numbers());
    assert_eq!(before, after, "remove must restore every file exactly");
    let (wbps, _, _) = w.run("write", 64 << 10, 160);
    unlimited(wbps, limit as f64, "target's direct writes after remove");
}

#[test]
fn iops_limit_reads_only_and_ttl_expiry_restores() {
    let _one_at_a_time = serial(ONE_AT_A_TIME);
    let d = Daemon::start_without_interface_pool();
    let disk = LoopDevice::new("thr-iops", 64);
    let cg = TestCgroup::new("thr-iops");
    if refused_without_controller(&d, &cg, &disk.dev) {
        return;
    }
    let mut w = Worker::start(&cg, &disk.dev);
    let before = snapshot(&cg, &[w.pid()], &disk.numbers());
    let iops = 100;
    let started = Instant::now();
    let mut spec = throttle(
        &cg,
        "iops",
        json!({"type": "io_throttle", "device": disk.numbers(), "op": "read", "iops": iops}),
    );
    spec["duration"] = json!("9s");
    d.inject(spec);
    let f = d.call("get", json!({"name": "iops"})).unwrap();
    assert_eq!(f["limits"], json!({"riops": iops}), "{f}");
    // 250 reads of 4 KiB at 100/s: about 2.5 s.
    let (_, riops, _) = w.run("read", 4096, 250);
    within(riops, iops as f64, "target's direct reads (iops)");
    let (_, wiops, _) = w.run("write", 4096, 250);
    unlimited(
        wiops,
        iops as f64,
        "target's direct writes under a read limit (iops)",
    );
    // The TTL ends it.
    let deadline = started + Duration::from_secs(30);
    loop {
        let list = d.call("list", Value::Null).unwrap();
        if list.as_array().is_some_and(Vec::is_empty)
            || list["faults"].as_array().is_some_and(Vec::is_empty)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fault outlived its duration: {list}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("expired after {:?}", started.elapsed());
    // The table lets the fault go first, then undoes it.
    wait_for_snapshot(&cg, &[w.pid()], &disk.numbers(), &before, "TTL expiry");
    let (_, riops, _) = w.run("read", 4096, 250);
    unlimited(riops, iops as f64, "target's direct reads after expiry");
}

/// Injects a throttle, ends the daemon with `end`, and checks that the
/// files read as before within `limit` (the keeper's work).
fn ends_with(d: &mut Daemon, end: impl FnOnce(&mut Daemon), what: &str) {
    let disk = LoopDevice::new("thr-kill", 64);
    let cg = TestCgroup::new("thr-kill");
    if refused_without_controller(d, &cg, &disk.dev) {
        return;
    }
    let w = Worker::start(&cg, &disk.dev);
    let before = snapshot(&cg, &[w.pid()], &disk.numbers());
    d.inject(throttle(
        &cg,
        "k",
        json!({"type": "io_throttle", "device": disk.dev, "bps": MIB, "iops": 50}),
    ));
    assert_ne!(
        before,
        snapshot(&cg, &[w.pid()], &disk.numbers()),
        "the throttle changed nothing"
    );
    end(d);
    wait_for_snapshot(&cg, &[w.pid()], &disk.numbers(), &before, what);
    // Nothing is left for the next start to undo.
    d.restart().unwrap();
    let status = d.call("status", Value::Null).unwrap();
    assert_eq!(status["recovered"]["undone"], 0, "{status}");
    assert_eq!(status["recovered"]["failed"], 0, "{status}");
    assert_eq!(before, snapshot(&cg, &[w.pid()], &disk.numbers()));
}

#[test]
fn a_killed_daemon_cgroup_is_undone_by_the_next_start_before_it_serves() {
    let _one_at_a_time = serial(ONE_AT_A_TIME);
    let unit = TestCgroup::new("injectord-unit");
    let mut d = Daemon::builder()
        .without_interface_pool()
        .in_cgroup(&unit.path)
        .start()
        .unwrap();
    let disk = LoopDevice::new("thr-unit", 64);
    let cg = TestCgroup::new("thr-unit");
    if refused_without_controller(&d, &cg, &disk.dev) {
        return;
    }
    let w = Worker::start(&cg, &disk.dev);
    let before = snapshot(&cg, &[w.pid()], &disk.numbers());
    d.inject(throttle(
        &cg,
        "k",
        json!({"type": "io_throttle", "device": disk.dev, "bps": MIB}),
    ));
    let during = snapshot(&cg, &[w.pid()], &disk.numbers());
    assert_ne!(before, during, "the throttle changed nothing");
    // The daemon, its reaper and its keeper: a service's whole cgroup.
    std::fs::write(unit.path.join("cgroup.kill"), "1").unwrap();
    d.wait();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        during,
        snapshot(&cg, &[w.pid()], &disk.numbers()),
        "nothing is left to undo it until the next start"
    );
    d.restart().unwrap();
    assert_eq!(
        before,
        snapshot(&cg, &[w.pid()], &disk.numbers()),
        "the next start must undo it before it serves"
    );
    let status = d.call("status", Value::Null).unwrap();
    println!("recovered: {}", status["recovered"]);
    assert!(
        status["recovered"]["undone"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert_eq!(status["recovered"]["failed"], 0, "{status}");
}

#[test]
fn sigterm_restores_every_file() {
    let _one_at_a_time = serial(ONE_AT_A_TIME);
    let mut d = Daemon::start_without_interface_pool();
    ends_with(
        &mut d,
        |d| {
            d.signal(libc::SIGTERM);
            assert!(d.wait().success());
        },
        "SIGTERM",
    );
}

#[test]
fn sigkill_of_the_daemon_restores_every_file() {
    let _one_at_a_time = serial(ONE_AT_A_TIME);
    let mut d = Daemon::start_without_interface_pool();
    ends_with(
        &mut d,
        |d| {
            d.signal(libc::SIGKILL);
            d.wait();
        },
        "SIGKILL of the daemon",
    );
}

#[test]
fn sigkill_of_the_process_group_restores_every_file() {
    let _one_at_a_time = serial(ONE_AT_A_TIME);
    let mut d = Daemon::builder()
        .without_interface_pool()
        .own_process_group()
        .start()
        .unwrap();
    ends_with(
        &mut d,
        |d| {
            d.signal_group(libc::SIGKILL);
            d.wait();
        },
        "SIGKILL of the daemon's process group",
    );
}

#[test]
fn bad_throttles_get_specific_errors() {
    let _one_at_a_time = serial(ONE_AT_A_TIME);
    let d = Daemon::start_without_interface_pool();
    let disk = LoopDevice::new("thr-bad", 16);
    let cg = TestCgroup::new("thr-bad");
    let spec = |fault: Value| throttle(&cg, "bad", fault);
    let (code, msg) = refusal(
        &d,
        spec(json!({"type": "io_throttle", "device": "4095:1", "bps": MIB})),
    );
    assert_eq!(code, "invalid_value", "{msg}");
    println!("{code}: {msg}");
    assert!(msg.contains("no block device 4095:1"), "{msg}");
    let (code, msg) = refusal(
        &d,
        spec(json!({"type": "io_throttle", "device": "/dev/nonexistent", "bps": MIB})),
    );
    assert_eq!(code, "invalid_value", "{msg}");
    println!("{code}: {msg}");
    assert!(msg.contains("/dev/nonexistent"), "{msg}");
    for (fault, want_code, want_text) in [
        (
            json!({"type": "io_throttle", "device": disk.dev, "bps": 0}),
            "invalid_value",
            "fault.bps: invalid value: 0 would stop all I/O",
        ),
        (
            json!({"type": "io_throttle", "device": disk.dev}),
            "invalid_value",
            "io_throttle needs bps, iops or both",
        ),
        (
            json!({"type": "io_throttle", "device": disk.dev, "iops": 10, "op": "sideways"}),
            "invalid_value",
            "fault.op",
        ),
    ] {
        let (code, msg) = refusal(&d, spec(fault));
        println!("{code}: {msg}");
        assert_eq!(code, want_code, "{msg}");
        assert!(msg.contains(want_text), "{msg}");
    }
    if refused_without_controller(&d, &cg, &disk.dev) {
        return;
    }
    // The root cgroup is refused.
    let (code, msg) = refusal(
        &d,
        json!({"name": "root", "target": {"cgroup": "/"}, "force": true,
               "fault": {"type": "io_throttle", "device": disk.dev, "bps": MIB}}),
    );
    assert_eq!(code, "unsupported_target", "{msg}");
    // A second throttle on the same cgroup and device conflicts.
    d.inject(spec(
        json!({"type": "io_throttle", "device": disk.dev, "bps": MIB}),
    ));
    let (code, msg) = refusal(
        &d,
        throttle(
            &cg,
            "again",
            json!({"type": "io_throttle", "device": disk.numbers(), "iops": 10}),
        ),
    );
    assert_eq!(code, "conflict", "{msg}");
    assert!(
        msg.contains("\"bad\"") && msg.contains(&disk.numbers()),
        "{msg}"
    );
    println!("conflict: {msg}");
}

/// The device's line of a v2 `io.max` ("" when it has none).
fn io_max_line(cg: &TestCgroup, dev: &str) -> String {
    std::fs::read_to_string(cg.path.join("io.max"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(&format!("{dev} ")))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_tighter_limit_set_before_is_kept_and_the_previous_value_comes_back_exactly() {
    let _one_at_a_time = serial(ONE_AT_A_TIME);
    let d = Daemon::start_without_interface_pool();
    let disk = LoopDevice::new("thr-prev", 64);
    let cg = TestCgroup::new("thr-prev");
    let Ok(kind) = controller(&d) else {
        assert!(refused_without_controller(&d, &cg, &disk.dev));
        return;
    };
    let dev = disk.numbers();
    let tighter = 2 * MIB;
    let limit = 4 * MIB;
    // Someone else's limits on the device: writes at 2 MiB/s, and reads
    // at a million IOPS (a key the fault does not set).
    let mut v1_home = None;
    let undo_setup: Box<dyn Fn()> = if kind == "v2" {
        // Delegate io down to the target ourselves (root first).
        let mount = cgroup2_mount();
        let mut chain = Vec::new();
        let mut enabled = Vec::new();
        let mut p = cg.path.parent();
        while let Some(dir) = p {
            chain.push(dir.to_path_buf());
            if dir == mount {
                break;
            }
            p = dir.parent();
        }
        for dir in chain.iter().rev() {
            let sc = dir.join("cgroup.subtree_control");
            if !std::fs::read_to_string(&sc)
                .unwrap()
                .split_whitespace()
                .any(|c| c == "io")
            {
                std::fs::write(&sc, "+io").unwrap();
                enabled.push(sc);
            }
        }
        std::fs::write(
            cg.path.join("io.max"),
            format!("{dev} wbps={tighter} riops=1000000"),
        )
        .unwrap();
        let (path, dev2) = (cg.path.clone(), dev.clone());
        Box::new(move || {
            let _ = std::fs::write(path.join("io.max"), format!("{dev2} wbps=max riops=max"));
            for sc in enabled.iter().rev() {
                let _ = std::fs::write(sc, "-io");
            }
        })
    } else {
        // A blkio cgroup of the test's own holds the worker (its home):
        // the fault's blkio cgroup starts with a copy of its limits.
        let home = v1_blkio_mount().unwrap().join(unique("thr-prev-home"));
        std::fs::create_dir(&home).unwrap();
        std::fs::write(
            home.join("blkio.throttle.write_bps_device"),
            format!("{dev} {tighter}"),
        )
        .unwrap();
        v1_home = Some(home.clone());
        Box::new(move || {
            let root = v1_blkio_mount().unwrap();
            for pid in std::fs::read_to_string(home.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
            {
                let _ = std::fs::write(root.join("cgroup.procs"), pid);
            }
            let _ = std::fs::remove_dir(&home);
        })
    };
    let mut w = Worker::start(&cg, &disk.dev);
    let home_files = |home: &Path| -> String {
        [
            "blkio.throttle.read_bps_device",
            "blkio.throttle.write_bps_device",
            "blkio.throttle.read_iops_device",
            "blkio.throttle.write_iops_device",
            "cgroup.procs",
        ]
        .iter()
        .map(|f| format!("{f}: {}\n", read_or_absent(&home.join(f))))
        .collect()
    };
    let home_before = v1_home.as_ref().map(|home| {
        std::fs::write(home.join("cgroup.procs"), w.pid().to_string()).unwrap();
        home_files(home)
    });
    let before = snapshot(&cg, &[w.pid()], &disk.numbers());
    let line_before = io_max_line(&cg, &dev);
    d.inject(throttle(
        &cg,
        "prev",
        json!({"type": "io_throttle", "device": dev, "bps": limit}),
    ));
    let f = d.call("get", json!({"name": "prev"})).unwrap();
    println!("get: {f}");
    assert_eq!(f["limits"], json!({"rbps": limit, "wbps": tighter}), "{f}");
    if kind == "v2" {
        assert_eq!(
            f["previous"],
            format!("{dev} rbps=max wbps={tighter} riops=1000000 wiops=max"),
            "{f}"
        );
        assert_eq!(
            io_max_line(&cg, &dev),
            format!("{dev} rbps={limit} wbps={tighter} riops=1000000 wiops=max")
        );
    }
    let (wbps, _, _) = w.run("write", 64 << 10, 80);
    within(
        wbps,
        tighter as f64,
        "target's direct writes under the tighter limit set before",
    );
    let (rbps, _, _) = w.run("read", 64 << 10, 160);
    within(
        rbps,
        limit as f64,
        "target's direct reads under the fault's limit",
    );
    d.call("remove", json!({"name": "prev"})).unwrap();
    assert_eq!(
        before,
        snapshot(&cg, &[w.pid()], &disk.numbers()),
        "remove must restore every file exactly"
    );
    assert_eq!(line_before, io_max_line(&cg, &dev));
    if let (Some(home), Some(was)) = (&v1_home, &home_before) {
        assert_eq!(*was, home_files(home), "the home's files and processes");
        println!("v1 home {}: {was}", home.display());
    }
    println!("{kind}: the line before and after: {line_before:?}");
    drop(w);
    undo_setup();
}

#[test]
fn a_target_that_goes_away_ends_the_throttle_and_its_delegation() {
    let _one_at_a_time = serial(ONE_AT_A_TIME);
    let d = Daemon::start_without_interface_pool();
    let disk = LoopDevice::new("thr-gone", 16);
    let cg = TestCgroup::new("thr-gone");
    if refused_without_controller(&d, &cg, &disk.dev) {
        return;
    }
    let id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cg.path).unwrap());
    let parents = |cg: &TestCgroup| -> String {
        // What the snapshot says of the ancestors and of the blkio cgroup
        // (its first line is the target's own io.max).
        let s = snapshot(cg, &[], &disk.numbers());
        s.lines().skip(1).collect::<Vec<_>>().join("\n")
    };
    let before = parents(&cg);
    let w = Worker::start(&cg, &disk.dev);
    d.inject(throttle(
        &cg,
        "gone",
        json!({"type": "io_throttle", "device": disk.dev, "iops": 10}),
    ));
    drop(w);
    let path = cg.path.clone();
    // Removes the (now empty) cgroup: the target is gone.
    drop(cg);
    assert!(!path.exists());
    let t = Instant::now();
    loop {
        let list = d.call("list", Value::Null).unwrap();
        if list.as_array().is_some_and(Vec::is_empty)
            || list["faults"].as_array().is_some_and(Vec::is_empty)
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the fault outlived its target: {list}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("ended {:?} after its target went", t.elapsed());
    // The same ancestors (a fresh cgroup at the path reads as before).
    let again = TestCgroup::at(
        &path
            .strip_prefix(cgroup2_mount())
            .unwrap()
            .display()
            .to_string(),
    );
    let t = Instant::now();
    while parents(&again)
        != before.replace(
            &format!("injectord-throttle-{id}"),
            &format!(
                "injectord-throttle-{}",
                std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&again.path).unwrap())
            ),
        )
    {
        // Polled: room for a stalled TCG guest.
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "not undone:\n{}\nwas:\n{before}",
            parents(&again)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(v1) = v1_blkio_mount() {
        assert!(!v1.join(format!("injectord-throttle-{id}")).exists());
    }
    assert!(!d.logs().contains("could not restore"), "{}", d.logs());
}
