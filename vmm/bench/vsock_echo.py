#!/usr/bin/env python3
"""Sends N MiB through a vsock connection to the guest probe's echo server (port 1024) and
reads it back; prints the echo rate in MiB/s (both directions counted).

  vsock_echo.py unix SOCKET MIB   husk-vmm: its host Unix socket, `CONNECT 1024`
  vsock_echo.py vsock CID MIB     QEMU vhost-vsock: AF_VSOCK straight to the guest CID
"""
import hashlib, os, socket, sys, threading, time

mode, where, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
deadline = time.monotonic() + 120
while True:
    try:
        if mode == "unix":
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.settimeout(120)
            c.connect(where)
            c.sendall(b"CONNECT 1024\n")
            line = b""
            while not line.endswith(b"\n"):
                b = c.recv(1)
                if not b:
                    raise ConnectionError("closed before OK")
                line += b
            if not line.startswith(b"OK "):
                raise ConnectionError(line)
        else:
            c = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            c.settimeout(120)
            c.connect((int(where), 1024))
        break
    except (OSError, ConnectionError):
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
n = mib << 20
data = os.urandom(n)
t0 = time.monotonic()
t = threading.Thread(target=lambda: (c.sendall(data), c.shutdown(socket.SHUT_WR)))
t.start()
h, got = hashlib.sha256(), 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    h.update(b)
    got += len(b)
t.join()
dt = time.monotonic() - t0
if got != n or h.hexdigest() != hashlib.sha256(data).hexdigest():
    sys.exit(f"echo differs: sent {n}, got {got}")
print(f"{2 * n / dt / (1 << 20):.1f}")
