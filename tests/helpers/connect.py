"""Connects COUNT times and reports the outcome of each connect() call.

usage: connect.py PROTO HOST PORT COUNT
  PROTO: tcp or udp. HOST may be IPv4 or IPv6.
Prints one JSON object: {"ok": n, "errors": {"ECONNREFUSED": n, ...},
"pattern": "..X.."} where pattern has one character per call ('.' for
success, 'X' for failure), capped at 2000 characters.
"""
import errno
import json
import socket
import sys

proto, host, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
ok, errors, pattern = 0, {}, []
for _ in range(count):
    s = None
    try:
        # Inside the try: a socket() that fails (EMFILE) is an outcome too.
        s = socket.socket(family, kind)
        s.settimeout(5)
        s.connect((host, port))
        ok += 1
        if len(pattern) < 2000:
            pattern.append(".")
    except OSError as e:
        name = errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__
        errors[name] = errors.get(name, 0) + 1
        if len(pattern) < 2000:
            pattern.append("X")
    finally:
        if s is not None:
            s.close()
print(json.dumps({"ok": ok, "errors": errors, "pattern": "".join(pattern)}))
