#!/usr/bin/env bash
# The shim's containerd features through Debian's containerd 1.6 and real husk VMs:
# read-only and read-write bind mounts, 8 MiB of output checked whole, five pods at once,
# and nothing left running or mounted afterwards. (The process features: 52.)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
shim_vm_require
shim_vm_setup husk-shim-pods sh echo cat true sleep touch
fail() { show_logs; echo "FAIL: $*" >&2; exit 1; }
# HUSK_SHIM_FEATURES="tty oom ...": only those parts (while debugging one)
want() { [ -z "${HUSK_SHIM_FEATURES:-}" ] || [[ " $HUSK_SHIM_FEATURES " == *" $1 "* ]]; }

if want mounts; then
# --- bind mounts: read-only stays read-only, read-write is written through to the host
mkdir -p "$w/vol-ro" "$w/vol-rw"
echo ro-content > "$w/vol-ro/f"
out=$(ctr_run t-mounts --mount "type=bind,src=$w/vol-ro,dst=/ro,options=rbind:ro" \
  --mount "type=bind,src=$w/vol-rw,dst=/rw,options=rbind:rw" \
  /bin/sh -c 'cat /ro/f; touch /ro/new 2>/dev/null && echo ro-writable; echo rw-content > /rw/new && echo rw-ok' </dev/null)
echo "mounts: $(echo $out)"
[ "$out" = "$(printf 'ro-content\nrw-ok')" ] || fail "bind mounts: $out"
[ ! -e "$w/vol-ro/new" ] || fail "the container wrote into the read-only volume"
[ "$(cat "$w/vol-rw/new")" = rw-content ] || fail "the read-write volume's file on the host: $(cat "$w/vol-rw/new" 2>&1)"

fi
if want big; then
# --- 8 MiB of output arrives whole
head -c 8388608 /dev/urandom > "$w/rootfs/big"
want=$(sha256sum < "$w/rootfs/big")
t0=$(date +%s%N)
got=$(ctr_run t-big /bin/cat /big </dev/null | sha256sum) || fail "ctr run of cat /big failed"
echo "8 MiB stdout: $(( ($(date +%s%N) - t0) / 1000000 )) ms"
[ "$got" = "$want" ] || fail "8 MiB of stdout arrived changed ($got, want $want)"

fi
if want pods; then
# --- five pods at once, then nothing left
t0=$(date +%s%N)
pids=()
for i in 1 2 3 4 5; do
  c run -d --runtime io.containerd.husk.v2 --rootfs "$w/rootfs" "p$i" /bin/sleep 1000 </dev/null & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "a ctr run -d of the five pods failed"; done
for i in 1 2 3 4 5; do wait_task_state "p$i" RUNNING 300 || fail "pod p$i not running: $(c task ls)"; done
echo "five pods running after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
n=$(pgrep -fc -- "--config $w/run/" || true)
[ "$n" = 5 ] || fail "five pods run $n vmms"
pids=()
for i in 1 2 3 4 5; do kill_and_delete "p$i" & pids+=($!); done
for p in "${pids[@]}"; do wait "$p" || fail "deleting one of the five pods failed"; done
c task ls | grep -E '^p[1-5] ' && fail "tasks left: $(c task ls)"
fi
assert_nothing_left
echo "shim pods: ro/rw binds, 8 MiB output, five pods at once: ok"
