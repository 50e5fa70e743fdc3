//! Metrics as Prometheus and Grafana use them. A real Prometheus (Debian's)
//! scrapes the daemon every second while connect and packet faults fire,
//! and runs every query of the Grafana dashboard; promtool and Python's
//! strict OpenMetrics parser read scrapes in the two formats. Abuse of the
//! metrics port (many held connections, a full file table) costs neither
//! CPU nor the control socket.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use injectord_tests::{net::*, workload::LoopDevice, *};
use serde_json::{Value, json};

/// What Prometheus 2.42 sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// How long faults fire while Prometheus watches.
const EXPERIMENT: Duration = Duration::from_secs(8);

/// `$__rate_interval` for a 1 s scrape interval (Grafana takes four scrape
/// intervals; one more for a late scrape on a slow VM).
const RATE_INTERVAL: &str = "5s";

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/injectord.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// (panel title, expressions) of every panel.
fn panels(dashboard: &Value) -> Vec<(String, Vec<String>)> {
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .map(|p| {
            let exprs = p["targets"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .filter_map(|t| Some(t["expr"].as_str()?.to_string()))
                        .collect()
                })
                .unwrap_or_default();
            (p["title"].as_str().unwrap_or("?").to_string(), exprs)
        })
        .collect()
}

/// The `injectord_*` metric names an expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.match_indices("injectord_")
        .map(|(i, _)| {
            expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// An expression with the dashboard's variables as Grafana fills them in
/// for "All" over `range`.
fn fill_variables(expr: &str, range: &str) -> String {
    expr.replace("$instance", ".*")
        .replace("$fault", ".*")
        .replace("$__rate_interval", RATE_INTERVAL)
        .replace("$__range", range)
}

/// Why a panel may have no data on this kernel: the delay panels need
/// delay faults, which need sch_fq.
fn needs_sch_fq(exprs: &[String]) -> bool {
    exprs
        .iter()
        .any(|e| e.contains("injectord_injected_delay_seconds"))
}

/// One GET /metrics with this `Accept` header: (Content-Type, body).
fn scrape(addr: &str, accept: Option<&str>) -> anyhow::Result<(String, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("malformed response: {resp}"))?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "GET /metrics: {head}");
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Ok((ctype, body.to_string()))
}

/// Runs `program` with `input` on stdin (at most 60 s): (success, output).
fn pipe_through(program: &str, args: &[&str], input: &str) -> (bool, String) {
    let mut child = Command::new("timeout")
        .args(["--kill-after=5", "60", program])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (cargo xtask test installs it)"));
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("writing stdin");
    drop(stdin);
    let out = child.wait_with_output().expect("waiting");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The scrape formats: Prometheus gets OpenMetrics, which a strict parser
/// accepts; anyone else gets text 0.0.4, which `promtool check metrics`
/// passes (it parses it and lints it: HELP on every metric, counter names).
/// Returns the text scrape.
fn check_formats(d: &Daemon) -> String {
    let (ctype, openmetrics) = scrape(&d.metrics_addr, Some(PROMETHEUS_ACCEPT)).expect("scrape");
    assert!(
        ctype.starts_with("application/openmetrics-text; version=1.0.0"),
        "Prometheus asked for OpenMetrics, got {ctype}"
    );
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    // Debian's python3-prometheus-client, for the system Python.
    let (ok, out) = pipe_through(
        "/usr/bin/python3",
        &[
            "-c",
            "import sys\n\
             from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
             print(len(list(text_string_to_metric_families(sys.stdin.read()))))",
        ],
        &openmetrics,
    );
    assert!(ok, "strict OpenMetrics parser: {out}\n{openmetrics}");

    for accept in [None, Some("text/plain"), Some("*/*")] {
        let (ctype, text) = scrape(&d.metrics_addr, accept).expect("scrape");
        assert_eq!(
            ctype, "text/plain; version=0.0.4; charset=utf-8",
            "Accept: {accept:?}"
        );
        assert!(!text.contains("# EOF"), "{text}");
    }
    let (_, text) = scrape(&d.metrics_addr, None).expect("scrape");
    let (ok, out) = pipe_through("promtool", &["check", "metrics"], &text);
    assert!(ok && out.trim().is_empty(), "promtool: {out}\n{text}");
    text
}

/// Metric names a text-format scrape declares: its HELP lines, and the
/// `_bucket`, `_sum` and `_count` series of its histograms.
fn declared(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(name) = line
            .strip_prefix("# HELP ")
            .and_then(|r| r.split(' ').next())
        {
            names.insert(name.to_string());
        }
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|r| r.strip_suffix(" histogram"))
        {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// A Prometheus server on a free loopback port, scraping one target every
/// second into a temporary directory; killed and removed on drop.
struct Prometheus {
    child: Option<Child>,
    dir: PathBuf,
    addr: String,
}

impl Prometheus {
    /// Time for Prometheus to answer /-/ready (TSDB start, on a slow VM).
    const READY_LIMIT: Duration = Duration::from_secs(60);

    fn start(target: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("prometheus"));
        fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: injectord\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("prometheus.yml");
        let mut me = Self {
            child: None,
            dir,
            addr: String::new(),
        };
        // The free port is free when we look; another process may take it
        // before Prometheus binds it, so a failed start tries another.
        let mut last = String::new();
        for _ in 0..3 {
            me.addr = free_port();
            let log = fs::File::create(me.dir.join("prometheus.log")).expect("log");
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    me.dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={}", me.addr))
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("prometheus must be installed (cargo xtask test installs it)");
            me.child = Some(child);
            match me.wait_ready() {
                Ok(()) => return me,
                Err(e) => last = e,
            }
            me.stop();
        }
        panic!("Prometheus did not start: {last}");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Self::READY_LIMIT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("exited with {status}: {}", self.log()));
            }
            let ready = Command::new("curl")
                .args(["-sf", "--max-time", "2"])
                .arg(format!("http://{}/-/ready", self.addr))
                .output()
                .is_ok_and(|o| o.status.success());
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not ready after {:?}: {}",
                    Self::READY_LIMIT,
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for the first scrape of the target: Prometheus hands new
    /// targets to its scrape loop after up to 5 s (its discovery manager
    /// batches updates), and the experiment must not start before.
    fn wait_first_scrape(&self) {
        let deadline = Instant::now() + Self::READY_LIMIT;
        loop {
            let targets = self.api("targets", &[]);
            let target = &targets["activeTargets"][0];
            if target["health"] != "unknown" && !target["health"].is_null() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no scrape after {:?}: {target}\n{}",
                Self::READY_LIMIT,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// GET /api/v1/<path> with these query parameters; the `data` of a
    /// successful answer.
    fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "20", "-G"]);
        for (k, v) in params {
            cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        let out = cmd
            .arg(format!("http://{}/api/v1/{path}", self.addr))
            .output()
            .expect("curl");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{path} {params:?}: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(v["status"], "success", "{path} {params:?}: {v}");
        v["data"].clone()
    }

    /// Finite values of `expr` over [start, end], one step a second.
    fn finite_values(&self, expr: &str, start: f64, end: f64) -> usize {
        let (start, end) = (format!("{start:.3}"), format!("{end:.3}"));
        let data = self.api(
            "query_range",
            &[
                ("query", expr),
                ("start", &start),
                ("end", &end),
                ("step", "1"),
            ],
        );
        data["result"]
            .as_array()
            .expect("a matrix")
            .iter()
            .flat_map(|series| series["values"].as_array().cloned().unwrap_or_default())
            .filter(|v| {
                v[1].as_str()
                    .and_then(|s| s.parse::<f64>().ok())
                    .is_some_and(f64::is_finite)
            })
            .count()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            if let Err(stuck) = wait_with_limit(&mut child, Duration::from_secs(20)) {
                eprintln!("prometheus did not exit on SIGTERM (killed): {stuck}");
            }
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A loopback address with a port nobody listens on right now.
fn free_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// A process in `cg` that calls connect() to `port` every 20 ms for `secs`.
fn connect_loop(cg: &TestCgroup, port: u16, secs: u64) -> Child {
    cg.spawn(
        "python3",
        &[
            "-c",
            "import socket, sys, time\n\
             end = time.monotonic() + float(sys.argv[2])\n\
             while time.monotonic() < end:\n\
             \x20   s = socket.socket()\n\
             \x20   try:\n\
             \x20       s.connect(('127.0.0.1', int(sys.argv[1])))\n\
             \x20   except OSError:\n\
             \x20       pass\n\
             \x20   s.close()\n\
             \x20   time.sleep(0.02)\n",
            &port.to_string(),
            &secs.to_string(),
        ],
    )
}

/// The faults of the experiment: a connect fault on a cgroup, and drop,
/// corrupt, duplicate (and delay, where the kernel has sch_fq) on ICMP
/// leaving one end of a veth pair. Returns whether delay runs here; where
/// it cannot, asserts that the daemon refuses it for the lack of sch_fq.
fn inject_experiment(d: &Daemon, cg: &TestCgroup, port: u16, link: &Link) -> bool {
    d.inject(json!({
        "name": "refuse",
        "target": {"cgroup": cg.rel},
        "fault": {"type": "connect_error", "errno": "ECONNREFUSED", "port": port},
        "trigger": {"probability": 0.5},
    }));
    let on_a = json!({"interface": "eth0", "netns": link.a.name});
    for (name, kind) in [
        ("loss", "packet_drop"),
        ("flip", "packet_corrupt"),
        ("twice", "packet_duplicate"),
    ] {
        d.inject(json!({
            "name": name,
            "target": on_a,
            "fault": {"type": kind, "protocol": "icmp"},
            "trigger": {"probability": 0.2},
        }));
    }
    let delay = json!({
        "name": "slow",
        "target": on_a,
        "fault": {"type": "packet_delay", "delay": "2ms", "jitter": "1ms", "protocol": "icmp", "install_fq": true},
    });
    if d.has_backend("sch_fq") {
        d.inject(delay);
        return true;
    }
    let err = d.client().call("inject", delay).unwrap_err();
    let err = err.downcast_ref::<ErrorResponse>().expect("error response");
    assert_eq!(err.code, "unsupported_kernel", "{}", err.message);
    assert!(err.message.contains("sch_fq"), "{}", err.message);
    println!("no delay faults on this kernel: {}", err.message);
    false
}

#[test]
fn every_dashboard_panel_has_data_in_a_real_prometheus() {
    // The syscall latency panels need the histogram, which is opt-in.
    let d = Daemon::start_with(&["--syscall-latency"]);
    let prometheus = Prometheus::start(&d.metrics_addr);
    let cg = TestCgroup::new("prom");
    let port = tcp_sink("127.0.0.1:0");
    let link = Link::new("prom");
    let delay = inject_experiment(&d, &cg, port, &link);
    // An experiment runner's phase, for the phase panel.
    d.call(
        "experiment_phase",
        json!({"experiment": "prom", "run": "1", "phase": "inject", "ttl": "10m"}),
    )
    .expect("experiment_phase");
    // Block I/O: direct reads of a loop device from the target; an
    // io_delay on the target aimed at another device splits the
    // histogram by cgroup and exports its outcome counters (held reads
    // are the block tests' business).
    let disk = LoopDevice::new("prom", 8);
    let spare = LoopDevice::new("prom-spare", 8);
    d.inject(json!({
        "name": "disk-slow",
        "target": {"cgroup": cg.rel},
        "fault": {"type": "io_delay", "device": spare.dev, "delay": "1ms"},
    }));
    prometheus.wait_first_scrape();

    let start = unix_now();
    let secs = EXPERIMENT.as_secs();
    let mut connects = connect_loop(&cg, port, secs);
    let mut ping = link.a.spawn(
        "ping",
        &["-q", "-n", "-i", "0.02", "-w", &secs.to_string(), B_IP],
    );
    let mut reads = cg.spawn(
        "sh",
        &[
            "-c",
            "end=$(( $(date +%s) + $0 )); while [ $(date +%s) -lt $end ]; do dd if=$1 of=/dev/null bs=4k count=20 iflag=direct 2>/dev/null; done",
            &secs.to_string(),
            &disk.dev,
        ],
    );
    // Mid-experiment, every family has samples: check both formats then.
    std::thread::sleep(EXPERIMENT / 2);
    let text = check_formats(&d);
    if delay {
        let inf = text.lines().any(|l| {
            l.starts_with("injectord_injected_delay_seconds_bucket{")
                && l.contains("fault=\"slow\"")
                && l.contains("le=\"+Inf\"")
        });
        assert!(inf, "no +Inf bucket: {text}");
    }
    for child in [&mut connects, &mut ping, &mut reads] {
        wait_with_limit(child, EXPERIMENT + Duration::from_secs(30)).expect("traffic ends");
    }
    // Two more scrapes take in the last increments.
    std::thread::sleep(Duration::from_millis(2500));
    let end = unix_now();

    let targets = prometheus.api("targets", &[]);
    let target = &targets["activeTargets"][0];
    assert_eq!(target["health"], "up", "scrapes failed: {target}");
    assert_eq!(target["lastError"], "", "{target}");

    let dashboard = dashboard();
    let declared = declared(&text);
    let range = format!("{}s", (end - start).ceil() as u64 + 5);
    let mut empty = Vec::new();
    for (title, exprs) in panels(&dashboard) {
        assert!(!exprs.is_empty(), "panel {title:?} has no query");
        for expr in &exprs {
            let missing: Vec<_> = metric_names(expr)
                .into_iter()
                .filter(|n| !declared.contains(n))
                .collect();
            assert!(
                missing.is_empty(),
                "panel {title:?} queries {missing:?}, which the daemon does not export:\n{text}"
            );
            let n = prometheus.finite_values(&fill_variables(expr, &range), start - 5.0, end);
            println!("{n:4} values  {title}: {expr}");
            if n == 0 {
                empty.push((title.clone(), expr.clone(), exprs.clone()));
            }
        }
    }
    for (title, expr, exprs) in &empty {
        assert!(
            !delay && needs_sch_fq(exprs),
            "panel {title:?} has no data (kernel has sch_fq: {delay}): {expr}"
        );
        println!("empty as it must be without sch_fq: {title}");
    }

    // The variables' label_values() queries find what they list.
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        let query = var["query"].as_str().expect("query");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("not label_values(): {query}"));
        let (selector, label) = inner.rsplit_once(',').expect("label_values(metric, label)");
        let selector = fill_variables(selector.trim(), &range);
        let values = prometheus.api(
            &format!("label/{}/values", label.trim()),
            &[("match[]", &selector)],
        );
        assert!(
            values.as_array().is_some_and(|v| !v.is_empty()),
            "variable {}: {query} lists nothing",
            var["name"]
        );
    }
}

/// CPU the process used, in clock ticks (utime + stime of /proc/PID/stat).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name, which may hold spaces: state is
    // field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    f[11] + f[12]
}

/// Share of one CPU the process used over `span`.
fn cpu_share(pid: u32, span: Duration) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let before = cpu_ticks(pid);
    std::thread::sleep(span);
    (cpu_ticks(pid) - before) as f64 / hz / span.as_secs_f64()
}

fn open_fds(pid: u32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count() as u64
}

/// The descriptor the process's next open() gets: the lowest free one.
fn lowest_free_fd(pid: u32) -> u64 {
    let open: BTreeSet<u64> = fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    (0..)
        .find(|fd| !open.contains(fd))
        .expect("a free descriptor")
}

/// Sets the soft open-file limit of a running process, as `prlimit --pid`
/// does; returns the one it had. (A limit given at start does not stick:
/// the daemon, as root, raises its own. The hard limit stays: raising it
/// back would need CAP_SYS_RESOURCE, which a container may lack.)
fn set_nofile(pid: u32, soft: u64) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit(2) reading the current limit into a valid struct.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: prlimit(2) with a valid new limit and no old one asked for.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    old.rlim_cur
}

/// Room for this test's own connections.
fn raise_own_nofile() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
}

/// One `status` call on a fresh control connection, failing past `limit`;
/// how long it took.
fn status_within(d: &Daemon, limit: Duration) -> Duration {
    let t = Instant::now();
    let mut s = UnixStream::connect(&d.socket).expect("control socket");
    s.set_read_timeout(Some(limit)).expect("timeout");
    s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"status\"}\n")
        .expect("send");
    let mut line = String::new();
    let read = BufReader::new(&s).read_line(&mut line);
    let took = t.elapsed();
    assert!(
        read.is_ok() && line.contains("\"result\"") && took < limit,
        "status took {took:?} (limit {limit:?}): {read:?} {line:?}\n{}",
        d.logs()
    );
    took
}

/// /metrics answers within `limit` (after an abuse ended).
fn metrics_answer_within(d: &Daemon, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        match http_get(&d.metrics_addr, "/metrics") {
            Ok(body) if body.contains("injectord_faults_active") => return,
            r if Instant::now() > deadline => {
                panic!(
                    "/metrics not answering after {limit:?}: {r:?}\n{}",
                    d.logs()
                )
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Most CPU the daemon may use while its metrics port is abused (it
/// renews its lease and does nothing else); a spinning accept loop uses
/// a whole CPU.
const IDLE_CPU: f64 = 0.2;

/// Connections the abusive client holds: more than the daemon has
/// descriptors to spare, fewer than its accept queue (129) plus the ones it
/// serves.
const HELD: usize = 120;

#[test]
fn held_metrics_connections_cost_no_cpu_and_spare_the_control_socket() {
    raise_own_nofile();
    let d = Daemon::start();
    d.wait_at_rest();
    let pid = d.pid();
    // 100 descriptors to spare, and more clients than that, each connected
    // and silent. (The listen backlog of 128 holds those not accepted.)
    set_nofile(pid, open_fds(pid) + 100);
    let addr: SocketAddr = d.metrics_addr.parse().expect("addr");
    let held: Vec<TcpStream> = (0..HELD)
        .map(|i| {
            TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    let cpu = cpu_share(pid, Duration::from_secs(2));
    assert!(
        cpu < IDLE_CPU,
        "daemon used {:.0}% CPU with {HELD} held metrics connections\n{}",
        cpu * 100.0,
        d.logs()
    );
    // A held-up control socket would not answer at all; 5 s leaves room
    // for a stalled TCG guest.
    for _ in 0..3 {
        status_within(&d, Duration::from_secs(5));
    }
    println!(
        "{} fds open in the daemon with {HELD} connections held; {:.1}% CPU",
        open_fds(pid),
        cpu * 100.0
    );
    drop(held);
    metrics_answer_within(&d, Duration::from_secs(10));
}

#[test]
fn a_full_file_table_backs_off_instead_of_spinning() {
    let d = Daemon::start();
    d.wait_at_rest();
    let pid = d.pid();
    // Not one descriptor to spare (every one below the limit is taken):
    // every accept fails with EMFILE while clients wait in the backlog,
    // each with a request sent. The harness's own connections close just
    // after start-up: the daemon's ends of them must be gone first, or the
    // limit would leave their numbers free.
    let mut lowest = lowest_free_fd(pid);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = lowest_free_fd(pid);
        if now == lowest {
            break;
        }
        lowest = now;
    }
    let soft = set_nofile(pid, lowest);
    let addr: SocketAddr = d.metrics_addr.parse().expect("addr");
    let waiting: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("request");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let cpu = cpu_share(pid, Duration::from_secs(2));
    set_nofile(pid, soft);
    assert!(
        cpu < IDLE_CPU,
        "daemon used {:.0}% CPU while accept failed with EMFILE\n{}",
        cpu * 100.0,
        d.logs()
    );
    assert!(d.logs().contains("metrics accept failed"), "{}", d.logs());
    drop(waiting);
    metrics_answer_within(&d, Duration::from_secs(10));
    // As above: room for a stalled TCG guest.
    status_within(&d, Duration::from_secs(5));
}
