//! Do-nothing programs the daemon loads once at start-up to learn, by
//! trying, which hook families this kernel really offers (a program type
//! can exist yet be unusable, e.g. BPF LSM under lockdown). XDP and TC are
//! also attached, in a throwaway namespace, and detached at once; the
//! others are not, because arming them patches kernel text.

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, kprobe, lsm, raw_tracepoint, xdp},
    programs::{LsmContext, ProbeContext, RawTracePointContext, TcContext, XdpContext},
};

#[lsm(hook = "file_open")]
pub fn probe_lsm(_ctx: LsmContext) -> i32 {
    0
}

#[kprobe]
pub fn probe_kprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn probe_raw_tp(_ctx: RawTracePointContext) -> i32 {
    0
}

#[xdp]
pub fn probe_xdp(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[classifier]
pub fn probe_tc(_ctx: TcContext) -> i32 {
    // TC_ACT_UNSPEC is TCX_NEXT: defer to whatever else is attached.
    TC_ACT_UNSPEC
}
