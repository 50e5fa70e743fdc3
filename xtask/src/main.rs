//! Developer and CI tasks. Run through `./x` (which installs the pinned
//! toolchains and bpf-linker first), e.g. `./x run`, `./x test`, `./x bench`.

mod bench;
mod bench_block;
mod bench_net;
mod bench_switch;
mod bench_syscall;
mod deps;
mod kernel_build;
mod matrix;
mod suite;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "injectord development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build injectord (release) and run it in the foreground with the
    /// embedded defaults; extra arguments go to the daemon.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install what the tests need, then run the whole suite: lints, unit
    /// tests, end-to-end tests on the host kernel, then inside each VM
    /// kernel of the matrix; print the backend x kernel table.
    Test {
        /// Skip the VM kernel matrix (host kernel only).
        #[arg(long)]
        host_only: bool,
        /// Only these VM kernels (labels, e.g. debian-6.12).
        #[arg(long)]
        kernel: Vec<String>,
    },
    /// Boot a VM kernel of the matrix (downloading or building it first
    /// unless it is cached) and run a shell command in it as root, with
    /// the host's filesystem read-only; exits with the command's status.
    Vm {
        /// Its label, e.g. built-6.12.
        kernel: String,
        /// The command, run by the guest's shell.
        command: String,
    },
    /// rustfmt and clippy (-D warnings) on every crate, eBPF included.
    Lint,
    /// Benchmarks: connect() overhead, control-plane latency, memory;
    /// packet program cost, drop throughput, untargeted-flow latency;
    /// syscall loops against strace's injection.
    Bench {
        /// connect() calls per measurement.
        #[arg(long, default_value_t = 200_000)]
        iterations: u32,
        /// inject operations for the control-plane latency.
        #[arg(long, default_value_t = 1000)]
        injects: u32,
        /// Which part: connect, packet, syscall, block or all (or, parts of
        /// packet alone: drop for its drop throughput tables, switch for
        /// its switch-on/off latencies).
        #[arg(long, default_value = "all")]
        only: String,
    },
    /// Internal: the process `bench` runs inside a cgroup.
    #[command(hide = true)]
    BenchWorker {
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Run { args } => run(&args),
        Task::Test { host_only, kernel } => suite::run(host_only, &kernel),
        Task::Vm { kernel, command } => matrix::run_command(&kernel, &command),
        Task::Lint => lint(),
        Task::Bench {
            iterations,
            injects,
            only,
        } => bench::run(iterations, injects, &only),
        Task::BenchWorker { args } => bench::worker_main(&args),
    }
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

pub fn cache() -> PathBuf {
    std::env::var_os("INJECTORD_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/injectord")))
        .unwrap_or_else(|| PathBuf::from("/var/cache/injectord"))
}

/// Runs a command, failing with its command line if it fails.
pub fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

/// Builds the daemon in release mode and returns its path.
pub fn build_daemon() -> anyhow::Result<PathBuf> {
    sh(cargo().args(["build", "--release", "-p", "injectord", "--bins"]))?;
    Ok(root().join("target/release/injectord"))
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let bin = build_daemon()?;
    eprintln!(
        "[x] starting {} (control socket /run/injectord/injectord.sock, metrics http://127.0.0.1:9464/metrics; Ctrl-C stops it and removes every fault)",
        bin.display()
    );
    use std::os::unix::process::CommandExt as _;
    let err = Command::new(&bin).args(args).exec();
    Err(err).with_context(|| format!("exec {}", bin.display()))
}

fn lint() -> anyhow::Result<()> {
    sh(cargo().args(["fmt", "--all", "--check"]))?;
    sh(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "injector-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let mut ebpf = Command::new("rustup");
    ebpf.args(["run", &ebpf_toolchain()?, "cargo", "clippy", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["-p", "injector-ebpf", "--", "-D", "warnings"])
        .current_dir(root().join("injector-ebpf"))
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"\x1f-Ctarget-cpu=v3",
        )
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC");
    sh(&mut ebpf)?;
    eprintln!("[x] lint clean");
    Ok(())
}

/// The eBPF toolchain, from injector-ebpf/rust-toolchain.toml, where it is
/// pinned (`./x` installs it from there, injectord's build script builds
/// with it). The file keeps `channel = "..."` on one line.
fn ebpf_toolchain() -> anyhow::Result<String> {
    let file = root().join("injector-ebpf/rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(key, _)| key.trim() == "channel")
        .map(|(_, value)| value.trim().trim_matches('"').to_string())
        .with_context(|| format!("no channel in {}", file.display()))
}

#[cfg(test)]
mod tests {
    /// The build script and `./x` read the same line; a reformatted
    /// toolchain file would break all three.
    #[test]
    fn ebpf_toolchain_is_read_from_its_file() {
        let toolchain = super::ebpf_toolchain().unwrap();
        assert!(toolchain.starts_with("nightly-"), "{toolchain}");
    }
}
