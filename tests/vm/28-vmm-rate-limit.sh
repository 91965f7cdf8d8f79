#!/usr/bin/env bash
# Rate limiters (catalogue case 42): the guest reads then writes its disk with O_DIRECT
# (vmm/examples/guest_probe.rs `blkrate`), once without a limit and once under a 4 MiB/s
# bandwidth bucket, then in 4 KiB requests under a 100 requests/s ops bucket; then it
# sends UDP through a tap (`nettx`), without a limit and under a 64 KiB/s TX bucket (the
# nested test host moves only ~0.4 MiB/s of UDP from a guest to a host socket). The
# guest-timed rates under a limit must lie between 0.5x and 1.3x of it, the unlimited runs
# must be much faster, and while throttled the vmm's event loop must stay low (it waits on
# a timerfd, it does not poll: a polling loop would take a whole CPU). What it does use is
# the I/O it lets through: in the nested test host each of its wakeups costs ~0.7 ms, and
# at 100 requests/s, one at a time, it wakes twice per request (the kick, the timer).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$top/vmm/tests/vm-lib.sh"
[ -f "$guest/vmlinux" ] || fail "missing $guest/vmlinux"
probe_initrd "$tmp/probe.cpio"
img=$tmp/disk.img
truncate -s 64M "$img"
hz=$(getconf CLK_TCK)

# cpu_ticks PID [COMM]: utime+stime of the process, or of its thread named COMM.
cpu_ticks() {
  local f t
  if [ -z "${2:-}" ]; then
    f=/proc/$1/stat
  else
    for t in /proc/"$1"/task/*; do
      [ "$(cat "$t/comm" 2>/dev/null)" = "$2" ] && { f=$t/stat; break; }
    done
  fi
  # Fields 14 and 15, counted after the ")" that ends the command name.
  [ -n "${f:-}" ] || { echo "no thread $2 in $1" >&2; return 1; }
  sed 's/.*) //' "$f" | awk '{ print $12 + $13 }'
}

# sample PID: sets TICKS (the vmm's CPU ticks), LOOP_TICKS (its event loop's) and NOW_NS.
sample() {
  TICKS=$(cpu_ticks "$1") && LOOP_TICKS=$(cpu_ticks "$1" events) || return 1
  NOW_NS=$(date +%s%N)
}
pct() { awk -v d="$1" -v hz="$hz" -v ns="$2" 'BEGIN { printf "%.1f", 100 * d / hz / (ns / 1e9) }'; }

# run NAME CHECK CMDLINE_EXTRA [VMM ARGS...]: one boot with probe=CHECK (blkrate or
# nettx); sets RESULT to the probe's result line, and CPU_PCT / LOOP_PCT to the vmm's and
# its event loop's CPU share of wall time during the transfer (the guest waits 2 s after
# it, so the vmm is still there to be sampled).
run() {
  local name=$1 check=$2 extra=$3 log=$tmp/$1.log p0 l0 t0 rc; shift 3
  run_vmm "$log" --kernel "$guest/vmlinux" --initrd "$tmp/probe.cpio" "$@" \
    --cmdline "console=ttyS0 reboot=k panic=-1 probe=$check,sleep,reboot $extra"
  wait_for_line "$log" "probe: $check (start|FAILED)" 300 || { kill -9 "$VMM_PID" 2>/dev/null; show "$log"; fail "$name: the guest never started"; }
  sample "$VMM_PID" || { show "$log"; fail "$name: cannot sample the vmm"; }
  p0=$TICKS l0=$LOOP_TICKS t0=$NOW_NS
  wait_for_line "$log" "probe: $check [a-zA-Z_]+=|probe: $check FAILED" 300 || { kill -9 "$VMM_PID" 2>/dev/null; show "$log"; fail "$name: no result within 300 s"; }
  sample "$VMM_PID" || { show "$log"; fail "$name: the vmm ended before its result was sampled"; }
  set +e; wait_vmm 120; rc=$?; set -e
  RESULT=$(grep -E "probe: $check ([a-zA-Z_]+=|FAILED)" "$log" | head -1)
  case $RESULT in *FAILED*|"") show "$log"; fail "$name: $RESULT" ;; esac
  [ "$rc" = 0 ] || { show "$log"; fail "$name: exit $rc, want 0"; }
  CPU_PCT=$(pct $((TICKS - p0)) $((NOW_NS - t0)))
  LOOP_PCT=$(pct $((LOOP_TICKS - l0)) $((NOW_NS - t0)))
  echo "$name: ${RESULT#probe: $check } vmm_cpu=${CPU_PCT}% event_loop_cpu=${LOOP_PCT}%"
}
field() { echo "$RESULT" | grep -oE "$1=[0-9.]+" | cut -d= -f2; }
# within VALUE LIMIT WHAT: 0.5 x LIMIT < VALUE <= 1.3 x LIMIT
within() {
  awk -v v="$1" -v l="$2" 'BEGIN { exit !(v > 0.5 * l && v <= 1.3 * l) }' || fail "$3 $1, want within (0.5, 1.3] x $2"
  echo "rate-limit: $3 $1 is within (0.5, 1.3] x $2"
}

limit_mib=4
# The unlimited run first: it also shows the image and the probe work.
run unlimited blkrate "blkrate_mib=32" --drive "path=$img"
free_read=$(field read_mib_s) free_write=$(field write_mib_s)

# 4 MiB/s as a 1 MiB bucket refilled every 250 ms: the bucket the run starts with is a
# quarter of a second's worth, so the measured rate over 32 MiB is close to the limit.
cat > "$tmp/bw.json" <<JSON
{"drives": [{"path": "$img",
  "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time_ms": 250}}}]}
JSON
run bandwidth blkrate "blkrate_mib=32" --config "$tmp/bw.json"
within "$(field read_mib_s)" "$limit_mib" "limited read MiB/s"
within "$(field write_mib_s)" "$limit_mib" "limited write MiB/s"
bw_loop=$LOOP_PCT bw_cpu=$CPU_PCT
awk -v f="$free_read" -v l="$limit_mib" 'BEGIN { exit !(f >= 3 * l) }' ||
  fail "unlimited read $free_read MiB/s is not much faster than the ${limit_mib} MiB/s limit"
awk -v f="$free_write" -v l="$limit_mib" 'BEGIN { exit !(f >= 3 * l) }' ||
  fail "unlimited write $free_write MiB/s is not much faster than the ${limit_mib} MiB/s limit"
echo "rate-limit: unlimited read $free_read, write $free_write MiB/s (limit $limit_mib)"
# Throttled, the event loop sleeps on its timerfd between refills.
awk -v p="$bw_loop" 'BEGIN { exit !(p <= 25) }' || fail "event loop at ${bw_loop}% CPU while throttled"
echo "rate-limit: while throttled the vmm used ${bw_cpu}% CPU, its event loop ${bw_loop}%"

# 100 requests/s (a bucket of 10 refilled every 100 ms), 4 KiB requests: 256 each way.
cat > "$tmp/ops.json" <<JSON
{"drives": [{"path": "$img",
  "rate_limiter": {"ops": {"size": 10, "refill_time_ms": 100}}}]}
JSON
run ops blkrate "blkrate_mib=1 blkrate_req_kib=4" --config "$tmp/ops.json"
within "$(field read_ops_s)" 100 "limited read requests/s"
within "$(field write_ops_s)" 100 "limited write requests/s"
awk -v p="$LOOP_PCT" 'BEGIN { exit !(p <= 25) }' || fail "event loop at ${LOOP_PCT}% CPU while throttled"
echo "rate-limit: disk bandwidth and requests held to their buckets"

# virtio-net TX: 1 MiB of UDP from the guest to the host over a tap (as 24-vmm-net.sh).
if [ ! -c /dev/net/tun ] || ! command -v ip >/dev/null; then
  echo "rate-limit: no /dev/net/tun or ip(8): net TX not measured (unit tests cover it)"
  exit 0
fi
tap=huskrl$$
ip tuntap add dev "$tap" mode tap || fail "cannot create a tap"
trap 'ip link del "$tap" 2>/dev/null; rm -rf "$tmp"' EXIT
ip addr add 172.30.0.1/24 dev "$tap"
ip link set "$tap" up
# recv_udp OUT: counts what arrives on 172.30.0.1:5001 until 3 s pass without a datagram.
recv_udp() {
  python3 - "$1" <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind(("172.30.0.1", 5001))
s.settimeout(240)
n = 0
first = last = None
while True:
    try:
        b = s.recv(65536)
    except socket.timeout:
        break
    s.settimeout(3)
    if len(b) < 100:
        continue
    last = time.monotonic()
    first = first or last
    n += len(b)
open(sys.argv[1], "w").write("%d %.3f\n" % (n, (last - first) if first else 0))
PY
  RECV_PID=$!
}
net_run() {
  local name=$1; shift
  recv_udp "$tmp/$name.recv"
  run "$name" nettx "nettx_mib=1" "$@"
  wait "$RECV_PID" || fail "$name: the host receiver failed"
  read -r RECV_BYTES RECV_SECS < "$tmp/$name.recv"
  echo "$name: the host received $RECV_BYTES bytes in $RECV_SECS s"
}
net_run net-unlimited --net "tap=$tap,mac=06:00:ac:1e:00:02"
free_tx=$(field mib_s)
# 64 KiB/s: a 16 KiB bucket refilled every 250 ms.
net_limit_mib=0.0625
cat > "$tmp/net.json" <<JSON
{"net": [{"tap": "$tap", "mac": "06:00:ac:1e:00:02",
  "tx_rate_limiter": {"bandwidth": {"size": 16384, "refill_time_ms": 250}}}]}
JSON
net_run net-tx-limited --config "$tmp/net.json"
# The limiter counts whole frames (a 1400-byte payload is a 1454-byte frame with its
# virtio-net header), the guest its payload.
within "$(field mib_s)" "$net_limit_mib" "limited TX MiB/s"
# The guest's clock stops when its last datagram is queued; the host's when it arrives.
host_tx=$(awk -v b="$RECV_BYTES" -v t="$RECV_SECS" 'BEGIN { printf "%.4f", b / 1048576 / (t > 0 ? t : 1e-6) }')
within "$host_tx" "$net_limit_mib" "limited TX MiB/s received by the host"
awk -v p="$LOOP_PCT" 'BEGIN { exit !(p <= 25) }' || fail "event loop at ${LOOP_PCT}% CPU while TX was throttled"
# Throttling drops nothing: what the guest sent arrived (a little slack for the host).
awk -v r="$RECV_BYTES" 'BEGIN { exit !(r >= 0.98 * 1048576) }' || fail "the host got $RECV_BYTES of 1 MiB"
awk -v f="$free_tx" -v l="$net_limit_mib" 'BEGIN { exit !(f >= 3 * l) }' ||
  fail "unlimited TX $free_tx MiB/s is not much faster than the ${net_limit_mib} MiB/s limit"
echo "rate-limit: TX held to its bucket (unlimited $free_tx MiB/s), nothing dropped"
