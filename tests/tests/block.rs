//! The block family on loop devices: the latency histograms, io_error
//! (block layer where the kernel allows override, else the LSM file
//! hook, else refused naming both) and io_delay, with direct I/O so the
//! page cache hides nothing, against a sibling cgroup that must not feel
//! any of it.

use std::{process::Child, time::Duration};

use injectord_tests::{
    workload::{LoopDevice, python_command},
    *,
};
use serde_json::{Value, json};

/// Runs I/O operations in a python process in `cg`; per operation, its
/// outcome: `{"ok": N, "errno": NAME|null, "p50_ms", "max_ms"}`.
/// Operations: `read:PATH:N` and `write:PATH:N` (N O_DIRECT 4 KiB
/// preads/pwrites, each timed), `fsync:PATH` (a buffered 4 KiB write,
/// then fsync), `bwrite:PATH` (a buffered write only).
const IO: &str = r#"
import errno, json, mmap, os, sys, time
res = []
buf = mmap.mmap(-1, 4096)
buf.write(b"x" * 4096)
for op in sys.argv[1:]:
    kind, _, rest = op.partition(":")
    out = {"ok": 0, "errno": None, "times": []}
    try:
        if kind in ("read", "write"):
            path, n = rest.rsplit(":", 1)
            flags = os.O_DIRECT | (os.O_RDONLY if kind == "read" else os.O_WRONLY | os.O_CREAT)
            fd = os.open(path, flags, 0o644)
            try:
                for i in range(int(n)):
                    t = time.monotonic()
                    if kind == "read":
                        os.preadv(fd, [buf], i * 4096)
                    else:
                        os.pwritev(fd, [buf], i * 4096)
                    out["times"].append((time.monotonic() - t) * 1000)
                    out["ok"] += 1
            finally:
                os.close(fd)
        elif kind in ("fsync", "bwrite"):
            fd = os.open(rest, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.write(fd, b"y" * 4096)
                out["ok"] += 1
                if kind == "fsync":
                    os.fsync(fd)
                    out["ok"] += 1
            finally:
                os.close(fd)
    except OSError as e:
        out["errno"] = errno.errorcode.get(e.errno, str(e.errno))
    t = sorted(out.pop("times")) or [0.0]
    out["p50_ms"] = t[len(t) // 2]
    out["max_ms"] = t[-1]
    res.append(out)
print(json.dumps(res))
"#;

fn io(cg: &TestCgroup, ops: &[&str]) -> Vec<Value> {
    let out = python_command(cg, "python3", IO, ops)
        .output()
        .expect("python3");
    assert!(out.status.success(), "python failed: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

/// Starts the I/O in the background (its result read with [`finish`]).
fn io_spawn(cg: &TestCgroup, ops: &[&str]) -> Child {
    python_command(cg, "python3", IO, ops)
        .spawn()
        .expect("python3")
}

fn finish(child: Child) -> Vec<Value> {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python failed: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

/// The lock ([`serial`]) each test of this file holds throughout: their
/// timings (20 ms ± 20%) must not absorb another test's stopped and
/// continued readers on a 2-vCPU TCG guest.
const ONE_AT_A_TIME: &str = "block";

fn errno_of(v: &Value) -> &str {
    v["errno"].as_str().unwrap_or("ok")
}

fn fault(name: &str, cg: &TestCgroup, fault: Value) -> Value {
    json!({"name": name, "target": {"cgroup": cg.rel}, "fault": fault})
}

/// `(count, sum_s)` of a latency series.
fn series(d: &Daemon, device: &str, op: &str, cgroup: Option<&TestCgroup>) -> (f64, f64) {
    let m = d.metrics();
    let labels = match cgroup {
        Some(cg) => format!("device=\"{device}\",op=\"{op}\",cgroup=\"/{}\"", cg.rel),
        None => format!("device=\"{device}\",op=\"{op}\""),
    };
    let get = |what: &str| {
        m.get(&format!(
            "injectord_block_io_latency_seconds_{what}{{{labels}}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    (get("count"), get("sum"))
}

/// Whether io_delay is accepted here; where not, the refusal names why.
fn delay_available(d: &Daemon) -> bool {
    if d.has_backend("block_io_latency") {
        return true;
    }
    let caps = d.call("capabilities", json!(null)).unwrap();
    panic!("the block tracepoints attach on every kernel of the matrix: {caps}");
}

#[test]
fn histograms_count_each_direct_io_by_device_op_and_targeted_cgroup() {
    let _one_at_a_time = serial(ONE_AT_A_TIME);
    let d = Daemon::start_without_interface_pool();
    let a = LoopDevice::new("blk-hist-a", 8);
    let b = LoopDevice::new("blk-hist-b", 8);
    let target = TestCgroup::new("blk-hist-target");
    let sibling = TestCgroup::new("blk-hist-sibling");
    assert!(delay_available(&d));
    // A block fault on the target (on the other device) splits its I/O
    // out by cgroup.
    d.inject(fault(
        "watch",
        &target,
        json!({"type": "io_delay", "device": b.dev, "delay": "1ms"}),
    ));
    let dev = a.numbers();
    let before = (
        series(&d, &dev, "read", None),
        series(&d, &dev, "write", None),
    );
    let r = io(
        &target,
        &[
            &format!("read:{}:30", a.dev),
            &format!("write:{}:20", a.dev),
        ],
    );
    assert_eq!(
        (r[0]["ok"].as_u64(), r[1]["ok"].as_u64()),
        (Some(30), Some(20))
    );
    assert_eq!(io(&sibling, &[&format!("read:{}:10", a.dev)])[0]["ok"], 10);
    let (reads, writes) = (
        series(&d, &dev, "read", None),
        series(&d, &dev, "write", None),
    );
    // udev may probe a new device too: at least ours.
    assert!(
        reads.0 - before.0.0 >= 40.0,
        "reads {reads:?} before {before:?}"
    );
    assert!(
        writes.0 - before.1.0 >= 20.0,
        "writes {writes:?} before {before:?}"
    );
    // The target's own series: exactly its I/O.
    let mine = series(&d, &dev, "read", Some(&target));
    assert_eq!(mine.0, 30.0, "target reads {mine:?}");
    assert!(mine.1 > 0.0);
    assert_eq!(series(&d, &dev, "write", Some(&target)).0, 20.0);
    assert_eq!(series(&d, &dev, "read", Some(&sibling)).0, 0.0);
    // The device the fault names saw none of this.
    assert_eq!(series(&d, &b.numbers(), "read", Some(&target)).0, 0.0);
    // Removing the last block fault on the target drops its series.
    d.call("remove", json!({"name": "watch"})).unwrap();
    assert_eq!(series(&d, &dev, "read", Some(&target)).0, 0.0);
}

#[test]
fn histograms_are_off_with_the_flag() {
    let _one_at_a_time = serial(ONE_AT_A_TIME);
    let d = Daemon::builder()
        .without_interface_pool()
        .args(&["--no-block-latency"])
        .start()
        .expect("starting injectord");
    let a = LoopDevice::new("blk-off", 8);
    let cg = TestCgroup::new("blk-off");
    assert_eq!(io(&cg, &[&format!("read:{}:5", a.dev)])[0]["ok"], 5);
    assert_eq!(series(&d, &a.numbers(), "read", None).0, 0.0);
    let caps = d.call("capabilities", json!(null)).unwrap();
    assert!(
        caps.to_string().contains("--no-block-latency"),
        "capabilities must say why: {caps}"
    );
    // io_delay still works: its tracepoint is attached for it alone.
    d.inject(fault(
        "slow",
        &cg,
        json!({"type": "io_delay", "device": a.dev, "delay": "10ms"}),
    ));
    let r = io(&cg, &[&format!("read:{}:5", a.dev)]);
    assert!(r[0]["p50_ms"].as_f64().unwrap() >= 9.0, "{r:?}");
}

/// The layer io_error landed on here, or `None` (and the refusal checked)
/// where this kernel has neither.
fn io_error_layer(d: &Daemon, name: &str, cg: &TestCgroup, spec: Value) -> Option<String> {
    let block = d.has_backend("io_error_block");
    let file = d.has_backend("io_error_file");
    if !block && !file {
        let code = d.error_code("inject", fault(name, cg, spec));
        assert_eq!(code, "unsupported_kernel");
        let e = d
            .call("inject", fault(name, cg, json!({"type": "io_error"})))
            .unwrap_err()
            .to_string();
        for needed in ["CONFIG_BPF_KPROBE_OVERRIDE", "BPF LSM"] {
            assert!(e.contains(needed), "the refusal must name {needed}: {e}");
        }
        println!("io_error refused here: {e}");
        return None;
    }
    let reply = d.call("inject", fault(name, cg, spec)).unwrap();
    let f = d.call("get", json!({"name": name})).unwrap();
    assert_eq!(
        reply["layer"], f["layer"],
        "the reply names the layer: {reply}"
    );
    let layer = f["layer"]
        .as_str()
        .unwrap_or_else(|| panic!("no layer: {f}"))
        .to_string();
    assert_eq!(layer, if block { "block" } else { "file" }, "{f}");
    Some(layer)
}

#[test]
fn io_error_fails_the_selected_device_and_operation_of_the_target_only() {
    let _one_at_a_time = serial(ONE_AT_A_TIME);
    let mut d = Daemon::start_without_interface_pool();
    let a = LoopDevice::new("blk-err-a", 8);
    let b = LoopDevice::new("blk-err-b", 8);
    let target = TestCgroup::new("blk-err-target");
    let sibling = TestCgroup::new("blk-err-sibling");
    let Some(layer) = io_error_layer(
        &d,
        "eio",
        &target,
        json!({"type": "io_error", "device": a.dev, "op": "read"}),
    ) else {
        return;
    };
    println!("io_error layer: {layer}");
    let r = io(
        &target,
        &[
            &format!("read:{}:3", a.dev),
            &format!("write:{}:3", a.dev),
            &format!("read:{}:3", b.dev),
        ],
    );
    assert_eq!(errno_of(&r[0]), "EIO", "{r:?}");
    assert_eq!(r[0]["ok"], 0);
    assert_eq!((errno_of(&r[1]), errno_of(&r[2])), ("ok", "ok"), "{r:?}");
    let s = io(&sibling, &[&format!("read:{}:3", a.dev)]);
    assert_eq!(errno_of(&s[0]), "ok", "{s:?}");
    assert_eq!(d.counters("eio", "io_error").1, 1);
    d.call("remove", json!({"name": "eio"})).unwrap();
    assert_eq!(
        errno_of(&io(&target, &[&format!("read:{}:3", a.dev)])[0]),
        "ok"
    );
    // Nothing outlives the daemon: after a SIGKILL, reads succeed.
    d.inject(fault(
        "eio",
        &target,
        json!({"type": "io_error", "device": a.dev}),
    ));
    assert_eq!(
        errno_of(&io(&target, &[&format!("read:{}:1", a.dev)])[0]),
        "EIO"
    );
    d.signal(libc::SIGKILL);
    d.wait();
    assert_eq!(
        errno_of(&io(&target, &[&format!("read:{}:3", a.dev)])[0]),
        "ok"
    );
}

#[test]
fn io_error_on_a_filesystem_fails_its_files_and_the_block_layer_fails_fsync() {
    let _one_at_a_time = serial(ONE_AT_A_TIME);
    let d = Daemon::start_without_interface_pool();
    let fs = LoopDevice::ext4("blk-err-fs", 32);
    let target = TestCgroup::new("blk-err-fs");
    let Some(layer) = io_error_layer(
        &d,
        "disk",
        &target,
        json!({"type": "io_error", "device": fs.numbers(), "op": "write"}),
    ) else {
        return;
    };
    let file = fs.file("data");
    let r = io(
        &target,
        &[&format!("write:{file}:2"), &format!("read:{file}:2")],
    );
    assert_eq!(errno_of(&r[0]), "EIO", "{layer}: {r:?}");
    // Reads are not selected.
    assert_eq!(errno_of(&r[1]), "ok", "{layer}: {r:?}");
    let r = io(&target, &[&format!("fsync:{}", fs.file("log"))]);
    match layer.as_str() {
        // The buffered write lands in the page cache; its bio fails at
        // writeback, which fsync reports.
        "block" => {
            assert_eq!(errno_of(&r[0]), "EIO", "{r:?}");
            assert_eq!(r[0]["ok"], 1, "the write itself succeeds: {r:?}");
        }
        // At the file hook the write call itself fails.
        _ => {
            assert_eq!(errno_of(&r[0]), "EIO", "{r:?}");
            assert_eq!(r[0]["ok"], 0, "{r:?}");
        }
    }
    // ENOSPC cannot come from a bio: the file layer serves it where there
    // is one, and the block layer alone refuses it, naming why.
    d.call("remove", json!({"name": "disk"})).unwrap();
    let spec = fault(
        "full",
        &target,
        json!({"type": "io_error", "device": fs.numbers(), "op": "write", "errno": "ENOSPC"}),
    );
    if d.has_backend("io_error_file") {
        d.inject(spec);
        let r = io(&target, &[&format!("bwrite:{}", fs.file("more"))]);
        assert_eq!(errno_of(&r[0]), "ENOSPC", "{r:?}");
        let f = d.call("get", json!({"name": "full"})).unwrap();
        assert_eq!(f["layer"], "file", "{f}");
    } else {
        let e = d.call("inject", spec).unwrap_err().to_string();
        assert!(e.contains("always surfaces as EIO"), "{e}");
    }
}

#[test]
fn io_delay_20ms_slows_the_targets_io_by_20ms_and_moves_its_histogram() {
    let _one_at_a_time = serial(ONE_AT_A_TIME);
    let d = Daemon::start_without_interface_pool();
    let a = LoopDevice::new("blk-delay-a", 8);
    let b = LoopDevice::new("blk-delay-b", 8);
    let target = TestCgroup::new("blk-delay-target");
    let sibling = TestCgroup::new("blk-delay-sibling");
    assert!(delay_available(&d));
    let base = io(&target, &[&format!("read:{}:20", a.dev)])[0]["p50_ms"]
        .as_f64()
        .unwrap();
    d.inject(fault(
        "slow",
        &target,
        json!({"type": "io_delay", "device": a.dev, "delay": "20ms", "op": "read"}),
    ));
    let sib = io_spawn(&sibling, &[&format!("read:{}:40", a.dev)]);
    let r = io(
        &target,
        &[
            &format!("read:{}:20", a.dev),
            &format!("write:{}:5", a.dev),
            &format!("read:{}:5", b.dev),
        ],
    );
    let sib = finish(sib);
    let p50 = r[0]["p50_ms"].as_f64().unwrap();
    println!(
        "io_delay 20ms: target p50 {p50:.2} ms (baseline {base:.2} ms), sibling p50 {:.2} ms",
        sib[0]["p50_ms"]
    );
    let added = p50 - base;
    // ±20% on a real kernel. A TCG guest's timers fire late whenever the
    // host is busy (24.8-28.3 ms added with two guests on two cores): the
    // bound above is looser there; the histogram below holds the delay
    // itself to 18-30 ms everywhere.
    let most = if emulated() { 32.0 } else { 24.0 };
    assert!(
        (16.0..=most).contains(&added),
        "20 ms added (16 to {most} ms): {added:.2} ms ({r:?})"
    );
    // Writes, the other device and the sibling are not delayed: the
    // fault matched exactly the 20 reads (counters below), and their
    // times stay under the delay (a TCG guest adds milliseconds of noise).
    assert!(r[1]["p50_ms"].as_f64().unwrap() < 15.0, "writes: {r:?}");
    assert!(
        r[2]["p50_ms"].as_f64().unwrap() < 15.0,
        "other device: {r:?}"
    );
    assert!(
        sib[0]["p50_ms"].as_f64().unwrap() < 15.0,
        "sibling: {sib:?}"
    );
    let (count, sum) = series(&d, &a.numbers(), "read", Some(&target));
    assert_eq!(count, 20.0);
    let mean_ms = sum / count * 1000.0;
    assert!(
        (18.0..=30.0).contains(&mean_ms),
        "histogram mean {mean_ms:.2} ms"
    );
    assert_eq!(d.counters("slow", "io_delay"), (20, 20));
    let m = d.metrics();
    assert_eq!(
        m["injectord_block_io_total{fault=\"slow\",type=\"io_delay\",outcome=\"delayed\"}"],
        20.0
    );
}

#[test]
fn io_delay_bounds_hold_max_delay_and_max_concurrent() {
    let _one_at_a_time = serial(ONE_AT_A_TIME);
    let d = Daemon::start_without_interface_pool();
    let a = LoopDevice::new("blk-bound", 8);
    let target = TestCgroup::new("blk-bound");
    assert!(delay_available(&d));
    // Jitter up to 40 ms, capped at 25 ms per I/O; one process held at a
    // time.
    d.inject(fault(
        "bounded",
        &target,
        json!({"type": "io_delay", "device": a.dev, "delay": "20ms", "jitter": "20ms",
               "max_delay": "25ms", "max_concurrent": 1}),
    ));
    let procs: Vec<Child> = (0..3)
        .map(|_| io_spawn(&target, &[&format!("read:{}:15", a.dev)]))
        .collect();
    let results: Vec<Vec<Value>> = procs.into_iter().map(finish).collect();
    let m = d.metrics();
    let over =
        m["injectord_block_io_total{fault=\"bounded\",type=\"io_delay\",outcome=\"over_limit\"}"];
    let delayed =
        m["injectord_block_io_total{fault=\"bounded\",type=\"io_delay\",outcome=\"delayed\"}"];
    println!("3 readers, max_concurrent 1: delayed {delayed}, over the limit {over}");
    assert_eq!(delayed + over, 45.0);
    assert!(over > 0.0 && delayed > 0.0, "delayed {delayed} over {over}");
    // No delay beyond the cap: the injected-delay histogram's largest
    // bucket holding anything is at most 32.8 ms (2^15 us).
    let too_long: f64 = m
        .iter()
        .filter(|(k, _)| {
            k.starts_with("injectord_injected_delay_seconds_bucket{fault=\"bounded\"")
                && k.contains("le=\"+Inf\"")
        })
        .map(|(_, v)| *v)
        .sum::<f64>()
        - m.iter()
            .filter(|(k, _)| {
                k.starts_with("injectord_injected_delay_seconds_bucket{fault=\"bounded\"")
                    && k.contains("le=\"0.065536\"")
            })
            .map(|(_, v)| *v)
            .sum::<f64>();
    assert_eq!(too_long, 0.0, "delays past the cap: {m:?}");
    for r in &results {
        assert_eq!(r[0]["ok"], 15, "{r:?}");
    }
}

#[test]
fn io_delay_ends_on_remove_ttl_and_kills_and_leaves_no_task_stopped() {
    let _one_at_a_time = serial(ONE_AT_A_TIME);
    let a = LoopDevice::new("blk-end", 8);
    let target = TestCgroup::new("blk-end");
    // remove: a task held for 30 s is continued at once.
    let mut d = Daemon::builder()
        .without_interface_pool()
        .own_process_group()
        .start()
        .unwrap();
    assert!(delay_available(&d));
    let long = json!({"type": "io_delay", "device": a.dev, "delay": "10s"});
    d.inject(fault("long", &target, long.clone()));
    let p = io_spawn(&target, &[&format!("read:{}:1", a.dev)]);
    let pid = p.id();
    wait_for("the stop", Duration::from_secs(20), || {
        state(pid) == Some('T')
    });
    d.call("remove", json!({"name": "long"})).unwrap();
    // Well before the 10 s delay, with room for a stalled TCG guest.
    let took = wait_for("the continue after remove", Duration::from_secs(5), || {
        state(pid) != Some('T')
    });
    println!("continued {took:?} after remove");
    assert_eq!(finish(p)[0]["ok"], 1);
    // TTL: after it, I/O is fast again.
    d.inject(
        json!({"name": "ttl", "target": {"cgroup": target.rel}, "duration": "1s",
                    "fault": {"type": "io_delay", "device": a.dev, "delay": "100ms"}}),
    );
    std::thread::sleep(Duration::from_millis(1500));
    // The median: a TCG guest stalls one read now and then; a delayed
    // one takes 100 ms or more.
    let r = io(&target, &[&format!("read:{}:5", a.dev)]);
    assert!(
        r[0]["p50_ms"].as_f64().unwrap() < 50.0,
        "after the TTL: {r:?}"
    );
    // SIGKILL of the daemon's whole process group while a task is held:
    // the keeper continues it.
    d.inject(fault("long", &target, long.clone()));
    let p = io_spawn(&target, &[&format!("read:{}:1", a.dev)]);
    let pid = p.id();
    wait_for("the stop", Duration::from_secs(20), || {
        state(pid) == Some('T')
    });
    d.signal_group(libc::SIGKILL);
    d.wait();
    let took = wait_for(
        "the continue after the kill",
        Duration::from_secs(5),
        || state(pid) != Some('T'),
    );
    println!("continued {took:?} after a SIGKILL of the daemon's process group");
    assert_eq!(finish(p)[0]["ok"], 1);
    // Nothing is delayed any more: the rule died with the daemon's maps.
    let r = io(&target, &[&format!("read:{}:5", a.dev)]);
    assert!(
        r[0]["max_ms"].as_f64().unwrap() < 1000.0,
        "after the kill: {r:?}"
    );
    // SIGTERM: the same, through the daemon's own shutdown.
    d.restart().unwrap();
    d.inject(fault("long", &target, long));
    let p = io_spawn(&target, &[&format!("read:{}:1", a.dev)]);
    let pid = p.id();
    wait_for("the stop", Duration::from_secs(20), || {
        state(pid) == Some('T')
    });
    d.signal(libc::SIGTERM);
    d.wait();
    wait_for("the continue after SIGTERM", Duration::from_secs(5), || {
        state(pid) != Some('T')
    });
    assert_eq!(finish(p)[0]["ok"], 1);
    // SIGKILL of the daemon's pid alone: its keeper continues the task.
    d.restart().unwrap();
    d.inject(fault(
        "long",
        &target,
        json!({"type": "io_delay", "device": a.dev, "delay": "10s"}),
    ));
    let p = io_spawn(&target, &[&format!("read:{}:1", a.dev)]);
    let pid = p.id();
    wait_for("the stop", Duration::from_secs(20), || {
        state(pid) == Some('T')
    });
    d.signal(libc::SIGKILL);
    d.wait();
    wait_for("the continue after SIGKILL", Duration::from_secs(5), || {
        state(pid) != Some('T')
    });
    assert_eq!(finish(p)[0]["ok"], 1);
}

#[test]
fn bad_block_specs_get_specific_errors() {
    let _one_at_a_time = serial(ONE_AT_A_TIME);
    let d = Daemon::start_without_interface_pool();
    let cg = TestCgroup::new("blk-bad");
    let dev = LoopDevice::new("blk-bad", 8);
    // A fault that works, in force before the bad requests and aimed at
    // the cgroup they name: bad input must leave it and the daemon
    // working. io_error where this kernel has it, else io_delay (its
    // tracepoints attach on every kernel of the matrix).
    let reads = format!("read:{}:3", dev.dev);
    let live = json!({"type": "io_error", "device": dev.dev, "op": "read"});
    let kind = if io_error_layer(&d, "live", &cg, live).is_some() {
        "io_error"
    } else {
        assert!(delay_available(&d));
        d.inject(fault(
            "live",
            &cg,
            json!({"type": "io_delay", "device": dev.dev, "delay": "30ms", "op": "read"}),
        ));
        "io_delay"
    };
    // Whether it acts on the cgroup's reads now: they fail with EIO, or
    // each is held for the delay.
    let fires = || {
        let r = &io(&cg, &[&reads])[0];
        match kind {
            "io_error" => errno_of(r) == "EIO",
            _ => r["ok"] == 3 && r["p50_ms"].as_f64().unwrap() >= 25.0,
        }
    };
    assert!(fires(), "the {kind} fault acts before the bad requests");
    let activations = d.counters("live", kind).1;
    let mut wrong = Vec::new();
    for (spec, code, words) in [
        (
            json!({"type": "io_delay", "device": "4095:4095", "delay": "1ms"}),
            "invalid_value",
            "no block device",
        ),
        (
            json!({"type": "io_delay", "device": "/dev/null", "delay": "1ms"}),
            "invalid_value",
            "not a block device",
        ),
        (
            json!({"type": "io_delay", "delay": "10ms", "jitter": "20ms"}),
            "invalid_value",
            "jitter",
        ),
        (
            json!({"type": "io_delay", "delay": "10ms", "max_concurrent": 0}),
            "invalid_value",
            "max_concurrent",
        ),
        (
            json!({"type": "io_delay", "delay": "0ms"}),
            "invalid_value",
            "delay",
        ),
        (
            json!({"type": "io_error", "op": "sideways"}),
            "invalid_value",
            "op",
        ),
        (
            json!({"type": "io_error", "errno": "ENOPE"}),
            "unknown_errno",
            "errno",
        ),
        (
            json!({"type": "io_delay", "delay": "1ms", "path": "/data"}),
            "invalid_value",
            "a bio belongs to no file",
        ),
    ] {
        let e = d
            .call("inject", fault("bad", &cg, spec.clone()))
            .unwrap_err()
            .to_string();
        let got = d.error_code("inject", fault("bad", &cg, spec.clone()));
        println!("{spec}: {got}: {e}");
        wrong.extend(
            (got != code || !e.contains(words))
                .then(|| format!("{spec}: {got}: {e} (expected {code}, mentioning {words})")),
        );
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // An interface is not a target for I/O faults.
    let code = d.error_code(
        "inject",
        json!({"name": "x", "target": {"interface": "lo"}, "fault": {"type": "io_delay", "delay": "1ms"}}),
    );
    assert_eq!(code, "unsupported_target");
    // The daemon answers, holds the one fault it accepted and nothing of
    // the refused ones, and that fault still acts, counted in the kernel.
    d.call("status", json!(null))
        .expect("status after bad input");
    let list = d.call("list", json!(null)).unwrap();
    let names: Vec<&str> = list["faults"]
        .as_array()
        .unwrap_or_else(|| panic!("no faults in {list}"))
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert_eq!(names, ["live"], "{list}");
    assert!(fires(), "the {kind} fault acts after the bad requests");
    let after = d.counters("live", kind).1;
    assert!(
        after > activations,
        "{kind} activations {activations} -> {after}: the fault no longer fires"
    );
}

#[test]
fn io_error_with_a_path_fails_the_files_under_it_only() {
    let _one_at_a_time = serial(ONE_AT_A_TIME);
    let d = Daemon::start_without_interface_pool();
    let fs = LoopDevice::ext4("blk-err-path", 32);
    let target = TestCgroup::new("blk-err-path");
    let data = fs.file("data");
    std::fs::create_dir_all(format!("{data}/deep/er")).unwrap();
    let spec = json!({"type": "io_error", "path": data, "errno": "EROFS", "op": "write"});
    if !d.has_backend("io_error_file") {
        let e = d
            .call("inject", fault("path", &target, spec))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no file"), "the block layer must say why: {e}");
        assert!(e.contains("BPF LSM"), "{e}");
        return;
    }
    d.inject(fault("path", &target, spec));
    let f = d.call("get", json!({"name": "path"})).unwrap();
    assert_eq!(f["layer"], "file", "{f}");
    let r = io(
        &target,
        &[
            &format!("bwrite:{data}/a"),
            &format!("bwrite:{data}/deep/er/b"),
            &format!("bwrite:{}", fs.file("beside")),
            &format!("bwrite:{}", fs.file("database")),
        ],
    );
    let got: Vec<&str> = r.iter().map(errno_of).collect();
    assert_eq!(got, ["EROFS", "EROFS", "ok", "ok"], "{r:?}");
    // A path and a device that cannot both hold a file.
    let other = LoopDevice::new("blk-err-path-other", 8);
    let e = d
        .call(
            "inject",
            fault(
                "both",
                &target,
                json!({"type": "io_error", "path": data, "device": other.dev}),
            ),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("no file is under both"), "{e}");
}

/// The histograms take a request's start from the kernel (as iostat
/// does); a queue with `iostats` off keeps none, and its requests are
/// timed from their issue instead: still every I/O, by cgroup too.
#[test]
fn histograms_time_the_requests_of_a_queue_without_iostats() {
    let _one_at_a_time = serial(ONE_AT_A_TIME);
    let d = Daemon::start_without_interface_pool();
    let a = LoopDevice::new("blk-nostat-a", 8);
    let b = LoopDevice::new("blk-nostat-b", 8);
    let target = TestCgroup::new("blk-nostat-target");
    let other = TestCgroup::new("blk-nostat-other");
    assert!(delay_available(&d));
    // Requests used while the kernel timed them keep their old start
    // time once it stops: use them first, then let that time age.
    assert_eq!(io(&other, &[&format!("read:{}:40", a.dev)])[0]["ok"], 40);
    let _off = IoStatsOff::new(&a);
    std::thread::sleep(Duration::from_millis(1500));
    d.inject(fault(
        "watch",
        &target,
        json!({"type": "io_delay", "device": b.dev, "delay": "1ms"}),
    ));
    let dev = a.numbers();
    let before = series(&d, &dev, "read", None);
    assert_eq!(io(&target, &[&format!("read:{}:25", a.dev)])[0]["ok"], 25);
    assert_eq!(io(&other, &[&format!("read:{}:15", a.dev)])[0]["ok"], 15);
    let after = series(&d, &dev, "read", None);
    assert!(
        after.0 - before.0 >= 40.0 && after.1 > before.1,
        "reads {after:?} before {before:?}"
    );
    // Timed from their issue: a loop device read takes microseconds
    // (a TCG guest's milliseconds), never the 1.5 s a request's former
    // start time would add.
    let mean_ms = (after.1 - before.1) / (after.0 - before.0) * 1000.0;
    assert!(mean_ms < 500.0, "mean read {mean_ms:.1} ms");
    let mine = series(&d, &dev, "read", Some(&target));
    assert_eq!(mine.0, 25.0, "target reads {mine:?}");
    assert!(mine.1 > 0.0 && mine.1 / mine.0 < 0.5, "{mine:?}");
    assert_eq!(series(&d, &dev, "read", Some(&other)).0, 0.0);
}

/// `iostats` off on a loop device, back on when dropped: loop devices are
/// reused, and the next test's must keep the default.
struct IoStatsOff(String);

impl IoStatsOff {
    fn new(dev: &LoopDevice) -> Self {
        let knob = format!(
            "/sys/block/{}/queue/iostats",
            dev.dev.trim_start_matches("/dev/")
        );
        std::fs::write(&knob, "0").unwrap();
        Self(knob)
    }
}

impl Drop for IoStatsOff {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, "1");
    }
}
