//! The real `injectord` process: started on its own socket and metrics
//! port, driven over the control socket and /metrics, stopped (and waited
//! for, with a bound) on drop.

use std::{
    collections::HashMap,
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use injectord_client::{Client, ErrorResponse};
use serde_json::Value;

use crate::unique;

/// The daemon binary the tests run: `INJECTORD_BIN` (set by `cargo xtask
/// test`), else `target/release/injectord`, else `target/debug/injectord`.
pub fn daemon_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("INJECTORD_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    ["release", "debug"]
        .iter()
        .map(|p| root.join("target").join(p).join("injectord"))
        .find(|p| p.exists())
        .expect("no injectord binary: run `cargo xtask test` (or set INJECTORD_BIN)")
}

/// How to start a [`Daemon`]. The defaults suit a test: the binary of
/// [`daemon_binary`], debug logs into a file that [`Daemon::logs`] reads
/// (and that a failed start-up prints).
pub struct DaemonBuilder {
    binary: Option<PathBuf>,
    log_filter: String,
    log_to_stderr: bool,
    args: Vec<String>,
    process_group: bool,
    cgroup: Option<PathBuf>,
}

impl DaemonBuilder {
    /// Runs this binary instead of [`daemon_binary`]'s (the benchmarks pass
    /// the one they have just built).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// The daemon's `--log` filter (default `info,injectord=debug`). A
    /// benchmark uses `warn`, so that logging costs nothing measurable.
    pub fn log(mut self, filter: &str) -> Self {
        self.log_filter = filter.to_string();
        self
    }

    /// The daemon's log goes to this process's stderr rather than a file,
    /// for a person watching (a benchmark); [`Daemon::logs`] is then empty.
    pub fn log_to_stderr(mut self) -> Self {
        self.log_to_stderr = true;
        self
    }

    /// Starts the daemon as the leader of a process group of its own (as
    /// `setsid` or a service manager would), so that [`Daemon::signal_group`]
    /// reaches it and its reaper together.
    pub fn own_process_group(mut self) -> Self {
        self.process_group = true;
        self
    }

    /// Starts the daemon inside the cgroup at `dir` (from its first
    /// instruction), as a service manager or container runtime would.
    pub fn in_cgroup(mut self, dir: &std::path::Path) -> Self {
        self.cgroup = Some(dir.to_path_buf());
        self
    }

    /// No interface copies kept ready (`--interface-pool 0`), for the
    /// tests of families that never target an interface. The pool fills
    /// in the background after start-up, verifying two copies of the
    /// packet programs: in a TCG guest that is 8-9 s of its one core per
    /// daemon, time every test running beside it loses (a block test
    /// binary in debian-6.12 ran 187 s with the pool).
    pub fn without_interface_pool(self) -> Self {
        self.args(&["--interface-pool", "0"])
    }

    /// Extra command-line arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Starts the daemon and waits until its control socket answers.
    pub fn start(self) -> anyhow::Result<Daemon> {
        let dir = std::env::temp_dir().join(unique("injectord-test"));
        fs::create_dir_all(&dir)?;
        let mut daemon = Daemon {
            child: None,
            socket: dir.join("injectord.sock"),
            metrics_addr: String::new(),
            dir,
            binary: self.binary.clone().unwrap_or_else(daemon_binary),
            how: self,
        };
        let child = daemon.spawn()?;
        daemon.child = Some(child);
        daemon.wait_ready()?;
        let status = daemon.client().call("status", Value::Null)?;
        daemon.metrics_addr = status["metrics_addr"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Ok(daemon)
    }
}

/// A running daemon on its own socket and metrics port, stopped with
/// SIGTERM when dropped.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub metrics_addr: String,
    dir: PathBuf,
    binary: PathBuf,
    how: DaemonBuilder,
}

impl Daemon {
    /// A daemon to configure before [`DaemonBuilder::start`].
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder {
            binary: None,
            log_filter: "info,injectord=debug".into(),
            log_to_stderr: false,
            args: Vec::new(),
            process_group: false,
            cgroup: None,
        }
    }

    pub fn start() -> Self {
        Self::try_start().expect("starting injectord")
    }

    /// Starts the daemon with extra command-line arguments.
    pub fn start_with(args: &[&str]) -> Self {
        Self::try_start_with(args).expect("starting injectord")
    }

    /// Starts the daemon [`DaemonBuilder::without_interface_pool`].
    pub fn start_without_interface_pool() -> Self {
        Self::builder()
            .without_interface_pool()
            .start()
            .expect("starting injectord")
    }

    pub fn try_start() -> anyhow::Result<Self> {
        Self::builder().start()
    }

    pub fn try_start_with(args: &[&str]) -> anyhow::Result<Self> {
        Self::builder().args(args).start()
    }

    /// Starts another daemon process on this daemon's socket.
    pub fn spawn(&self) -> anyhow::Result<Child> {
        let stderr = if self.how.log_to_stderr {
            Stdio::inherit()
        } else {
            fs::File::create(self.dir.join(format!("{}.log", unique("daemon"))))?.into()
        };
        let mut cmd = match &self.how.cgroup {
            None => Command::new(&self.binary),
            Some(dir) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
                    .arg(dir)
                    .arg(&self.binary);
                sh
            }
        };
        if self.how.process_group {
            use std::os::unix::process::CommandExt as _;
            cmd.process_group(0);
        }
        cmd.arg("--socket")
            .arg(&self.socket)
            .args([
                "--metrics-addr",
                "127.0.0.1:0",
                "--log",
                &self.how.log_filter,
            ])
            .args(&self.how.args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))
    }

    /// Waits until the control socket answers, at most [`READY_LIMIT`].
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "injectord exited during start-up: {status}\n{}",
                    self.logs()
                );
            }
            if Client::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "injectord not ready after {} s\n{}",
                    READY_LIMIT.as_secs(),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether `capabilities` reports `backend` available on this kernel.
    pub fn has_backend(&self, backend: &str) -> bool {
        let caps = self.call("capabilities", Value::Null).unwrap();
        caps["backends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == backend && c["available"] == true)
    }

    /// Starts a new daemon process on this daemon's socket (after the old
    /// one is gone) and waits until it answers.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let child = self.spawn()?;
        self.child = Some(child);
        self.wait_ready()?;
        let status = self.client().call("status", Value::Null)?;
        self.metrics_addr = status["metrics_addr"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Ok(())
    }

    /// Sends `sig` to the daemon's whole process group (see
    /// [`DaemonBuilder::own_process_group`]): the daemon and its reaper.
    pub fn signal_group(&self, sig: i32) {
        // SAFETY: kill(2) on the process group our child leads.
        unsafe { libc::kill(-(self.pid() as i32), sig) };
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    out.push_str(&fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits (up to 120 s: a TCG guest verifies slowly) until the daemon's
    /// start-up work is over: its pool of interface copies is full, which
    /// it fills in the background after it starts serving. Tests that
    /// measure an idle daemon (its CPU time, its descriptors) start here.
    pub fn wait_at_rest(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let status = self.call("status", Value::Null).expect("status");
            let pool = &status["interface_pool"];
            if pool.is_null() || pool["ready"] == pool["size"] {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon's interface pool is not full after 120 s: {pool}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Resident memory of the daemon process in KiB (`VmRSS`), 0 once it
    /// has exited.
    pub fn rss_kib(&self) -> u64 {
        fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// A new connection to the control socket. Keep it for a series of
    /// calls whose round trip is measured: [`Daemon::call`] connects anew
    /// each time.
    pub fn client(&self) -> Client {
        Client::connect(&self.socket).expect("connecting to the control socket")
    }

    pub fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.client().call(method, params)
    }

    /// Injects and returns the fault id; panics with the daemon's error.
    pub fn inject(&self, spec: Value) -> u64 {
        match self.call("inject", spec) {
            Ok(r) => r["id"].as_u64().expect("id"),
            Err(e) => panic!("inject failed: {e:#}"),
        }
    }

    /// The error code of a call that must fail.
    pub fn error_code(&self, method: &str, params: Value) -> String {
        match self.call(method, params) {
            Ok(v) => panic!("{method} unexpectedly succeeded: {v}"),
            Err(e) => e
                .downcast_ref::<ErrorResponse>()
                .map(|e| e.code.clone())
                .unwrap_or_else(|| panic!("not an error response: {e:#}")),
        }
    }

    /// Scrapes /metrics: series (with labels) to value.
    pub fn metrics(&self) -> HashMap<String, f64> {
        let body = http_get(&self.metrics_addr, "/metrics").expect("scraping /metrics");
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }

    /// `(evaluations, activations)` of a fault, from /metrics.
    pub fn counters(&self, name: &str, kind: &str) -> (u64, u64) {
        let m = self.metrics();
        let get = |metric: &str| {
            let key = format!("{metric}{{fault=\"{name}\",type=\"{kind}\"}}");
            m.get(&key)
                .copied()
                .unwrap_or_else(|| panic!("{key} missing from /metrics: {m:?}")) as u64
        };
        (
            get("injectord_fault_evaluations_total"),
            get("injectord_fault_activations_total"),
        )
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Waits for the daemon to exit (after a signal). A daemon that takes
    /// longer than [`EXIT_LIMIT`] is stuck: the test fails with where its
    /// threads are blocked and its log, instead of hanging the suite.
    pub fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon already waited for");
        match wait_with_limit(&mut child, EXIT_LIMIT) {
            Ok(status) => status,
            Err(stuck) => panic!("injectord did not exit: {stuck}\n{}", self.logs()),
        }
    }
}

/// How long a signalled daemon may take to exit.
pub const EXIT_LIMIT: Duration = Duration::from_secs(30);

/// How long a start may take before the socket answers. About a second on
/// the host; in a TCG guest every program the families load is verified
/// at emulated speed (debian-6.12 once took 11 s for the packet family
/// alone, and passed the 30 s this used to be), so the limit is for a
/// start that hangs, not for a slow one.
const READY_LIMIT: Duration = Duration::from_secs(90);

/// Waits up to `limit` for `child`; past it, returns where the child's
/// threads are blocked (kernel stacks) and kills it.
pub fn wait_with_limit(child: &mut Child, limit: Duration) -> Result<ExitStatus, String> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => break,
            Err(e) => return Err(format!("waiting for pid {}: {e}", child.id())),
        }
    }
    let stacks = thread_stacks(child.id());
    let _ = child.kill();
    let _ = child.wait();
    Err(format!(
        "pid {} still running after {limit:?}; its threads:\n{stacks}",
        child.id()
    ))
}

/// Name, state, wait channel and kernel stack of each thread of `pid`.
pub fn thread_stacks(pid: u32) -> String {
    let mut out = String::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let p = t.path();
        let read = |f: &str| fs::read_to_string(p.join(f)).unwrap_or_default();
        let state = read("status")
            .lines()
            .find(|l| l.starts_with("State:"))
            .unwrap_or_default()
            .to_string();
        out.push_str(&format!(
            "{} {} {state} wchan={}\n{}",
            t.file_name().to_string_lossy(),
            read("comm").trim(),
            read("wchan"),
            read("stack")
        ));
    }
    out
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            if let Err(stuck) = wait_with_limit(&mut child, EXIT_LIMIT) {
                // Panicking in drop would abort; say it loudly instead (a
                // test that cares calls `wait` and fails).
                eprintln!(
                    "injectord did not exit on SIGTERM: {stuck}\n{}",
                    self.logs()
                );
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {head}");
    }
    Ok(body.to_string())
}
