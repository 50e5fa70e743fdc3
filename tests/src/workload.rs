//! Real network software for the fault-spec tests, each started inside a
//! network namespace (and, where the fault targets it, a cgroup) that the
//! test made: nginx, haproxy, dnsmasq and keepalived from Debian. Every
//! one is stopped, and its files removed, on drop.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{TestCgroup, net::Netns, unique};

/// A directory for one workload's configuration and state, removed on
/// drop.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(unique(prefix));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }

    /// Writes `name` in the directory; returns its path as a string.
    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.path.join(name);
        fs::write(&p, text).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
        p.display().to_string()
    }

    pub fn file(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A server process, killed and waited for on drop (its namespace and
/// cgroup guards kill anything it forked).
pub struct Service {
    pub name: &'static str,
    child: Child,
    pub dir: Scratch,
}

impl Service {
    /// Starts `program args...` in `ns` (inside `cg` if given), its output
    /// in `dir/<name>.log`.
    pub fn start(
        name: &'static str,
        ns: &Netns,
        cg: Option<&TestCgroup>,
        dir: Scratch,
        program: &str,
        args: &[&str],
    ) -> Self {
        let mut full = vec!["netns", "exec", &ns.name, program];
        full.extend_from_slice(args);
        let mut cmd = match cg {
            Some(cg) => cg.command("ip", &full),
            None => {
                let mut c = Command::new("ip");
                c.args(&full);
                c
            }
        };
        let log = fs::File::create(dir.path.join(format!("{name}.log"))).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { name, child, dir }
    }

    /// What the service wrote to its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path.join(format!("{}.log", self.name))).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How it ended, if it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Panics, with the log, if the service has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.name, self.log());
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `ready` every 50 ms for up to `limit`; panics with `what` after.
pub fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// nginx serving `dir/www` on `port` (IPv4 and IPv6), with WebDAV PUT
/// under `/upload/`, as the backend or the far end of a test.
pub fn nginx(ns: &Netns, port: u16) -> Service {
    nginx_with(ns, None, port, None)
}

/// [`nginx`] inside `cg` if given (the VNF a fault targets: its master
/// and one worker), reading its `nginx.conf` from `conf_dir` if given
/// (where a spec's path filter looks) rather than from its scratch
/// directory.
pub fn nginx_with(
    ns: &Netns,
    cg: Option<&TestCgroup>,
    port: u16,
    conf_dir: Option<&Path>,
) -> Service {
    let dir = Scratch::new("nginx");
    fs::create_dir_all(dir.path.join("www/upload")).expect("www");
    fs::write(dir.path.join("www/index.html"), "ok\n").expect("index.html");
    let d = dir.path.display();
    let conf = conf_dir.map_or_else(|| dir.path.join("nginx.conf"), |c| c.join("nginx.conf"));
    fs::write(
        &conf,
        format!(
            "daemon off; user root; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{
    listen {port}; listen [::]:{port};
    root {d}/www; client_max_body_size 64m;
    location /upload/ {{ dav_methods PUT; }}
  }}
}}
"
        ),
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", conf.display()));
    let conf = conf.display().to_string();
    let err = dir.file("startup.log");
    let mut svc = Service::start("nginx", ns, cg, dir, "nginx", &["-e", &err, "-c", &conf]);
    let url = format!("http://127.0.0.1:{port}/");
    wait_until(Duration::from_secs(20), "nginx answering", || {
        svc.assert_running();
        ns.run("curl", &["-s", "-o", "/dev/null", "--max-time", "2", &url])
            .status
            .success()
    });
    svc
}

/// Writes a file of `bytes` into an nginx's document root.
pub fn serve_file(nginx: &Service, name: &str, bytes: usize) {
    let data: Vec<u8> = (0..bytes).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(nginx.dir.path.join("www").join(name), data).expect("writing a served file");
}

/// haproxy in `cg` (inside `ns`): HTTP on 127.0.0.1:`listen` to one
/// `server`, a new server connection per request (as with a backend that
/// does not keep connections), with `retries` retries of a failed connect.
pub fn haproxy(ns: &Netns, cg: &TestCgroup, listen: u16, server: &str, retries: u32) -> Service {
    let dir = Scratch::new("haproxy");
    let conf = dir.write(
        "haproxy.cfg",
        &format!(
            "global
  maxconn 256
defaults
  mode http
  option httpclose
  retries {retries}
  timeout connect 100ms
  timeout client 10s
  timeout server 10s
frontend web
  bind 127.0.0.1:{listen}
  default_backend upstream
backend upstream
  server up {server}
"
        ),
    );
    let mut svc = Service::start(
        "haproxy",
        ns,
        Some(cg),
        dir,
        "haproxy",
        &["-db", "-f", &conf],
    );
    let url = format!("http://127.0.0.1:{listen}/");
    wait_until(Duration::from_secs(20), "haproxy answering", || {
        svc.assert_running();
        ns.run("curl", &["-s", "-o", "/dev/null", "--max-time", "2", &url])
            .status
            .success()
    });
    svc
}

/// dnsmasq on `ip`:53 in `ns`, answering `name` with `addr` and nothing
/// else (no upstream, no /etc/hosts).
pub fn dnsmasq(ns: &Netns, ip: &str, name: &str, addr: &str) -> Service {
    let dir = Scratch::new("dnsmasq");
    let pid = dir.file("dnsmasq.pid");
    let mut svc = Service::start(
        "dnsmasq",
        ns,
        None,
        dir,
        "dnsmasq",
        &[
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--user=root",
            "--bind-interfaces",
            &format!("--listen-address={ip}"),
            &format!("--address=/{name}/{addr}"),
            &format!("--pid-file={pid}"),
            "--log-facility=-",
        ],
    );
    wait_until(Duration::from_secs(20), "dnsmasq listening", || {
        svc.assert_running();
        ns.run_ok("cat", &["/proc/net/udp"])
            .lines()
            .any(|l| l.contains(":0035 "))
    });
    svc
}

/// A resolv.conf for processes started with `ip netns exec` in `ns`
/// (which bind-mounts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf),
/// removed on drop.
pub struct ResolvConf {
    dir: PathBuf,
}

impl ResolvConf {
    pub fn new(ns: &Netns, server: &str) -> Self {
        let dir = Path::new("/etc/netns").join(&ns.name);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {server}\noptions timeout:1 attempts:1\n"),
        )
        .expect("resolv.conf");
        Self { dir }
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// One keepalived VRRP node in `cg` (inside `ns`): a VRRPv3 instance on
/// eth0 with `priority`, advertising every `advert` (keepalived takes
/// centiseconds with VRRPv3), holding `vip` while MASTER.
pub fn keepalived(
    ns: &Netns,
    cg: &TestCgroup,
    priority: u8,
    vip: &str,
    advert: Duration,
) -> Service {
    let dir = Scratch::new("keepalived");
    let conf = dir.write(
        "keepalived.conf",
        &format!(
            "global_defs {{
  router_id {name}
  vrrp_version 3
}}
vrrp_instance VI_1 {{
  state BACKUP
  interface eth0
  virtual_router_id 51
  priority {priority}
  advert_int {advert:.2}
  virtual_ipaddress {{
    {vip}/24
  }}
}}
",
            name = ns.name,
            advert = advert.as_secs_f64(),
        ),
    );
    let (pid, vrrp_pid) = (dir.file("keepalived.pid"), dir.file("vrrp.pid"));
    let mut svc = Service::start(
        "keepalived",
        ns,
        Some(cg),
        dir,
        "keepalived",
        &[
            "--dont-fork",
            "--log-console",
            "--vrrp",
            "--use-file",
            &conf,
            "--pid",
            &pid,
            "--vrrp_pid",
            &vrrp_pid,
        ],
    );
    std::thread::sleep(Duration::from_millis(200));
    svc.assert_running();
    svc
}

/// Whether `ns` holds `vip` on eth0 (a keepalived node holds it as
/// MASTER, and only then).
pub fn holds(ns: &Netns, vip: &str) -> bool {
    ns.run_ok("ip", &["-o", "-4", "addr", "show", "dev", "eth0"])
        .contains(&format!(" {vip}/"))
}

/// A tmpfs mounted for one test: a filesystem on its own (anonymous)
/// device, on every kernel of the matrix (the built kernel has no ext4,
/// and the Debian guests no loop devices). Unmounted on drop.
pub struct Filesystem {
    pub path: PathBuf,
    _dir: Scratch,
}

impl Filesystem {
    pub fn tmpfs(name: &str) -> Self {
        let dir = Scratch::new(name);
        let path = dir.path.join("mnt");
        fs::create_dir_all(&path).unwrap();
        let target = path.display().to_string();
        run_out(
            "mount",
            &["-t", "tmpfs", "-o", "size=16m", "tmpfs", &target],
        );
        Self { path, _dir: dir }
    }

    /// Its device as `"major:minor"` (what `stat -c %Hd:%Ld` prints).
    pub fn device(&self) -> String {
        run_out("stat", &["-c", "%Hd:%Ld", &self.path.display().to_string()])
    }

    pub fn file(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }
}

impl Drop for Filesystem {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A loop block device backed by a file of `size_mb` MiB, optionally
/// with an ext4 filesystem mounted on it; on every kernel of the matrix
/// (the Debian guests load the loop module first). Unmounted, detached
/// and deleted on drop.
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub dev: String,
    /// Where its filesystem is mounted, if it has one.
    pub mount: Option<PathBuf>,
    dir: Scratch,
}

impl LoopDevice {
    /// A bare device (for O_DIRECT I/O on the device itself).
    pub fn new(name: &str, size_mb: u32) -> Self {
        // Built in on the host and the built kernel, a module in Debian's.
        let _ = Command::new("modprobe")
            .arg("loop")
            .stderr(Stdio::null())
            .status();
        let dir = Scratch::new(name);
        let backing = dir.path.join("backing.img");
        let file = fs::File::create(&backing).unwrap();
        file.set_len(u64::from(size_mb) << 20).unwrap();
        drop(file);
        let dev = run_out("losetup", &["-f", "--show", &backing.display().to_string()]);
        Self {
            dev,
            mount: None,
            dir,
        }
    }

    /// A device with ext4 mounted on it.
    pub fn ext4(name: &str, size_mb: u32) -> Self {
        let mut d = Self::new(name, size_mb);
        run_out("mkfs.ext4", &["-q", "-F", &d.dev]);
        let mnt = d.dir.path.join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        run_out("mount", &[&d.dev, &mnt.display().to_string()]);
        // Anyone may write there (tests run workloads as root anyway).
        run_out("chmod", &["1777", &mnt.display().to_string()]);
        d.mount = Some(mnt);
        d
    }

    /// `"major:minor"` of the device.
    pub fn numbers(&self) -> String {
        run_out("lsblk", &["-dno", "MAJ:MIN", &self.dev])
            .trim()
            .to_string()
    }

    /// A path in its filesystem.
    pub fn file(&self, name: &str) -> String {
        self.mount
            .as_ref()
            .expect("a LoopDevice without a filesystem")
            .join(name)
            .display()
            .to_string()
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Some(m) = &self.mount {
            let _ = Command::new("umount").arg(m).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// Runs a command that must succeed; its trimmed stdout.
fn run_out(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `python -c script args...` in `cg`, its stdout piped, with a fixed hash
/// seed (no getrandom() at start-up) and without core dumps (a process a
/// test ends with SIGSEGV must leave no core file behind).
pub fn python_command(cg: &TestCgroup, python: &str, script: &str, args: &[&str]) -> Command {
    use std::os::unix::process::CommandExt as _;
    let mut all = vec!["-c", script];
    all.extend_from_slice(args);
    let mut cmd = cg.command(python, &all);
    cmd.stdout(Stdio::piped()).env("PYTHONHASHSEED", "0");
    // SAFETY: setrlimit is async-signal safe.
    unsafe {
        cmd.pre_exec(|| {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            Ok(())
        });
    }
    cmd
}
