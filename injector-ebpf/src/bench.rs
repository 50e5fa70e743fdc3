//! Programs for `./x bench` only; the daemon never loads them.

use crate::maps::{FAULT_STATS, coarse_clock};
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

/// The drop benchmark's second reference: IPv4 frames dropped, the rest
/// passed; what any dropper that reads the packet at all pays (measured:
/// no more than the bare XDP_DROP, within the run's noise).
#[xdp]
pub fn bench_xdp_drop_ip(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + 14 > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds checked just above. Bytes 12-13: the ethertype,
    // 0x0800 for IPv4.
    let (high, low) = unsafe { (*((data + 12) as *const u8), *((data + 13) as *const u8)) };
    if (high, low) == (0x08, 0x00) {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// The drop benchmark's third reference: IP frames dropped, each drop
/// counted in slot 0's per-CPU activations, as every fault's are: the
/// least a dropper that reports what it did pays.
#[xdp]
pub fn bench_xdp_drop_counted(ctx: XdpContext) -> u32 {
    counted_drop(&ctx, false)
}

/// The fourth: as [`bench_xdp_drop_counted`], behind the lease check that
/// every fault passes.
#[xdp]
pub fn bench_xdp_drop_leased(ctx: XdpContext) -> u32 {
    counted_drop(&ctx, true)
}

#[inline(always)]
fn counted_drop(ctx: &XdpContext, lease: bool) -> u32 {
    if !crate::packet::is_ip(ctx.data(), ctx.data_end()) || (lease && !coarse_clock().leased()) {
        return xdp_action::XDP_PASS;
    }
    if let Some(stats) = FAULT_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU value; programs run with migration disabled.
        unsafe { (*stats).activations += 1 };
    }
    xdp_action::XDP_DROP
}

/// The cgroup rows' baseline: every packet let through, nothing looked at.
#[cgroup_skb]
pub fn bench_cgroup_skb(_ctx: SkBuffContext) -> i32 {
    1
}
