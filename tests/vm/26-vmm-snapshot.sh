#!/usr/bin/env bash
# VM templates: husk-vmm boots the real guest (kernel + husk-agent initramfs, with
# virtio-fs, vsock and the balloon, as the shim configures a pod) with `snapshot_to`, and
# exits 0 once the agent said it serves, leaving a sparse snapshot. Two VMs restored from
# it, each with its own virtiofsd and vsock socket, answer the agent API (Check and
# GetGuestDetails through the vsock socket); a VM of another memory size is refused with a
# clear error.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$top/vmm/tests/vm-lib.sh"
vfsd=${HUSK_VIRTIOFSD:-$(command -v virtiofsd || echo "$HOME/.cargo/bin/virtiofsd")}
[ -x "$vfsd" ] || skip "no virtiofsd (cargo install virtiofsd)"
[ -f "$guest/vmlinux" ] && [ -f "$guest/rootfs.cpio" ] || fail "missing $guest/{vmlinux,rootfs.cpio}"
agent=$(first_built husk-agent) || fail "no husk-agent binary: run make"
mkdir -p "$tmp/share"
vfsd_pids=()

# vm_json DIR MEM_MIB EXTRA: a pod-like VM config in DIR/vm.json, with a virtiofsd on it
vm_json() {
  local d=$1 mem=$2 extra=$3
  mkdir -p "$d"
  "$vfsd" --socket-path="$d/vfsd.sock" --shared-dir="$tmp/share" --cache=auto \
    --sandbox=none >"$d/vfsd.log" 2>&1 &
  vfsd_pids+=($!)
  for _ in $(seq 100); do [ -S "$d/vfsd.sock" ] && break; sleep 0.05; done
  [ -S "$d/vfsd.sock" ] || { cat "$d/vfsd.log"; fail "virtiofsd did not start"; }
  cat >"$d/vm.json" <<JSON
{"kernel": "$guest/vmlinux", "initrd": "$guest/rootfs.cpio",
 "cmdline": "console=ttyS0 reboot=k panic=-1 pci=off nomodule page_reporting.page_reporting_order=5",
 "vcpus": 1, "mem_mib": $mem, "serial": {"file": "$d/console.log"},
 "vsock": {"guest_cid": 3, "socket": "$d/vsock.sock"},
 "fs": [{"tag": "husk-shared", "socket": "$d/vfsd.sock"}],
 "free_page_reporting": true $extra}
JSON
}
cleanup() {
  for p in "${vfsd_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# agent_describe SOCK: Check + GetGuestDetails over the vmm's vsock socket (a Unix
# socket bridged to `CONNECT 1024`)
agent_describe() {
  local sock=$1 bridge=$tmp/bridge.$RANDOM
  python3 - "$sock" "$bridge" <<'PY' &
import os, socket, sys, threading
vs, path = sys.argv[1], sys.argv[2]
srv = socket.socket(socket.AF_UNIX); srv.bind(path); srv.listen(1)
c, _ = srv.accept()
g = socket.socket(socket.AF_UNIX); g.connect(vs); g.sendall(b"CONNECT 1024\n")
line = b""
while not line.endswith(b"\n"):
    b = g.recv(1)
    if not b: sys.exit("vsock closed before OK")
    line += b
assert line.startswith(b"OK "), line
def pump(a, b):
    while True:
        d = a.recv(65536)
        if not d: break
        b.sendall(d)
    try: b.shutdown(socket.SHUT_WR)
    except OSError: pass
t = threading.Thread(target=pump, args=(g, c), daemon=True); t.start()
pump(c, g); t.join(5)
PY
  local py=$!
  for _ in $(seq 200); do [ -S "$bridge" ] && break; sleep 0.05; done
  timeout 60 "$agent" ctl --address "unix://$bridge" --timeout 20
  local rc=$?
  kill "$py" 2>/dev/null || true
  return $rc
}

# 1. The template: boots, snapshots when the agent serves, exits 0.
vm_json "$tmp/t" 320 ", \"snapshot_to\": \"$tmp/snap\""
t0=$(date +%s%N)
"$vmm" run --config "$tmp/t/vm.json" >"$tmp/t/vmm.log" 2>&1 && rc=0 || rc=$?
echo "template: exit $rc after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
[ "$rc" = 0 ] || { cat "$tmp/t/vmm.log"; tail -20 "$tmp/t/console.log"; fail "template vmm exit $rc, want 0"; }
grep -q "snapshot written to $tmp/snap" "$tmp/t/vmm.log" || { cat "$tmp/t/vmm.log"; fail "no snapshot line"; }
grep -q 'husk-agent: serving' "$tmp/t/console.log" || fail "the template's agent never served"
[ -s "$tmp/snap/state.json" ] || fail "no state.json"
size=$(stat -c %s "$tmp/snap/ram"); used=$(( $(stat -c %b "$tmp/snap/ram") * 512 ))
echo "template RAM file: $((size >> 20)) MiB long, $((used >> 20)) MiB written"
[ "$size" = $((320 << 20)) ] || fail "RAM file is $size bytes"
[ "$used" -lt $((200 << 20)) ] || fail "RAM file is not sparse ($used bytes allocated)"

# 2. Two VMs restored from it answer the agent API.
for i in 1 2; do
  d=$tmp/r$i
  vm_json "$d" 320 ", \"restore_from\": \"$tmp/snap\""
  t0=$(date +%s%N)
  "$vmm" run --config "$d/vm.json" >"$d/vmm.log" 2>&1 &
  pid=$!
  for _ in $(seq 400); do [ -S "$d/vsock.sock" ] && break; sleep 0.01; done
  out=$(agent_describe "$d/vsock.sock") || { cat "$d/vmm.log"; tail -20 "$d/console.log"; fail "restored VM $i: the agent did not answer"; }
  echo "restored VM $i: $out ($(( ($(date +%s%N) - t0) / 1000000 )) ms from exec, python included)"
  case $out in *serving=true*memory_mib=*) ;; *) fail "unexpected answer: $out" ;; esac
  kill -0 "$pid" || fail "restored vmm $i ended"
  kill -TERM "$pid"; wait "$pid" && rc=0 || rc=$?
  [ "$rc" = 5 ] || { cat "$d/vmm.log"; fail "restored vmm $i: exit $rc after SIGTERM, want 5"; }
  ! grep -qiE 'panic|BUG|Oops' "$d/console.log" || { tail -30 "$d/console.log"; fail "guest kernel complained after the restore"; }
done

# 3. A VM of another size is refused with a clear error, before running anything.
vm_json "$tmp/bad" 256 ", \"restore_from\": \"$tmp/snap\""
"$vmm" run --config "$tmp/bad/vm.json" >"$tmp/bad/vmm.log" 2>&1 && rc=0 || rc=$?
[ "$rc" = 1 ] || { cat "$tmp/bad/vmm.log"; fail "mismatched restore: exit $rc, want 1"; }
tail -1 "$tmp/bad/vmm.log" | grep -q "husk-vmm: error: .*restoring from $tmp/snap: .*" \
  || { cat "$tmp/bad/vmm.log"; fail "mismatched restore: unclear error"; }
echo "mismatched restore refused: $(tail -1 "$tmp/bad/vmm.log")"
echo "snapshot: template made, 2 VMs restored and answering, a mismatch refused"
