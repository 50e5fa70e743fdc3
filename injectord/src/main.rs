//! The injectord daemon.

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    net::SocketAddr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use injectord::{
    capabilities::{self, Capabilities},
    family::Options,
    faults::Faults,
    kernel::{Kernel, journal, lease::Lease, logs, reaper},
    metrics,
    rpc::{self, State},
    server,
    target::Cgroups,
};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
#[command(version, about = "eBPF fault injector daemon (run as root)")]
struct Args {
    /// Control socket (JSON-RPC 2.0, one object per line, mode 0600).
    #[arg(
        long,
        env = "INJECTORD_SOCKET",
        default_value = "/run/injectord/injectord.sock"
    )]
    socket: PathBuf,
    /// Prometheus endpoint (GET /metrics).
    #[arg(long, env = "INJECTORD_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// How TC programs attach: tcx links where the kernel has them (auto),
    /// or always clsact filters, as on kernels before 6.6.
    #[arg(long, value_enum, default_value_t = TcAttachMode::Auto)]
    tc_attach: TcAttachMode,
    /// Log filter (tracing-subscriber EnvFilter syntax); RUST_LOG also works.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
    /// The dead man's switch: faults stop firing this long after the daemon
    /// last renewed its lease (every tenth of it, at most every 100 ms), so
    /// nothing it leaves behind when killed or frozen acts for longer.
    #[arg(long, default_value = "1s", value_parser = parse_lease)]
    lease: Duration,
    /// Time every syscall of each cgroup a fault targets, for
    /// `injectord_syscall_latency_seconds`. Off by default: the
    /// raw_syscalls tracepoints it needs run for every task on the host
    /// while anything is targeted (see the README's benchmark).
    #[arg(long)]
    syscall_latency: bool,
    /// Leave the block I/O latency histograms off
    /// (`injectord_block_io_latency_seconds`, on by default: three block
    /// tracepoints and per-CPU histograms, see the README's benchmark).
    #[arg(long)]
    no_block_latency: bool,
    /// Per-interface copies of the eBPF object kept loaded and verified
    /// ahead, filled in the background after start-up, so that a first
    /// fault on a device only attaches (0: load on demand, 40-110 ms).
    #[arg(long, default_value_t = 2)]
    interface_pool: usize,
}

fn parse_lease(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if (Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&d) {
        Ok(d)
    } else {
        Err("the lease must be 100ms to 1h".into())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TcAttachMode {
    Auto,
    Clsact,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some(reaper::REAPER_ARG) => {
            let journal = std::env::args_os().nth(2).map(PathBuf::from);
            reaper::run("reaper", journal.as_deref());
        }
        Some(reaper::KEEPER_ARG) => {
            let journal = std::env::args_os().nth(2).map(PathBuf::from);
            reaper::run("keeper", journal.as_deref());
        }
        _ => {}
    }
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .with_context(|| format!("invalid --log filter {:?}", args.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    if let Err(e) = run(args) {
        tracing::error!("{e:#}");
        return Err(e);
    }
    Ok(())
}

fn run(args: Args) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("injectord must run as root (it loads eBPF programs and attaches them to cgroups)");
    }
    let _lock = single_instance(&args.socket)?;
    let started = Instant::now();
    let cgroups = Cgroups::discover()?;
    // Before anything else: undo what a predecessor killed with its reaper
    // left (its lease made it inert already).
    let journal_path = PathBuf::from(format!("{}.journal", args.socket.display()));
    let recovery = journal::recover(&journal_path);
    if recovery.undone + recovery.gone + recovery.failed > 0 {
        tracing::warn!(
            undone = recovery.undone,
            gone = recovery.gone,
            failed = recovery.failed,
            journal = %journal_path.display(),
            "recovered from a previous injectord's journal"
        );
    }
    let journal = journal::Journal::create(&journal_path)
        .map_err(|e| tracing::warn!(error = %e, journal = %journal_path.display(), "no journal: a kill of the whole process group would leave netlink state behind until a reboot"))
        .ok();
    let lease = Lease::start(args.lease);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut kernel = Kernel::load(lease)?;
        // Kept for the daemon's lifetime: the programs use its ring buffer.
        let _logs = logs::forward(&mut kernel.ebpf, "main");
        let kernel_capabilities = capabilities::probe_kernel(&mut kernel.ebpf);
        // Spawned before any netlink state exists, so that it can undo that
        // state if this process is SIGKILLed.
        let (reaper, spawn_error) = reaper::Reaper::spawn(journal);
        match spawn_error {
            None => tracing::debug!(pid = ?reaper.pid(), "reaper started"),
            Some(e) => tracing::warn!(error = %e, "could not start the reaper: after a SIGKILL, clsact filters and fq qdiscs would stay until the next start"),
        }
        let faults = Faults::new(
            kernel,
            cgroups,
            Options {
                force_clsact: args.tc_attach == TcAttachMode::Clsact,
                syscall_latency: args.syscall_latency,
                no_block_latency: args.no_block_latency,
                interface_pool: args.interface_pool,
            },
            reaper,
        );
        let mut backends = faults.family_capabilities();
        backends.extend(kernel_capabilities);
        for c in &backends {
            tracing::info!(
                backend = c.name,
                available = c.available,
                detail = %c.detail,
                "capability"
            );
        }
        let capabilities = Capabilities {
            kernel: capabilities::kernel_release(),
            backends,
            targets: capabilities::TARGETS,
        };

        let listener = server::bind(&args.socket)?;
        let metrics_listener = tokio::net::TcpListener::bind(args.metrics_addr)
            .await
            .with_context(|| format!("binding the metrics endpoint {}", args.metrics_addr))?;
        let state = Arc::new(State {
            faults,
            capabilities,
            started,
            recovery,
            lease: args.lease,
            socket: args.socket.display().to_string(),
            metrics_addr: metrics_listener.local_addr()?.to_string(),
            experiments: Default::default(),
        });
        let registry = Arc::new(metrics::registry(state.clone()));
        tokio::spawn(server::serve(listener, state.clone()));
        // Faults whose cgroup is removed (a pod or VM that ended) end too.
        tokio::spawn(rpc::watch_targets(state.clone()));
        tokio::spawn(metrics::serve(metrics_listener, registry));
        tracing::info!(
            socket = %args.socket.display(),
            metrics = %state.metrics_addr,
            startup_ms = started.elapsed().as_millis() as u64,
            "injectord ready"
        );
        // Background work begins only now, so start-up never waits for it.
        // Off the runtime: it takes the installer's lock.
        let serving = state.clone();
        tokio::task::spawn_blocking(move || serving.faults.serving());

        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
        // On the runtime's thread on purpose: while the faults are undone
        // (netlink, cgroup files; it blocks) no new request is served.
        let removed = state.faults.clear();
        // Interfaces detach in the background after their last fault.
        state.faults.settle();
        tracing::info!(removed, "all faults removed; exiting");
        let _ = std::fs::remove_file(&args.socket);
        anyhow::Ok(())
    })
}

/// Holds an exclusive lock next to the socket for the daemon's lifetime, so
/// a second daemon on the same socket refuses to start (and a stale socket
/// file from a killed daemon is recognised as stale).
fn single_instance(socket: &Path) -> anyhow::Result<File> {
    let lock_path = PathBuf::from(format!("{}.lock", socket.display()));
    if let Some(dir) = lock_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
        bail!(
            "another injectord (pid {}) is already serving {}; stop it first or pass another --socket",
            holder.trim(),
            socket.display()
        );
    }
    file.set_len(0)?;
    writeln!(file, "{}", std::process::id())?;
    Ok(file)
}
