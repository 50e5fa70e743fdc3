//! The fourth kernel of the matrix: one we build, from Debian's
//! `linux-source-6.12`, with function error injection
//! (`bpf_override_return`), so that the override backend is tested for
//! real rather than only refused. The config is virtme-ng's small default
//! (`vng --kconfig`) plus [`OPTIONS`]; everything is built in (no modules).
//!
//! Built once and cached as `<cache>/kernels/<label>-<key>/bzImage`, where
//! the key hashes the option list, the virtme-ng version, the source
//! package's version and the compiler and pahole versions. The build runs
//! in `<label>-<key>.partial/` and is renamed into place when it is done,
//! so an interrupted build is never taken for a finished one (the next run
//! starts it again). Checkouts share the cache, so a build holds
//! `<label>.lock` (flock) and a second one waits for it; the three newest
//! finished builds of a label stay. About 13 minutes on 2 idle cores.

use std::{
    collections::BTreeMap,
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{deps, sh};

/// The Debian package with the source, and the tarball it installs.
const SOURCE_PACKAGE: &str = "linux-source-6.12";
const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";

/// Bump when the build procedure changes in a way the key does not see.
const RECIPE: u32 = 1;

/// What the kernel must have, on top of `vng --kconfig`. Each is passed as
/// `--configitem` and then checked in the final `.config`: `make
/// olddefconfig` silently drops an option whose dependencies are unmet.
/// A value of `n` must end up unset.
pub const OPTIONS: &[(&str, &str)] = &[
    // Everything built in: no /lib/modules to install for the guest, and
    // nothing the suite needs can end up as an unbuilt `=m`.
    ("CONFIG_MODULES", "n"),
    // The release is <source version>-injectord.
    ("CONFIG_LOCALVERSION", "\"-injectord\""),
    ("CONFIG_IKCONFIG", "y"),
    ("CONFIG_IKCONFIG_PROC", "y"),
    // BPF, BTF (pahole from dwarves; DWARF 5 from gcc's default, which
    // vng selects), JIT.
    ("CONFIG_BPF", "y"),
    ("CONFIG_BPF_SYSCALL", "y"),
    ("CONFIG_BPF_JIT", "y"),
    ("CONFIG_BPF_JIT_ALWAYS_ON", "y"),
    ("CONFIG_BPF_EVENTS", "y"),
    ("CONFIG_BPF_STREAM_PARSER", "y"),
    ("CONFIG_DEBUG_INFO_BTF", "y"),
    ("CONFIG_KALLSYMS", "y"),
    ("CONFIG_KALLSYMS_ALL", "y"),
    ("CONFIG_PERF_EVENTS", "y"),
    // Tracing: fentry/fexit and LSM trampolines, kprobes (and their perf
    // PMU), syscall tracepoints, uprobes.
    ("CONFIG_FTRACE", "y"),
    ("CONFIG_FUNCTION_TRACER", "y"),
    ("CONFIG_DYNAMIC_FTRACE", "y"),
    ("CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS", "y"),
    ("CONFIG_FTRACE_SYSCALLS", "y"),
    ("CONFIG_KPROBES", "y"),
    ("CONFIG_KPROBE_EVENTS", "y"),
    ("CONFIG_UPROBES", "y"),
    ("CONFIG_UPROBE_EVENTS", "y"),
    // Error injection: bpf_override_return on functions marked
    // ALLOW_ERROR_INJECTION (syscalls, should_fail_bio, ...), listed in
    // /sys/kernel/debug/error_injection/list; fail_make_request.
    ("CONFIG_DEBUG_KERNEL", "y"),
    ("CONFIG_DEBUG_FS", "y"),
    ("CONFIG_FUNCTION_ERROR_INJECTION", "y"),
    ("CONFIG_BPF_KPROBE_OVERRIDE", "y"),
    ("CONFIG_FAULT_INJECTION", "y"),
    ("CONFIG_FAULT_INJECTION_DEBUG_FS", "y"),
    ("CONFIG_FAIL_MAKE_REQUEST", "y"),
    ("CONFIG_FAIL_FUNCTION", "y"),
    // BPF LSM, active by default (vng's config turns SECURITY off).
    ("CONFIG_SECURITY", "y"),
    ("CONFIG_SECURITYFS", "y"),
    ("CONFIG_SECURITY_NETWORK", "y"),
    ("CONFIG_BPF_LSM", "y"),
    ("CONFIG_LSM", "\"bpf\""),
    // cgroup v2 with the controllers a container host has; freeze and kill
    // are part of v2 itself.
    ("CONFIG_CGROUPS", "y"),
    ("CONFIG_CGROUP_BPF", "y"),
    ("CONFIG_CGROUP_FREEZER", "y"),
    ("CONFIG_CGROUP_PIDS", "y"),
    ("CONFIG_CGROUP_DEVICE", "y"),
    ("CONFIG_CGROUP_SCHED", "y"),
    ("CONFIG_CGROUP_CPUACCT", "y"),
    ("CONFIG_CPUSETS", "y"),
    ("CONFIG_MEMCG", "y"),
    ("CONFIG_BLK_CGROUP", "y"),
    ("CONFIG_BLK_DEV_THROTTLING", "y"),
    ("CONFIG_CGROUP_NET_CLASSID", "y"),
    ("CONFIG_NAMESPACES", "y"),
    ("CONFIG_NET_NS", "y"),
    ("CONFIG_PID_NS", "y"),
    ("CONFIG_USER_NS", "y"),
    ("CONFIG_UTS_NS", "y"),
    ("CONFIG_IPC_NS", "y"),
    // Networking the tests build: network namespaces joined by veth pairs
    // and a bridge, IPv6, raw and packet sockets (frames.py), VRRP
    // multicast (keepalived), XDP, tcx and clsact.
    ("CONFIG_NET", "y"),
    ("CONFIG_INET", "y"),
    ("CONFIG_IPV6", "y"),
    ("CONFIG_PACKET", "y"),
    ("CONFIG_IP_MULTICAST", "y"),
    ("CONFIG_IP_ADVANCED_ROUTER", "y"),
    ("CONFIG_XDP_SOCKETS", "y"),
    ("CONFIG_VETH", "y"),
    ("CONFIG_BRIDGE", "y"),
    // No tunnel drivers: built in, each puts its fallback device (sit0,
    // tunl0, gre0, ip6tnl0, ...) into every network namespace, and a
    // container's namespace must hold one device besides lo for cgroup
    // packet faults to find it (Debian builds them as modules, which
    // nothing loads). IPV6_SIT is on by default with IPV6.
    ("CONFIG_IPV6_SIT", "n"),
    ("CONFIG_IPV6_TUNNEL", "n"),
    ("CONFIG_IPV6_GRE", "n"),
    ("CONFIG_NET_IPIP", "n"),
    ("CONFIG_NET_IPGRE_DEMUX", "n"),
    // Qdiscs and classifiers: sch_fq (delay, rate), clsact + cls_bpf,
    // tbf (a root qdisc someone else configured), htb and netem.
    ("CONFIG_NET_SCHED", "y"),
    ("CONFIG_NET_SCH_FQ", "y"),
    ("CONFIG_NET_SCH_FQ_CODEL", "y"),
    ("CONFIG_NET_SCH_TBF", "y"),
    ("CONFIG_NET_SCH_HTB", "y"),
    ("CONFIG_NET_SCH_NETEM", "y"),
    ("CONFIG_NET_SCH_INGRESS", "y"),
    ("CONFIG_NET_CLS", "y"),
    ("CONFIG_NET_CLS_ACT", "y"),
    ("CONFIG_NET_CLS_BPF", "y"),
    ("CONFIG_NET_CLS_U32", "y"),
    ("CONFIG_NET_ACT_BPF", "y"),
    ("CONFIG_NET_ACT_GACT", "y"),
    // The benchmarks' comparison rows: iptables (Debian's is the nft
    // variant) raw -m statistic, and nft numgen.
    ("CONFIG_NETFILTER", "y"),
    ("CONFIG_NETFILTER_ADVANCED", "y"),
    ("CONFIG_NF_TABLES", "y"),
    ("CONFIG_NF_TABLES_INET", "y"),
    ("CONFIG_NF_TABLES_IPV4", "y"),
    ("CONFIG_NF_TABLES_IPV6", "y"),
    ("CONFIG_NFT_NUMGEN", "y"),
    ("CONFIG_NFT_COMPAT", "y"),
    ("CONFIG_NETFILTER_XTABLES", "y"),
    ("CONFIG_NETFILTER_XT_MATCH_STATISTIC", "y"),
    ("CONFIG_IP_NF_IPTABLES", "y"),
    ("CONFIG_IP_NF_FILTER", "y"),
    ("CONFIG_IP_NF_RAW", "y"),
    ("CONFIG_IP6_NF_IPTABLES", "y"),
    ("CONFIG_IP6_NF_FILTER", "y"),
    ("CONFIG_IP6_NF_RAW", "y"),
    // Block: loop devices (and fail_make_request above), with a
    // filesystem on them for the block I/O faults' file-level tests.
    ("CONFIG_BLOCK", "y"),
    ("CONFIG_BLK_DEV_LOOP", "y"),
    ("CONFIG_EXT4_FS", "y"),
];

/// What building needs (command, Debian package) and packages with no
/// command to check.
const BUILD_TOOLS: &[(&str, &str)] = &[
    ("make", "make"),
    ("gcc", "gcc"),
    ("bc", "bc"),
    ("bison", "bison"),
    ("flex", "flex"),
    ("pahole", "dwarves"),
    ("cpio", "cpio"),
    ("perl", "perl"),
    ("xz", "xz-utils"),
];
const BUILD_PACKAGES: &[&str] = &[SOURCE_PACKAGE, "libelf-dev", "libssl-dev"];

/// A finished build: the image and the release it reports.
pub struct Built {
    pub bzimage: PathBuf,
    pub release: String,
}

/// Installs what the build needs (compilers, the kernel's source
/// package) unless it is there.
pub fn ensure_deps() -> anyhow::Result<()> {
    deps::ensure(BUILD_TOOLS, BUILD_PACKAGES)
}

/// The cached kernel for `label`, built first if there is none for the
/// current key. `vng` is virtme-ng's entry point, which writes the base
/// config.
pub fn ensure(cache: &Path, label: &str, vng: &Path, vng_version: &str) -> anyhow::Result<Built> {
    let start = Instant::now();
    ensure_deps()?;
    let kernels = cache.join("kernels");
    fs::create_dir_all(&kernels)?;
    let inputs = key_inputs(vng_version)?;
    let key = format!("{:016x}", fnv1a(inputs.as_bytes()));
    let dir = kernels.join(format!("{label}-{key}"));
    if !dir.join("bzImage").exists() {
        // Checkouts share the cache: one build of a label at a time, and
        // whatever a .partial directory holds while we have the lock was
        // left by a build that died.
        let _lock = lock(&kernels.join(format!("{label}.lock")), label)?;
        if !dir.join("bzImage").exists() {
            eprintln!(
                "[x] {label}: build dependencies ready ({}s)",
                start.elapsed().as_secs()
            );
            build(label, &dir, vng, &inputs)?;
            prune(&kernels, label);
        }
    }
    let release = fs::read_to_string(dir.join("release"))
        .with_context(|| format!("{}: no release file", dir.display()))?
        .trim()
        .to_string();
    Ok(Built {
        bzimage: dir.join("bzImage"),
        release,
    })
}

/// Everything the build's result depends on, one fact a line; the key is
/// its hash, and the file `inputs` in the cache directory keeps it.
fn key_inputs(vng_version: &str) -> anyhow::Result<String> {
    let source = output(Command::new("dpkg-query").args(["-W", "-f=${Version}", SOURCE_PACKAGE]))?;
    let gcc = output(Command::new("gcc").arg("--version"))?;
    let pahole = output(Command::new("pahole").arg("--version"))?;
    let mut s = format!(
        "recipe {RECIPE}\n{SOURCE_PACKAGE} {source}\nvirtme-ng {vng_version}\ngcc {}\npahole {}\n",
        gcc.lines().next().unwrap_or_default(),
        pahole.trim()
    );
    for (name, value) in OPTIONS {
        s.push_str(&format!("{name}={value}\n"));
    }
    Ok(s)
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// 64-bit FNV-1a: stable across Rust releases (the std hasher is not),
/// and plenty for a cache key.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn build(label: &str, dir: &Path, vng: &Path, inputs: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    let partial = dir.with_file_name(format!(
        "{}.partial",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or(label)
    ));
    if partial.exists() {
        // Left by a build that died (the caller holds the lock).
        eprintln!(
            "[x] {label}: removing an unfinished build ({})",
            partial.display()
        );
        fs::remove_dir_all(&partial)?;
    }
    fs::create_dir_all(&partial)?;
    fs::write(partial.join("inputs"), inputs)?;
    let step = |what: &str| {
        eprintln!(
            "[x] {label}: {what} ({}s elapsed)",
            start.elapsed().as_secs()
        )
    };

    step(&format!(
        "building a kernel in {}: unpacking {SOURCE_TARBALL}",
        partial.display()
    ));
    sh(Command::new("tar")
        .arg("-xf")
        .arg(SOURCE_TARBALL)
        .arg("-C")
        .arg(&partial))?;
    let src = partial.join("src");
    let unpacked = fs::read_dir(&partial)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .with_context(|| format!("{SOURCE_TARBALL} unpacked no directory"))?;
    fs::rename(&unpacked, &src)?;

    step("configuring: vng --kconfig, then make olddefconfig");
    let mut kconfig = Command::new(vng);
    kconfig.arg("--kconfig");
    for (name, value) in OPTIONS {
        kconfig.arg("--configitem").arg(format!("{name}={value}"));
    }
    // vng reads ~/.config/virtme-ng/kernel.config when there is one; a
    // private HOME keeps the config to what the key covers. vng runs
    // virtme-configkernel from its own venv.
    let venv_bin = vng.parent().unwrap_or(Path::new("/"));
    kconfig
        .current_dir(&src)
        .env("HOME", &partial)
        .env(
            "PATH",
            format!(
                "{}:{}",
                venv_bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .stdout(Stdio::null());
    sh(&mut kconfig)?;
    sh(Command::new("make")
        .arg("olddefconfig")
        .current_dir(&src)
        .stdout(Stdio::null()))?;
    let config = fs::read_to_string(src.join(".config"))?;
    let missing = missing_options(&config);
    if !missing.is_empty() {
        bail!(
            "{label}: make olddefconfig dropped or changed {} required option(s) (a \
             dependency is unmet; see {}):\n  {}",
            missing.len(),
            src.join(".config").display(),
            missing.join("\n  ")
        );
    }

    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let log = partial.join("build.log");
    step(&format!(
        "every option is set; make -j{jobs} bzImage (about 13 min on 2 cores; output in {})",
        log.display()
    ));
    make_bzimage(label, &src, jobs, &log, start)?;

    let release = fs::read_to_string(src.join("include/config/kernel.release"))
        .context("reading the kernel release")?;
    fs::copy(src.join("arch/x86/boot/bzImage"), partial.join("bzImage"))?;
    fs::copy(src.join(".config"), partial.join("config"))?;
    fs::write(partial.join("release"), release.trim())?;
    fs::remove_dir_all(&src)?;
    fs::rename(&partial, dir)?;
    eprintln!(
        "[x] {label}: built {} in {}s ({})",
        release.trim(),
        start.elapsed().as_secs(),
        dir.join("bzImage").display()
    );
    Ok(())
}

/// Runs `make bzImage` with its output in `log`, printing progress every
/// minute; on failure, the log's tail.
fn make_bzimage(
    label: &str,
    src: &Path,
    jobs: usize,
    log: &Path,
    start: Instant,
) -> anyhow::Result<()> {
    let out = fs::File::create(log)?;
    let (wall, cpu) = (Instant::now(), children_cpu());
    let mut child = Command::new("make")
        .arg(format!("-j{jobs}"))
        .arg("bzImage")
        .current_dir(src)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("running make bzImage")?;
    let mut last_report = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if last_report.elapsed() >= Duration::from_secs(60) {
            last_report = Instant::now();
            let text = read_lossy(log);
            let compiled = text.lines().filter(|l| l.starts_with("  CC ")).count();
            eprintln!(
                "[x] {label}: make bzImage: {compiled} files compiled, {}s elapsed",
                start.elapsed().as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    if !status.success() {
        let text = read_lossy(log);
        let lines: Vec<&str> = text.lines().collect();
        for l in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("{l}");
        }
        bail!(
            "{label}: make bzImage failed ({status}); the whole output is in {}",
            log.display()
        );
    }
    // The CPU time says what the build costs whatever else the machine
    // was running meanwhile.
    let cpu = children_cpu().saturating_sub(cpu).as_secs();
    eprintln!(
        "[x] {label}: make bzImage took {}s, {cpu} CPU-seconds (about {}s on {jobs} idle cores)",
        wall.elapsed().as_secs(),
        cpu / jobs as u64
    );
    Ok(())
}

/// User and system time of the children waited for so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    let _ = fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes));
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The options of [`OPTIONS`] that `config` (a `.config`) does not have as
/// asked, each with what it has instead.
fn missing_options(config: &str) -> Vec<String> {
    let mut set: BTreeMap<&str, &str> = BTreeMap::new();
    for line in config.lines() {
        if let Some((name, value)) = line.split_once('=')
            && name.starts_with("CONFIG_")
        {
            set.insert(name, value);
        }
    }
    OPTIONS
        .iter()
        .filter_map(|(name, want)| {
            let have = set.get(name).copied();
            let ok = match (*want, have) {
                ("n", None) => true,
                (want, Some(have)) => want == have,
                _ => false,
            };
            (!ok).then(|| format!("{name}={want} (have {})", have.unwrap_or("unset")))
        })
        .collect()
}

/// Finished builds of a label kept (other keys: other checkouts or
/// branches may use them).
const KEEP: usize = 3;

/// Removes the unfinished builds of `label` and its finished ones beyond
/// the [`KEEP`] newest. Called with the label's lock held.
fn prune(kernels: &Path, label: &str) {
    let prefix = format!("{label}-");
    let mut finished = Vec::new();
    for e in fs::read_dir(kernels).into_iter().flatten().flatten() {
        let path = e.path();
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !name.starts_with(&prefix) || !path.is_dir() {
            continue;
        }
        if name.ends_with(".partial") {
            eprintln!(
                "[x] {label}: removing an unfinished build {}",
                path.display()
            );
            let _ = fs::remove_dir_all(&path);
        } else {
            let built = fs::metadata(path.join("bzImage")).and_then(|m| m.modified());
            finished.push((built.ok(), path));
        }
    }
    finished.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (_, path) in finished.into_iter().skip(KEEP) {
        eprintln!("[x] {label}: removing the older build {}", path.display());
        let _ = fs::remove_dir_all(&path);
    }
}

/// An exclusive flock(2) on `path`, released when the file is dropped
/// (or the process dies).
fn lock(path: &Path, label: &str) -> anyhow::Result<fs::File> {
    use std::os::fd::AsRawFd as _;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let fd = file.as_raw_fd();
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!(
            "[x] {label}: another build of this kernel is running ({} is locked); waiting for it",
            path.display()
        );
        // SAFETY: as above.
        if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked_in_the_final_config() {
        let mut config = String::from("# CONFIG_MODULES is not set\n");
        for (name, value) in OPTIONS.iter().filter(|(_, v)| *v != "n") {
            config.push_str(&format!("{name}={value}\n"));
        }
        assert!(missing_options(&config).is_empty());
        let config = config
            .replace(
                "CONFIG_BPF_KPROBE_OVERRIDE=y\n",
                "# CONFIG_BPF_KPROBE_OVERRIDE is not set\n",
            )
            .replace("CONFIG_LSM=\"bpf\"", "CONFIG_LSM=\"landlock\"")
            + "CONFIG_MODULES=y\n";
        assert_eq!(
            missing_options(&config),
            [
                "CONFIG_MODULES=n (have y)",
                "CONFIG_BPF_KPROBE_OVERRIDE=y (have unset)",
                "CONFIG_LSM=\"bpf\" (have \"landlock\")",
            ]
        );
    }

    #[test]
    fn option_names_are_unique_and_well_formed() {
        let mut names: Vec<&str> = OPTIONS.iter().map(|(n, _)| *n).collect();
        assert!(names.iter().all(|n| {
            n.starts_with("CONFIG_")
                && n[7..]
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        }));
        names.sort_unstable();
        let len = names.len();
        names.dedup();
        assert_eq!(names.len(), len);
    }

    #[test]
    fn a_held_build_lock_excludes_another_until_dropped() {
        use std::os::fd::AsRawFd as _;
        let path = std::env::temp_dir().join(format!("xtask-lock-test-{}", std::process::id()));
        let try_other = || {
            let f = fs::File::open(&path).unwrap();
            // SAFETY: flock on a descriptor we own.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
        };
        let held = lock(&path, "test").unwrap();
        assert!(!try_other());
        drop(held);
        assert!(try_other());
        let _ = fs::remove_file(&path);
    }

    #[test]
    fn the_key_hash_is_fnv1a() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
