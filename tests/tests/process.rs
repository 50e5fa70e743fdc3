//! Process faults: process_kill and process_pause, at once or at a
//! syscall, on real processes in their own cgroups; nothing stays stopped
//! or frozen when the fault ends or the daemon dies.

use std::{
    os::unix::process::ExitStatusExt as _,
    path::Path,
    process::{Child, Output},
    time::{Duration, Instant},
};

use injectord_tests::{
    workload::{Scratch, python_command},
    *,
};
use serde_json::{Value, json};

/// Prints `time.monotonic_ns()` every 10 ms for `secs` seconds; with a
/// path, from the 20th line on it also opens (appends to) a file there
/// before each line, and prints `opens N` at the end.
const TICKER: &str = r#"
import os, sys, time
secs = float(sys.argv[1])
path = sys.argv[2] if len(sys.argv) > 2 else None
end = time.monotonic() + secs
i = opens = 0
while time.monotonic() < end:
    if path and i >= 20:
        with open(os.path.join(path, "f"), "a") as f:
            f.write("x")
        opens += 1
    print(time.monotonic_ns(), flush=True)
    i += 1
    time.sleep(0.01)
print("opens", opens, flush=True)
"#;

/// Prints its count before each open of `path/name` (append), `n` times.
const OPENER: &str = r#"
import os, sys
path, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    print(i, flush=True)
    with open(os.path.join(path, name), "a") as f:
        f.write("x")
print("done", flush=True)
"#;

/// `python3 -c script args...` in `cg` (see [`python_command`]), once it
/// is in the cgroup.
fn python(cg: &TestCgroup, script: &str, args: &[&str]) -> Child {
    let child = python_command(cg, "python3", script, args)
        .spawn()
        .expect("python3");
    wait_in_cgroup(cg, child.id());
    child
}

/// Waits until the ticker is in its loop: asleep in clock_nanosleep
/// (x86_64 syscall 230; Python's time.sleep), which it first calls after
/// its first timestamp. A pause before that would leave no gap to see,
/// and a TCG guest on a busy machine can take over a second to start
/// Python.
fn wait_ticking(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .unwrap_or_default()
        .split_whitespace()
        .next()
        != Some("230")
    {
        assert!(
            Instant::now() < deadline,
            "ticker {pid} never started ticking"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_in_cgroup(cg: &TestCgroup, pid: u32) {
    wait_for(
        &format!("{pid} joining {}", cg.rel),
        Duration::from_secs(10),
        || cg.procs().contains(&pid),
    );
}

fn finish(child: Child) -> Output {
    let pid = child.id();
    let mut child = child;
    if let Err(stuck) = wait_with_limit(&mut child, Duration::from_secs(60)) {
        panic!("python {pid} did not finish: {stuck}");
    }
    child.wait_with_output().expect("output")
}

/// The ticker's timestamps (ns) and its `opens` count.
fn ticks(out: &Output) -> (Vec<u64>, Option<u64>) {
    let text = String::from_utf8_lossy(&out.stdout);
    let stamps = text.lines().filter_map(|l| l.parse().ok()).collect();
    let opens = text
        .lines()
        .find_map(|l| l.strip_prefix("opens "))
        .and_then(|n| n.parse().ok());
    (stamps, opens)
}

/// The longest gap between consecutive timestamps, and where it started.
fn longest_gap(stamps: &[u64]) -> (Duration, u64) {
    stamps
        .windows(2)
        .map(|w| (Duration::from_nanos(w[1] - w[0]), w[0]))
        .max()
        .expect("at least two timestamps")
}

/// The gap a pause left must be the pause, within 30% + 200 ms (TCG).
fn assert_pause(gap: Duration, pause: Duration, what: &str) {
    let slack = pause.mul_f64(0.3) + Duration::from_millis(200);
    assert!(
        gap + slack >= pause && gap <= pause + slack,
        "{what}: the process stood still for {gap:?}, the pause was {pause:?}"
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn get(d: &Daemon, name: &str) -> Value {
    d.call("get", json!({"name": name})).unwrap()
}

fn last_pause_ms(d: &Daemon, name: &str) -> f64 {
    let f = get(d, name);
    f["pauses"]["last_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("no pauses.last_ms in {f}"))
}

#[test]
fn a_kill_at_the_nth_open_under_a_path_kills_exactly_there_and_spares_the_sibling() {
    const N: u64 = 4;
    let d = Daemon::start_without_interface_pool();
    let parent = TestCgroup::new("pk-nth");
    let target = parent.child("target");
    let sibling = parent.child("sibling");
    let dir = Scratch::new("pk-nth");
    let data = dir.file("data");
    std::fs::create_dir_all(&data).unwrap();
    d.inject(json!({
        "name": "crash", "target": {"cgroup": target.rel},
        "fault": {"type": "process_kill", "signal": "SIGSEGV", "syscall": "openat", "path": data},
        "trigger": {"after": N - 1, "max_activations": 1},
    }));
    let f = get(&d, "crash");
    assert_eq!(f["hook"], "raw_tracepoint sys_enter", "{f}");
    let total = (N + 5).to_string();
    let victim = python(&target, OPENER, &[&data, "target", &total]);
    let neighbour = python(&sibling, OPENER, &[&data, "sibling", &total]);
    let (victim, neighbour) = (finish(victim), finish(neighbour));
    assert_eq!(
        victim.status.signal(),
        Some(libc::SIGSEGV),
        "the target must die of SIGSEGV: {victim:?}"
    );
    // It printed its count before each open: the N-th open was its last,
    // and that open's write never happened.
    let lines: Vec<String> = String::from_utf8_lossy(&victim.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let want: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(lines, want);
    let written = std::fs::read_to_string(Path::new(&data).join("target")).unwrap();
    assert_eq!(written.len() as u64, N - 1);
    assert!(neighbour.status.success(), "{neighbour:?}");
    assert!(String::from_utf8_lossy(&neighbour.stdout).contains("done"));
    assert_eq!(d.counters("crash", "process_kill"), (N, 1));
    let f = get(&d, "crash");
    assert_eq!(f["state"], "exhausted", "{f}");
    // Removing it detaches the program: the same loop now runs through.
    d.call("remove", json!({"name": "crash"})).unwrap();
    let again = finish(python(&target, OPENER, &[&data, "again", &total]));
    assert!(again.status.success(), "{again:?}");
}

#[test]
fn a_kill_at_once_ends_the_whole_cgroup_or_only_the_named_pid() {
    let d = Daemon::start_without_interface_pool();
    // SIGKILL of a cgroup, one sleeper a level down.
    let all = TestCgroup::new("pk-now");
    let nested = all.child("nested");
    let mut sleepers: Vec<Child> = (0..2).map(|_| all.spawn("sleep", &["600"])).collect();
    sleepers.push(nested.spawn("sleep", &["600"]));
    d.inject(json!({"name": "all", "target": {"cgroup": all.rel},
                    "fault": {"type": "process_kill"}}));
    for s in &mut sleepers {
        let status = wait_with_limit(s, Duration::from_secs(10)).expect("a sleeper survived");
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }
    let f = get(&d, "all");
    println!("SIGKILL of a cgroup: {}", f["method"]);
    assert_eq!(f["processes"], 3, "{f}");
    assert_eq!(f["spec"]["fault"]["signal"], "SIGKILL", "{f}");
    assert_eq!(d.counters("all", "process_kill"), (3, 3));
    // Another signal goes to each process, descendants included.
    let term = TestCgroup::new("pk-term");
    let below = term.child("x");
    let mut two = vec![
        term.spawn("sleep", &["600"]),
        below.spawn("sleep", &["600"]),
    ];
    d.inject(json!({"name": "term", "target": {"cgroup": term.rel},
                    "fault": {"type": "process_kill", "signal": 15}}));
    for s in &mut two {
        let status = wait_with_limit(s, Duration::from_secs(10)).expect("a sleeper survived");
        assert_eq!(status.signal(), Some(libc::SIGTERM));
    }
    assert_eq!(get(&d, "term")["method"], "signals");
    // A pid target: that process, not its cgroup's others.
    let pair = TestCgroup::new("pk-pid");
    let mut one = pair.spawn("sleep", &["600"]);
    let mut other = pair.spawn("sleep", &["600"]);
    d.inject(json!({"name": "one", "target": {"pid": one.id()},
                    "fault": {"type": "process_kill", "signal": "SIGABRT"}}));
    let status = wait_with_limit(&mut one, Duration::from_secs(10)).expect("the pid survived");
    assert_eq!(status.signal(), Some(libc::SIGABRT));
    std::thread::sleep(Duration::from_millis(200));
    assert!(other.try_wait().unwrap().is_none(), "only the pid must die");
    assert_eq!(d.counters("one", "process_kill"), (1, 1));
    // The faults stay listed until removed.
    let list = d.call("list", json!(null)).unwrap();
    assert_eq!(list["faults"].as_array().unwrap().len(), 3, "{list}");
}

#[test]
fn a_pause_at_once_freezes_the_cgroup_for_the_pause_then_thaws_it() {
    let d = Daemon::start_without_interface_pool();
    let cg = TestCgroup::new("pp-now");
    let pause = Duration::from_millis(1500);
    let ticker = python(&cg, TICKER, &["4"]);
    wait_ticking(ticker.id());
    let asked = Instant::now();
    d.inject(json!({"name": "freeze", "target": {"cgroup": cg.rel},
                    "fault": {"type": "process_pause", "pause": "1500ms"}}));
    assert_eq!(read(&cg.path.join("cgroup.freeze")), "1");
    let f = get(&d, "freeze");
    assert_eq!(f["method"], "cgroup.freeze", "{f}");
    assert_eq!(f["pauses"]["paused_now"], 1, "{f}");
    let thawed = wait_for("thaw", pause * 3, || {
        read(&cg.path.join("cgroup.freeze")) == "0"
    });
    println!(
        "thawed {thawed:?} after the inject returned ({:?} after it was sent)",
        asked.elapsed()
    );
    let out = finish(ticker);
    assert!(out.status.success(), "{out:?}");
    let (stamps, _) = ticks(&out);
    let (gap, _) = longest_gap(&stamps);
    let measured = last_pause_ms(&d, "freeze");
    println!(
        "cgroup pause {pause:?}: the process stood still {gap:?}; the daemon measured {measured} ms"
    );
    assert_pause(gap, pause, "cgroup.freeze");
    assert_pause(
        Duration::from_secs_f64(measured / 1000.0),
        pause,
        "measured",
    );
    let f = get(&d, "freeze");
    assert_eq!(
        (
            f["pauses"]["count"].clone(),
            f["pauses"]["paused_now"].clone()
        ),
        (json!(1), json!(0)),
        "{f}"
    );
    assert_eq!(d.counters("freeze", "process_pause"), (1, 1));
    let m = d.metrics();
    let count = "injectord_injected_delay_seconds_count{fault=\"freeze\",type=\"process_pause\"}";
    assert_eq!(m.get(count), Some(&1.0), "{m:?}");

    // A pid target: SIGSTOP, then SIGCONT; removing the fault early
    // continues it at once.
    let pid_cg = TestCgroup::new("pp-pid");
    let ticker = python(&pid_cg, TICKER, &["3"]);
    wait_ticking(ticker.id());
    d.inject(json!({"name": "stop", "target": {"pid": ticker.id()},
                    "fault": {"type": "process_pause", "pause": "1s"}}));
    assert_eq!(state(ticker.id()), Some('T'));
    assert_eq!(get(&d, "stop")["method"], "SIGSTOP");
    let out = finish(ticker);
    let (gap, _) = longest_gap(&ticks(&out).0);
    let measured = last_pause_ms(&d, "stop");
    println!(
        "SIGSTOP pause 1s: the process stood still {gap:?}; the daemon measured {measured} ms"
    );
    assert_pause(gap, Duration::from_secs(1), "SIGSTOP");

    let early = TestCgroup::new("pp-early");
    let mut sleeper = early.spawn("sleep", &["600"]);
    d.inject(json!({"name": "long", "target": {"cgroup": early.rel},
                    "fault": {"type": "process_pause", "pause": "1h"}}));
    assert_eq!(read(&early.path.join("cgroup.freeze")), "1");
    d.call("remove", json!({"name": "long"})).unwrap();
    assert_eq!(
        read(&early.path.join("cgroup.freeze")),
        "0",
        "remove must thaw at once"
    );
    // A duration shorter than the pause ends it too.
    d.inject(
        json!({"name": "ttl", "target": {"cgroup": early.rel}, "duration": "300ms",
                    "fault": {"type": "process_pause", "pause": "1h"}}),
    );
    wait_for(
        "thaw at the end of the duration",
        Duration::from_secs(5),
        || read(&early.path.join("cgroup.freeze")) == "0",
    );
    assert!(sleeper.try_wait().unwrap().is_none());
}

#[test]
fn a_pause_at_a_syscall_stops_the_caller_and_continues_it_after_the_pause() {
    let d = Daemon::start_without_interface_pool();
    let cg = TestCgroup::new("pp-sys");
    let sibling = TestCgroup::new("pp-sys-sibling");
    let dir = Scratch::new("pp-sys");
    let data = dir.file("data");
    std::fs::create_dir_all(&data).unwrap();
    let pause = Duration::from_secs(1);
    d.inject(json!({
        "name": "stall", "target": {"cgroup": cg.rel},
        "fault": {"type": "process_pause", "pause": "1s", "syscall": "openat", "path": data},
        "trigger": {"after": 4, "max_activations": 1},
    }));
    let ticker = python(&cg, TICKER, &["3", &data]);
    let other = python(&sibling, TICKER, &["3", &data]);
    let (out, other) = (finish(ticker), finish(other));
    assert!(out.status.success(), "{out:?}");
    let (stamps, opens) = ticks(&out);
    let (gap, _) = longest_gap(&stamps);
    let measured = last_pause_ms(&d, "stall");
    println!(
        "SIGSTOP at the 5th openat, pause {pause:?}: the process stood still {gap:?}; the daemon measured {measured} ms"
    );
    assert_pause(gap, pause, "SIGSTOP at openat");
    assert_pause(
        Duration::from_secs_f64(measured / 1000.0),
        pause,
        "measured",
    );
    // A paused sibling would stand still the whole pause; a TCG guest
    // stalls anything for some 100 ms now and then.
    let (other_gap, _) = longest_gap(&ticks(&other).0);
    assert!(
        other_gap < pause * 4 / 5,
        "the sibling must run on: {other_gap:?}"
    );
    let opens = opens.expect("opens");
    assert_eq!(d.counters("stall", "process_pause"), (opens, 1));
    let f = get(&d, "stall");
    assert_eq!(f["pauses"]["count"], 1, "{f}");
    assert_eq!(f["pauses"]["paused_now"], 0, "{f}");
}

#[test]
fn a_killed_process_group_leaves_nothing_frozen_or_stopped() {
    let mut d = Daemon::builder()
        .without_interface_pool()
        .own_process_group()
        .start()
        .unwrap();
    let frozen = TestCgroup::new("pp-pg-freeze");
    let stopped = TestCgroup::new("pp-pg-stop");
    let dir = Scratch::new("pp-pg");
    let data = dir.file("data");
    std::fs::create_dir_all(&data).unwrap();
    let a = python(&frozen, TICKER, &["2"]);
    let b = python(&stopped, TICKER, &["2", &data]);
    d.inject(json!({"name": "freeze", "target": {"cgroup": frozen.rel},
                    "fault": {"type": "process_pause", "pause": "30s"}}));
    d.inject(json!({"name": "stop", "target": {"cgroup": stopped.rel},
                    "fault": {"type": "process_pause", "pause": "30s", "syscall": "openat", "path": data}}));
    let b_pid = b.id();
    wait_for("the stop at openat", Duration::from_secs(20), || {
        state(b_pid) == Some('T')
    });
    assert_eq!(read(&frozen.path.join("cgroup.freeze")), "1");
    // What systemd's final SIGKILL of a group or `kill -9 -PGID` do: the
    // daemon and its reaper die; the keeper, in its own group, does not.
    d.signal_group(libc::SIGKILL);
    let killed = Instant::now();
    d.wait();
    // The lease (1 s), with room for a stalled TCG guest (polled).
    let margin = Duration::from_secs(1) + Duration::from_secs(9);
    let thawed = wait_for("thaw after the kill", margin, || {
        read(&frozen.path.join("cgroup.freeze")) == "0"
    });
    let continued = wait_for("continue after the kill", margin, || {
        state(b_pid) != Some('T')
    });
    println!(
        "after a SIGKILL of the daemon's process group: thawed in {thawed:?}, continued in {continued:?} ({:?} in all)",
        killed.elapsed()
    );
    assert!(finish(a).status.success());
    assert!(finish(b).status.success());
    // The keeper marked both done in the journal: nothing to recover.
    d.restart().unwrap();
    let status = d.call("status", json!(null)).unwrap();
    assert_eq!(status["recovered"]["undone"], 0, "{status}");
    assert_eq!(status["recovered"]["failed"], 0, "{status}");
}

#[test]
fn a_killed_daemon_cgroup_is_thawed_by_the_next_start_before_it_serves() {
    let unit = TestCgroup::new("injectord-unit");
    let mut d = Daemon::builder()
        .without_interface_pool()
        .in_cgroup(&unit.path)
        .start()
        .unwrap();
    let frozen = TestCgroup::new("pp-cg-freeze");
    let stopped = TestCgroup::new("pp-cg-stop");
    let mut a = frozen.spawn("sleep", &["600"]);
    let mut b = stopped.spawn("sleep", &["600"]);
    d.inject(json!({"name": "freeze", "target": {"cgroup": frozen.rel},
                    "fault": {"type": "process_pause", "pause": "30s"}}));
    d.inject(json!({"name": "stop", "target": {"pid": b.id()},
                    "fault": {"type": "process_pause", "pause": "30s"}}));
    assert_eq!(state(b.id()), Some('T'));
    // The daemon, its reaper and its keeper: a service's whole cgroup.
    assert_eq!(unit.procs().len(), 3, "{:?}", unit.procs());
    std::fs::write(unit.path.join("cgroup.kill"), "1").unwrap();
    d.wait();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        read(&frozen.path.join("cgroup.freeze")),
        "1",
        "nothing is left to thaw it until the next start"
    );
    assert_eq!(state(b.id()), Some('T'));
    // The next start undoes both from the journal before it answers.
    d.restart().unwrap();
    assert_eq!(read(&frozen.path.join("cgroup.freeze")), "0");
    assert_ne!(state(b.id()), Some('T'));
    let status = d.call("status", json!(null)).unwrap();
    assert_eq!(status["recovered"]["undone"], 2, "{status}");
    assert_eq!(status["recovered"]["failed"], 0, "{status}");
    assert!(a.try_wait().unwrap().is_none() && b.try_wait().unwrap().is_none());
}

#[test]
fn bad_process_specs_get_specific_errors_and_other_faults_keep_working() {
    let d = Daemon::start_without_interface_pool();
    let cg = TestCgroup::new("pk-bad");
    let dir = Scratch::new("pk-bad");
    let data = dir.file("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut sleeper = cg.spawn("sleep", &["600"]);
    d.inject(json!({"name": "keep", "target": {"cgroup": cg.rel},
                    "fault": {"type": "process_kill", "signal": "SIGKILL", "syscall": "openat", "path": data}}));
    let spec = |fault: Value| json!({"name": "bad", "target": {"cgroup": cg.rel}, "fault": fault});
    let cases = [
        (
            spec(json!({"type": "process_kill", "signal": "SIGSTOP"})),
            "invalid_value",
            "fault.signal",
            "process_pause",
        ),
        (
            spec(json!({"type": "process_kill", "signal": "SIGFOO"})),
            "invalid_value",
            "fault.signal",
            "unknown signal \"SIGFOO\"",
        ),
        (
            spec(json!({"type": "process_kill", "signal": "SIGCONT"})),
            "invalid_value",
            "fault.signal",
            "process_pause",
        ),
        (
            spec(json!({"type": "process_pause", "pause": "0s"})),
            "invalid_value",
            "fault.pause",
            "above zero",
        ),
        (
            spec(json!({"type": "process_pause"})),
            "invalid_spec",
            "fault.pause",
            "missing field",
        ),
        (
            spec(json!({"type": "process_pause", "pause": "1s", "path": data})),
            "invalid_value",
            "fault.path",
            "without a syscall",
        ),
        (
            spec(json!({"type": "process_kill", "syscall": "write", "path": data})),
            "invalid_value",
            "fault.path",
            "write takes no path argument",
        ),
        (
            json!({"target": {"cgroup": cg.rel}, "trigger": {"after": 3},
                   "fault": {"type": "process_kill"}}),
            "invalid_value",
            "trigger",
            "without a syscall",
        ),
        (
            json!({"target": {"pid": sleeper.id()},
                   "fault": {"type": "process_kill", "syscall": "openat"}}),
            "unsupported_target",
            "target.pid",
            "target {\"cgroup\"",
        ),
        (
            json!({"target": {"interface": "lo"}, "fault": {"type": "process_pause", "pause": "1s"}}),
            "unsupported_target",
            "target",
            "not a network device",
        ),
        (
            spec(
                json!({"type": "process_pause", "pause": "1s", "syscall": "openat", "path": data}),
            ),
            "conflict",
            "",
            "\"keep\" already signals at openat",
        ),
    ];
    for (spec, code, field, want) in cases {
        let err = d.call("inject", spec.clone()).unwrap_err();
        let resp = err
            .downcast_ref::<ErrorResponse>()
            .unwrap_or_else(|| panic!("{spec}: {err:#}"));
        assert_eq!(resp.code, code, "{spec}: {err:#}");
        if !field.is_empty() {
            assert_eq!(resp.data["field"], field, "{spec}: {err:#}");
        }
        assert!(resp.message.contains(want), "{spec}: {err:#}");
    }
    // A second freeze of a frozen cgroup is refused; the first still holds.
    let frozen = TestCgroup::new("pk-bad-frozen");
    d.inject(json!({"name": "first", "target": {"cgroup": frozen.rel},
                    "fault": {"type": "process_pause", "pause": "1h"}}));
    let code = d.error_code(
        "inject",
        json!({"target": {"cgroup": frozen.rel}, "fault": {"type": "process_pause", "pause": "1s"}}),
    );
    assert_eq!(code, "conflict");
    d.call("remove", json!({"name": "first"})).unwrap();
    assert_eq!(read(&frozen.path.join("cgroup.freeze")), "0");
    // Nothing above disturbed the armed fault.
    let out = finish(python(&cg, OPENER, &[&data, "f", "3"]));
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{out:?}");
    assert_eq!(d.counters("keep", "process_kill"), (1, 1));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

/// Writes one byte `n` times to a file on each of two filesystems
/// (alternating, through one descriptor each), printing its count before
/// each write to the first.
const WRITER: &str = r#"
import os, sys
a, b, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
fa = os.open(a, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
fb = os.open(b, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
for i in range(n):
    os.write(fb, b"y")
    print(i, flush=True)
    os.write(fa, b"x")
print("done", flush=True)
"#;

#[test]
fn a_kill_at_the_nth_write_to_a_disk_kills_exactly_there() {
    const N: u64 = 10;
    let d = Daemon::start_without_interface_pool();
    let cg = TestCgroup::new("pk-disk");
    let data = injectord_tests::workload::Filesystem::tmpfs("pk-disk-data");
    let other = injectord_tests::workload::Filesystem::tmpfs("pk-disk-other");
    d.inject(json!({
        "name": "crash", "target": {"cgroup": cg.rel},
        "fault": {"type": "process_kill", "signal": "SIGBUS", "syscall": "write",
                  "device": data.device()},
        "trigger": {"after": N - 1, "max_activations": 1},
    }));
    let total = (N + 5).to_string();
    let (a, b) = (data.file("a"), other.file("b"));
    let victim = finish(python(&cg, WRITER, &[&a, &b, &total]));
    assert_eq!(victim.status.signal(), Some(libc::SIGBUS), "{victim:?}");
    // Killed at its N-th write to the disk: N counts printed, and nothing
    // after that write (a signal sent at a call's entry lands on its way
    // back to user space, so the write itself ran): N bytes on each
    // filesystem. No write to the other filesystem or to stdout (a pipe)
    // ever matched.
    let printed = String::from_utf8_lossy(&victim.stdout).lines().count() as u64;
    assert_eq!(printed, N);
    assert_eq!(std::fs::read(&a).unwrap().len() as u64, N);
    assert_eq!(std::fs::read(&b).unwrap().len() as u64, N);
    assert_eq!(d.counters("crash", "process_kill"), (N, 1));
}
