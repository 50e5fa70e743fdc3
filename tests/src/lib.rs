//! Harness for the end-to-end tests: starts the real `injectord` binary,
//! makes real cgroups, runs real programs inside them.
//!
//! The daemon binary comes from `INJECTORD_BIN` (set by `cargo xtask test`),
//! else `target/release/injectord`, else `target/debug/injectord`.

use std::{
    collections::HashMap,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
pub use injectord::client::{Client, ErrorResponse};
use serde_json::{Value, json};

pub mod net;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process and call.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn daemon_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("INJECTORD_BIN") {
        return PathBuf::from(p);
    }
    let root = workspace_root();
    ["release", "debug"]
        .iter()
        .map(|p| root.join("target").join(p).join("injectord"))
        .find(|p| p.exists())
        .expect("no injectord binary: run `cargo xtask test` (or set INJECTORD_BIN)")
}

/// A running daemon on its own socket and metrics port, stopped with
/// SIGTERM when dropped.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub metrics_addr: String,
    dir: PathBuf,
    extra_args: Vec<String>,
}

impl Daemon {
    pub fn start() -> Self {
        Self::try_start().expect("starting injectord")
    }

    /// Starts the daemon with extra command-line arguments.
    pub fn start_with(args: &[&str]) -> Self {
        Self::try_start_with(args).expect("starting injectord")
    }

    pub fn try_start() -> anyhow::Result<Self> {
        Self::try_start_with(&[])
    }

    pub fn try_start_with(args: &[&str]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(unique("injectord-test"));
        fs::create_dir_all(&dir)?;
        let socket = dir.join("injectord.sock");
        let mut daemon = Self {
            child: None,
            socket,
            metrics_addr: String::new(),
            dir,
            extra_args: args.iter().map(|a| a.to_string()).collect(),
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

    /// Starts another daemon process on this daemon's socket.
    pub fn spawn(&self) -> anyhow::Result<Child> {
        let log = fs::File::create(self.dir.join(format!("{}.log", unique("daemon"))))?;
        Command::new(daemon_binary())
            .arg("--socket")
            .arg(&self.socket)
            .args([
                "--metrics-addr",
                "127.0.0.1:0",
                "--log",
                "info,injectord=debug",
            ])
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning injectord")
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
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
                bail!("injectord not ready after 30 s\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

/// The cgroup2 mount point, from /proc/self/mounts.
pub fn cgroup2_mount() -> PathBuf {
    injectord::target::Cgroups::discover()
        .expect("cgroup2 mount")
        .mount()
        .to_path_buf()
}

/// A cgroup made for one test (and its descendants), removed on drop after
/// killing whatever still runs in it.
pub struct TestCgroup {
    pub path: PathBuf,
    /// Path relative to the cgroup2 mount, e.g. `injectord-tests/x-1-2`.
    pub rel: String,
}

impl TestCgroup {
    pub fn new(name: &str) -> Self {
        Self::at(&format!("injectord-tests/{}", unique(name)))
    }

    /// A cgroup at a path relative to the mount (parents are created).
    pub fn at(rel: &str) -> Self {
        let path = cgroup2_mount().join(rel);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self {
            path,
            rel: rel.to_string(),
        }
    }

    pub fn child(&self, name: &str) -> Self {
        Self::at(&format!("{}/{name}", self.rel))
    }

    /// Runs `program args...` inside this cgroup and waits for it.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
            .arg(&self.path)
            .arg(program)
            .args(args);
        cmd.output()
            .unwrap_or_else(|e| panic!("running {program} in {}: {e}", self.rel))
    }

    /// Starts a long-running process inside this cgroup; returns once it
    /// is there.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Child {
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
            .arg(&self.path)
            .arg(program)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning in cgroup");
        let pid = child.id().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .any(|l| l == pid)
        {
            assert!(Instant::now() < deadline, "{pid} never joined {}", self.rel);
            std::thread::sleep(Duration::from_millis(5));
        }
        child
    }

    /// Runs the connect helper in this cgroup.
    pub fn connects(&self, proto: &str, host: &str, port: u16, count: u32) -> Connects {
        let out = self.run(
            "python3",
            &[
                helper("connect.py").to_str().expect("utf-8 path"),
                proto,
                host,
                &port.to_string(),
                &count.to_string(),
            ],
        );
        assert!(
            out.status.success(),
            "connect.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("connect.py output");
        Connects {
            ok: v["ok"].as_u64().unwrap_or(0),
            errors: v["errors"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default(),
            pattern: v["pattern"].as_str().unwrap_or_default().to_string(),
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Deepest first.
        let mut dirs: Vec<PathBuf> = walk_dirs(&self.path);
        dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for d in &dirs {
            if let Ok(procs) = fs::read_to_string(d.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                    // SAFETY: kill(2); these are processes the test started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for d in &dirs {
            for _ in 0..50 {
                if fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn walk_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = fs::read_dir(&out[i]) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

/// What a run of connect.py saw.
#[derive(Debug)]
pub struct Connects {
    pub ok: u64,
    pub errors: HashMap<String, u64>,
    /// One character per call: '.' success, 'X' failure.
    pub pattern: String,
}

impl Connects {
    pub fn failed(&self, errno: &str) -> u64 {
        self.errors.get(errno).copied().unwrap_or(0)
    }

    pub fn total_failed(&self) -> u64 {
        self.errors.values().sum()
    }
}

pub fn helper(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("helpers")
        .join(name)
}

/// A connect_error spec on a cgroup.
pub fn connect_fault(cgroup: &TestCgroup, fault: Value) -> Value {
    let mut f = json!({"type": "connect_error", "errno": "ECONNREFUSED"});
    if let (Some(obj), Some(extra)) = (f.as_object_mut(), fault.as_object()) {
        obj.extend(extra.clone());
    }
    json!({"target": {"cgroup": cgroup.rel}, "fault": f})
}

/// A TCP listener on loopback that accepts and drops connections in the
/// background, so connects to it succeed unless a fault interferes.
pub fn tcp_sink(addr: &str) -> u16 {
    let l = std::net::TcpListener::bind(addr).expect("bind");
    let port = l.local_addr().expect("local addr").port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            drop(s);
        }
    });
    port
}

/// Reads lines from a child until one contains `needle` (or EOF).
pub fn wait_line(child: &mut Child, needle: &str) -> Option<String> {
    let out = child.stdout.as_mut()?;
    let mut r = BufReader::new(out);
    let mut line = String::new();
    while r.read_line(&mut line).ok()? > 0 {
        if line.contains(needle) {
            return Some(line);
        }
        line.clear();
    }
    None
}

/// Where the capability matrix rows go (set by `cargo xtask test`).
pub fn matrix_dir() -> Option<PathBuf> {
    std::env::var_os("INJECTORD_MATRIX_DIR").map(PathBuf::from)
}
