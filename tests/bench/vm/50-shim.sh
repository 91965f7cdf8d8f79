#!/usr/bin/env bash
# The shim's figures, through Debian's containerd 1.6 (inside the nested test host, or on
# hardware KVM), release builds of the shim and the vmm:
#   BENCH ctr_run_husk_ms / ctr_run_runc_ms / ctr_run_ratio_vs_runc: `ctr run --rm` of a
#     busybox `true`, husk and runc alternated in the same run, medians of $ROUNDS (5)
#   BENCH pod_idle_host_mib: an idle one-container pod's host memory: the shim, husk-vmm
#     and virtiofsd (VmRSS of each without its guest RAM mapping) plus the guest memory
#     touched, counted once (the guest RAM file is shared by the vmm and virtiofsd: the
#     larger of their guest RAM mappings' RSS)
#   BENCH shim_rss_mib: the shim's VmRSS in that idle pod
#   BENCH ctr_run_husk_first_ms: the warm-up husk run, which makes the VM template of
#     that pod shape (a boot and a snapshot) before restoring from it
#   BENCH vm_template_mib: the host memory the templates hold (their files in tmpfs), once
#     per VM shape, shared by every pod of that shape and in no pod's figure above
set -euo pipefail
top=$(cd "$(dirname "$0")/../../.." && pwd)
. "$top/tests/vm/lib.sh"
rel=${CARGO_TARGET_DIR:-$top/target}/release
HUSK_SHIM=${HUSK_SHIM:-$rel/containerd-shim-husk-v2}
HUSK_VMM=${HUSK_VMM:-$rel/husk-vmm}
[ -x "$HUSK_SHIM" ] && [ -x "$HUSK_VMM" ] || fail "no release shim/vmm: cargo build --release -p containerd-shim-husk-v2 -p husk-vmm"
export HUSK_SHIM HUSK_VMM
ROUNDS=${ROUNDS:-5}
shim_vm_require
HUSK_TEST_DEBUG_CONSOLE=false HUSK_TEST_LOG_LEVEL=info shim_vm_setup husk-bench-shim true sleep
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
run_true() { # run_true RUNTIME ID
  c run --rm --runtime "$1" --rootfs "$w/rootfs" "$2" /bin/true </dev/null >/dev/null
}

# --- ctr run --rm true: husk vs runc, alternated after one warm-up run of each
run_true io.containerd.runc.v2 warm-runc || fail "runc run failed"
t0=$(date +%s%N)
run_true io.containerd.husk.v2 warm-husk || fail "husk run failed"
first=$(ms "$t0")
grep -E 'template .* made|restored from template|cold-booted' "$w/containerd.log" | cut -c1-200 >&2 || true
h=() r=()
for i in $(seq "$ROUNDS"); do
  t0=$(date +%s%N); run_true io.containerd.runc.v2 "runc-$i" || fail "runc run $i failed"; r+=("$(ms "$t0")")
  t0=$(date +%s%N); run_true io.containerd.husk.v2 "husk-$i" || fail "husk run $i failed"; h+=("$(ms "$t0")")
  echo "round $i: runc ${r[-1]} ms, husk ${h[-1]} ms" >&2
done
# A husk run far above the others: say whether its pod needed a second boot.
echo "husk pods booted twice: $(grep -c 'booting it again' "$w/containerd.log")" >&2
grep -E 'the agent answered|boot attempt 2|level=error' "$w/containerd.log" | cut -c1-200 >&2 || true
hm=$(printf '%s\n' "${h[@]}" | median)
rm_=$(printf '%s\n' "${r[@]}" | median)
echo "BENCH ctr_run_husk_ms $hm ms"
echo "BENCH ctr_run_runc_ms $rm_ ms"
echo "BENCH ctr_run_ratio_vs_runc $(awk -v h="$hm" -v r="$rm_" 'BEGIN {printf "%.2f", h / r}') x"
echo "BENCH ctr_run_husk_first_ms $first ms"
tdir=$(awk -F'"' '/^template_dir/ {print $2}' "$w/husk.toml" 2>/dev/null || true)
if [ -n "$tdir" ] && [ -d "$tdir" ]; then
  echo "BENCH vm_template_mib $(du -sk "$tdir" | awk '{printf "%.1f", $1 / 1024}') MiB"
fi

# --- an idle pod's host memory
c run -d --runtime io.containerd.husk.v2 --rootfs "$w/rootfs" idle /bin/sleep 100000 </dev/null
wait_task_state idle RUNNING 300 || fail "the idle pod never ran"
sleep "${IDLE_SECS:-10}"
vmm_pid=$(cut -d' ' -f1 "$w/run/idle/vmm.pid")
fsd_pid=$(cut -d' ' -f1 "$w/run/idle/virtiofsd.pid")
shim_pid=$(awk '/^PPid/ {print $2}' "/proc/$vmm_pid/status")
grep -q containerd-shim-husk-v2 "/proc/$shim_pid/cmdline" || fail "the vmm's parent $shim_pid is not the shim"
kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
total=0 ram=0
for p in "$shim_pid" "$vmm_pid" "$fsd_pid"; do
  r=$(kib "$p" VmRSS) g=$(guest_ram_kib "$p")
  echo "pid $p $(tr -d '\0' < "/proc/$p/comm"): VmRSS $r KiB (RssAnon $(kib "$p" RssAnon), RssFile $(kib "$p" RssFile), RssShmem $(kib "$p" RssShmem)), guest RAM $g KiB, Pss $(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup") KiB" >&2
  total=$((total + r - g))
  [ "$g" -gt "$ram" ] && ram=$g
done
echo "BENCH pod_idle_host_mib $(awk -v k=$((total + ram)) 'BEGIN {printf "%.1f", k / 1024}') MiB"
echo "BENCH shim_rss_mib $(awk -v k="$(kib "$shim_pid" VmRSS)" 'BEGIN {printf "%.1f", k / 1024}') MiB"
kill_and_delete idle
assert_nothing_left
