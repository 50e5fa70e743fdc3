//! What the packet family needs of the kernel: XDP, tcx, clsact and
//! sch_fq, tried on the loopback device of a throwaway network namespace,
//! so nothing on the host's devices changes.

use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::LinkOrder,
        tc::{self, TcAttach},
    },
};
use injector_common::probe::{PROBE_TC, PROBE_XDP};

use crate::{
    capabilities::{Capability, typed},
    error::chain,
    kernel::qdisc::{self, Rtnl},
};

/// Capability name of sch_fq, which delays and rate limits need.
pub const SCH_FQ: &str = "sch_fq";

/// XDP, tcx, clsact and sch_fq are tried on the loopback device of a
/// throwaway network namespace, so nothing on the host's devices changes.
/// The outcome of the network probes.
pub struct NetProbes {
    pub capabilities: Vec<Capability>,
    /// Whether sch_fq, which delays and rate limits need, exists here.
    pub fq_available: bool,
}

pub fn probe_net(ebpf: &mut Ebpf) -> NetProbes {
    let names = ["xdp", "tcx", "clsact", SCH_FQ];
    let outcome = std::thread::scope(|s| {
        s.spawn(|| -> Result<[Result<String, String>; 4], String> {
            // Only this thread moves; the namespace dies with it.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("cannot create a network namespace to probe in: {e}"))?;
            Ok([probe_xdp(ebpf), probe_tcx(ebpf), probe_clsact(), probe_fq()])
        })
        .join()
        .unwrap_or_else(|_| Err("network probe thread panicked".into()))
    });
    let results = outcome.unwrap_or_else(|e| std::array::from_fn(|_| Err(e.clone())));
    let fq_available = results[3].is_ok();
    NetProbes {
        capabilities: names
            .into_iter()
            .zip(results)
            .map(|(name, r)| Capability::probe(name, r))
            .collect(),
        fq_available,
    }
}

fn probe_xdp(ebpf: &mut Ebpf) -> Result<String, String> {
    let prog: &mut Xdp = typed(ebpf, PROBE_XDP)?;
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
    let prog: &mut SchedClassifier = typed(ebpf, PROBE_TC)?;
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
    let started = std::time::Instant::now();
    // `tc qdisc add dev lo root fq`: a root fq with its defaults, only over
    // the default qdisc (the namespace is new, so it has it).
    let added = qdisc::ifindex("lo").and_then(|lo| Rtnl::open()?.set_root(lo, "fq", &[], false));
    tracing::debug!(
        micros = started.elapsed().as_micros() as u64,
        ok = added.is_ok(),
        "probed sch_fq"
    );
    added
        .map(|()| "sch_fq qdisc available (EDT delay and pacing)".into())
        .map_err(|e| match e.errno() {
            // "Specified qdisc kind is unknown": not built, no module.
            Some(nix::errno::Errno::ENOENT) => format!("the kernel has no sch_fq qdisc: {e}"),
            _ => format!("adding sch_fq on the loopback of a throwaway namespace failed: {e}"),
        })
}
