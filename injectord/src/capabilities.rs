//! What this kernel can do, found by trying (as aya's feature probes do),
//! never by reading the kernel version. Probed once at start-up: the hook
//! types every family may build on here, and each family's own needs by
//! the family (see `family::Backend::capabilities`).

use aya::{
    Btf, Ebpf,
    programs::{KProbe, Lsm, ProgramType, RawTracePoint},
    sys::{BpfHelper as bpf_func_id, is_helper_supported, is_program_supported},
};
use injector_common::probe::{PROBE_KPROBE, PROBE_LSM, PROBE_RAW_TP};
use serde::Serialize;

use crate::error::chain;

#[derive(Clone, Debug, Serialize)]
pub struct Capability {
    /// Stable backend name.
    pub name: &'static str,
    pub available: bool,
    /// Why not (or, when available, a note such as the mechanism used).
    pub detail: String,
}

impl Capability {
    /// A capability from a probe's outcome: the note, or why not.
    pub fn probe(name: &'static str, result: Result<String, String>) -> Self {
        let (available, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        Self {
            name,
            available,
            detail,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Capabilities {
    pub kernel: String,
    pub backends: Vec<Capability>,
    /// The kinds of target a spec can name ([`TARGETS`]).
    pub targets: &'static [TargetKind],
}

/// A kind of target, for `capabilities`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct TargetKind {
    /// The key of the spec's `target` object.
    pub name: &'static str,
    /// What it names.
    pub detail: &'static str,
}

/// Every kind of target, in the order the README lists them.
pub const TARGETS: &[TargetKind] = &[
    TargetKind {
        name: "cgroup",
        detail: "a cgroup2 directory, absolute or relative to the cgroup2 mount, and everything below it",
    },
    TargetKind {
        name: "pid",
        detail: "the cgroup of a process",
    },
    TargetKind {
        name: "container",
        detail: "a container's cgroup, by id or unique prefix of 12+ hex digits (docker, containerd, cri-o, podman; systemd or cgroupfs driver)",
    },
    TargetKind {
        name: "pod",
        detail: "a Kubernetes pod's cgroup, by uid, with all its containers (kubelet's cgroupfs or systemd driver, any QoS class, under any --cgroup-root)",
    },
    TargetKind {
        name: "vm",
        detail: "a libvirt QEMU domain, by name: its machine cgroup (a machine.slice scope, or machine/qemu-<id>-<name>.libvirt-qemu without systemd) with every process of the VM; get and list show its qemu pid",
    },
    TargetKind {
        name: "interface",
        detail: "a network device, in the daemon's network namespace or in \"netns\" (packet faults)",
    },
];

fn program_type(t: ProgramType, what: &str) -> Result<(), String> {
    match is_program_supported(t) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("the kernel does not support {what} programs")),
        Err(e) => Err(format!("probing {what} programs failed: {e}")),
    }
}

fn helper(t: ProgramType, h: bpf_func_id, what: &str) -> Result<String, String> {
    match is_helper_supported(t, h) {
        Ok(true) => Ok(format!("{what} available")),
        Ok(false) => Err(format!("the kernel does not offer the {what} helper")),
        Err(e) => Err(format!("probing {what} failed: {e}")),
    }
}

/// The running kernel's release.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Probes the hook types and helpers that no family loaded yet uses but
/// that the families to come build on.
pub fn probe_kernel(ebpf: &mut Ebpf) -> Vec<Capability> {
    vec![
        Capability::probe("bpf_lsm", probe_lsm(ebpf)),
        Capability::probe("kprobe", probe_kprobe(ebpf)),
        Capability::probe(
            "bpf_override_return",
            program_type(ProgramType::KProbe, "kprobe")
                .and_then(|()| {
                    helper(
                        ProgramType::KProbe,
                        bpf_func_id::BPF_FUNC_override_return,
                        "bpf_override_return",
                    )
                })
                .map_err(|e| format!("{e} (needs CONFIG_BPF_KPROBE_OVERRIDE)")),
        ),
        Capability::probe("tracepoints", probe_raw_tp(ebpf)),
        Capability::probe(
            "bpf_send_signal",
            helper(
                ProgramType::TracePoint,
                bpf_func_id::BPF_FUNC_send_signal,
                "bpf_send_signal",
            ),
        ),
        Capability::probe(
            "bpf_loop",
            helper(
                ProgramType::SocketFilter,
                bpf_func_id::BPF_FUNC_loop,
                "bpf_loop",
            ),
        ),
    ]
}

fn probe_lsm(ebpf: &mut Ebpf) -> Result<String, String> {
    // securityfs may not be mounted; then an attach attempt below decides.
    let lsms = std::fs::read_to_string("/sys/kernel/security/lsm").ok();
    if let Some(lsms) = &lsms
        && !lsms.split(',').any(|l| l.trim() == "bpf")
    {
        return Err(format!(
            "\"bpf\" is not in the active LSM list ({}); boot with lsm=...,bpf",
            lsms.trim()
        ));
    }
    let btf = Btf::from_sys_fs().map_err(|e| format!("no kernel BTF: {e}"))?;
    let prog: &mut Lsm = typed(ebpf, PROBE_LSM)?;
    prog.load("file_open", &btf)
        .map_err(|e| format!("loading a BPF LSM program failed: {}", chain(&e)))?;
    // Attaching patches kernel text (a trampoline on the hook), which a
    // probe at every start-up should not do; the active LSM list already
    // says whether it would work. Only without securityfs is it tried.
    let result = if lsms.is_some() {
        Ok("BPF LSM programs load; \"bpf\" is an active LSM".into())
    } else {
        prog.attach()
            .map(|link| {
                let _ = prog.detach(link);
                "BPF LSM hooks attach".into()
            })
            .map_err(|e| format!("attaching a BPF LSM program failed: {}", chain(&e)))
    };
    let _ = prog.unload();
    result
}

fn probe_kprobe(ebpf: &mut Ebpf) -> Result<String, String> {
    let prog: &mut KProbe = typed(ebpf, PROBE_KPROBE)?;
    prog.load()
        .map_err(|e| format!("loading a kprobe program failed: {}", chain(&e)))?;
    let _ = prog.unload();
    // Not attached: arming a kprobe patches kernel text, which a probe at
    // every start-up should not do (and which livelocks multi-threaded
    // QEMU TCG guests now and then). aya attaches kprobes through the
    // kprobe perf PMU; its presence is what attaching needs.
    if std::fs::metadata("/sys/bus/event_source/devices/kprobe/type").is_ok() {
        Ok("kprobe programs load; the kprobe perf PMU is present".into())
    } else {
        Err("kprobe programs load, but there is no kprobe perf PMU \
             (/sys/bus/event_source/devices/kprobe; needs CONFIG_KPROBES and CONFIG_KPROBE_EVENTS)"
            .into())
    }
}

fn probe_raw_tp(ebpf: &mut Ebpf) -> Result<String, String> {
    let prog: &mut RawTracePoint = typed(ebpf, PROBE_RAW_TP)?;
    prog.load()
        .map_err(|e| format!("loading a raw tracepoint program failed: {}", chain(&e)))?;
    // Not attached: the first probe on a tracepoint flips a static key,
    // i.e. patches kernel text, on every start-up (see probe_kprobe).
    let _ = prog.unload();
    let tracefs = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("tracefs"));
    Ok(if tracefs {
        "raw tracepoint programs load; tracefs mounted".into()
    } else {
        "raw tracepoint programs load; tracefs not mounted (classic tracepoints need it)".into()
    })
}

/// A program of the object, as its type.
pub fn typed<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| format!("probe program {name} missing from the eBPF object"))
}
