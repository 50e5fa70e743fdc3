//! XDP on an interface: ingress drops at line rate, before an skb exists.

use aya::{
    Ebpf,
    programs::{Link as _, Xdp, XdpMode, xdp::XdpLink},
};
use injector_common::packet::PACKET_XDP;

use super::Interface;
use crate::{
    error::chain,
    kernel::reaper::{NetlinkGuard, Undoable},
};

pub enum XdpState {
    NotTried,
    /// A bpf_link; dropping it detaches.
    Attached(
        #[expect(dead_code, reason = "held for its drop, which detaches it")] NetlinkGuard<XdpLink>,
    ),
    /// Another XDP program owns the device (or the kernel refused): ingress
    /// drops go through TC instead.
    Unavailable(String),
}

impl Undoable for XdpLink {
    fn undo(self) -> Result<(), String> {
        self.detach().map_err(|e| chain(&e))
    }
}

impl XdpState {
    pub fn describe(&self) -> String {
        match self {
            Self::Attached(_) => "attached".into(),
            Self::NotTried => "not needed".into(),
            Self::Unavailable(why) => format!("unavailable ({why}); ingress drops use TC"),
        }
    }
}

impl Interface {
    /// Attaches the XDP program if not yet tried; false if XDP cannot be
    /// used on this device.
    pub(super) fn ensure_xdp(&mut self) -> bool {
        if let XdpState::NotTried = self.xdp {
            self.xdp = match self.attach_xdp() {
                Ok(link) => XdpState::Attached(NetlinkGuard::new(
                    link,
                    self.ns.clone(),
                    format!("XDP on {}", self.label),
                    None,
                )),
                Err(why) => {
                    tracing::info!(interface = %self.label, %why, "XDP unavailable; ingress drops use TC");
                    XdpState::Unavailable(why)
                }
            };
        }
        matches!(self.xdp, XdpState::Attached(_))
    }

    fn attach_xdp(&mut self) -> Result<XdpLink, String> {
        let ifindex = self.ifindex;
        let prog = load(&mut self.ebpf)?;
        let id = self
            .ns
            .run(|| {
                // Native mode where the driver has it, generic otherwise. A
                // link never replaces another program: the kernel answers
                // EBUSY.
                prog.attach(ifindex, XdpMode::Driver).or_else(|native| {
                    prog.attach(ifindex, XdpMode::Skb).map_err(|generic| {
                        format!("native: {}; generic: {}", chain(&native), chain(&generic))
                    })
                })
            })
            .map_err(|e| e.to_string())??;
        prog.take_link(id).map_err(|e| chain(&e))
    }
}

/// The object's XDP program, loaded (verified) if it was not yet.
pub(super) fn load(ebpf: &mut Ebpf) -> Result<&mut Xdp, String> {
    let prog: &mut Xdp = ebpf
        .program_mut(PACKET_XDP)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| format!("{PACKET_XDP} missing from the object"))?;
    if prog.fd().is_err() {
        prog.load()
            .map_err(|e| format!("loading {PACKET_XDP}: {}", chain(&e)))?;
    }
    Ok(prog)
}
