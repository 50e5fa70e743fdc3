#!/usr/bin/env python3
"""A DNS client in two forms, as a VNF resolves names.

dns.py NAME SERVER   resolves NAME (an A record) through the C library's
                     resolver (getaddrinfo, /etc/resolv.conf) and through
                     a query of its own to SERVER:53 over a connected UDP
                     socket, as a stub resolver does. Prints one JSON
                     object: {"getaddrinfo": {"ok": ADDR} or {"error": MSG},
                     "query": {"ok": ADDR} or {"errno": NAME}}.
"""
import errno
import json
import socket
import struct
import sys


def query(name, server):
    q = struct.pack("!HHHHHH", 0x4A4A, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack("!HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        s.connect((server, 53))
        s.send(q)
        reply = s.recv(512)
    except OSError as e:
        return {"errno": errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__}
    # The answer follows the question; a compressed name is 2 bytes.
    at = len(q)
    if struct.unpack("!H", reply[6:8])[0] == 0:
        return {"errno": "NXDOMAIN"}
    rtype, _, _, rdlen = struct.unpack("!HHIH", reply[at + 2:at + 12])
    if rtype != 1 or rdlen != 4:
        return {"errno": f"unexpected answer type {rtype}"}
    return {"ok": socket.inet_ntoa(reply[at + 12:at + 16])}


def system(name):
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
        return {"ok": infos[0][4][0]}
    except socket.gaierror as e:
        return {"error": str(e)}


if __name__ == "__main__":
    name, server = sys.argv[1], sys.argv[2]
    print(json.dumps({"getaddrinfo": system(name), "query": query(name, server)}))
