//! Builds the eBPF object (injector-ebpf, bin `injector`) for the BPF target
//! with the nightly pinned in injector-ebpf/rust-toolchain.toml and
//! bpf-linker, and leaves it in OUT_DIR for `include_bytes_aligned!`.
//!
//! aya-build does the same, but it overwrites RUSTFLAGS and so cannot select
//! BPF ISA v3, which the exact triggers need (atomic fetch-and-add).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../injector-ebpf");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let toolchain_file = ebpf_dir.join("rust-toolchain.toml");
    let toolchain = toolchain_channel(&toolchain_file)?;

    println!("cargo:rerun-if-changed={}", toolchain_file.display());
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../injector-common").display()
    );

    let arch = env::var("CARGO_CFG_TARGET_ARCH")?;
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN")?.as_str() {
        "little" => "bpfel-unknown-none",
        "big" => "bpfeb-unknown-none",
        other => bail!("unsupported endianness {other}"),
    };
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
        "-Ctarget-cpu=v3".into(),
    ]
    .join("\x1f");
    let target_dir = out_dir.join("ebpf-target");

    let mut cmd = Command::new("rustup");
    cmd.args(["run", &toolchain, "cargo", "build", "--release"])
        .args(["--package", "injector-ebpf", "--bin", "injector"])
        .args(["--target", target, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&ebpf_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // The outer cargo's settings would select the userspace toolchain.
    for key in [
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
    ] {
        cmd.env_remove(key);
    }
    let output = cmd
        .output()
        .with_context(|| format!("running {cmd:?} (is rustup on PATH? use ./x)"))?;
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        if line.starts_with("warning") || line.starts_with("error") || !output.status.success() {
            println!("cargo:warning={line}");
        }
    }
    if !output.status.success() {
        bail!(
            "building the eBPF programs failed ({}); is bpf-linker on PATH? `./x` installs it",
            output.status
        );
    }
    let built = target_dir.join(target).join("release/injector");
    std::fs::copy(&built, out_dir.join("injector"))
        .with_context(|| format!("copying {}", built.display()))?;
    Ok(())
}

/// The `channel` of a rust-toolchain.toml: the one place the eBPF toolchain
/// is pinned (`./x` installs it from there). A line match, not a TOML
/// parser: the file is ours and keeps `channel = "..."` on one line.
fn toolchain_channel(file: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .find_map(|l| {
            let (key, value) = l.split_once('=')?;
            (key.trim() == "channel").then(|| value.trim().trim_matches('"').to_string())
        })
        .with_context(|| format!("no channel in {}", file.display()))
}
