#!/usr/bin/env python3
"""Hand-built IPv4 and IPv6 frames of any IP protocol, through AF_PACKET,
for filters on protocols the kernel may not speak (SCTP, GRE, VRRP, ...:
the host kernel has no SCTP or GRE modules; a raw frame needs neither).

send IFACE DST_MAC FLOWS   FLOWS is a JSON list of
                           {"tag": "vrrp4", "src": "10.99.0.1",
                            "dst": "224.0.0.18", "proto": 112,
                            "sport": 1, "dport": 2, "ext": ["hop", "frag0"],
                            "count": 50}
                           (ports go into the first four bytes past the
                           headers for tcp, udp and sctp; "ext" are IPv6
                           extension headers in order: hop, dst, rt, frag0
                           (first fragment), frag1 (a later one)). Frames go
                           out round robin, each carrying MAGIC + tag.
raw DST PROTO TAG COUNT    sends COUNT datagrams of IP protocol PROTO to
                           DST through a raw IP socket (the kernel writes
                           the IP header: what a VRRP or OSPF daemon does),
                           each carrying MAGIC + TAG.
recv IFACE IDLE [FIRST]    prints "ready", counts frames arriving on IFACE
                           by tag until IDLE seconds pass without one (FIRST
                           for the first, default 20), prints JSON {tag: n}.
"""
import errno
import json
import socket
import struct
import sys
import time

MAGIC = b"INJFRAME"
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
TCP, UDP, SCTP = 6, 17, 132


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def transport(proto, sport, dport, body):
    """A header with the ports where TCP keeps them, then the body."""
    if proto == TCP:
        # SYN, data offset 5; the checksum is not checked before the stack.
        return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 8192, 0, 0) + body
    if proto == UDP:
        return struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body
    if proto == SCTP:
        return struct.pack("!HHII", sport, dport, 0, 0) + body
    return body


def ext_header(kind, nxt):
    """One IPv6 extension header whose next header is nxt: (its own
    number, bytes)."""
    if kind == "hop":  # hop-by-hop, one PadN option filling 8 bytes
        return 0, bytes([nxt, 0, 1, 4, 0, 0, 0, 0])
    if kind == "dst":  # destination options, 16 bytes
        return 60, bytes([nxt, 1, 1, 12]) + bytes(12)
    if kind == "rt":  # segment routing header with one segment, 24 bytes
        return 43, bytes([nxt, 2, 4, 0, 0, 0, 0, 0]) + socket.inet_pton(socket.AF_INET6, "fd99::2")
    if kind in ("frag0", "frag1"):
        offset = 0 if kind == "frag0" else 185  # 185 * 8 bytes further on
        return 44, struct.pack("!BBHI", nxt, 0, (offset << 3) | 1, 7)
    raise ValueError(kind)


def frame(dst_mac, src_mac, flow, seq):
    body = MAGIC + flow["tag"].encode() + b"\0" + struct.pack("!Q", seq) + bytes(32)
    proto = flow["proto"]
    l4 = transport(proto, flow.get("sport", 0), flow.get("dport", 0), body)
    if ":" not in flow["dst"]:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), seq & 0xFFFF, 0, 64, proto, 0,
                          socket.inet_aton(flow["src"]), socket.inet_aton(flow["dst"]))
        hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
        return dst_mac + src_mac + b"\x08\x00" + hdr + l4
    # IPv6: build the extension chain from the inside out.
    nxt, payload = proto, l4
    for kind in reversed(flow.get("ext", [])):
        nxt, hdr = ext_header(kind, nxt)
        payload = hdr + payload
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(payload), nxt, 64,
                      socket.inet_pton(socket.AF_INET6, flow["src"]),
                      socket.inet_pton(socket.AF_INET6, flow["dst"]))
    return dst_mac + src_mac + b"\x86\xdd" + hdr + payload


def send(iface, dst_mac, flows):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    src_mac = s.getsockname()[4]
    dst = bytes.fromhex(dst_mac.replace(":", ""))
    left = {i: f["count"] for i, f in enumerate(flows)}
    seq = 0
    while left:
        for i in list(left):
            s.send(frame(dst, src_mac, flows[i], seq))
            seq += 1
            left[i] -= 1
            if not left[i]:
                del left[i]
        # A short pause now and then: the receiver's buffer must keep up.
        if seq % 200 == 0:
            time.sleep(0.005)


def raw(dst, proto, tag, count):
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(family, socket.SOCK_RAW, proto)
    for seq in range(count):
        try:
            s.sendto(MAGIC + tag.encode() + b"\0" + struct.pack("!Q", seq) + bytes(32), (dst, 0))
        except OSError as e:
            # A drop at cgroup_skb egress reports congestion, which raw
            # sockets (unlike UDP ones) pass on as ENOBUFS.
            if e.errno != errno.ENOBUFS:
                raise
        if seq % 200 == 199:
            time.sleep(0.005)


def recv(iface, idle, first):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
    s.bind((iface, 0))
    s.settimeout(first)
    print("ready", flush=True)
    counts = {}
    while True:
        try:
            data, addr = s.recvfrom(65536)
        except socket.timeout:
            break
        if addr[2] == PACKET_OUTGOING:
            continue
        at = data.find(MAGIC)
        if at < 0:
            continue
        tag = data[at + len(MAGIC):].split(b"\0", 1)[0].decode()
        counts[tag] = counts.get(tag, 0) + 1
        # A test that knows it is done says so: no idle wait that a slow
        # start of its next sender could outlast. Frames of an earlier
        # sender may still wait in another CPU's backlog: a short grace.
        s.settimeout(0.5 if "end" in counts else idle)
    print(json.dumps(counts))


if __name__ == "__main__":
    if sys.argv[1] == "send":
        send(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
    elif sys.argv[1] == "raw":
        raw(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
    else:
        recv(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4 else 20.0)
