//! cgroup2 directories made for a test or a benchmark, and processes run
//! inside them.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{counts, helper, unique};

/// The cgroup2 mount point: the first cgroup2 line of /proc/self/mounts
/// (the one the daemon resolves cgroup paths against). Read once; a
/// benchmark makes thousands of cgroups.
///
/// Mount points with characters that /proc escapes (a space is `\040`)
/// are not supported; the hosts and VMs of the suite have none.
pub fn cgroup2_mount() -> PathBuf {
    static MOUNT: OnceLock<PathBuf> = OnceLock::new();
    MOUNT
        .get_or_init(|| {
            let mounts =
                fs::read_to_string("/proc/self/mounts").expect("reading /proc/self/mounts");
            mounts
                .lines()
                .find_map(|l| {
                    let mut f = l.split_whitespace();
                    let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
                    (fstype == "cgroup2").then(|| PathBuf::from(dir))
                })
                .expect("no cgroup2 filesystem is mounted (see /proc/self/mounts)")
        })
        .clone()
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

    /// The BPF programs attached to this cgroup, as `bpftool cgroup show`
    /// lists them ("" when none).
    pub fn bpf_programs(&self) -> String {
        let out = Command::new("bpftool")
            .args(["cgroup", "show"])
            .arg(&self.path)
            .output()
            .expect("bpftool must be installed (cargo xtask test installs it)");
        assert!(out.status.success(), "bpftool: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn child(&self, name: &str) -> Self {
        Self::at(&format!("{}/{name}", self.rel))
    }

    /// `program args...`, to be started inside this cgroup: a shell moves
    /// itself into the cgroup, then execs the program, so that the program
    /// runs there from its first instruction.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
            .arg(&self.path)
            .arg(program)
            .args(args);
        cmd
    }

    /// Runs `program args...` inside this cgroup and waits for it.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program, args)
            .output()
            .unwrap_or_else(|e| panic!("running {program} in {}: {e}", self.rel))
    }

    /// Starts a long-running process inside this cgroup, its stdout piped;
    /// returns once it is there.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Child {
        let child = self
            .command(program, args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning in cgroup");
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.procs().contains(&pid) {
            assert!(Instant::now() < deadline, "{pid} never joined {}", self.rel);
            std::thread::sleep(Duration::from_millis(5));
        }
        child
    }

    /// The processes in this cgroup (not its descendants).
    pub fn procs(&self) -> Vec<u32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
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
            errors: counts(&v["errors"]),
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
