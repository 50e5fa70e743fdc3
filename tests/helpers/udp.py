#!/usr/bin/env python3
"""Numbered UDP datagrams: a paced sender and a counting receiver.

send HOST PORT COUNT PPS   sends COUNT datagrams of 200 bytes: an 8-byte
                           sequence number, then a fixed pattern.
recv PORT IDLE [FIRST]     prints "ready", waits up to FIRST seconds (60)
                           for the first datagram, counts datagrams until IDLE
                           seconds pass without one, then prints JSON:
                           received, changed (payload differs from the
                           pattern), duplicates (sequence seen before),
                           by_source.
"""
import json
import socket
import struct
import sys
import time

PATTERN = bytes(range(192))


def send(host, port, count, pps):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    start = time.monotonic()
    for seq in range(count):
        s.sendto(struct.pack("!Q", seq) + PATTERN, (host, port))
        # Pace in bursts of 100 so the receiver's buffer never overflows.
        if seq % 100 == 99:
            due = start + (seq + 1) / pps
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)


def recv(port, idle, first):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    # SO_RCVBUFFORCE (root) goes past net.core.rmem_max: a slow receiver
    # (a VM under emulation) must not lose datagrams in its own buffer.
    s.setsockopt(socket.SOL_SOCKET, 33, 256 << 20)
    s.bind(("::", port))
    s.settimeout(first)
    print("ready", flush=True)
    received = changed = duplicates = 0
    seen = set()
    by_source = {}
    while True:
        try:
            data, addr = s.recvfrom(4096)
        except socket.timeout:
            break
        received += 1
        s.settimeout(idle)
        src = addr[0].removeprefix("::ffff:")
        by_source[src] = by_source.get(src, 0) + 1
        if len(data) != 8 + len(PATTERN) or data[8:] != PATTERN:
            changed += 1
        seq = data[:8]
        if seq in seen:
            duplicates += 1
        seen.add(seq)
    print(json.dumps({"received": received, "changed": changed,
                      "duplicates": duplicates, "by_source": by_source}))


if __name__ == "__main__":
    if sys.argv[1] == "send":
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        recv(int(sys.argv[2]), float(sys.argv[3]),
             float(sys.argv[4]) if len(sys.argv) > 4 else 60.0)
