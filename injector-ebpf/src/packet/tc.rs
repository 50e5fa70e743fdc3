//! TC at a device's ingress and egress: the hook that can rewrite, copy and
//! re-time packets. Returns TC_ACT_UNSPEC (tcx: "next") for packets it
//! leaves alone, so programs and filters attached by others still run.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        __sk_buff, BPF_CSUM_LEVEL_RESET, BPF_F_INGRESS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR,
        BPF_F_RECOMPUTE_CSUM, TC_ACT_SHOT, TC_ACT_UNSPEC,
    },
    helpers::generated::{
        bpf_clone_redirect, bpf_csum_level, bpf_l3_csum_replace, bpf_l4_csum_replace, bpf_redirect,
        bpf_skb_load_bytes, bpf_skb_pull_data, bpf_skb_store_bytes,
    },
    macros::classifier,
    programs::TcContext,
};
use injector_common::packet::{DUPLICATE_MARK, HOOK_TC_EGRESS, HOOK_TC_INGRESS, PROTO_UDP};

use super::{Flow, Packet, Verdict, run_interface};

/// Enough linear bytes for Ethernet, a VLAN tag, IPv6 with 64 bytes of
/// extension headers (hop-by-hop, destination options, a routing header
/// with two addresses, a fragment header) and a TCP header with options.
const HEADERS_MAX: u32 = 14 + 4 + 40 + 64 + 60;

struct TcPacket {
    skb: *mut __sk_buff,
    ingress: bool,
}

impl TcPacket {
    fn load(&self, pos: u32, buf: &mut [u8]) -> bool {
        // SAFETY: the helper bounds-checks against the packet and writes at
        // most `buf.len()` bytes into `buf`.
        unsafe {
            bpf_skb_load_bytes(
                self.skb.cast(),
                pos,
                buf.as_mut_ptr().cast(),
                buf.len() as u32,
            ) == 0
        }
    }
}

impl Packet for TcPacket {
    fn len(&self) -> u32 {
        // SAFETY: the context is valid for the program's run.
        unsafe { (*self.skb).len }
    }

    fn corrupt(&mut self, flow: &Flow, pos: u32, mask: u8, fix_checksum: bool) -> bool {
        // Checksums sum 16-bit words counted from the IP header, which
        // starts at an even offset, so the word holding `pos` starts at an
        // even offset too.
        let word_pos = pos & !1;
        let mut word = [0u8; 2];
        let whole_word = self.load(word_pos, &mut word);
        if !whole_word && !self.load(word_pos, &mut word[..1]) {
            return false;
        }
        let old = word;
        // Constant indices: the verifier rejects arithmetic on the stack
        // pointer that a variable index compiles to.
        let new_byte = if pos & 1 == 0 {
            word[0] ^= mask;
            word[0]
        } else {
            word[1] ^= mask;
            word[1]
        };
        let flags = if fix_checksum {
            0
        } else {
            // Keep a CHECKSUM_COMPLETE sum in step with the new bytes, so the
            // stack's verification sees the mismatch.
            u64::from(BPF_F_RECOMPUTE_CSUM)
        };
        // SAFETY: the helper bounds-checks `pos` and reads one byte from a
        // stack variable.
        let stored = unsafe {
            bpf_skb_store_bytes(self.skb.cast(), pos, (&raw const new_byte).cast(), 1, flags)
        };
        if stored != 0 {
            return false;
        }
        if !fix_checksum {
            // A device that verified the checksum (CHECKSUM_UNNECESSARY)
            // would otherwise vouch for the corrupted packet.
            // SAFETY: helper on the program's own context.
            unsafe { bpf_csum_level(self.skb, u64::from(BPF_CSUM_LEVEL_RESET)) };
            return true;
        }
        let (from, to) = (
            u64::from(u16::from_ne_bytes(old)),
            u64::from(u16::from_ne_bytes(word)),
        );
        let udp = if flow.proto == PROTO_UDP {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        };
        // SAFETY (all helper calls below): checksum helpers on the program's
        // own context; they bounds-check the checksum offset.
        if pos < flow.l4 {
            let in_pseudo_header = if flow.ipv4 {
                unsafe { bpf_l3_csum_replace(self.skb, flow.l3 + 10, from, to, 2) };
                pos >= flow.l3 + 12 && pos < flow.l3 + 20
            } else {
                pos >= flow.l3 + 8 && pos < flow.l3 + 40
            };
            if in_pseudo_header && flow.csum != 0 {
                unsafe {
                    bpf_l4_csum_replace(
                        self.skb,
                        flow.csum,
                        from,
                        to,
                        2 | u64::from(BPF_F_PSEUDO_HDR) | udp,
                    )
                };
            }
        } else if flow.csum != 0 && !(pos >= flow.csum && pos < flow.csum + 2) {
            unsafe { bpf_l4_csum_replace(self.skb, flow.csum, from, to, 2 | udp) };
        }
        true
    }

    fn duplicate(&mut self) -> bool {
        // SAFETY: the context is valid for the program's run; mark is
        // writable in TC programs. The mark tags the copy for our own
        // program, which clears it when the copy comes back through.
        unsafe {
            let (mark, ifindex) = ((*self.skb).mark, (*self.skb).ifindex);
            (*self.skb).mark = mark | DUPLICATE_MARK;
            let flags = if self.ingress { BPF_F_INGRESS } else { 0 };
            let r = bpf_clone_redirect(self.skb, ifindex, u64::from(flags));
            (*self.skb).mark = mark;
            r == 0
        }
    }

    fn departure(&self) -> u64 {
        // SAFETY: the context is valid; tstamp is readable in TC programs.
        if self.ingress {
            0
        } else {
            unsafe { (*self.skb).tstamp }
        }
    }

    fn set_departure(&mut self, ns: u64) -> bool {
        // Departure times only mean something to a qdisc (sch_fq) on the
        // way out.
        if self.ingress {
            return false;
        }
        // SAFETY: as above; tstamp is writable at TC egress.
        unsafe { (*self.skb).tstamp = ns };
        true
    }
}

#[inline(always)]
fn run_tc<const HOOK: usize>(ctx: &TcContext, ingress: bool) -> i32 {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: the context is valid for the program's run.
    let mark = unsafe { (*skb).mark };
    if mark & DUPLICATE_MARK != 0 {
        // Our own copy coming back: untag it and let it go.
        // SAFETY: as above; mark is writable in TC programs.
        unsafe { (*skb).mark = mark & !DUPLICATE_MARK };
        return TC_ACT_UNSPEC;
    }
    // The headers may sit partly in paged data: pull them into the linear
    // area first (this moves packet data, so it comes before parsing).
    // SAFETY: the context is valid; data, data_end and len are readable.
    let (linear, len) = unsafe { ((*skb).data_end - (*skb).data, (*skb).len) };
    let want = if len < HEADERS_MAX { len } else { HEADERS_MAX };
    // SAFETY: helper on the program's own context.
    if linear < want && unsafe { bpf_skb_pull_data(skb.cast(), want) } != 0 {
        return TC_ACT_UNSPEC;
    }
    // SAFETY: the context is valid; data and data_end are readable in TC.
    let (data, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    let mut pkt = TcPacket { skb, ingress };
    // A per-interface object: its rule set is this interface's.
    match run_interface::<HOOK, _>(data, end, &mut pkt) {
        Verdict::Drop if ingress => TC_ACT_SHOT,
        Verdict::Drop => silent_drop(),
        Verdict::Pass => TC_ACT_UNSPEC,
    }
}

/// Drops a packet on its way out without telling the sender.
///
/// TC_ACT_SHOT at egress makes dev_queue_xmit() return NET_XMIT_DROP, which
/// UDP reports as ENOBUFS and TCP as local congestion: senders retry at
/// once, and a loss rate turns into a send-error rate (ping, for one,
/// resends until it gets through). A lost packet on a real link is silent,
/// as with netem. A redirect to ifindex 0, which never exists, is freed by
/// skb_do_redirect() after the caller was told NET_XMIT_SUCCESS; it works
/// the same with tcx (which ignores TC_ACT_STOLEN) and with cls_bpf.
#[inline(always)]
fn silent_drop() -> i32 {
    // SAFETY: plain helper; ifindex 0 with no flags always yields
    // TC_ACT_REDIRECT.
    unsafe { bpf_redirect(0, 0) as i32 }
}

#[classifier]
pub fn packet_tc_ingress(ctx: TcContext) -> i32 {
    run_tc::<HOOK_TC_INGRESS>(&ctx, true)
}

#[classifier]
pub fn packet_tc_egress(ctx: TcContext) -> i32 {
    run_tc::<HOOK_TC_EGRESS>(&ctx, false)
}
