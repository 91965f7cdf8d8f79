#!/usr/bin/env bash
# The shim's figures, through Debian's containerd 1.6 (inside the nested test host, or on
# hardware KVM), release builds of the shim and the vmm, with runc and gVisor (runsc,
# through containerd's runc shim: see bench-lib.sh) as peers in the same run, same busybox
# rootfs, same command:
#   BENCH ctr_run_husk_ms / ctr_run_runc_ms / ctr_run_runsc_ms: `ctr run --rm` of a
#     busybox `true`, runc, runsc and husk alternated in the same run, medians of $ROUNDS (5)
#   BENCH ctr_run_ratio_vs_runc / ctr_run_ratio_vs_runsc: husk's median / the peer's
#   BENCH pod_idle_host_mib / pod_idle_host_mib_runsc / pod_idle_host_mib_runc: an idle
#     one-container pod's host memory, PSS summed over the pod's shim and every process
#     under it (husk: husk-vmm with the guest RAM it maps, virtiofsd; runsc: the runsc
#     sandbox (`runsc boot` and its ptrace stubs) and gofer; runc: the container's
#     process). PSS counts the guest RAM file, mapped by both husk-vmm and virtiofsd, once
#     (see bench-lib.sh).
#   BENCH shim_rss_mib: the husk shim's VmRSS in that idle pod
#   BENCH ctr_run_husk_first_ms: the warm-up husk run, which makes the VM template of
#     that pod shape (a boot and a snapshot) before restoring from it
#   BENCH vm_template_mib: the host memory the templates hold (their files in tmpfs), once
#     per VM shape, shared by every pod of that shape and in no pod's figure above
# A peer that cannot run here gets `BENCH-SKIP <name> <reason>` lines, the error on stderr.
set -euo pipefail
top=$(cd "$(dirname "$0")/../../.." && pwd)
. "$top/tests/vm/lib.sh"
. "$top/tests/bench/vm/bench-lib.sh"
bench_release_binaries
ROUNDS=${ROUNDS:-5}
shim_vm_require
HUSK_TEST_DEBUG_CONSOLE=false HUSK_TEST_LOG_LEVEL=info shim_vm_setup husk-bench-shim true sleep
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
run_true() { # run_true ID RUNTIME-FLAGS...
  local id=$1; shift
  c run --rm "$@" --rootfs "$w/rootfs" "$id" /bin/true </dev/null >/dev/null
}
HUSK=(--runtime io.containerd.husk.v2)
RUNC=(--runtime io.containerd.runc.v2)
# shellcheck disable=SC2207
RUNSC_FLAGS=($(runsc_ctr_flags "$w"))

# --- ctr run --rm true: husk vs runc vs runsc, alternated after one warm-up run of each
run_true warm-runc "${RUNC[@]}" || fail "runc run failed"
runsc_ok=1
if [ ! -x "$RUNSC" ]; then
  runsc_ok=0 runsc_why="no $RUNSC (apt-get install runsc)"
elif ! out=$(c run --rm "${RUNSC_FLAGS[@]}" --rootfs "$w/rootfs" warm-runsc /bin/true </dev/null 2>&1); then
  runsc_ok=0 runsc_why="ctr run under runsc (${RUNSC_FLAGS[*]}) failed: $(one_line "$out")"
  grep -v 'loading plugin\|skip plugin' "$w/containerd.log" | tail -10 >&2
fi
[ "$runsc_ok" = 1 ] && echo "runsc: $("$RUNSC" --version | head -1), ctr flags ${RUNSC_FLAGS[*]}" >&2
t0=$(date +%s%N)
run_true warm-husk "${HUSK[@]}" || fail "husk run failed"
first=$(ms "$t0")
grep -E 'template .* made|restored from template|cold-booted' "$w/containerd.log" | cut -c1-200 >&2 || true
h=() r=() g=()
for i in $(seq "$ROUNDS"); do
  t0=$(date +%s%N); run_true "runc-$i" "${RUNC[@]}" || fail "runc run $i failed"; r+=("$(ms "$t0")")
  gi="(not run)"
  if [ "$runsc_ok" = 1 ]; then
    t0=$(date +%s%N); run_true "runsc-$i" "${RUNSC_FLAGS[@]}" || fail "runsc run $i failed"; gi=$(ms "$t0"); g+=("$gi")
  fi
  t0=$(date +%s%N); run_true "husk-$i" "${HUSK[@]}" || fail "husk run $i failed"; h+=("$(ms "$t0")")
  echo "round $i: runc ${r[-1]} ms, runsc $gi ms, husk ${h[-1]} ms" >&2
done
# A husk run far above the others: say whether its pod needed a second boot.
echo "husk pods booted twice: $(grep -c 'booting it again' "$w/containerd.log")" >&2
grep -E 'the agent answered|boot attempt 2|level=error' "$w/containerd.log" | cut -c1-200 >&2 || true
hm=$(printf '%s\n' "${h[@]}" | median)
rm_=$(printf '%s\n' "${r[@]}" | median)
echo "BENCH ctr_run_husk_ms $hm ms"
echo "BENCH ctr_run_runc_ms $rm_ ms"
echo "BENCH ctr_run_ratio_vs_runc $(awk -v h="$hm" -v r="$rm_" 'BEGIN {printf "%.2f", h / r}') x"
if [ "$runsc_ok" = 1 ]; then
  gm=$(printf '%s\n' "${g[@]}" | median)
  echo "BENCH ctr_run_runsc_ms $gm ms"
  echo "BENCH ctr_run_ratio_vs_runsc $(awk -v h="$hm" -v r="$gm" 'BEGIN {printf "%.2f", h / r}') x"
else
  bench_skip "$runsc_why" ctr_run_runsc_ms ctr_run_ratio_vs_runsc pod_idle_host_mib_runsc
fi
echo "BENCH ctr_run_husk_first_ms $first ms"
tdir=$(awk -F'"' '/^template_dir/ {print $2}' "$w/husk.toml" 2>/dev/null || true)
if [ -n "$tdir" ] && [ -d "$tdir" ]; then
  echo "BENCH vm_template_mib $(du -sk "$tdir" | awk '{printf "%.1f", $1 / 1024}') MiB"
fi

# --- an idle pod's host memory: husk, then the peers (one idle container at a time)
# idle_pss ID: the idle pod's PSS summed over its shim and every process under it, in KiB
idle_pss() {
  local shim_pid
  shim_pid=$(shim_pid_of "$1")
  [ -n "$shim_pid" ] || fail "no shim for $1"
  echo "idle $1: shim $shim_pid and its processes:" >&2
  TREE_PSS_VERBOSE=1 tree_pss_kib "$shim_pid"
}
c run -d "${HUSK[@]}" --rootfs "$w/rootfs" idle /bin/sleep 100000 </dev/null
wait_task_state idle RUNNING 300 || fail "the idle pod never ran"
sleep "${IDLE_SECS:-10}"
vmm_pid=$(cut -d' ' -f1 "$w/run/idle/vmm.pid")
fsd_pid=$(cut -d' ' -f1 "$w/run/idle/virtiofsd.pid")
shim_pid=$(awk '/^PPid/ {print $2}' "/proc/$vmm_pid/status")
grep -q containerd-shim-husk-v2 "/proc/$shim_pid/cmdline" || fail "the vmm's parent $shim_pid is not the shim"
[ "$shim_pid" = "$(shim_pid_of idle)" ] || fail "the vmm's parent $shim_pid is not idle's shim $(shim_pid_of idle)"
kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
# The breakdown, and the figure as it was defined before it was PSS (VmRSS without guest
# RAM, plus the larger guest RAM mapping), for comparison with older runs
total=0 ram=0
for p in "$shim_pid" "$vmm_pid" "$fsd_pid"; do
  r=$(kib "$p" VmRSS) g=$(guest_ram_kib "$p")
  echo "pid $p $(tr -d '\0' < "/proc/$p/comm"): VmRSS $r KiB (RssAnon $(kib "$p" RssAnon), RssFile $(kib "$p" RssFile), RssShmem $(kib "$p" RssShmem)), guest RAM $g KiB, Pss $(pss_kib "$p") KiB" >&2
  total=$((total + r - g))
  [ "$g" -gt "$ram" ] && ram=$g
done
echo "husk idle pod by RSS (the old definition): $(mib $((total + ram))) MiB" >&2
echo "BENCH pod_idle_host_mib $(mib "$(idle_pss idle)") MiB"
echo "BENCH shim_rss_mib $(mib "$(kib "$shim_pid" VmRSS)") MiB"
kill_and_delete idle
assert_nothing_left

c run -d "${RUNC[@]}" --rootfs "$w/rootfs" idle-runc /bin/sleep 100000 </dev/null
wait_task_state idle-runc RUNNING 60 || fail "the idle runc container never ran"
sleep "${IDLE_SECS:-10}"
echo "BENCH pod_idle_host_mib_runc $(mib "$(idle_pss idle-runc)") MiB"
kill_and_delete idle-runc

if [ "$runsc_ok" = 1 ]; then
  c run -d "${RUNSC_FLAGS[@]}" --rootfs "$w/rootfs" idle-runsc /bin/sleep 100000 </dev/null
  wait_task_state idle-runsc RUNNING 120 || fail "the idle runsc container never ran"
  sleep "${IDLE_SECS:-10}"
  echo "BENCH pod_idle_host_mib_runsc $(mib "$(idle_pss idle-runsc)") MiB"
  kill_and_delete idle-runsc
fi
for _ in $(seq 50); do pgrep -f "containerd-shim-runc-v2 .*-address $w/" >/dev/null || break; sleep 0.1; done
pgrep -af "containerd-shim-runc-v2 .*-address $w/" && fail "a runc shim is still running"
pgrep -af "$RUNSC_ROOT/default( |$)" && fail "a runsc process is still running"
true
