//! Header parsing over a packet's linear bytes, with the bounds checks the
//! verifier needs before every read. No open loops: one VLAN tag, and at
//! most [`IPV6_EXT_STEPS`] IPv6 extension headers, each a fixed step.

use core::mem::size_of;

use injector_common::packet::{
    IPV6_DSTOPTS, IPV6_EXT_STEPS, IPV6_FRAGMENT, IPV6_HOPOPTS, IPV6_ROUTING, PROTO_ICMP,
    PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// What the rules match on, and where the corruptible regions start.
/// Offsets are from the start of the packet data the program sees.
pub struct Flow {
    pub proto: u8,
    pub ipv4: bool,
    pub sport: u16,
    pub dport: u16,
    /// Addresses as IPv6 in network-order words, IPv4 mapped to
    /// `::ffff:a.b.c.d`.
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Offset of the IP header.
    pub l3: u32,
    /// Offset of the transport header.
    pub l4: u32,
    /// Offset of the transport payload (the end of all headers).
    pub payload: u32,
    /// Offset of the transport checksum field, 0 if there is none (or it
    /// is not in the first fragment).
    pub csum: u32,
}

/// A pointer to a `T` at `off`, if the packet is long enough.
#[inline(always)]
fn ptr_at<T>(data: usize, end: usize, off: usize) -> Option<*const T> {
    let start = data + off;
    if start + size_of::<T>() > end {
        return None;
    }
    Some(start as *const T)
}

#[inline(always)]
fn byte(data: usize, end: usize, off: usize) -> Option<u8> {
    // SAFETY: ptr_at checked that the byte lies inside the packet.
    ptr_at::<u8>(data, end, off).map(|p| unsafe { *p })
}

#[inline(always)]
fn be16(data: usize, end: usize, off: usize) -> Option<u16> {
    // SAFETY: as in `byte`; packet data has no alignment guarantee.
    ptr_at::<u16>(data, end, off).map(|p| u16::from_be(unsafe { p.read_unaligned() }))
}

#[inline(always)]
fn be32(data: usize, end: usize, off: usize) -> Option<u32> {
    // SAFETY: as in `byte`; packet data has no alignment guarantee.
    ptr_at::<u32>(data, end, off).map(|p| u32::from_be(unsafe { p.read_unaligned() }))
}

/// Copies `N` 32-bit words (network order, as in the packet) into `out`.
#[inline(always)]
fn words<const N: usize>(data: usize, end: usize, off: usize, out: &mut [u32; 4]) -> bool {
    let Some(p) = ptr_at::<[u32; N]>(data, end, off) else {
        return false;
    };
    let p = p.cast::<u32>();
    for (i, word) in out.iter_mut().enumerate().skip(4 - N) {
        // SAFETY: ptr_at checked all N words; unaligned reads.
        *word = unsafe { p.add(i + N - 4).read_unaligned() };
    }
    true
}

/// `::ffff:0:0` in network-order words, the prefix of IPv4-mapped addresses.
const V4_MAPPED: u32 = u32::from_be(0x0000_ffff);

/// Whether a frame that starts with an Ethernet header carries IPv4 or
/// IPv6 (behind at most one VLAN tag, as [`ethernet`] reads it).
#[inline(always)]
pub fn is_ip(data: usize, end: usize) -> bool {
    let Some(mut ethertype) = be16(data, end, 12) else {
        return false;
    };
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(inner) = be16(data, end, 16) else {
            return false;
        };
        ethertype = inner;
    }
    ethertype == ETH_P_IP || ethertype == ETH_P_IPV6
}

/// Parses a frame that starts with an Ethernet header (XDP, TC).
#[inline(always)]
pub fn ethernet(data: usize, end: usize) -> Option<Flow> {
    let mut ethertype = be16(data, end, 12)?;
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = be16(data, end, 16)?;
        l3 += 4;
    }
    ip(data, end, l3, ethertype)
}

/// Parses a packet that starts with its IP header (cgroup_skb); `ethertype`
/// is `skb->protocol` in host order. `None` if the packet is not IP or is
/// too short. Built from locals in one go: a `Default` first would cost a
/// memset call per packet.
#[inline(always)]
pub fn ip(data: usize, end: usize, l3: usize, ethertype: u16) -> Option<Flow> {
    let mut src = [0, 0, V4_MAPPED, 0];
    let mut dst = [0, 0, V4_MAPPED, 0];
    let (proto, ipv4, l4, first_fragment) = match ethertype {
        ETH_P_IP => {
            let ihl = usize::from(byte(data, end, l3)? & 0x0f) * 4;
            let frag = be16(data, end, l3 + 6)?;
            let proto = byte(data, end, l3 + 9)?;
            if ihl < 20
                || !words::<1>(data, end, l3 + 12, &mut src)
                || !words::<1>(data, end, l3 + 16, &mut dst)
            {
                return None;
            }
            (proto, true, l3 + ihl, frag & 0x1fff == 0)
        }
        ETH_P_IPV6 => {
            let next = byte(data, end, l3 + 6)?;
            if !words::<4>(data, end, l3 + 8, &mut src) || !words::<4>(data, end, l3 + 24, &mut dst)
            {
                return None;
            }
            let (proto, l4, first_fragment) = ipv6_extensions(data, end, next, l3 + 40);
            (proto, false, l4, first_fragment)
        }
        _ => return None,
    };
    let (mut sport, mut dport, mut payload, mut csum) = (0, 0, l4, 0);
    // Later fragments carry no transport header: no ports, and all of it
    // is payload.
    if first_fragment {
        match proto {
            PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
                if let (Some(s), Some(d)) = (be16(data, end, l4), be16(data, end, l4 + 2)) {
                    sport = s;
                    dport = d;
                    if proto == PROTO_UDP {
                        payload = l4 + 8;
                        csum = l4 + 6;
                    } else if proto == PROTO_SCTP {
                        // The common header; the chunks are the payload.
                        // Its checksum is a CRC32c, which no incremental
                        // update can fix: `csum` stays 0.
                        payload = l4 + 12;
                    } else if let Some(doff) = byte(data, end, l4 + 12) {
                        payload = l4 + usize::from(doff >> 4) * 4;
                        csum = l4 + 16;
                    }
                }
            }
            PROTO_ICMP | PROTO_ICMPV6 => {
                payload = l4 + 8;
                csum = l4 + 2;
            }
            _ => {}
        }
    }
    Some(Flow {
        proto,
        ipv4,
        sport,
        dport,
        src,
        dst,
        l3: l3 as u32,
        l4: l4 as u32,
        payload: payload as u32,
        csum: csum as u32,
    })
}

/// Walks past the IPv6 extension headers that sit between the fixed header
/// and the upper-layer protocol (hop-by-hop, routing, fragment, destination
/// options), at most [`IPV6_EXT_STEPS`] of them, each in one fixed step.
/// `next` is the fixed header's next header, `off` where it points.
/// Returns the protocol, the offset of its header and whether this is the
/// first fragment (or no fragment).
///
/// AH, ESP, mobility, HIP and shim6 are not walked past: they are the
/// protocol the rules see. A chain longer than the steps, or one that
/// runs past the packet's linear bytes, stops the walk where it is: the
/// protocol then reads as that extension header, which no rule but `any`
/// names (the daemon refuses them).
#[inline(always)]
fn ipv6_extensions(data: usize, end: usize, mut next: u8, mut off: usize) -> (u8, usize, bool) {
    let mut first_fragment = true;
    for _ in 0..IPV6_EXT_STEPS {
        if !matches!(
            next,
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_FRAGMENT
        ) {
            break;
        }
        // Every extension header is at least 8 bytes and starts with its
        // next header. Options and routing headers then give their length
        // in 8-byte units beyond the first eight; a fragment header is 8
        // bytes with the offset (8-byte units) in the top 13 bits of bytes
        // 2-3. One read of the first four bytes: with two, the compiler
        // drops the second bounds check as implied by the first, and the
        // verifier, which tracks each pointer apart, refuses the access.
        let Some(head) = be32(data, end, off) else {
            break;
        };
        let len = if next == IPV6_FRAGMENT {
            first_fragment = head & 0xfff8 == 0;
            8
        } else {
            (((head >> 16) & 0xff) as usize + 1) * 8
        };
        next = (head >> 24) as u8;
        off += len;
    }
    (next, off, first_fragment)
}
