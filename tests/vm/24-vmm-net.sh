#!/usr/bin/env bash
# virtio-net on a tap: the guest gives eth0 172.30.0.2/24, the host (172.30.0.1 on the
# tap) pings it.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$top/vmm/tests/vm-lib.sh"
[ -c /dev/net/tun ] || skip "no /dev/net/tun"
command -v ip >/dev/null || skip "no ip(8)"
[ -f "$guest/vmlinux" ] || fail "missing $guest/vmlinux"
probe_initrd "$tmp/probe.cpio"
tap=husktap$$
ip tuntap add dev "$tap" mode tap || skip "cannot create a tap (needs root)"
trap 'ip link del "$tap" 2>/dev/null; rm -rf "$tmp"' EXIT
ip addr add 172.30.0.1/24 dev "$tap"
ip link set "$tap" up
run_vmm "$tmp/net.log" --kernel "$guest/vmlinux" --initrd "$tmp/probe.cpio" \
  --net "tap=$tap,mac=06:00:ac:1e:00:02" \
  --cmdline "console=ttyS0 reboot=k panic=-1 probe=net"
wait_for_line "$tmp/net.log" 'probe: net ' 120 || { kill "$VMM_PID" 2>/dev/null || true; show "$tmp/net.log"; fail "guest never configured eth0"; }
grep 'probe: net' "$tmp/net.log"
grep -q 'probe: net up' "$tmp/net.log" || { kill "$VMM_PID" 2>/dev/null || true; show "$tmp/net.log"; fail "guest eth0 set-up failed"; }
# ICMP echo from python (raw socket, root): the nested host has no ping(8).
if ! python3 - <<'PY'
import os, socket, struct, sys, time
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(5)
ok = 0
for seq in range(1, 4):
    payload = b"husk-ping-%d" % seq
    hdr = struct.pack("!BBHHH", 8, 0, 0, os.getpid() & 0xffff, seq)
    pkt = struct.pack("!BBHHH", 8, 0, csum(hdr + payload), os.getpid() & 0xffff, seq) + payload
    t0 = time.monotonic()
    s.sendto(pkt, ("172.30.0.2", 0))
    try:
        while True:
            data, addr = s.recvfrom(2048)
            icmp = data[(data[0] & 0xf) * 4:]
            if addr[0] == "172.30.0.2" and icmp[0] == 0 and icmp[8:] == payload:
                print(f"reply from 172.30.0.2: seq={seq} time={(time.monotonic() - t0) * 1000:.1f} ms")
                ok += 1
                break
    except socket.timeout:
        print(f"seq={seq}: timeout")
sys.exit(0 if ok else 1)
PY
then
  kill "$VMM_PID"; show "$tmp/net.log"; fail "no ping reply from the guest"
fi
kill -TERM "$VMM_PID"
set +e; wait_vmm 30; rc=$?; set -e
[ "$rc" = 5 ] || { show "$tmp/net.log"; fail "exit $rc after SIGTERM, want 5"; }
echo "virtio-net: host pinged the guest over the tap"
