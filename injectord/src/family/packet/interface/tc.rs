//! TC on an interface: tcx links first in the chain where the kernel has
//! them (Linux 6.6+), clsact + cls_bpf filters otherwise.

use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttach, TcAttachType,
        links::Link as _,
        tc::{self, NlOptions, SchedClassifierLink},
    },
};
use injector_common::packet::{PACKET_TC_EGRESS, PACKET_TC_INGRESS};

use super::{Attach, Interface};
use crate::{
    error::{Error, chain},
    kernel::{
        qdisc::Rtnl,
        reaper::{NetlinkGuard, Reaper, Undo, Undoable},
    },
};

/// Our TC program on one direction of the device.
pub struct TcLink {
    _guard: NetlinkGuard<SchedClassifierLink>,
    /// A clsact filter (netlink state), not a tcx link.
    netlink: bool,
}

impl TcLink {
    pub fn kind(&self) -> &'static str {
        if self.netlink { "clsact" } else { "tcx" }
    }
}

impl Undoable for SchedClassifierLink {
    fn undo(self) -> Result<(), String> {
        // A tcx link closes; a clsact filter is deleted by netlink in the
        // calling thread's namespace.
        self.detach().map_err(|e| chain(&e))
    }
}

impl Interface {
    pub(super) fn ensure_tc(
        &mut self,
        attach_type: TcAttachType,
        attach: Attach,
        reaper: &Reaper,
    ) -> Result<(), Error> {
        let i = usize::from(attach_type == TcAttachType::Egress);
        if self.tc[i].is_some() {
            return Ok(());
        }
        let name = program_name(attach_type);
        let ifindex = self.ifindex;
        let dev = self.name.clone();
        let started = std::time::Instant::now();
        let prog = load(&mut self.ebpf, attach_type)?;
        let load_us = started.elapsed().as_micros() as u64;
        // Recorded before the qdisc exists, so a crash in between is
        // covered; settled at once if the qdisc was there already.
        let clsact_record = reaper.record(&self.ns, Undo::Clsact { dev: dev.clone() });
        // A clsact we added and could not remove after a failed attach.
        let mut clsact_left = false;
        let attached = self.ns.run(|| {
            // tcx (Linux 6.6+): a link, first in the chain; our program
            // answers "next" for packets it leaves alone.
            let tcx = TcAttach::Tcx {
                attach_type,
                order: LinkOrder::first(),
            };
            let tcx = if attach.force_clsact {
                Err("tcx not used (--tc-attach clsact)".to_string())
            } else {
                prog.attach(ifindex, tcx).map_err(|e| chain(&e))
            };
            match tcx {
                Ok(id) => Ok((id, false, false)),
                Err(tcx_err) => {
                    // clsact + cls_bpf: a filter at a priority the kernel
                    // picks in front of the existing ones.
                    let created = match tc::qdisc_add_clsact(ifindex) {
                        Ok(()) => true,
                        Err(e) if chain(&e).contains("exists") => false,
                        Err(e) => {
                            return Err(format!("tcx: {}; clsact: {}", tcx_err, chain(&e)));
                        }
                    };
                    let nl = TcAttach::Netlink {
                        parent: attach_type.into(),
                        options: NlOptions::default(),
                    };
                    match prog.attach(ifindex, nl) {
                        Ok(id) => Ok((id, true, created)),
                        Err(e) => {
                            if created
                                && let Err(del) =
                                    Rtnl::open().and_then(|mut nl| nl.delete_clsact(ifindex))
                            {
                                tracing::warn!(interface = %dev, error = %del, "could not remove the clsact qdisc just added; the reaper will retry when injectord exits");
                                clsact_left = true;
                            }
                            Err(format!("tcx: {}; clsact filter: {}", tcx_err, chain(&e)))
                        }
                    }
                }
            }
        });
        let attached = attached
            .map_err(|e| format!("entering the namespace: {e}"))
            .and_then(|r| r)
            .and_then(|(id, netlink, created)| {
                prog.take_link(id)
                    .map(|link| (link, netlink, created))
                    .map_err(|e| chain(&e))
            })
            .map_err(|msg| {
                Error::UnsupportedKernel(format!("attaching {name} to {}: {msg}", self.label))
            });
        let (link, netlink, created) = match attached {
            Ok(attached) => attached,
            Err(e) => {
                if clsact_left {
                    clsact_record.keep();
                }
                return Err(e);
            }
        };
        if created && self.clsact.is_none() {
            self.clsact = Some(NetlinkGuard::new(
                Undo::Clsact { dev: dev.clone() },
                self.ns.clone(),
                format!("clsact on {}", self.label),
                Some(clsact_record),
            ));
        } else {
            drop(clsact_record);
        }
        let record = match (netlink, link.priority()) {
            (true, Ok(priority)) => Some(reaper.record(
                &self.ns,
                Undo::Filter {
                    dev,
                    ingress: i == 0,
                    priority,
                },
            )),
            _ => None,
        };
        self.tc[i] = Some(TcLink {
            _guard: NetlinkGuard::new(
                link,
                self.ns.clone(),
                format!("{name} on {}", self.label),
                record,
            ),
            netlink,
        });
        tracing::debug!(
            interface = %self.label,
            name,
            netlink,
            load_us,
            attach_us = started.elapsed().as_micros() as u64 - load_us,
            "attached TC program"
        );
        Ok(())
    }
}

fn program_name(attach_type: TcAttachType) -> &'static str {
    if attach_type == TcAttachType::Egress {
        PACKET_TC_EGRESS
    } else {
        PACKET_TC_INGRESS
    }
}

/// The object's TC program for one direction, loaded (verified) if it was
/// not yet.
pub(super) fn load(
    ebpf: &mut Ebpf,
    attach_type: TcAttachType,
) -> Result<&mut SchedClassifier, Error> {
    let name = program_name(attach_type);
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| Error::Internal(format!("{name} missing from the object")))?;
    if prog.fd().is_err() {
        prog.load().map_err(|e| {
            Error::UnsupportedKernel(format!("loading {name} (TC classifier): {}", chain(&e)))
        })?;
    }
    Ok(prog)
}
