//! Builds the eBPF object (injector-ebpf, bin `injector`) for the BPF target
//! with the pinned nightly and bpf-linker, and leaves it in OUT_DIR for
//! `include_bytes_aligned!`.
//!
//! aya-build does the same, but it overwrites RUSTFLAGS and so cannot select
//! BPF ISA v3, which the exact triggers need (atomic fetch-and-add).

use std::{env, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../injector-ebpf");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let toolchain =
        env::var("INJECTORD_EBPF_TOOLCHAIN").unwrap_or_else(|_| "nightly-2026-09-01".into());

    println!("cargo:rerun-if-env-changed=INJECTORD_EBPF_TOOLCHAIN");
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
