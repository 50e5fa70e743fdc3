//! Programs for `./x bench` only; the daemon never loads them.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// The traffic generator's program: run by BPF_PROG_TEST_RUN in live-frames
/// mode, XDP_TX sends each frame out of the device given as the test's
/// ingress, as a NIC driver would hand frames over (no skb).
#[xdp]
pub fn bench_xdp_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}
