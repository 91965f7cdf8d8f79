#!/usr/bin/env bash
# Host -> pod network throughput, husk vs runc vs gVisor (runsc) in the same run (issues 6,
# 15): containerd's CRI with the CNI bridge runs one pod per runtime (runsc as the runtime
# handler `runsc`: containerd's runc shim with BinaryName runsc, see bench-lib.sh); inside each, an HTTP GET made with busybox
# nc fetches a file from an httpd on the host bridge address (data flows host -> pod over
# the pod's network) and busybox `time` measures it in the pod. Each runtime is measured NET_BENCH_RUNS times
# (default 3), the best kept.
#   BENCH net_throughput_ratio_vs_runc <husk MB/s / runc MB/s> ratio
#   BENCH net_throughput_ratio_vs_runsc <husk MB/s / runsc MB/s> ratio
#   BENCH net_throughput_husk_mbps / net_throughput_runc_mbps / net_throughput_runsc_mbps <MB/s> MB/s
# runsc's pod uses its default network (netstack, `--network=sandbox`, on the pod's veth).
# If runsc cannot run here: BENCH-SKIP lines with the reason (never a silent skip).
set -euo pipefail
top=$(cd "$(dirname "$0")/../../.." && pwd)
# The vmm is on the data path: use the release build `make bench` makes, when there is one.
if [ -z "${HUSK_VMM:-}" ] && [ -x "$top/target/release/husk-vmm" ]; then
  export HUSK_VMM=$top/target/release/husk-vmm
fi
. "$top/tests/vm/lib.sh"
. "$top/tests/vm/cri-lib.sh"
. "$top/tests/bench/vm/bench-lib.sh"
# The runtime handler `runsc` next to cri-lib's husk and runc: its table goes into the
# config start_containerd_cri writes, before the CNI table. Its binary is a wrapper
# (runsc_cri_bin, bench-lib.sh) without which the pod's container never starts.
runsc_table="    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runsc]\\
      runtime_type = \"io.containerd.runc.v2\"\\
      [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runsc.options]\\
        BinaryName = \"$(runsc_cri_bin "$w")\"\\
        Root = \"$RUNSC_ROOT\""
patched=$(declare -f start_containerd_cri | sed "/^  \[plugins.\"io.containerd.grpc.v1.cri\".cni\]/i\\
$runsc_table")
grep -q 'runtimes.runsc.options' <<<"$patched" || fail "could not add the runsc handler to start_containerd_cri (cri-lib.sh changed?)"
eval "$patched"
mib=${NET_BENCH_MIB:-64}
runs=${NET_BENCH_RUNS:-3}

start_containerd_cri >&2 || fail "containerd with CRI"
cri_import >&2
mkdir -p "$w/www"
dd if=/dev/urandom of="$w/www/big" bs=1M count="$mib" status=none
# On every address: the bridge (and its address) only exists once the first pod is up.
busybox httpd -f -p 8099 -h "$w/www" & echo $! > "$w/hosthttpd.pid"

# mbps HANDLER: best MB/s of $runs fetches in a pod of that runtime
mbps() {
  local h=$1 pod c best=0 i out secs rate got
  pod=$(cri pod-run "bench-$h" --handler "$h") || fail "RunPodSandbox ($h)"
  cri_track "$pod"
  c=$(cri ctr-run "$pod" "bench-$h" c "$CRI_IMAGE" -- sleep 100000) || fail "container ($h)"
  for i in $(seq "$runs"); do
    # busybox time prints "real 0m 1.23s" on stderr
    out=$(CRI_TIMEOUT=400 cri exec --timeout 300 "$c" sh -c \
      "time sh -c 'printf \"GET /big HTTP/1.0\\r\\n\\r\\n\" | nc $CRI_SUBNET_PREFIX.1 8099 | wc -c'" 2>&1) \
      || fail "fetch in the $h pod: $out"
    got=$(echo "$out" | awk 'NR == 1 {print $1}')
    [[ "$got" =~ ^[0-9]+$ ]] && [ "$got" -gt $((mib * 1048576)) ] || fail "the $h pod got ${got:-no} bytes of $mib MiB: $out"
    secs=$(echo "$out" | awk '/^real/ {sub(/s$/, "", $3); split($2, m, "m"); print m[1] * 60 + $3}')
    [ -n "$secs" ] || fail "no timing from the $h pod: $out"
    rate=$(awk -v m="$mib" -v s="$secs" 'BEGIN { if (s <= 0) s = 0.01; printf "%.1f", m / s }')
    echo "net bench: $h run $i: $mib MiB in ${secs}s = $rate MB/s" >&2
    best=$(awk -v a="$best" -v b="$rate" 'BEGIN { print (b > a) ? b : a }')
  done
  cri pod-rm "$pod" >&2 || true
  echo "$best"
}
echo "net bench: vmm $vmm" >&2
grep -A4 'runtimes.runsc\]' "$w/containerd.toml" >&2
runc_mbps=$(mbps runc)
husk_mbps=$(mbps husk)
# runsc: its failure is reported, not fatal (mbps runs in a subshell; its stderr is kept
# for the reason)
runsc_mbps=
if [ ! -x "$RUNSC" ]; then
  runsc_why="no $RUNSC (apt-get install runsc)"
elif out=$(mbps runsc 2>"$w/runsc.err"); then
  cat "$w/runsc.err" >&2
  runsc_mbps=$(tail -1 <<<"$out")
else
  # what fail printed (cri_show_logs writes to stdout, which mbps's caller captures)
  cat "$w/runsc.err" >&2
  echo "$out" >&2
  runsc_why="runsc pod: $(one_line "$(grep '^FAIL: ' "$w/runsc.err" | tail -1)")"
fi
# The runc shim leaves the gofer of a runsc pod's second container running after the pod
# is removed (seen in the nested test host: a runsc-gofer under /run/containerd/runsc/k8s.io
# outlived `pod-rm`, and 70-density, next in the same test host, found it): say so and stop
# it, so the benchmarks after this one start clean.
for _ in $(seq 50); do pgrep -f "$RUNSC_ROOT/k8s.io" >/dev/null || break; sleep 0.1; done
if left=$(pgrep -af "$RUNSC_ROOT/k8s.io"); then
  echo "net bench: runsc processes left after their pod was removed, killed now: $left" >&2
  # shellcheck disable=SC2046
  kill -9 $(pgrep -f "$RUNSC_ROOT/k8s.io") 2>/dev/null || true
fi
ratio() { awk -v h="$1" -v r="$2" 'BEGIN { printf "%.2f", (r > 0) ? h / r : 0 }'; }
echo "BENCH net_throughput_runc_mbps $runc_mbps MB/s"
echo "BENCH net_throughput_husk_mbps $husk_mbps MB/s"
echo "BENCH net_throughput_ratio_vs_runc $(ratio "$husk_mbps" "$runc_mbps") ratio"
if [ -n "$runsc_mbps" ]; then
  echo "BENCH net_throughput_runsc_mbps $runsc_mbps MB/s"
  echo "BENCH net_throughput_ratio_vs_runsc $(ratio "$husk_mbps" "$runsc_mbps") ratio"
else
  bench_skip "$runsc_why" net_throughput_runsc_mbps net_throughput_ratio_vs_runsc
fi
