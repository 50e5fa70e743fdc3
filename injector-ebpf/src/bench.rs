//! Programs for `./x bench` only; the daemon never loads them.

use aya_ebpf::{
    bindings::xdp_action,
    macros::{cgroup_skb, xdp},
    programs::{SkBuffContext, XdpContext},
};

/// The traffic generator's program: run by BPF_PROG_TEST_RUN in live-frames
/// mode, XDP_TX sends each frame out of the device given as the test's
/// ingress, as a NIC driver would hand frames over (no skb).
#[xdp]
pub fn bench_xdp_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// The drop benchmark's reference: every frame dropped, nothing looked at.
#[xdp]
pub fn bench_xdp_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// The cgroup rows' baseline: every packet let through, nothing looked at.
#[cgroup_skb]
pub fn bench_cgroup_skb(_ctx: SkBuffContext) -> i32 {
    1
}
