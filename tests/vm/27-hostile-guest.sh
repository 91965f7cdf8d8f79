#!/usr/bin/env bash
# The hostile guest (tests/hostile-guest) against husk-vmm on real KVM: catalogue cases 1,
# 2, 3, 4, 5, 6, 7, 9, 14, 16, 38 (guest-driven device attacks), 32 (every vmm thread in
# seccomp mode 2) and 34 (SIGPIPE and the kick signal survived, a fatal signal logged).
# The same checks as vmm/tests/hostile_guest.rs (which runs them on any /dev/kvm, PVM
# included): the vmm runs until the guest's i8042 reset (exit 0, no panic), every round's
# line appears, the guest's health probe passes (blk read of the sector written here, a
# vsock exchange started here), the vmm's anonymous RSS grows by at most 16 MiB, and the
# vmm's threads use at most 5% CPU while the guest halts after its runaway-index kick storm.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$top/vmm/tests/vm-lib.sh"

elf=$top/target/hostile-guest/release/hostile-guest
if [ ! -f "$elf" ] || [ -n "$(find "$top/tests/hostile-guest/src" -newer "$elf" -print -quit)" ]; then
  command -v cargo >/dev/null || fail "no hostile guest ELF and no cargo: run tests/hostile-guest/build.sh"
  elf=$("$top/tests/hostile-guest/build.sh") || fail "building the hostile guest"
fi
elf=$(staged "$elf")

rounds="blk-desc-loop blk-next-oob blk-addr-range blk-huge-len blk-indirect blk-avail-runaway
mmio-regs-blk mmio-regs-vsock mmio-regs-balloon mmio-unclaimed reset-storm-blk
reset-storm-vsock reset-storm-balloon vsock-flood vsock-backlog vsock-bad-packets serial-flood"

# The host's peers: a service that accepts every guest connection and keeps it, one whose
# backlog (4) is full and never accepts, and the vsock health exchange.
cat > "$tmp/host.py" <<'PY'
import os, socket, sys, time
role, path = sys.argv[1], sys.argv[2]
if role in ("accept", "stuck"):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(4 if role == "stuck" else 4096)
    keep, n = [], 0
    while role == "accept":
        c, _ = s.accept()
        keep.append(c)
        n += 1
        with open(sys.argv[3], "w") as f:
            f.write(str(n))
    while True:
        time.sleep(3600)
else:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(30)
    c.connect(path)
    c.sendall(b"CONNECT 1234\n")
    line = b""
    while not line.endswith(b"\n"):
        line += c.recv(1)
    assert line.startswith(b"OK "), line
    c.sendall(b"ping\n")
    got = b""
    while len(got) < 5:
        got += c.recv(5 - len(got))
    assert got == b"pong\n", got
    print("health: pong")
PY

disk=$tmp/disk.img
python3 - "$disk" <<'PY'
import sys
d = bytearray(1 << 20); m = b"husk-hostile-sector0:"; d[:len(m)] = m
for i in range(len(m), 512): d[i] = (i * 7 + 3) & 0xff
open(sys.argv[1], "wb").write(d)
PY

# vm_config FILE [CMDLINE]
vm_config() {
  local cmd=""
  [ -n "${2:-}" ] && cmd="\"cmdline\": \"$2\","
  # HUSK_TEST_VMM_FORCE=1 runs it on a PVM /dev/kvm too (outside the nested test host).
  [ "${HUSK_TEST_VMM_FORCE:-0}" = 1 ] && cmd="$cmd \"force\": true,"
  cat > "$1" <<JSON
{"kernel": "$elf", "mem_mib": 64, $cmd "drives": [{"path": "$disk"}],
 "vsock": {"guest_cid": 3, "socket": "$tmp/v.sock"}, "free_page_reporting": true}
JSON
}
kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null || true; }
ticks() { awk '{ sub(/.*\) /, ""); split($0, f, " "); print f[12] + f[13] }' "$1/stat"; }
# thread_ticks PID: one line per thread, "<name> <utime ticks> <stime ticks>"
thread_ticks() {
  local t
  for t in /proc/"$1"/task/*; do
    echo "$(cat "$t/comm") $(awk '{ sub(/.*\) /, ""); split($0, f, " "); print f[12], f[13] }' "$t/stat")"
  done
}
children=()
cleanup() { for p in "${children[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

python3 "$tmp/host.py" accept "$tmp/v.sock_5000" "$tmp/accepted" & children+=($!)
python3 "$tmp/host.py" stuck "$tmp/v.sock_5001" & children+=($!)
vm_config "$tmp/vm.json"
log=$tmp/serial.log
t0=$(date +%s%N)
run_vmm "$log" --config "$tmp/vm.json"
pid=$VMM_PID
anon0=0 anonmax=0 idle_t0="" idle_k0="" idle_ms=0 idle_cpu_ms=0 health_pid="" seccomp_ok=""
hz=$(getconf CLK_TCK)
while kill -0 "$pid" 2>/dev/null; do
  [ $(( ($(date +%s%N) - t0) / 1000000000 )) -lt 300 ] || { kill -9 "$pid"; show "$log"; fail "guest did not end the VM within 300 s"; }
  if grep -q "hostile: start" "$log" 2>/dev/null; then
    a=$(kib "$pid" RssAnon)
    if [ -n "$a" ]; then
      [ "$anon0" = 0 ] && anon0=$a
      [ "$a" -gt "$anonmax" ] && anonmax=$a
    fi
  fi
  if [ -z "$idle_t0" ] && grep -q "hostile: idle begin" "$log"; then
    # The guest halts until we end the window: sample the vmm over 3 s of it.
    idle_t0=$(date +%s%N) idle_k0=$(ticks "/proc/$pid")
    thread_ticks "$pid" > "$tmp/idle0"
    sleep 3
    idle_cpu_ms=$(( ($(ticks "/proc/$pid") - idle_k0) * 1000 / hz ))
    thread_ticks "$pid" > "$tmp/idle1"
    idle_ms=$(( ($(date +%s%N) - idle_t0) / 1000000 ))
    ! grep -q "hostile: idle end" "$log" || { kill -9 "$pid"; fail "the guest's idle window ended before the host had sampled it"; }
    # End the window: a connection to the guest's idle port (the guest refuses it).
    python3 -c 'import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"CONNECT 999\n"); time.sleep(5)' "$tmp/v.sock" & children+=($!)
    # Case 32, while every thread is up.
    seccomp_ok=yes
    for t in /proc/"$pid"/task/*; do
      m=$(awk '/^Seccomp:/ {print $2}' "$t/status")
      [ "$m" = 2 ] || { seccomp_ok="no: $(cat "$t/comm") has Seccomp $m"; break; }
    done
  fi
  if [ -z "$health_pid" ] && grep -q "hostile: vsock listening" "$log"; then
    python3 "$tmp/host.py" health "$tmp/v.sock" > "$tmp/health.out" 2>&1 & health_pid=$!
  fi
  sleep 0.05
done
set +e; wait "$pid"; rc=$?; set -e
run_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
accepted=$(cat "$tmp/accepted" 2>/dev/null || echo 0)
grep -v '^xxxx' "$log"
# The idle criterion is the vmm's own work: every thread but the vCPU's, and the vCPU
# thread's user time (its run loop). The vCPU thread's system time is KVM holding a halted
# vCPU, which in the nested test host (nested SVM under TCG) is charged hundreds of ms.
idle_threads=$(awk -v hz="$hz" 'NR == FNR { u[$1] = $2; s[$1] = $3; next }
  { printf "%s=%d+%dms ", $1, ($2 - u[$1]) * 1000 / hz, ($3 - s[$1]) * 1000 / hz }' "$tmp/idle0" "$tmp/idle1" 2>/dev/null || true)
idle_own_ms=$(awk -v hz="$hz" 'NR == FNR { u[$1] = $2; s[$1] = $3; next }
  { d = $2 - u[$1]; if ($1 !~ /^vcpu/) d += $3 - s[$1]; t += d } END { print int(t * 1000 / hz) }' "$tmp/idle0" "$tmp/idle1" 2>/dev/null || echo 0)
echo "idle window CPU by thread (user+system): $idle_threads"
echo "figures: run ${run_ms} ms, RssAnon ${anon0} -> max ${anonmax} KiB, idle window ${idle_ms} ms with ${idle_cpu_ms} ms CPU (${idle_own_ms} ms the vmm's own), ${accepted} guest connections accepted, $(wc -l < "$log.err") vmm log lines"
! grep -q panicked "$log.err" || { show "$log"; fail "the vmm panicked"; }
[ "$rc" = 0 ] || { show "$log"; fail "vmm exit $rc before the guest's reset"; }
grep -q "husk-vmm: guest reset" "$log.err" || { show "$log"; fail "no guest reset"; }
for r in $rounds; do
  grep -qx "hostile: round $r done" "$log" || { show "$log"; fail "round $r did not finish"; }
done
grep -qx "hostile: healthy" "$log" || fail "health probe: $(grep -m1 UNHEALTHY "$log" || echo 'no verdict')"
[ -n "$health_pid" ] && wait "$health_pid" && grep -q pong "$tmp/health.out" || fail "vsock health exchange: $(cat "$tmp/health.out" 2>/dev/null)"
[ "$(grep -cxE 'x{100}' "$log")" = 1024 ] || fail "serial flood lines lost"
[ "$accepted" -gt 0 ] && [ "$accepted" -le 1032 ] || fail "$accepted guest connections reached the host (cap 1024)"
[ "$anonmax" -le $((anon0 + 16384)) ] || fail "vmm RssAnon grew from $anon0 to $anonmax KiB"
[ "$idle_ms" -ge 1000 ] || fail "no idle window seen"
[ $((idle_own_ms * 100)) -le $((idle_ms * 5 + 2000)) ] || fail "vmm threads used $idle_own_ms ms CPU in a $idle_ms ms idle window ($idle_threads)"
[ "$(wc -l < "$log.err")" -lt 200 ] || fail "vmm log flood: $(wc -l < "$log.err") lines"
[ "$(stat -c %s "$disk")" = 1048576 ] || fail "the disk grew"
[ "$seccomp_ok" = yes ] || fail "case 32: $seccomp_ok"
echo "cases 1-7, 9, 14, 16, 38: vmm alive, flat and healthy after the hostile guest; case 32: every thread Seccomp 2"
echo "BENCH hostile_guest_run_ms $run_ms ms"
echo "BENCH hostile_guest_idle_cpu_ms $idle_own_ms ms"

# Case 34: SIGPIPE and the kick signal are survived (the guest keeps ticking); SIGBUS is
# logged and ends the vmm with 128 + 7.
vm_config "$tmp/wait.json" "console=ttyS0 hostile.mode=wait"
run_vmm "$tmp/wait.log" --config "$tmp/wait.json"
wait_for_line "$tmp/wait.log" "hostile: tick 1$" 60 || { show "$tmp/wait.log"; fail "waiting guest did not start"; }
rtmin=$(kill -l RTMIN 2>/dev/null || echo 34)
for sig in PIPE "$rtmin"; do
  n=$(grep -c "hostile: tick" "$tmp/wait.log")
  kill -s "$sig" "$VMM_PID" 2>/dev/null || kill -"$sig" "$VMM_PID"
  wait_for_line "$tmp/wait.log" "hostile: tick $((n + 2))$" 20 || { show "$tmp/wait.log"; fail "signal $sig stopped the vmm or its guest"; }
done
kill -BUS "$VMM_PID"
set +e; wait_vmm 10; rc=$?; set -e
[ "$rc" = 135 ] && grep -q "husk-vmm: fatal signal SIGBUS" "$tmp/wait.log.err" || { show "$tmp/wait.log"; fail "SIGBUS: exit $rc"; }
echo "case 34: SIGPIPE and the kick signal survived; SIGBUS logged, exit 135"
