//! What this kernel can do, found by trying (as aya's feature probes do),
//! never by reading the kernel version. Probed once at start-up.

use std::process::Command;

use aya::sys::BpfHelper as bpf_func_id;
use aya::{
    Btf, Ebpf,
    programs::{
        KProbe, Lsm, ProgramType, RawTracePoint, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::LinkOrder,
        tc::{self, TcAttach},
    },
    sys::{is_helper_supported, is_program_supported},
};
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

#[derive(Clone, Debug, Serialize)]
pub struct Capabilities {
    pub kernel: String,
    pub backends: Vec<Capability>,
}

fn cap(name: &'static str, result: Result<String, String>) -> Capability {
    match result {
        Ok(detail) => Capability {
            name,
            available: true,
            detail,
        },
        Err(detail) => Capability {
            name,
            available: false,
            detail,
        },
    }
}

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

/// Probes everything. `connect_load` and `cgroup_skb_load` are the outcomes
/// of loading the real connect and cgroup_skb packet programs.
pub fn probe(
    ebpf: &mut Ebpf,
    connect_load: Result<(), String>,
    cgroup_skb_load: Result<(), String>,
) -> Capabilities {
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut backends = vec![
        cap(
            "cgroup_sock_addr",
            program_type(ProgramType::CgroupSockAddr, "cgroup sock_addr")
                .map(|()| "connect/bind/sendmsg hooks per cgroup".into()),
        ),
        cap(
            "bpf_set_retval",
            connect_load
                .map(|()| "cgroup programs return a chosen errno".into())
                .map_err(|e| format!("cgroup programs cannot set an errno: {e}")),
        ),
        cap(
            "cgroup_skb",
            cgroup_skb_load
                .map(|()| "packet drops and partitions per cgroup".into())
                .map_err(|e| format!("cgroup_skb packet programs do not load: {e}")),
        ),
        cap("bpf_lsm", probe_lsm(ebpf)),
        cap("kprobe", probe_kprobe(ebpf)),
        cap(
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
    ];
    backends.extend(probe_net(ebpf));
    backends.push(cap("tracepoints", probe_raw_tp(ebpf)));
    backends.push(cap(
        "bpf_send_signal",
        helper(
            ProgramType::TracePoint,
            bpf_func_id::BPF_FUNC_send_signal,
            "bpf_send_signal",
        ),
    ));
    backends.push(cap(
        "bpf_loop",
        helper(
            ProgramType::SocketFilter,
            bpf_func_id::BPF_FUNC_loop,
            "bpf_loop",
        ),
    ));
    Capabilities { kernel, backends }
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
    let prog: &mut Lsm = typed(ebpf, "probe_lsm")?;
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
    let prog: &mut KProbe = typed(ebpf, "probe_kprobe")?;
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
    let prog: &mut RawTracePoint = typed(ebpf, "probe_raw_tp")?;
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

/// XDP, tcx, clsact and sch_fq are tried on the loopback device of a
/// throwaway network namespace, so nothing on the host's devices changes.
fn probe_net(ebpf: &mut Ebpf) -> Vec<Capability> {
    let names = ["xdp", "tcx", "clsact", "sch_fq"];
    let outcome = std::thread::scope(|s| {
        s.spawn(|| -> Result<Vec<Capability>, String> {
            // Only this thread moves; the namespace dies with it.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("cannot create a network namespace to probe in: {e}"))?;
            Ok(vec![
                cap("xdp", probe_xdp(ebpf)),
                cap("tcx", probe_tcx(ebpf)),
                cap("clsact", probe_clsact()),
                cap("sch_fq", probe_fq()),
            ])
        })
        .join()
        .unwrap_or_else(|_| Err("network probe thread panicked".into()))
    });
    outcome.unwrap_or_else(|e| names.iter().map(|n| cap(n, Err(e.clone()))).collect())
}

fn probe_xdp(ebpf: &mut Ebpf) -> Result<String, String> {
    let prog: &mut Xdp = typed(ebpf, "probe_xdp")?;
    prog.load()
        .map_err(|e| format!("loading an XDP program failed: {}", chain(&e)))?;
    match prog.attach(c"lo", XdpMode::Skb) {
        Ok(link) => {
            let _ = prog.detach(link);
            Ok("XDP attaches (generic mode probed; native where the driver has it)".into())
        }
        Err(e) => Err(format!("attaching XDP failed: {}", chain(&e))),
    }
}

fn probe_tcx(ebpf: &mut Ebpf) -> Result<String, String> {
    let prog: &mut SchedClassifier = typed(ebpf, "probe_tc")?;
    prog.load()
        .map_err(|e| format!("loading a TC program failed: {}", chain(&e)))?;
    let attach = TcAttach::Tcx {
        attach_type: TcAttachType::Egress,
        order: LinkOrder::default(),
    };
    match prog.attach(c"lo", attach) {
        Ok(link) => {
            let _ = prog.detach(link);
            Ok("tcx links attach".into())
        }
        Err(e) => Err(format!(
            "tcx links are not supported (needs Linux 6.6): {}",
            chain(&e)
        )),
    }
}

fn probe_clsact() -> Result<String, String> {
    tc::qdisc_add_clsact(c"lo")
        .map(|()| "clsact qdisc available".into())
        .map_err(|e| format!("cannot add a clsact qdisc (sch_ingress): {e}"))
}

fn probe_fq() -> Result<String, String> {
    let out = Command::new("tc")
        .args(["qdisc", "add", "dev", "lo", "root", "fq"])
        .output()
        .map_err(|e| format!("cannot run tc to probe sch_fq: {e}"))?;
    if out.status.success() {
        Ok("sch_fq qdisc available (EDT delay and pacing)".into())
    } else {
        Err(format!(
            "the kernel has no sch_fq qdisc: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn typed<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| format!("probe program {name} missing from the eBPF object"))
}
