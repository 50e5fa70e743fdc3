//! The VM half of the kernel matrix: Debian's 6.1 and 6.12 cloud kernels,
//! and a 6.12 we build with function error injection (`kernel_build`),
//! booted under QEMU (TCG; KVM is unusable on these machines) with the
//! host's root filesystem over virtiofs (virtme-ng), so the test binaries
//! run unchanged. Everything is cached under the cache directory.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{deps, kernel_build, sh};

const VIRTME_NG_VERSION: &str = "1.42";
const VIRTIOFSD_VERSION: &str = "1.14.0";

pub struct VmTools {
    vng: PathBuf,
    virtiofsd_bin: PathBuf,
}

pub struct KernelSpec {
    pub label: &'static str,
    source: Source,
}

enum Source {
    /// A Debian kernel package: an `apt-cache search --names-only`
    /// pattern; the newest match wins.
    Debian(&'static str),
    /// Built here from Debian's kernel source (see `kernel_build`).
    Built,
}

pub struct Kernel {
    pub label: String,
    pub release: String,
    pub vmlinuz: PathBuf,
}

pub fn matrix() -> Vec<KernelSpec> {
    vec![
        KernelSpec {
            label: "debian-6.1",
            source: Source::Debian(r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$"),
        },
        KernelSpec {
            label: "debian-6.12",
            source: Source::Debian(r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$"),
        },
        // Function error injection and bpf_override_return, which no
        // Debian kernel has.
        KernelSpec {
            label: "built-6.12",
            source: Source::Built,
        },
    ]
}

pub fn ensure_tools(cache: &Path) -> anyhow::Result<VmTools> {
    deps::ensure(
        &[
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("depmod", "kmod"),
        ],
        &[
            "libseccomp-dev",
            "libcap-ng-dev",
            "python3-venv",
            "udev",
            "busybox-static",
        ],
    )?;
    let venv = cache.join(format!("virtme-ng-{VIRTME_NG_VERSION}"));
    let vng = venv.join("bin/vng");
    if !vng.exists() {
        eprintln!("[x] installing virtme-ng (PyPI) into {}", venv.display());
        sh(Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(&venv))?;
        sh(Command::new(venv.join("bin/pip")).args([
            "install",
            "-q",
            &format!("virtme-ng=={VIRTME_NG_VERSION}"),
        ]))?;
    }
    // busybox-static: the Debian kernels build virtio and virtiofs as
    // modules, so vng must make an initramfs, which needs a static busybox.
    // udev: without udevd in the (shared) root filesystem the guest gets no
    // /dev/virtio-ports links, and vng loses the command's output and exit
    // status. Debian's virtiofsd (shipped with its qemu) is too old for vng.
    let root = cache.join(format!("virtiofsd-{VIRTIOFSD_VERSION}"));
    let virtiofsd_bin = root.join("bin");
    if !virtiofsd_bin.join("virtiofsd").exists() {
        eprintln!("[x] building virtiofsd (crates.io) into {}", root.display());
        let mut c = crate::cargo();
        c.args(["install", "virtiofsd", "--locked", "--root"])
            .arg(&root);
        sh(&mut c)?;
    }
    Ok(VmTools { vng, virtiofsd_bin })
}

fn newest_package(pattern: &str) -> anyhow::Result<Option<String>> {
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", pattern])
        .output()
        .context("apt-cache search")?;
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(" - ").next())
        .map(str::to_string)
        .collect();
    names.sort_by_key(|n| version_key(n));
    Ok(names.pop())
}

/// Numbers in a package name, for a version-aware sort.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// A kernel of the matrix, ready or still being built.
pub enum PendingKernel {
    Ready(Kernel),
    /// Built by a background thread at idle priority: see `start_kernel`.
    Building {
        label: &'static str,
        build: std::thread::JoinHandle<anyhow::Result<Kernel>>,
    },
}

impl PendingKernel {
    pub fn label(&self) -> &str {
        match self {
            Self::Ready(k) => &k.label,
            Self::Building { label, .. } => label,
        }
    }

    /// The kernel, once its build (if any) is done.
    pub fn wait(self) -> anyhow::Result<Kernel> {
        match self {
            Self::Ready(k) => Ok(k),
            Self::Building { label, build } => {
                eprintln!("[x] {label}: waiting for the kernel build");
                build
                    .join()
                    .map_err(|_| anyhow::anyhow!("{label}: the kernel build thread panicked"))?
            }
        }
    }
}

/// Downloads a Debian kernel now; starts a kernel that must be built in a
/// background thread, so that it compiles while the host suite and the
/// other guests run.
///
/// Those are bound by waiting (the host suite) or by one TCG thread (a
/// guest), which leaves one of CI's two cores mostly idle for about 55
/// minutes; the build needs about 26 CPU-minutes. It runs under
/// `SCHED_IDLE`, inherited by make and the compilers, so that it only
/// ever takes CPU time nothing else wants and timed tests see the
/// machine as before. On a fresh machine this takes the build's 15-17
/// minutes off the suite's wall time.
pub fn start_kernel(
    cache: &Path,
    tools: &VmTools,
    spec: &KernelSpec,
) -> anyhow::Result<PendingKernel> {
    match spec.source {
        Source::Debian(_) => ensure_kernel(cache, tools, spec).map(PendingKernel::Ready),
        Source::Built => {
            // apt runs here, not beside the other downloads.
            kernel_build::ensure_deps()?;
            let (cache, vng, label) = (cache.to_path_buf(), tools.vng.clone(), spec.label);
            let build = std::thread::Builder::new()
                .name(format!("build-{label}"))
                .spawn(move || {
                    idle_priority();
                    let built = kernel_build::ensure(&cache, label, &vng, VIRTME_NG_VERSION)?;
                    Ok(Kernel {
                        label: label.to_string(),
                        release: built.release,
                        vmlinuz: built.bzimage,
                    })
                })
                .context("starting the kernel build thread")?;
            Ok(PendingKernel::Building { label, build })
        }
    }
}

/// Puts the calling thread, and every process it starts from now on,
/// under `SCHED_IDLE`. Best effort: a build at normal priority is only
/// slower for the rest.
fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param
    // that outlives the call.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        eprintln!(
            "[x] could not lower the kernel build to SCHED_IDLE: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The kernel of `spec`, downloaded or built first unless it is cached.
pub fn ensure_kernel(cache: &Path, tools: &VmTools, spec: &KernelSpec) -> anyhow::Result<Kernel> {
    match spec.source {
        Source::Debian(pattern) => ensure_debian_kernel(cache, spec.label, pattern),
        Source::Built => {
            // Everything is built in: no modules for vng to find.
            let built = kernel_build::ensure(cache, spec.label, &tools.vng, VIRTME_NG_VERSION)?;
            Ok(Kernel {
                label: spec.label.to_string(),
                release: built.release,
                vmlinuz: built.bzimage,
            })
        }
    }
}

fn ensure_debian_kernel(cache: &Path, label: &str, pattern: &str) -> anyhow::Result<Kernel> {
    let dir = cache.join("kernels");
    fs::create_dir_all(&dir)?;
    let marker = dir.join(format!("{label}.package"));
    let package = match fs::read_to_string(&marker) {
        Ok(p) if dir.join(p.trim()).join("boot").exists() => p.trim().to_string(),
        _ => {
            let package = match newest_package(pattern)? {
                Some(p) => p,
                None => {
                    sh(Command::new("apt-get").args(["update", "-q"]))?;
                    newest_package(pattern)?.with_context(|| {
                        format!("no Debian package matches {pattern} for {label}")
                    })?
                }
            };
            eprintln!("[x] downloading {package}");
            sh(Command::new("apt-get")
                .args(["download", "-q", &package])
                .current_dir(&dir))?;
            let deb = fs::read_dir(&dir)?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.starts_with(&format!("{package}_")) && n.ends_with(".deb")
                    })
                })
                .with_context(|| format!("apt-get download left no .deb for {package}"))?;
            sh(Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(dir.join(&package)))?;
            let _ = fs::remove_file(&deb);
            fs::write(&marker, &package)?;
            package
        }
    };
    let tree = dir.join(&package);
    let release = fs::read_dir(tree.join("lib/modules"))?
        .flatten()
        .next()
        .and_then(|e| e.file_name().into_string().ok())
        .with_context(|| format!("{package} has no lib/modules"))?;
    let vmlinuz = tree.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.exists() {
        bail!("{} missing", vmlinuz.display());
    }
    // vng loads the guest's modules from the (shared) host /lib/modules.
    let modules = Path::new("/lib/modules").join(&release);
    if !modules.join("modules.dep").exists() {
        fs::create_dir_all("/lib/modules")?;
        sh(Command::new("cp")
            .arg("-a")
            .arg(tree.join("lib/modules").join(&release))
            .arg("/lib/modules/"))?;
        sh(Command::new("depmod").arg(&release))?;
    }
    Ok(Kernel {
        label: label.to_string(),
        release,
        vmlinuz,
    })
}

/// `./x vm`: boots the kernel labelled `label` and runs `command` in it.
pub fn run_command(label: &str, command: &str) -> anyhow::Result<()> {
    let specs = matrix();
    let spec = specs.iter().find(|k| k.label == label).with_context(|| {
        let labels: Vec<&str> = specs.iter().map(|k| k.label).collect();
        format!(
            "no VM kernel is labelled {label}; the matrix has {}",
            labels.join(", ")
        )
    })?;
    let cache = crate::cache();
    let tools = ensure_tools(&cache)?;
    let kernel = ensure_kernel(&cache, &tools, spec)?;
    let status = run_in_vm(&tools, &kernel, command, &[])?;
    if !status.success() {
        bail!("{label}: the command failed: {status}");
    }
    Ok(())
}

/// Boots the kernel and runs `command` (through the guest's shell) as
/// root; the guest sees the host's filesystem read-only except `rw_dirs`.
pub fn run_in_vm(
    tools: &VmTools,
    kernel: &Kernel,
    command: &str,
    rw_dirs: &[&Path],
) -> anyhow::Result<ExitStatus> {
    // vng runs virtme-run from its venv and virtiofsd from PATH.
    let venv_bin = tools.vng.parent().unwrap_or(Path::new("/"));
    let path = format!(
        "{}:{}:{}",
        venv_bin.display(),
        tools.virtiofsd_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(&tools.vng);
    cmd.arg("--run").arg(&kernel.vmlinuz).args([
        "--disable-kvm",
        "--disable-microvm",
        "--cpus",
        "2",
        "--memory",
        "2G",
        // Multi-threaded TCG (QEMU 7.2) now and then keeps executing a
        // stale int3 after the guest kernel live-patches its text (static
        // keys flip whenever XDP, clsact or a tracepoint is first used):
        // both vCPUs spin in the int3 handler for good. One TCG thread
        // round-robins the vCPUs and sees every patch; the suite, bound by
        // waiting rather than by CPU, runs as fast.
        "--qemu-opts=-accel tcg,thread=single",
    ]);
    for d in rw_dirs {
        cmd.arg("--rwdir").arg(d);
    }
    cmd.arg("--exec")
        .arg(format!("{}{command}", guest_preamble()))
        .env("PATH", path)
        .current_dir(crate::root())
        .stdin(Stdio::null())
        // QEMU opens the guest's script output ports on /proc/self/fd/1 and
        // 2 with O_TRUNC: a log file as our stdout would be truncated. Pipes
        // are relayed instead.
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own process group, so that the time limit can kill QEMU (vng's
    // child), whose end of the output pipes the relays below wait for.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().with_context(|| format!("running {cmd:?}"))?;
    let prefix = format!("[{}] ", kernel.label);
    let relays = [
        relay(child.stdout.take(), std::io::stdout, prefix.clone()),
        relay(child.stderr.take(), std::io::stderr, prefix),
    ];
    let deadline = Instant::now() + VM_TIME_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            eprintln!(
                "[x] {}: no exit after {VM_TIME_LIMIT:?}; killing the VM",
                kernel.label
            );
            // SAFETY: kill(2) on the process group our child leads: vng
            // and the QEMU it started.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for r in relays.into_iter().flatten() {
        let _ = r.join();
    }
    Ok(status)
}

/// Upper bound for one kernel's whole suite under TCG. A quiet machine
/// runs each kernel's tests in 16-23 min, CI's machine in 20-27 (figures
/// of 2026-11-26, before the fault library's tests were left to one
/// kernel). The margin lets one binary run into its own limit (10 min)
/// without cutting off the binaries after it: the summary then names the
/// one that hung instead of a truncated count.
///
/// 45 min since 2026-11-27: debian-6.12 took 2,209 s in a slow spell of
/// this machine kind, past nine tenths of the 40 it had.
const VM_TIME_LIMIT: Duration = Duration::from_secs(45 * 60);

fn relay<R, W>(
    from: Option<R>,
    to: fn() -> W,
    prefix: String,
) -> Option<std::thread::JoinHandle<()>>
where
    R: std::io::Read + Send + 'static,
    W: std::io::Write + 'static,
{
    let from = from?;
    Some(std::thread::spawn(move || {
        // Line by line with the kernel's label in front: kernels run side
        // by side, and their lines interleave.
        let mut from = std::io::BufReader::new(from);
        let mut line = Vec::new();
        loop {
            line.clear();
            match std::io::BufRead::read_until(&mut from, b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let mut out = to();
                    let _ = out.write_all(prefix.as_bytes());
                    let _ = out.write_all(&line);
                    if !line.ends_with(b"\n") {
                        let _ = out.write_all(b"\n");
                    }
                }
            }
        }
    }))
}

/// Runs first in every guest: what the tests expect of a host.
pub fn guest_preamble() -> &'static str {
    "ip link set lo up 2>/dev/null; \
     grep -q ' cgroup2 ' /proc/mounts || { mkdir -p /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup; }; \
     grep -q ' tracefs ' /proc/mounts || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null; \
     "
}
