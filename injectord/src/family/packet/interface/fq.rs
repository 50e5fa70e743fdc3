//! sch_fq at the device root: what EDT delays and rate limits need to
//! hold packets until their departure time.

use super::{super::plan::PacketPlan, Interface};
use crate::{
    error::Error,
    kernel::reaper::{self, NetlinkGuard, Reaper, Undo},
};

pub enum Fq {
    Unknown,
    /// fq was there before us.
    Present,
    /// We put fq at the root; dropping the guard removes it, and the kernel
    /// restores the default qdisc.
    Installed(
        #[expect(dead_code, reason = "held for its drop, which undoes it")] NetlinkGuard<Undo>,
    ),
}

impl Fq {
    pub fn describe(&self) -> &'static str {
        match self {
            Self::Unknown => "not needed",
            Self::Present => "present",
            Self::Installed(_) => "installed by injectord",
        }
    }
}

impl Interface {
    /// Makes sure sch_fq is the device's root qdisc.
    pub(super) fn ensure_fq(
        &mut self,
        plan: &PacketPlan,
        fq_available: bool,
        reaper: &Reaper,
    ) -> Result<(), Error> {
        if !matches!(self.fq, Fq::Unknown) {
            return Ok(());
        }
        if !fq_available {
            return Err(Error::UnsupportedKernel(format!(
                "{} needs the sch_fq qdisc (CONFIG_NET_SCH_FQ) to hold packets until their departure time, and this kernel has no sch_fq",
                plan.kind
            )));
        }
        let name = self.name.clone();
        let root = self
            .ns
            .run(|| root_qdisc(&name))
            .map_err(|e| Error::io(format!("entering the namespace of {}", self.label), e))?
            .map_err(Error::Internal)?;
        if root.kind == "fq" {
            self.fq = Fq::Present;
            return Ok(());
        }
        if !plan.install_fq {
            return Err(Error::UnsupportedTarget(format!(
                "{} needs sch_fq as the root qdisc of {}, which has {} instead; set \"install_fq\": true to let injectord put fq there for the fault's lifetime, or run `tc qdisc replace dev {} root fq`",
                plan.kind, self.label, root.kind, self.name
            )));
        }
        if !root.is_default() {
            return Err(Error::Conflict(format!(
                "{} has a configured root qdisc ({} handle {}); injectord will not replace someone else's qdisc. Add fq yourself, or remove that qdisc first",
                self.label, root.kind, root.handle
            )));
        }
        let record = reaper.record(&self.ns, Undo::Fq { dev: name.clone() });
        self.ns
            .run(|| {
                // Room for a rate limit's queue: fq's default of 100 packets
                // per flow would drop what the limiter already scheduled.
                reaper::tc(&[
                    "qdisc",
                    "replace",
                    "dev",
                    &name,
                    "root",
                    "fq",
                    "limit",
                    "100000",
                    "flow_limit",
                    "10000",
                ])
            })
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|e| Error::Internal(format!("installing fq on {}: {e}", self.label)))?;
        self.fq = Fq::Installed(NetlinkGuard::new(
            Undo::Fq { dev: name },
            self.ns.clone(),
            format!("fq on {}", self.label),
            Some(record),
        ));
        tracing::info!(interface = %self.label, previous = %root.kind, "installed sch_fq");
        Ok(())
    }
}

/// The root qdisc of a device, as `tc -j` reports it.
struct RootQdisc {
    kind: String,
    handle: String,
}

impl RootQdisc {
    /// Default qdiscs are created by the kernel with handle 0: (noqueue on
    /// virtual devices, pfifo_fast/fq_codel/mq per `net.core.default_qdisc`).
    fn is_default(&self) -> bool {
        self.handle == "0:"
    }
}

fn root_qdisc(dev: &str) -> Result<RootQdisc, String> {
    let out = reaper::tc(&["-j", "qdisc", "show", "dev", dev, "root"])?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("parsing `tc -j qdisc show`: {e}"))?;
    let q = v.get(0).ok_or("no root qdisc reported")?;
    Ok(RootQdisc {
        kind: q["kind"].as_str().unwrap_or("?").to_string(),
        handle: q["handle"].as_str().unwrap_or("?").to_string(),
    })
}
