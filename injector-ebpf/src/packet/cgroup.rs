//! cgroup_skb: the packets of one cgroup's sockets, whatever device they
//! cross. The programs cannot rewrite packets; they drop, and at egress set
//! the departure time.

use aya_ebpf::{
    EbpfContext as _, bindings::__sk_buff, macros::cgroup_skb, programs::SkBuffContext,
};
use injector_common::packet::{HOOK_CGROUP_EGRESS, HOOK_CGROUP_INGRESS};

use super::{Packet, Verdict, parse, run};
use crate::maps::attached_cgroup;

/// cgroup_skb return codes. At egress, 2 is "drop, and report congestion":
/// the sender sees NET_XMIT_CN, which UDP reports as success and TCP as a
/// reason to shrink its window, as for a loss on the wire (plain 0 would
/// make sendmsg() fail with EPERM, which no link does).
const PASS: i32 = 1;
const DROP: i32 = 0;
const DROP_CONGESTED: i32 = 2;

struct CgroupPacket {
    skb: *mut __sk_buff,
    egress: bool,
}

impl Packet for CgroupPacket {
    fn len(&self) -> u32 {
        // SAFETY: the context is valid for the program's run.
        unsafe { (*self.skb).len }
    }

    fn departure(&self) -> u64 {
        // SAFETY: as above; tstamp is readable in cgroup_skb programs.
        if self.egress {
            unsafe { (*self.skb).tstamp }
        } else {
            0
        }
    }

    fn set_departure(&mut self, ns: u64) -> bool {
        if !self.egress {
            return false;
        }
        // SAFETY: as above; tstamp is writable for CAP_BPF programs.
        unsafe { (*self.skb).tstamp = ns };
        true
    }
}

#[inline(always)]
fn run_cgroup(ctx: &SkBuffContext, hook: usize, egress: bool) -> Verdict {
    let target = attached_cgroup();
    if target == 0 {
        return Verdict::Pass;
    }
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: the context is valid for the program's run; data and
    // data_end are readable in cgroup_skb programs (CAP_BPF).
    let (data, end, protocol) = unsafe {
        (
            (*skb).data as usize,
            (*skb).data_end as usize,
            (*skb).protocol,
        )
    };
    let Some(flow) = parse::ip(data, end, 0, u16::from_be(protocol as u16)) else {
        return Verdict::Pass;
    };
    let mut pkt = CgroupPacket { skb, egress };
    run(hook, target, &flow, &mut pkt)
}

#[cgroup_skb(ingress)]
pub fn packet_cgroup_ingress(ctx: SkBuffContext) -> i32 {
    match run_cgroup(&ctx, HOOK_CGROUP_INGRESS, false) {
        Verdict::Drop => DROP,
        Verdict::Pass => PASS,
    }
}

#[cgroup_skb(egress)]
pub fn packet_cgroup_egress(ctx: SkBuffContext) -> i32 {
    match run_cgroup(&ctx, HOOK_CGROUP_EGRESS, true) {
        Verdict::Drop => DROP_CONGESTED,
        Verdict::Pass => PASS,
    }
}
