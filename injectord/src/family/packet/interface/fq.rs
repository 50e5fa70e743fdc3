//! sch_fq at the device root: what EDT delays and rate limits need to
//! hold packets until their departure time.

use nix::errno::Errno;

use super::{super::plan::PacketPlan, Interface};
use crate::{
    error::Error,
    kernel::{
        qdisc::{Rtnl, U32Option},
        reaper::{NetlinkGuard, Reaper, Record, Undo},
    },
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
        let (ns, label, name, ifindex) = (&self.ns, &self.label, &self.name, self.ifindex);
        // One thread in the namespace and one socket for the look and the
        // change.
        let started = std::time::Instant::now();
        let outcome = ns
            .run(|| -> Result<Option<(Record, String)>, Error> {
                let mut nl = Rtnl::open().map_err(|e| {
                    Error::Internal(format!("talking to the kernel about {label}: {e}"))
                })?;
                let root = nl.root_qdisc(ifindex).map_err(|e| {
                    Error::Internal(format!("reading the root qdisc of {label}: {e}"))
                })?;
                if root.kind == "fq" {
                    return Ok(None);
                }
                if !plan.install_fq {
                    return Err(Error::UnsupportedTarget(format!(
                        "{} needs sch_fq as the root qdisc of {label}, which has {} instead; set \"install_fq\": true to let injectord put fq there for the fault's lifetime, or run `tc qdisc replace dev {name} root fq`",
                        plan.kind, root.kind
                    )));
                }
                if !root.is_default() {
                    return Err(Error::Conflict(format!(
                        "{label} has a configured root qdisc ({} handle {}); injectord will not replace someone else's qdisc. Add fq yourself, or remove that qdisc first",
                        root.kind,
                        root.handle_text()
                    )));
                }
                // Recorded before the qdisc exists; settled at once (dropped)
                // if it never does.
                let record = reaper.record(ns, Undo::Fq { dev: name.clone() });
                nl.set_root(ifindex, "fq", FQ_OPTIONS, true).map_err(|e| {
                    let hint = match e.errno() {
                        // ENOENT: "Specified qdisc kind is unknown".
                        Some(Errno::ENOENT | Errno::EOPNOTSUPP) => {
                            "; is sch_fq missing from this kernel?"
                        }
                        _ => "",
                    };
                    Error::Internal(format!("installing fq on {label}: {e}{hint}"))
                })?;
                Ok(Some((record, root.kind)))
            })
            .map_err(|e| Error::io(format!("entering the namespace of {label}"), e))??;
        let Some((record, previous)) = outcome else {
            self.fq = Fq::Present;
            return Ok(());
        };
        let micros = started.elapsed().as_micros() as u64;
        self.fq = Fq::Installed(NetlinkGuard::new(
            Undo::Fq {
                dev: self.name.clone(),
            },
            self.ns.clone(),
            format!("fq on {}", self.label),
            Some(record),
        ));
        tracing::info!(interface = %self.label, %previous, micros, "installed sch_fq");
        Ok(())
    }
}

/// fq's options: room for a rate limit's queue, since fq's default of 100
/// packets per flow (and 10000 in all) would drop what the limiter already
/// scheduled. `TCA_FQ_PLIMIT` and `TCA_FQ_FLOW_PLIMIT` (linux/pkt_sched.h),
/// as `tc qdisc replace dev X root fq limit 100000 flow_limit 10000` sends
/// them.
const FQ_OPTIONS: &[U32Option] = &[(TCA_FQ_PLIMIT, 100_000), (TCA_FQ_FLOW_PLIMIT, 10_000)];
const TCA_FQ_PLIMIT: u16 = 1;
const TCA_FQ_FLOW_PLIMIT: u16 = 2;
