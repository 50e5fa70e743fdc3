//! Debian kernels under QEMU (TCG) for the second half of the kernel matrix.
//!
//! The guest boots a Debian cloud kernel with virtme-ng (`vng`), which
//! exports the host's root filesystem read-only over virtiofs, so the test
//! binaries under `target/` run unchanged inside the VM. Everything that is
//! downloaded or built lives in the cache directory handed in (normally
//! `~/.cache/injectord`, never inside the repository):
//!
//! ```text
//! <cache>/vm/
//!   .lock                            held while preparing, so parallel runs don't race
//!   virtme-ng-<ver>/                 Python venv with vng (+ `.ready` once complete)
//!   virtiofsd-<ver>/bin/virtiofsd    `cargo install`ed (Debian's qemu one is too old)
//!   busybox-static/bin/busybox       unpacked .deb, for vng's initramfs
//!   kernels/<package>_<version>/     unpacked kernel .deb + depmod, kernel.json once complete
//!   runs/<label>-<pid>-<n>/          per-run script and exit status, removed afterwards
//! ```
//!
//! Host packages (QEMU, udev, ...) are installed with apt-get only when
//! missing. Every step is skipped when its result is already there, so the
//! second run costs only a couple of `dpkg-query`/`apt-cache` calls.

use std::{
    collections::VecDeque,
    ffi::OsString,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use serde::{Deserialize, Serialize};

/// virtme-ng release from PyPI (pinned: its guest init and command-line
/// handling are what `run_in_vm` was verified against).
pub const VIRTME_NG_VERSION: &str = "1.42";
/// virtiofsd release from crates.io.
pub const VIRTIOFSD_VERSION: &str = "1.14.0";
/// Toolchain that builds virtiofsd (the project's userspace toolchain; with
/// `RUSTUP_AUTO_INSTALL=0` it must already be installed, which `./x` does).
const RUST_TOOLCHAIN: &str = "1.98.0";

/// Debian packages the VM runner needs on the host, installed when missing.
const APT_PACKAGES: &[&str] = &[
    // The emulator (TCG: the build machines have no usable KVM).
    "qemu-system-x86",
    // depmod for the unpacked kernels; modprobe inside the guest.
    "kmod",
    // The guest runs the host's udevd: without it virtme-ng-init finds no
    // /dev/virtio-ports/* and the command's output and exit code are lost.
    "udev",
    // vng reads the kernel version of a vmlinuz with `file`.
    "file",
    // The venv holding virtme-ng.
    "python3-venv",
    // Building virtiofsd: it links libseccomp and libcap-ng.
    "libseccomp-dev",
    "libcap-ng-dev",
    "gcc",
    "libc6-dev",
];

/// A kernel of the matrix: which Debian package provides it.
#[derive(Debug, Clone)]
pub struct KernelSpec {
    /// Name used in logs, `--kernel` filters and result tables.
    pub label: &'static str,
    /// Upstream series: picks `linux-image-<series>.<anything>-<flavour>`.
    pub series: &'static str,
    /// Debian flavour suffix of the package name.
    pub flavour: &'static str,
}

impl KernelSpec {
    /// Whether `package` is a build of this spec (any point release or ABI).
    pub fn matches(&self, package: &str) -> bool {
        // "linux-image-6.1." must not match 6.12, hence the dot and the digit.
        package
            .strip_prefix("linux-image-")
            .and_then(|rest| rest.strip_prefix(self.series))
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|rest| rest.strip_suffix(self.flavour))
            .and_then(|middle| middle.strip_suffix('-'))
            .is_some_and(|middle| {
                middle.starts_with(|c: char| c.is_ascii_digit())
                    && middle
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
            })
    }

    /// POSIX regex for `apt-cache search --names-only` (a pre-filter; the
    /// exact test is [`KernelSpec::matches`]).
    fn apt_regex(&self) -> String {
        format!(
            "^linux-image-{}\\.[0-9].*-{}$",
            self.series.replace('.', "\\."),
            self.flavour
        )
    }
}

/// The VM kernels of the matrix: Debian's 6.1 and 6.12 LTS cloud kernels
/// (bookworm, bookworm-security). The newest available build of each is used.
pub fn matrix() -> Vec<KernelSpec> {
    vec![
        KernelSpec {
            label: "debian-6.1",
            series: "6.1",
            flavour: "cloud-amd64-unsigned",
        },
        KernelSpec {
            label: "debian-6.12",
            series: "6.12",
            flavour: "cloud-amd64-unsigned",
        },
    ]
}

/// Host tools for running VMs, as returned by [`ensure_tools`].
#[derive(Debug, Clone)]
pub struct VmTools {
    /// virtme-ng's front end (in a venv).
    pub vng: PathBuf,
    /// Directories put first on PATH for vng: it runs `virtme-run` and looks
    /// virtiofsd up there.
    pub path_dirs: Vec<PathBuf>,
    pub virtiofsd: PathBuf,
    /// A static busybox for vng's initramfs (Debian's cloud kernels have
    /// virtio and virtiofs as modules, so vng must build one).
    pub busybox: PathBuf,
    pub qemu: PathBuf,
    /// Where per-run scratch directories go.
    pub runs_dir: PathBuf,
}

/// An unpacked kernel ready to boot, as returned by [`ensure_kernel`].
#[derive(Debug, Clone)]
pub struct Kernel {
    pub label: String,
    /// What `uname -r` prints inside the guest.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the unpacked package (depmod'ed); vng
    /// links the guest's `/lib/modules/<release>` to it.
    pub modules: PathBuf,
    /// Debian package and version it came from.
    pub package: String,
    pub version: String,
}

/// Written last into an unpacked kernel's directory: its presence means
/// the unpacking and depmod completed.
#[derive(Serialize, Deserialize)]
struct KernelRecord {
    package: String,
    version: String,
    release: String,
}

/// Knobs of one VM run; [`run_in_vm`] uses [`VmOptions::from_env`].
#[derive(Debug, Clone)]
pub struct VmOptions {
    pub cpus: u32,
    pub memory_mib: u32,
    /// Kill the VM after this long (None: wait forever).
    pub timeout: Option<Duration>,
    /// Show the guest's serial console (kernel log, init) too.
    pub verbose: bool,
}

impl Default for VmOptions {
    fn default() -> Self {
        Self {
            cpus: 2,
            memory_mib: 2048,
            timeout: None,
            verbose: false,
        }
    }
}

impl VmOptions {
    /// Defaults, overridden by `INJECTORD_VM_VERBOSE=1` and
    /// `INJECTORD_VM_TIMEOUT=<seconds>`.
    pub fn from_env() -> Self {
        Self {
            verbose: std::env::var_os("INJECTORD_VM_VERBOSE").is_some_and(|v| v != "0"),
            timeout: std::env::var("INJECTORD_VM_TIMEOUT")
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
            ..Self::default()
        }
    }
}

/// Shell code run as root inside the guest before the command, from the
/// directory vng starts in (the host's current directory). It only adds
/// what virtme-ng does not already provide and is quiet unless something
/// cannot be set up.
pub fn guest_preamble() -> &'static str {
    r#"# injectord VM preamble (POSIX sh, run as root inside the guest)
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
vm_warn() { echo "[vm] warning: $*" >&2; }
vm_mounted() { awk -v t="$1" '$3 == t { found = 1 } END { exit !found }' /proc/mounts; }
# virtme-ng-init mounts cgroup2 at /sys/fs/cgroup; make sure one is there.
if ! vm_mounted cgroup2; then
    mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup \
        || vm_warn "cannot mount cgroup2 at /sys/fs/cgroup"
fi
# bpffs (pinning) is not mounted by virtme-ng.
if ! vm_mounted bpf; then
    mount -t bpf bpf /sys/fs/bpf || vm_warn "cannot mount bpffs at /sys/fs/bpf"
fi
# tracefs (tracepoints) and debugfs are mounted by virtme-ng; just in case.
if ! vm_mounted tracefs; then
    mount -t tracefs tracefs /sys/kernel/tracing || vm_warn "cannot mount tracefs"
fi
ip link set dev lo up || vm_warn "cannot bring lo up"
# BPF maps on older kernels are charged to RLIMIT_MEMLOCK.
ulimit -l unlimited 2>/dev/null || vm_warn "cannot raise RLIMIT_MEMLOCK"
unset -f vm_warn vm_mounted
"#
}

/// Installs (or finds) everything needed to boot a VM kernel: apt packages,
/// virtme-ng in a venv, a static busybox, virtiofsd.
pub fn ensure_tools(cache: &Path) -> anyhow::Result<VmTools> {
    let root = vm_dir(cache)?;
    let _lock = lock(&root)?;

    ensure_apt_packages(APT_PACKAGES).context("installing the VM host packages")?;
    let qemu = PathBuf::from("/usr/bin/qemu-system-x86_64");
    if !qemu.exists() {
        bail!(
            "{} is missing although qemu-system-x86 is installed",
            qemu.display()
        );
    }

    let busybox = ensure_busybox(&root).context("preparing a static busybox for vng")?;
    let venv = ensure_virtme_ng(&root).context("installing virtme-ng")?;
    let virtiofsd = ensure_virtiofsd(&root).context("installing virtiofsd")?;

    let runs_dir = root.join("runs");
    fs::create_dir_all(&runs_dir).with_context(|| format!("creating {}", runs_dir.display()))?;
    let virtiofsd_dir = virtiofsd
        .parent()
        .map(Path::to_path_buf)
        .context("virtiofsd path has no parent")?;
    Ok(VmTools {
        vng: venv.join("bin/vng"),
        path_dirs: vec![venv.join("bin"), virtiofsd_dir],
        virtiofsd,
        busybox,
        qemu,
        runs_dir,
    })
}

/// Downloads and unpacks the newest available Debian package of `spec`
/// into the cache (skipped when already there) and depmods its modules.
///
/// The modules are not copied to the host's /lib/modules: vng finds them
/// next to the vmlinuz and the guest sees `/lib/modules/<release>` as a
/// link to them.
pub fn ensure_kernel(cache: &Path, spec: &KernelSpec) -> anyhow::Result<Kernel> {
    let root = vm_dir(cache)?;
    let kernels = root.join("kernels");
    fs::create_dir_all(&kernels).with_context(|| format!("creating {}", kernels.display()))?;
    let _lock = lock(&root)?;

    let (package, version) = match newest_package(spec) {
        Ok(found) => found,
        Err(err) => {
            // apt unusable (offline, no lists): fall back to what is cached.
            if let Some(kernel) = newest_cached_kernel(&kernels, spec)? {
                eprintln!(
                    "[x] {}: {err:#}; using the cached {} {}",
                    spec.label, kernel.package, kernel.version
                );
                return Ok(kernel);
            }
            return Err(err).with_context(|| format!("{}: finding the kernel package", spec.label));
        }
    };

    let dir = kernels.join(sanitize(&format!("{package}_{version}")));
    if let Some(kernel) = load_kernel(&dir, spec.label)? {
        return Ok(kernel);
    }

    eprintln!("[x] {}: fetching {package} {version}", spec.label);
    let started = Instant::now();
    let work = kernels.join(format!(".partial-{}", std::process::id()));
    remove_dir_if_exists(&work)?;
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = unpack_kernel(&work, &package, &version, &dir);
    // Best effort: a failed attempt leaves nothing behind.
    let _ = fs::remove_dir_all(&work);
    result.with_context(|| format!("{}: preparing {package} {version}", spec.label))?;
    let kernel = load_kernel(&dir, spec.label)?
        .with_context(|| format!("{} is incomplete right after unpacking", dir.display()))?;
    eprintln!(
        "[x] {}: {} ready in {:.1?}",
        spec.label,
        kernel.release,
        started.elapsed()
    );
    Ok(kernel)
}

/// Boots `kernel` and runs `command` (POSIX sh, as root, after
/// [`guest_preamble`]) in it; the guest's stdout/stderr go to ours. `rw_dirs`
/// (created if missing) are shared read-write, everything else of the host
/// is visible read-only. Returns the command's exit status; an error means
/// the VM itself failed.
pub fn run_in_vm(
    tools: &VmTools,
    kernel: &Kernel,
    command: &str,
    rw_dirs: &[&Path],
) -> anyhow::Result<ExitStatus> {
    run_in_vm_with(tools, kernel, command, rw_dirs, &VmOptions::from_env())
}

/// [`run_in_vm`] with explicit options.
pub fn run_in_vm_with(
    tools: &VmTools,
    kernel: &Kernel,
    command: &str,
    rw_dirs: &[&Path],
    opts: &VmOptions,
) -> anyhow::Result<ExitStatus> {
    let mut shared = Vec::with_capacity(rw_dirs.len());
    for dir in rw_dirs {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
        shell_safe(&dir)?;
        shared.push(dir);
    }

    // The command goes through files in a run directory shared read-write:
    // vng passes --exec on the kernel command line (2 KiB in all), and the
    // exit status written there tells a finished command from a VM that
    // failed (vng's own exit code is 255 in both cases).
    let run_dir = new_run_dir(&tools.runs_dir, &kernel.label)?;
    let result = (|| {
        shell_safe(&run_dir)?;
        let command_file = run_dir.join("command.sh");
        let status_file = run_dir.join("status");
        write_file(&command_file, command)?;
        let script = format!(
            "{preamble}\n/bin/sh {command}\nrc=$?\necho \"$rc\" > {status}\nexit \"$rc\"\n",
            preamble = guest_preamble(),
            command = command_file.display(),
            status = status_file.display(),
        );
        let script_file = run_dir.join("run.sh");
        write_file(&script_file, &script)?;

        let mut vng = vng_command(tools, kernel, opts, &run_dir, &shared, &script_file)?;
        let cmdline = display(&vng);
        if opts.verbose {
            eprintln!("[x] {cmdline}");
        }
        let vng_status = wait_vm(&mut vng, opts.timeout)
            .with_context(|| format!("{}: running `{cmdline}`", kernel.label))?;
        match fs::read_to_string(&status_file) {
            Ok(code) => {
                let code: i32 = code.trim().parse().with_context(|| {
                    format!("{}: bad exit status {code:?} from the guest", kernel.label)
                })?;
                Ok(ExitStatus::from_raw((code & 0xff) << 8))
            }
            Err(_) => Err(anyhow!(
                "{}: the VM did not run the command to completion (vng exited with {vng_status}); \
                 rerun with INJECTORD_VM_VERBOSE=1 to see the guest console. Command: {cmdline}",
                kernel.label
            )),
        }
    })();
    let _ = fs::remove_dir_all(&run_dir);
    result
}

fn vng_command(
    tools: &VmTools,
    kernel: &Kernel,
    opts: &VmOptions,
    run_dir: &Path,
    shared: &[PathBuf],
    script: &Path,
) -> anyhow::Result<Command> {
    // vng pastes paths into a shell command line unquoted.
    for path in [&kernel.vmlinuz, &tools.busybox, &tools.qemu] {
        shell_safe(path)?;
    }
    let mut path_var = OsString::new();
    for dir in &tools.path_dirs {
        path_var.push(dir);
        path_var.push(":");
    }
    path_var
        .push(std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()));

    let mut vng = Command::new(&tools.vng);
    vng.arg("--run")
        .arg(&kernel.vmlinuz)
        // No usable KVM on the build machines; microvm lacks the PCI the
        // Debian kernel's virtio drivers want.
        .args(["--disable-kvm", "--disable-microvm"])
        .args(["--cpus", &opts.cpus.to_string()])
        .args(["--memory", &format!("{}M", opts.memory_mib)])
        .arg("--qemu")
        .arg(&tools.qemu)
        .arg("--busybox")
        .arg(&tools.busybox)
        .arg(format!("--rwdir={}", run_dir.display()));
    for dir in shared {
        vng.arg(format!("--rwdir={}", dir.display()));
    }
    if opts.verbose {
        vng.arg("--verbose");
    }
    vng.arg("--exec")
        .arg(format!("/bin/sh {}", script.display()))
        .env("PATH", path_var)
        // The guest would read its stdin from ours: keep it off the terminal.
        .stdin(Stdio::null());
    Ok(vng)
}

/// Runs vng with its output forwarded to ours, killing its whole process
/// group (QEMU, virtiofsd) after `timeout`.
fn wait_vm(vng: &mut Command, timeout: Option<Duration>) -> anyhow::Result<ExitStatus> {
    // Pipes rather than our own stdout/stderr: QEMU opens the guest's
    // stdout as /proc/self/fd/1 with O_TRUNC, which would wipe a log file
    // our output is redirected to.
    vng.stdout(Stdio::piped()).stderr(Stdio::piped());
    if timeout.is_some() {
        // Its own group, so the kill below reaches QEMU and virtiofsd. Without
        // a timeout it stays in ours, so Ctrl-C stops the VM as well.
        vng.process_group(0);
    }
    let mut child = vng.spawn().context("starting vng")?;
    let forwarders = [
        child.stdout.take().map(|mut out| {
            thread::spawn(move || {
                let _ = std::io::copy(&mut out, &mut std::io::stdout());
            })
        }),
        child.stderr.take().map(|mut err| {
            thread::spawn(move || {
                let _ = std::io::copy(&mut err, &mut std::io::stderr());
            })
        }),
    ];
    let status = match timeout {
        None => child.wait().context("waiting for vng")?,
        Some(timeout) => {
            let deadline = Instant::now() + timeout;
            loop {
                if let Some(status) = child.try_wait().context("waiting for vng")? {
                    break status;
                }
                if Instant::now() >= deadline {
                    // The group id is vng's pid (process_group(0) above).
                    let _ = Command::new("kill")
                        .args(["-s", "KILL", "--", &format!("-{}", child.id())])
                        .status();
                    let _ = child.wait();
                    bail!("the VM was still running after {timeout:?} and was killed");
                }
                thread::sleep(Duration::from_millis(200));
            }
        }
    };
    for forwarder in forwarders.into_iter().flatten() {
        let _ = forwarder.join();
    }
    let _ = std::io::stdout().flush();
    Ok(status)
}

// ---------------------------------------------------------------- tools

fn ensure_apt_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("[x] apt-get install {}", missing.join(" "));
    apt_update()?;
    run_streamed(
        "apt-get install",
        apt_get()
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.ends_with(b"install ok installed"))
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        // Another apt run (e.g. a concurrent ./x) holds the lock: wait.
        .args(["-o", "DPkg::Lock::Timeout=600"])
        // Downloads land in root-only cache dirs that _apt cannot write.
        .args(["-o", "APT::Sandbox::User=root"]);
    cmd
}

fn apt_update() -> anyhow::Result<()> {
    run_streamed("apt-get update", apt_get().args(["update", "-q"]))
}

/// The static busybox from Debian's busybox-static, unpacked into the cache
/// (installing the package would remove a dynamic busybox on the host).
fn ensure_busybox(root: &Path) -> anyhow::Result<PathBuf> {
    let dir = root.join("busybox-static");
    let busybox = dir.join("bin/busybox");
    if is_executable(&busybox) {
        return Ok(busybox);
    }
    eprintln!("[x] fetching busybox-static");
    let work = root.join(format!(".partial-busybox-{}", std::process::id()));
    remove_dir_if_exists(&work)?;
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = (|| {
        let deb = apt_download(&work, "busybox-static", None)?;
        let tree = work.join("tree");
        output(
            "unpacking busybox-static",
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree),
        )?;
        if !is_executable(&tree.join("bin/busybox")) {
            bail!("busybox-static's package has no bin/busybox");
        }
        remove_dir_if_exists(&dir)?;
        fs::rename(&tree, &dir).with_context(|| format!("moving busybox into {}", dir.display()))
    })();
    let _ = fs::remove_dir_all(&work);
    result?;
    Ok(busybox)
}

fn ensure_virtme_ng(root: &Path) -> anyhow::Result<PathBuf> {
    let venv = root.join(format!("virtme-ng-{VIRTME_NG_VERSION}"));
    let ready = venv.join(".ready");
    if ready.exists() && is_executable(&venv.join("bin/vng")) {
        return Ok(venv);
    }
    eprintln!(
        "[x] installing virtme-ng {VIRTME_NG_VERSION} into {}",
        venv.display()
    );
    let started = Instant::now();
    // A venv cannot be moved (its scripts name it), so build in place and
    // mark it complete at the end.
    remove_dir_if_exists(&venv)?;
    // Debian's python, not whatever python3 is first on PATH (pyenv...).
    run_streamed(
        "creating the virtme-ng venv",
        Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(&venv),
    )?;
    run_streamed(
        "pip install virtme-ng",
        Command::new(venv.join("bin/pip")).args([
            "install",
            "-q",
            "--disable-pip-version-check",
            &format!("virtme-ng=={VIRTME_NG_VERSION}"),
        ]),
    )?;
    let version = output(
        "checking vng",
        Command::new(venv.join("bin/vng")).arg("--version"),
    )?;
    write_file(&ready, &version)?;
    eprintln!("[x] virtme-ng installed in {:.1?}", started.elapsed());
    Ok(venv)
}

fn ensure_virtiofsd(root: &Path) -> anyhow::Result<PathBuf> {
    let install_root = root.join(format!("virtiofsd-{VIRTIOFSD_VERSION}"));
    let virtiofsd = install_root.join("bin/virtiofsd");
    if Command::new(&virtiofsd)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(virtiofsd);
    }
    eprintln!(
        "[x] building virtiofsd {VIRTIOFSD_VERSION} (cargo install, a few minutes on 2 cores)"
    );
    let started = Instant::now();
    let mut cargo = Command::new("cargo");
    cargo
        .arg(format!("+{RUST_TOOLCHAIN}"))
        .args([
            "install",
            "virtiofsd",
            "--locked",
            "--version",
            VIRTIOFSD_VERSION,
        ])
        .arg("--root")
        .arg(&install_root)
        // Outside the repository, so its .cargo/config.toml does not apply.
        .current_dir(root);
    // We may run under `cargo xtask`: don't let its settings leak in.
    for var in [
        "CARGO",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTUP_TOOLCHAIN",
    ] {
        cargo.env_remove(var);
    }
    run_streamed("cargo install virtiofsd", &mut cargo)?;
    output(
        "checking virtiofsd",
        Command::new(&virtiofsd).arg("--version"),
    )?;
    eprintln!("[x] virtiofsd built in {:.1?}", started.elapsed());
    Ok(virtiofsd)
}

// -------------------------------------------------------------- kernels

/// The newest (package, version) of `spec` that apt can download, running
/// `apt-get update` once if the package lists have none.
fn newest_package(spec: &KernelSpec) -> anyhow::Result<(String, String)> {
    if let Some(found) = newest_in_apt_lists(spec)? {
        return Ok(found);
    }
    eprintln!(
        "[x] {}: no package in the apt lists, updating them",
        spec.label
    );
    apt_update()?;
    newest_in_apt_lists(spec)?.ok_or_else(|| {
        anyhow!(
            "no package matching {} in the apt sources (apt-cache search --names-only '{}')",
            spec.apt_regex(),
            spec.apt_regex()
        )
    })
}

fn newest_in_apt_lists(spec: &KernelSpec) -> anyhow::Result<Option<(String, String)>> {
    // One apt-cache call (each costs ~0.4 s here: apt keeps no binary
    // cache in this image); --full gives each match's candidate version,
    // i.e. what `apt-get download` would fetch.
    let shown = output(
        "listing kernel packages",
        Command::new("apt-cache").args(["search", "--full", "--names-only", &spec.apt_regex()]),
    )?;
    let mut best: Option<(String, String)> = None;
    for stanza in shown.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
                .map(|value| value.trim().to_string())
        };
        let (Some(package), Some(version)) = (field("Package"), field("Version")) else {
            continue;
        };
        if !spec.matches(&package) {
            continue;
        }
        let newer = match &best {
            None => true,
            Some((_, best_version)) => version_gt(&version, best_version)?,
        };
        if newer {
            best = Some((package, version));
        }
    }
    Ok(best)
}

fn version_gt(a: &str, b: &str) -> anyhow::Result<bool> {
    let status = Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .context("running dpkg --compare-versions")?;
    Ok(status.success())
}

/// Downloads `package` (at `version`, or the candidate) into `dir`,
/// returning the .deb. Stale package lists (404) get one `apt-get update`.
fn apt_download(dir: &Path, package: &str, version: Option<&str>) -> anyhow::Result<PathBuf> {
    let target = match version {
        Some(v) => format!("{package}={v}"),
        None => package.to_string(),
    };
    let download = || {
        output(
            &format!("apt-get download {target}"),
            apt_get().args(["download", "-q", &target]).current_dir(dir),
        )
    };
    if let Err(first) = download() {
        eprintln!("[x] {first:#}\n[x] updating the apt lists and retrying");
        apt_update()?;
        download()?;
    }
    let prefix = format!("{package}_");
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb")) {
            return Ok(path);
        }
    }
    bail!(
        "apt-get download {target} succeeded but left no {prefix}*.deb in {}",
        dir.display()
    )
}

/// Downloads, unpacks and depmods into `work`, then moves the tree to `dest`.
fn unpack_kernel(work: &Path, package: &str, version: &str, dest: &Path) -> anyhow::Result<()> {
    let deb = apt_download(work, package, Some(version))?;
    let tree = work.join("tree");
    output(
        &format!("unpacking {}", deb.display()),
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree),
    )?;
    let release = single_release(&tree)?;
    let vmlinuz = tree.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        bail!("{package} has lib/modules/{release} but no boot/vmlinuz-{release}");
    }
    // Debian's .deb ships no modules.dep: without it neither vng's
    // initramfs nor modprobe in the guest find any module.
    output(
        &format!("depmod {release}"),
        Command::new("depmod").arg("-b").arg(&tree).arg(&release),
    )?;
    let record = KernelRecord {
        package: package.to_string(),
        version: version.to_string(),
        release,
    };
    write_file(
        &tree.join("kernel.json"),
        &serde_json::to_string_pretty(&record)?,
    )?;
    remove_dir_if_exists(dest)?;
    fs::rename(&tree, dest).with_context(|| format!("moving the kernel into {}", dest.display()))
}

fn single_release(tree: &Path) -> anyhow::Result<String> {
    let modules = tree.join("lib/modules");
    let mut releases = Vec::new();
    for entry in fs::read_dir(&modules).with_context(|| format!("reading {}", modules.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            releases.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    match releases.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "expected one kernel release under {}, found {releases:?}",
            modules.display()
        ),
    }
}

/// The kernel unpacked in `dir`, if it is complete.
fn load_kernel(dir: &Path, label: &str) -> anyhow::Result<Option<Kernel>> {
    let Ok(text) = fs::read_to_string(dir.join("kernel.json")) else {
        return Ok(None);
    };
    let record: KernelRecord = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", dir.join("kernel.json").display()))?;
    let vmlinuz = dir.join(format!("boot/vmlinuz-{}", record.release));
    let modules = dir.join("lib/modules").join(&record.release);
    if !vmlinuz.is_file() || !modules.join("modules.dep").is_file() {
        return Ok(None);
    }
    Ok(Some(Kernel {
        label: label.to_string(),
        release: record.release,
        vmlinuz,
        modules,
        package: record.package,
        version: record.version,
    }))
}

fn newest_cached_kernel(kernels: &Path, spec: &KernelSpec) -> anyhow::Result<Option<Kernel>> {
    let mut best: Option<Kernel> = None;
    let Ok(entries) = fs::read_dir(kernels) else {
        return Ok(None);
    };
    for entry in entries.flatten() {
        let Some(kernel) = load_kernel(&entry.path(), spec.label)? else {
            continue;
        };
        if !spec.matches(&kernel.package) {
            continue;
        }
        let newer = match &best {
            None => true,
            Some(b) => version_gt(&kernel.version, &b.version)?,
        };
        if newer {
            best = Some(kernel);
        }
    }
    Ok(best)
}

// -------------------------------------------------------------- helpers

fn vm_dir(cache: &Path) -> anyhow::Result<PathBuf> {
    let dir = cache.join("vm");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Absolute: the paths end up in the guest and in vng's shell command.
    fs::canonicalize(&dir).with_context(|| format!("resolving {}", dir.display()))
}

/// Holds an exclusive lock on `<vm dir>/.lock` until dropped.
fn lock(root: &Path) -> anyhow::Result<fs::File> {
    let path = root.join(".lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

fn new_run_dir(runs: &Path, label: &str) -> anyhow::Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = runs.join(format!(
        "{}-{}-{}",
        sanitize(label),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    remove_dir_if_exists(&dir)?;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// vng builds a shell command line from its arguments without quoting, so
/// paths handed to it must not need quoting.
fn shell_safe(path: &Path) -> anyhow::Result<()> {
    let s = path.to_string_lossy();
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._+-@%:,".contains(c))
    {
        bail!(
            "{s:?} cannot be passed to vng (it pastes paths into a shell command unquoted); \
             use a path made of letters, digits and /._+-@%:,"
        );
    }
    Ok(())
}

/// A directory name made only of shell-safe characters (Debian versions
/// have '~' and ':').
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn remove_dir_if_exists(dir: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

fn write_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// `cmd` as a shell-like line for messages.
fn display(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if !arg.is_empty()
            && arg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._+-=@%:,".contains(c))
        {
            let _ = write!(line, " {arg}");
        } else {
            let _ = write!(line, " '{}'", arg.replace('\'', r"'\''"));
        }
    }
    line
}

/// Runs `cmd` with its output captured; returns stdout. The error names the
/// step and the command and quotes its stderr.
fn output(step: &str, cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{step}: cannot run `{}`", display(cmd)))?;
    if !out.status.success() {
        bail!(
            "{step}: `{}` failed ({})\n{}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a long `cmd` with its output shown as it comes; stderr is also
/// kept (its last lines) for the error.
fn run_streamed(step: &str, cmd: &mut Command) -> anyhow::Result<()> {
    const TAIL: usize = 40;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{step}: cannot run `{}`", display(cmd)))?;
    let stderr = child.stderr.take();
    let tail = thread::spawn(move || {
        let mut tail = VecDeque::with_capacity(TAIL);
        let Some(stderr) = stderr else {
            return tail;
        };
        for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line).into_owned();
            let _ = writeln!(std::io::stderr(), "{line}");
            if tail.len() == TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        tail
    });
    let status = child
        .wait()
        .with_context(|| format!("{step}: waiting for `{}`", display(cmd)))?;
    let tail = tail.join().unwrap_or_default();
    if !status.success() {
        let tail: Vec<String> = tail.into();
        bail!(
            "{step}: `{}` failed ({status})\n{}",
            display(cmd),
            tail.join("\n")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_pick_their_series_only() {
        let [v61, v612] = &matrix()[..] else {
            panic!("two kernels expected");
        };
        assert!(v61.matches("linux-image-6.1.0-56-cloud-amd64-unsigned"));
        assert!(!v61.matches("linux-image-6.12.117+deb12-cloud-amd64-unsigned"));
        assert!(!v61.matches("linux-image-6.1.0-56-cloud-amd64"));
        assert!(!v61.matches("linux-image-6.1.0-56-cloud-amd64-unsigned-dbg"));
        assert!(v612.matches("linux-image-6.12.117+deb12-cloud-amd64-unsigned"));
        assert!(v612.matches("linux-image-6.12.120+deb12-cloud-amd64-unsigned"));
        assert!(!v612.matches("linux-image-6.1.0-56-cloud-amd64-unsigned"));
        assert!(!v612.matches("linux-image-6.12.117+deb12-amd64-unsigned"));
    }

    #[test]
    fn paths_for_vng_are_checked() {
        assert!(shell_safe(Path::new("/root/.cache/injectord/vm/kernels/a+b_1.0-1")).is_ok());
        assert!(shell_safe(Path::new("/tmp/a b")).is_err());
        assert!(shell_safe(Path::new("/tmp/a=b")).is_err());
        assert_eq!(sanitize("6.12.117-1~deb12u1"), "6.12.117-1_deb12u1");
    }
}
