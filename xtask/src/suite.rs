//! `cargo xtask test`: the whole suite on the host kernel, then inside each
//! VM kernel, with one compile of every test binary.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{build_daemon, cargo, deps, matrix, root};

/// Outcome of one kernel's run.
#[derive(Default, Clone)]
struct Tally {
    passed: u64,
    failed: u64,
    /// One line per binary that failed, timed out or was cut off, naming
    /// the tests that failed or never finished. Printed with the summary,
    /// because the summary is the part of a long CI log that gets read.
    troubles: Vec<String>,
}

pub fn run(host_only: bool, only: &[String]) -> anyhow::Result<()> {
    let labels: Vec<&str> = matrix::matrix().iter().map(|k| k.label).collect();
    if let Some(unknown) = only.iter().find(|k| !labels.contains(&k.as_str())) {
        bail!(
            "no VM kernel is labelled {unknown}; the matrix has {}",
            labels.join(", ")
        );
    }
    deps::ensure_test_tools()?;
    crate::lint()?;
    let daemon = build_daemon()?;
    let tests = build_tests()?;
    let matrix_dir = root().join("target/matrix");
    let _ = fs::remove_dir_all(&matrix_dir);
    fs::create_dir_all(&matrix_dir)?;

    // The VM kernels first: one that must be built compiles in the
    // background, at idle priority, while the host suite and the other
    // guests run (`matrix::start_kernel`).
    let vms = if host_only {
        None
    } else {
        let cache = crate::cache();
        let tools = matrix::ensure_tools(&cache)?;
        let mut kernels = Vec::new();
        for spec in matrix::matrix() {
            if only.is_empty() || only.iter().any(|k| k == spec.label) {
                kernels.push(matrix::start_kernel(&cache, &tools, &spec)?);
            }
        }
        Some((tools, kernels))
    };

    let mut results: Vec<(String, Tally, bool, Duration)> = Vec::new();
    let host_label = format!("host-{}", kernel_release());
    eprintln!("\n[x] ===== {host_label}: running the suite on the host kernel =====");
    let start = Instant::now();
    let (tally, ok) = run_here(&host_label, &daemon, &tests, &matrix_dir)?;
    results.push((host_label, tally, ok, start.elapsed()));

    if let Some((tools, kernels)) = vms {
        for t in &tests {
            if let Some(line) = scope_line(t) {
                eprintln!("[x] {line}");
            }
        }
        results.extend(run_vms(&tools, kernels, &daemon, &tests, &matrix_dir)?);
    }

    let order: Vec<&str> = results.iter().map(|r| r.0.as_str()).collect();
    let never = print_matrix(&matrix_dir, &order)?;
    // The whole matrix must exercise every backend somewhere.
    let full = !host_only && only.is_empty();
    println!("\nkernel               passed  failed    time");
    let mut total = Tally::default();
    for (label, t, ok, took) in &results {
        println!(
            "{label:<20} {:>6}  {:>6}  {:>5}s{}",
            t.passed,
            t.failed,
            took.as_secs(),
            if *ok { "" } else { "  (a test binary failed)" }
        );
        total.passed += t.passed;
        total.failed += t.failed;
    }
    for (label, t, _, _) in &results {
        for trouble in &t.troubles {
            println!("  {label}: {trouble}");
        }
    }
    let all_ok = results.iter().all(|r| r.2);
    println!("\nsuite: {} passed, {} failed", total.passed, total.failed);
    if !all_ok || total.failed > 0 {
        bail!("the suite failed");
    }
    if full && !never.is_empty() {
        bail!(
            "no kernel of the matrix has these backends, so their tests only check refusals: {}",
            never.join(", ")
        );
    }
    Ok(())
}

/// Runs the suite in every VM kernel, `vm_jobs()` at a time, and returns
/// their results in matrix order.
///
/// A kernel still being built is waited for when its turn comes; its
/// time in the table is the suite's, not the wait's. A kernel that fails
/// to build or boot is a failed row, after the other kernels have run.
fn run_vms(
    tools: &matrix::VmTools,
    kernels: Vec<matrix::PendingKernel>,
    daemon: &Path,
    tests: &[PathBuf],
    matrix_dir: &Path,
) -> anyhow::Result<Vec<(String, Tally, bool, Duration)>> {
    let labels: Vec<String> = kernels.iter().map(|k| k.label().to_string()).collect();
    let jobs = vm_jobs().min(kernels.len()).max(1);
    let queue = std::sync::Mutex::new(kernels.into_iter().enumerate());
    let done = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                    let Some((i, pending)) = next else { break };
                    let (outcome, took) = match pending.wait() {
                        Ok(kernel) => {
                            eprintln!(
                                "\n[x] ===== {}: running the suite inside {} under QEMU =====",
                                kernel.label, kernel.release
                            );
                            let start = Instant::now();
                            let outcome = run_in_vm(tools, &kernel, daemon, tests, matrix_dir);
                            let took = start.elapsed();
                            eprintln!(
                                "\n[x] ===== {}: done after {} s =====",
                                kernel.label,
                                took.as_secs()
                            );
                            (outcome, took)
                        }
                        Err(e) => (Err(e), Duration::ZERO),
                    };
                    done.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((i, outcome, took));
                }
            });
        }
    });
    let mut done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    done.sort_by_key(|d| d.0);
    let mut results = Vec::new();
    for (i, outcome, took) in done {
        // A kernel that could not be built or booted is a failed row of
        // the table, after the others' results, not the end of the suite.
        let (tally, ok) = outcome.unwrap_or_else(|e| {
            let tally = Tally {
                troubles: vec![format!("no suite ran: {e:#}")],
                ..Tally::default()
            };
            (tally, false)
        });
        results.push((labels[i].clone(), tally, ok, took));
    }
    Ok(results)
}

/// How many VM kernels run at once: `INJECTORD_VM_JOBS`, else one.
///
/// One by default: a TCG guest keeps a host core busy, so on CI's two
/// cores two guests each ran about 1.7 times slower (debian-6.1 1,994 s
/// and debian-6.12 2,260 s side by side, 1,248 s and 1,389 s alone),
/// saving only a quarter of the VM time, and tests that time real work
/// in a guest (a 20 ms I/O delay, a dd in another cgroup, a process
/// started within a TTL) failed now and then under that load. On a
/// machine with cores to spare, `INJECTORD_VM_JOBS=3` runs them at once.
fn vm_jobs() -> usize {
    std::env::var("INJECTORD_VM_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .clamp(1, 3)
}

/// Test binaries that run on the host and only some VM kernels (none: the
/// host only), by file-name prefix; the rest run everywhere.
///
/// - The experiment runner's binaries test user space against real
///   services (Chromium rendering the report among them), not a kernel
///   path, and would cost minutes under TCG; each of their tests asserts
///   that it runs on the host.
/// - The fault library's tests check what each spec does to the workload
///   it names; the kernel paths under them are the family tests'. They
///   run on the host (no sch_fq: the refusals) and on the VM kernel with
///   every backend those specs use.
/// - built-6.12 is debian-6.12's source with function error injection:
///   what only it can show is the override backends (syscall, block and
///   process faults, run there). The packet family, connect errors and
///   block throttling take the same kernel paths as in debian-6.12, so
///   they run in debian-6.1 and debian-6.12 only. So do the binaries that
///   test the daemon's user space (the CLI, container ids, the control
///   protocol, a runtime that nothing blocks), which no kernel option
///   changes.
/// - The syscall, block and process families run in debian-6.1 (their
///   LSM and cgroup backends, the override refused) and in built-6.12
///   (the override), not in debian-6.12 as well, which has the backends
///   of one and the source of the other. Protocol filters and connect
///   errors, whose programs read nothing a kernel version changes, run in
///   debian-6.1 (the oldest verifier) besides the host. The metrics and
///   dashboard tests run in the Debian guests, target resolution in
///   debian-6.1 and built-6.12: neither depends on what only one of the
///   6.12 kernels has.
///
/// Each of these took 1-7 min per guest: the suite must end within CI's
/// 90 minutes on two cores.
const SCOPED: &[(&str, &[&str])] = &[
    ("experiment-", &[]),
    ("injectord_experiment-", &[]),
    ("faultspecs-", &["debian-6.12"]),
    ("packet-", &["debian-6.1", "debian-6.12"]),
    ("packet_lifecycle-", &["debian-6.1", "debian-6.12"]),
    ("packet_protocols-", &["debian-6.1"]),
    ("connect_error-", &["debian-6.1"]),
    ("syscall_error-", &["debian-6.1", "built-6.12"]),
    ("block-", &["debian-6.1", "built-6.12"]),
    ("process-", &["debian-6.1", "built-6.12"]),
    ("block_throttle-", &["debian-6.1", "debian-6.12"]),
    ("cli-", &["debian-6.1", "debian-6.12"]),
    ("containers-", &["debian-6.1", "debian-6.12"]),
    ("control-", &["debian-6.1", "debian-6.12"]),
    ("responsive-", &["debian-6.1", "debian-6.12"]),
    ("prometheus-", &["debian-6.1", "debian-6.12"]),
    ("targets-", &["debian-6.1", "built-6.12"]),
];

/// Where a scoped binary runs, for the log; `None` for the others.
fn scope_line(exe: &Path) -> Option<String> {
    let kernels = vm_kernels(exe)?;
    let name = exe.file_name()?.to_string_lossy();
    Some(if kernels.is_empty() {
        format!("{name}: on the host kernel only, not under QEMU")
    } else {
        format!("{name}: on the host and in {} only", kernels.join(", "))
    })
}

/// The VM kernels `exe` runs in; `None`: all of them.
fn vm_kernels(exe: &Path) -> Option<&'static [&'static str]> {
    let name = exe.file_name()?.to_str()?;
    SCOPED
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .map(|(_, kernels)| *kernels)
}

/// Upper bound for one test binary. The slowest (faultspecs, packet) take
/// 3-4 min under TCG and ran past 5 on CI's slower machine.
const BINARY_LIMIT: Duration = Duration::from_secs(600);

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Builds every test binary (unit and end-to-end) once, in release mode,
/// and returns their paths.
fn build_tests() -> anyhow::Result<Vec<PathBuf>> {
    let out = cargo()
        .args(["test", "--release", "--no-run", "--message-format=json"])
        .args([
            "-p",
            "injector-common",
            "-p",
            "injectord",
            "-p",
            "injectord-experiment",
            "-p",
            "injectord-tests",
            "-p",
            "xtask",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the tests failed");
    }
    let mut exes = Vec::new();
    for line in out.stdout.split(|b| *b == b'\n') {
        let Ok(msg) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["profile"]["test"] == true
            && let Some(exe) = msg["executable"].as_str()
        {
            exes.push(PathBuf::from(exe));
        }
    }
    if exes.is_empty() {
        bail!("no test binaries were built");
    }
    // One order on every kernel and every run, so that a failure that
    // depends on what ran before reproduces.
    exes.sort_by_key(|e| e.file_name().map(|n| n.to_os_string()));
    Ok(exes)
}

fn test_env(label: &str, daemon: &Path, matrix_dir: &Path) -> Vec<(String, String)> {
    vec![
        ("INJECTORD_BIN".into(), daemon.display().to_string()),
        (
            "INJECTORD_MATRIX_DIR".into(),
            matrix_dir.display().to_string(),
        ),
        ("INJECTORD_KERNEL_LABEL".into(), label.to_string()),
        ("RUST_BACKTRACE".into(), "1".into()),
    ]
}

fn run_here(
    label: &str,
    daemon: &Path,
    tests: &[PathBuf],
    matrix_dir: &Path,
) -> anyhow::Result<(Tally, bool)> {
    let mut tally = Tally::default();
    let mut ok = true;
    for exe in tests {
        // `timeout` bounds each binary: a hang fails the suite instead of
        // eating the CI budget.
        let mut child = Command::new("timeout")
            .args(["--kill-after=10", &BINARY_LIMIT.as_secs().to_string()])
            .arg(exe)
            .envs(test_env(label, daemon, matrix_dir))
            .current_dir(root())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("running {}", exe.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut out = std::io::stdout().lock();
        let mut output = String::new();
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            add_result_line(&mut tally, &line);
            let _ = writeln!(out, "{line}");
            output.push_str(&line);
            output.push('\n');
        }
        drop(out);
        let status = child.wait()?;
        ok &= status.success();
        if !status.success() {
            let rc = status.code().unwrap_or(-1);
            tally.troubles.push(trouble(exe, &ended(rc), &output));
        }
    }
    Ok((tally, ok))
}

fn run_in_vm(
    tools: &matrix::VmTools,
    kernel: &matrix::Kernel,
    daemon: &Path,
    tests: &[PathBuf],
    matrix_dir: &Path,
) -> anyhow::Result<(Tally, bool)> {
    let log = matrix_dir.join(format!("{}.log", kernel.label));
    let current = matrix_dir.join(format!("{}.current", kernel.label));
    let part_path = matrix_dir.join(format!("{}.part", kernel.label));
    for f in [&log, &current, &part_path] {
        let _ = fs::remove_file(f);
    }
    // The guest runs a script file: no second layer of shell quoting. Each
    // binary has a time limit so a hang cannot eat the CI budget, and writes
    // to a file rather than a pipe, so that a process it leaves behind
    // cannot hold the pipe open. A binary that times out is followed by
    // where every remaining process is blocked; each of those reads has
    // its own time limit, since reading a process's cmdline waits for its
    // memory map lock. The binary in progress is named in `current`, so a
    // VM cut off at its own limit still says where it was.
    let mut script = format!(
        "fail=0\n\
         part='{part}'\n\
         stuck() {{ echo \"[x] $1 timed out after {limit}s; processes left:\"; \
           for p in /proc/[0-9]*; do c=$(timeout 2 tr '\\0' ' ' 2>/dev/null < $p/cmdline); \
             case \"$c\" in ''|*bash*) continue;; esac; \
             echo \"-- ${{p#/proc/}} $(grep State: $p/status) wchan=$(timeout 2 cat $p/wchan) $c\"; \
             timeout 2 cat $p/stack 2>/dev/null | head -12; done; }}\n",
        part = part_path.display(),
        limit = BINARY_LIMIT.as_secs(),
    );
    for (k, v) in test_env(&kernel.label, daemon, matrix_dir) {
        script.push_str(&format!("export {k}='{v}'\n"));
    }
    script.push_str(&format!("cd '{}'\n", root().display()));
    let here = |exe: &&PathBuf| vm_kernels(exe).is_none_or(|k| k.contains(&kernel.label.as_str()));
    for exe in tests.iter().filter(here) {
        script.push_str(&format!(
            "echo '{exe}' > '{current}'\n\
             timeout --kill-after=10 {limit} '{exe}' > \"$part\" 2>&1; rc=$?\n\
             [ $rc = 124 ] || [ $rc = 137 ] && stuck '{exe}' >> \"$part\" 2>&1\n\
             [ $rc = 0 ] || fail=1\n\
             tee -a '{log}' < \"$part\"\n\
             echo '{MARK}{exe} rc='$rc >> '{log}'\n",
            limit = BINARY_LIMIT.as_secs(),
            exe = exe.display(),
            log = log.display(),
            current = current.display(),
        ));
    }
    script.push_str("exit $fail\n");
    let script_path = matrix_dir.join(format!("run-{}.sh", kernel.label));
    fs::write(&script_path, script)?;
    let command = format!("bash '{}'", script_path.display());
    let status = matrix::run_in_vm(tools, kernel, &command, &[matrix_dir])?;
    let mut tally = Tally::default();
    let mut section = String::new();
    let mut last_done = None;
    for line in fs::read_to_string(&log).unwrap_or_default().lines() {
        add_result_line(&mut tally, line);
        if let Some(done) = line.strip_prefix(MARK) {
            let (exe, rc) = done.rsplit_once(" rc=").unwrap_or((done, "?"));
            if let Ok(rc) = rc.parse::<i32>()
                && rc != 0
            {
                tally
                    .troubles
                    .push(trouble(Path::new(exe), &ended(rc), &section));
            }
            last_done = Some(exe.to_string());
            section.clear();
        } else {
            section.push_str(line);
            section.push('\n');
        }
    }
    // The VM's own limit cut a binary short: its marker never came.
    if !status.success()
        && let Ok(exe) = fs::read_to_string(&current)
        && last_done.as_deref() != Some(exe.trim())
    {
        let output = fs::read_to_string(&part_path).unwrap_or_default();
        tally.troubles.push(trouble(
            Path::new(exe.trim()),
            "running when the VM was stopped",
            &output,
        ));
    }
    if tally.passed + tally.failed == 0 {
        eprintln!(
            "[x] {}: no test results came back from the VM",
            kernel.label
        );
        return Ok((tally, false));
    }
    Ok((tally, status.success()))
}

/// How a binary under `timeout` ended, from its exit code.
fn ended(rc: i32) -> String {
    match rc {
        124 | 137 => format!("timed out after {}s", BINARY_LIMIT.as_secs()),
        _ => format!("exit {rc}"),
    }
}

/// Ends a binary's section of a VM log: the binary's path and exit code.
const MARK: &str = "[x] binary done: ";

/// One line on a binary that did not pass: how it ended, the tests that
/// failed and the tests that never finished (listed by the binary itself,
/// less those its output reports).
fn trouble(exe: &Path, how: &str, output: &str) -> String {
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = name.rsplit_once('-').map_or(name.as_str(), |(n, _)| n);
    let mut failed = Vec::new();
    let mut finished = std::collections::BTreeSet::new();
    for line in output.lines() {
        if let Some(rest) = line.strip_prefix("test ")
            && let Some((test, verdict)) = rest.split_once(" ... ")
        {
            finished.insert(test.to_string());
            if verdict.starts_with("FAILED") {
                failed.push(test.to_string());
            }
        }
    }
    let listed = Command::new(exe)
        .args(["--list", "--format", "terse"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let unfinished: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .filter(|t| !finished.contains(*t))
        .collect();
    let mut line = format!("{name}: {how}");
    if !failed.is_empty() {
        line.push_str(&format!("; failed: {}", failed.join(", ")));
    }
    if !unfinished.is_empty() {
        line.push_str(&format!("; never finished: {}", unfinished.join(", ")));
    }
    line
}

/// Adds a libtest summary line ("test result: ok. 7 passed; 0 failed; ...").
fn add_result_line(t: &mut Tally, line: &str) {
    let Some(rest) = line.strip_prefix("test result: ") else {
        return;
    };
    let num = |word: &str| {
        rest.split(';')
            .find_map(|part| {
                part.trim()
                    .strip_suffix(word)?
                    .trim()
                    .rsplit(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    t.passed += num("passed");
    t.failed += num("failed");
}

/// Prints backend x kernel from the rows the capabilities test wrote, one
/// column per kernel in the order they ran (`order`, labels); returns the
/// backends no kernel has.
fn print_matrix(dir: &Path, order: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut kernels: Vec<(String, Value)> = Vec::new();
    for e in fs::read_dir(dir)?.flatten() {
        if e.path().extension().is_some_and(|x| x == "json") {
            let row: Value = serde_json::from_str(&fs::read_to_string(e.path())?)?;
            kernels.push((
                row["label"].as_str().unwrap_or("?").to_string(),
                row["capabilities"].clone(),
            ));
        }
    }
    let rank = |label: &str| {
        order
            .iter()
            .position(|l| *l == label)
            .unwrap_or(order.len())
    };
    kernels.sort_by(|a, b| (rank(&a.0), &a.0).cmp(&(rank(&b.0), &b.0)));
    let mut backends: BTreeMap<usize, String> = BTreeMap::new();
    for (_, caps) in &kernels {
        for (i, c) in caps["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            backends
                .entry(i)
                .or_insert_with(|| c["name"].as_str().unwrap_or("?").to_string());
        }
    }
    println!("\nbackend x kernel (capability probes of the real daemon):");
    print!("{:<20}", "backend");
    for (label, caps) in &kernels {
        let col = format!("{label} ({})", caps["kernel"].as_str().unwrap_or("?"));
        print!(" {col:<34}");
    }
    println!();
    let mut never = Vec::new();
    for name in backends.values() {
        print!("{name:<20}");
        let somewhere = kernels.iter().any(|(_, caps)| {
            caps["backends"].as_array().is_some_and(|b| {
                b.iter()
                    .any(|c| c["name"] == name.as_str() && c["available"] == true)
            })
        });
        if !somewhere {
            never.push(name.clone());
        }
        for (_, caps) in &kernels {
            let c = caps["backends"]
                .as_array()
                .and_then(|b| b.iter().find(|c| c["name"] == name.as_str()));
            let cell = match c {
                Some(c) if c["available"] == true => "yes".to_string(),
                Some(_) => "no".to_string(),
                None => "-".to_string(),
            };
            print!(" {cell:<34}");
        }
        println!();
    }
    for (label, caps) in &kernels {
        for c in caps["backends"].as_array().into_iter().flatten() {
            if c["available"] != true {
                println!(
                    "  {label}: {} unavailable: {}",
                    c["name"].as_str().unwrap_or("?"),
                    c["detail"].as_str().unwrap_or("")
                );
            }
        }
    }
    Ok(never)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This very binary stands in for a test binary that hung: the line
    /// names the test that failed and the ones that never reported.
    #[test]
    fn trouble_names_failed_and_unfinished_tests() {
        let exe = std::env::current_exe().unwrap();
        let output = "running 3 tests\n\
                      test suite::tests::trouble_names_failed_and_unfinished_tests ... FAILED\n";
        let line = trouble(&exe, "timed out after 600s", output);
        assert!(line.starts_with("xtask: timed out after 600s"), "{line}");
        assert!(
            line.contains("failed: suite::tests::trouble_names_failed_and_unfinished_tests"),
            "{line}"
        );
        assert!(line.contains("never finished: "), "{line}");
        assert!(
            !line
                .split("never finished: ")
                .nth(1)
                .unwrap()
                .contains("trouble_names"),
            "{line}"
        );
    }

    #[test]
    fn scoped_binaries_say_where_they_run() {
        let line = |n: &str| scope_line(Path::new(&format!("/t/deps/{n}")));
        assert_eq!(line("lifecycle-0123abcd"), None);
        assert_eq!(
            line("syscall_error-0123abcd").as_deref(),
            Some("syscall_error-0123abcd: on the host and in debian-6.1, built-6.12 only")
        );
        // A prefix names one binary: block_throttle is not block's.
        assert_eq!(
            line("block_throttle-0123abcd").as_deref(),
            Some("block_throttle-0123abcd: on the host and in debian-6.1, debian-6.12 only")
        );
        assert_eq!(
            line("faultspecs-0123abcd").as_deref(),
            Some("faultspecs-0123abcd: on the host and in debian-6.12 only")
        );
        assert_eq!(
            line("experiment-0123abcd").as_deref(),
            Some("experiment-0123abcd: on the host kernel only, not under QEMU")
        );
        assert_eq!(
            line("packet_lifecycle-0123abcd").as_deref(),
            Some("packet_lifecycle-0123abcd: on the host and in debian-6.1, debian-6.12 only")
        );
        assert_eq!(
            line("cli-0123abcd").as_deref(),
            Some("cli-0123abcd: on the host and in debian-6.1, debian-6.12 only")
        );
        assert_eq!(line("client-0123abcd"), None);
    }
}
