//! XDP at a device's ingress: drops at line rate, before any allocation.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use injector_common::packet::HOOK_XDP;

use super::{Packet, Verdict, run_interface};

struct XdpPacket {
    len: u32,
}

impl Packet for XdpPacket {
    fn len(&self) -> u32 {
        self.len
    }
}

#[xdp]
pub fn packet_xdp(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    let mut pkt = XdpPacket {
        len: (end - data) as u32,
    };
    // A per-interface object: its rule set is this interface's.
    match run_interface::<HOOK_XDP, _>(data, end, &mut pkt) {
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Pass => xdp_action::XDP_PASS,
    }
}
