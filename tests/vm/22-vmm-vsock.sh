#!/usr/bin/env bash
# virtio-vsock through the host Unix socket: a host-initiated connection (CONNECT 1024 /
# OK <port>) carries 64 MiB to the guest's echo server and 64 MiB back, checked by sha256;
# then the guest connects to host port 5000, which lands on <socket>_5000.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$top/vmm/tests/vm-lib.sh"
[ -f "$guest/vmlinux" ] || fail "missing $guest/vmlinux"
probe_initrd "$tmp/probe.cpio"
sock=$tmp/v.sock

run_vmm "$tmp/vsock.log" --kernel "$guest/vmlinux" --initrd "$tmp/probe.cpio" --vcpus 2 \
  --vsock "cid=3,socket=$sock" \
  --cmdline "console=ttyS0 reboot=k panic=-1 probe=vsock,reboot"
wait_for_line "$tmp/vsock.log" 'probe: vsock listening 1024' 120 || { kill "$VMM_PID"; show "$tmp/vsock.log"; fail "guest never listened"; }
python3 - "$sock" <<'PY' || { kill "$VMM_PID" 2>/dev/null; show "$tmp/vsock.log"; fail "vsock transfer failed"; }
import hashlib, os, socket, sys, threading, time
sock = sys.argv[1]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sock + "_5000")
srv.listen(1)
srv.settimeout(120)
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.settimeout(120)
c.connect(sock)
c.sendall(b"CONNECT 1024\n")
line = b""
while not line.endswith(b"\n"):
    b = c.recv(1)
    if not b:
        sys.exit("connection closed before OK")
    line += b
assert line.startswith(b"OK "), line
print("vsock: host-initiated:", line.decode().strip())
N = 64 << 20
data = os.urandom(N)
t0 = time.monotonic()
def send():
    c.sendall(data)
    c.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send)
t.start()
h, n = hashlib.sha256(), 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    h.update(b)
    n += len(b)
t.join()
dt = time.monotonic() - t0
want = hashlib.sha256(data).hexdigest()
print(f"vsock: sent {N} bytes, echoed back {n} bytes in {dt:.2f} s")
assert n == N and h.hexdigest() == want, "echo differs"
print(f"vsock: sha256 {want[:16]}... matches both ways")
print(f"BENCH vmm_vsock_echo_mib_s {2 * N / dt / (1 << 20):.1f} MiB/s")
g, _ = srv.accept()
g.settimeout(60)
msg = b""
while not msg.endswith(b"\n"):
    b = g.recv(100)
    if not b:
        break
    msg += b
assert msg == b"hello from the guest\n", msg
print("vsock: guest-initiated connection to port 5000:", msg.decode().strip())
PY
set +e; wait_vmm 120; rc=$?; set -e
grep 'probe:' "$tmp/vsock.log"
grep -q 'probe: vsock ok' "$tmp/vsock.log" || { show "$tmp/vsock.log"; fail "guest vsock check failed"; }
[ "$rc" = 0 ] || { show "$tmp/vsock.log"; fail "exit $rc, want 0"; }
