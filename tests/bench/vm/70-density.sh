#!/usr/bin/env bash
# Density (issue 15): N idle pods of one shape (busybox `sleep`, the default VM size),
# started at once with `ctr run -d`, under husk, runc and runsc (gVisor, through
# containerd's runc shim: see bench-lib.sh) in the same run. For each runtime: one pod
# alone (its memory measured, then removed), then N started concurrently (wall time from
# the first `ctr run -d` to every task RUNNING), their memory, then all removed in parallel
# and nothing may be left (tasks, containers, shims, vmms, virtiofsds, runc/runsc
# processes, mounts, taps, state directories, zombies): a leak fails the script.
#   BENCH pods_started_per_s / pods_started_per_s_runc / pods_started_per_s_runsc
#   BENCH pods_total_mib{,_runc,_runsc}: host memory of the N idle pods: PSS summed over
#     every pod's shim and every process under it (husk: husk-vmm with the guest RAM it
#     maps, virtiofsd); a page shared by several pods (a VM template's, a binary's) or by
#     husk-vmm and virtiofsd (the guest RAM file) is split between them by PSS, so it
#     counts once in the sum (bench-lib.sh)
#   BENCH pod_marginal_mib{,_runc,_runsc}: (total with N pods - total with 1 pod) / (N - 1)
# N: DENSITY_PODS (or HUSK_DENSITY_PODS, which `make nested` carries into the test host);
# default 20 on hardware KVM, 8 in the nested test host, where every vmm, virtiofsd and
# shim share one TCG vCPU (test 74: 20 husk pods at once there ran past the shim's 60 s
# agent-call deadline, and 10 took 89 s to start). Pods idle IDLE_SECS (HUSK_IDLE_SECS,
# 10) before they are measured. Guest RAM: an unlinked file in each pod's own `ram/`
# tmpfs (or a memfd) mapped shared by husk-vmm and virtiofsd; its mappings are printed
# (Rss, Pss, Shared, Private) so a change in how it is backed shows.
set -euo pipefail
top=$(cd "$(dirname "$0")/../../.." && pwd)
. "$top/tests/vm/lib.sh"
. "$top/tests/bench/vm/bench-lib.sh"
bench_release_binaries
if [ -n "${HUSK_NESTED:-}" ]; then n=${DENSITY_PODS:-${HUSK_DENSITY_PODS:-8}}; else n=${DENSITY_PODS:-${HUSK_DENSITY_PODS:-20}}; fi
[ "$n" -ge 2 ] || { echo "density: DENSITY_PODS must be at least 2" >&2; exit 2; }
idle=${IDLE_SECS:-${HUSK_IDLE_SECS:-10}}
shim_vm_require
HUSK_TEST_DEBUG_CONSOLE=false HUSK_TEST_LOG_LEVEL=info shim_vm_setup husk-bench-density true sleep
fail() { show_logs >&2 || true; echo "FAIL: $*" >&2; exit 1; }
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
echo "density: $n pods per runtime, idle ${idle}s before measuring; shim $shim, vmm $vmm" >&2

taps() { ip -o link 2>/dev/null | grep -c husk_tap || true; }
husk_mounts() { awk '$2 ~ "^/run/husk(/|$)" {print $2}' /proc/mounts; }

# start_all PREFIX COUNT FLAGS...: starts COUNT idle containers PREFIX1.. at once; prints
# the wall time until every task is RUNNING, in ms
start_all() {
  local prefix=$1 count=$2 i p bad=0 t0 pids=(); shift 2
  t0=$(date +%s%N)
  for i in $(seq "$count"); do
    c run -d "$@" --rootfs "$w/rootfs" "$prefix$i" /bin/sleep 100000 </dev/null \
      >"$w/start-$prefix$i.log" 2>&1 & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || bad=$((bad + 1)); done
  [ "$bad" = 0 ] || fail "$bad of $count ctr run -d ($prefix) failed: $(cat "$w"/start-"$prefix"*.log | sort | uniq -c | head -5 | cut -c1-400)"
  for i in $(seq "$count"); do wait_task_state "$prefix$i" RUNNING 300 || fail "$prefix$i not running"; done
  ms "$t0"
}
# remove_all PREFIX COUNT: kills and deletes them all in parallel; prints the ms it took
remove_all() {
  local prefix=$1 count=$2 i p bad=0 t0 pids=()
  t0=$(date +%s%N)
  for i in $(seq "$count"); do kill_and_delete "$prefix$i" >"$w/rm-$prefix$i.log" 2>&1 & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || bad=$((bad + 1)); done
  [ "$bad" = 0 ] || fail "$bad of $count parallel deletes ($prefix) failed: $(cat "$w"/rm-"$prefix"*.log | sort | uniq -c | head -5 | cut -c1-400)"
  ms "$t0"
}
# pods_pss PREFIX COUNT: KiB of PSS summed over the shims of PREFIX1.. and their processes
pods_pss() {
  local prefix=$1 count=$2 i s shims=()
  for i in $(seq "$count"); do
    s=$(shim_pid_of "$prefix$i")
    [ -n "$s" ] || fail "no shim for $prefix$i"
    shims+=("$s")
  done
  tree_pss_kib "${shims[@]}"
}
# husk_counts PREFIX: running tasks, shims, vmms, pods with a virtiofsd, pod state dirs
husk_counts() {
  local tasks shims vmms vfsds dirs
  tasks=$(c task ls 2>/dev/null | grep -cE "^$1[0-9]+ +[0-9]+ +RUNNING" || true)
  shims=$(pgrep -fc "containerd-shim-husk-v2 -namespace default -id $1[0-9]+ -address $w/" || true)
  vmms=$(pgrep -fc -- "--config $w/run/$1[0-9]+/" || true)
  # with --sandbox=namespace a virtiofsd is a parent and its serving child: count pods
  vfsds=$(pgrep -af "virtiofsd.*$w/run/" | grep -oE "$w/run/$1[0-9]+/" | sort -u | wc -l)
  dirs=$(find "$w/run" -mindepth 1 -maxdepth 1 -name "$1*" | wc -l)
  echo "$tasks $shims $vmms $vfsds $dirs"
}
# big_mappings PID: the mappings of 16 MiB or more (guest RAM, a template) with their
# Rss, Pss, Shared and Private KiB, on stderr
big_mappings() {
  awk -v pid="$1" '/^[0-9a-f]+-[0-9a-f]+ / { name = $6 " " $7 " " $8; perms = $2; next }
       /^Size:/ { size = $2 } /^Rss:/ { rss = $2 } /^Pss:/ { pss = $2 }
       /^Shared_Clean:/ { sh = $2 } /^Shared_Dirty:/ { sh += $2 }
       /^Private_Clean:/ { pr = $2 } /^Private_Dirty:/ { pr += $2;
         if (size >= 16384 && perms !~ /^---/) printf "  pid %s mapping %s %s: Size %d Rss %d Pss %d Shared %d Private %d KiB\n", pid, perms, name, size, rss, pss, sh, pr }' \
    "/proc/$1/smaps" >&2
}

# nothing_left LABEL PREFIX: every trace of the PREFIX pods is gone (waits a little for
# processes to exit); prints each leak found and fails if there is one
nothing_left() {
  local label=$1 prefix=$2 leaks=() _ x
  for _ in $(seq 100); do
    pgrep -f "containerd-shim-(husk|runc)-v2 -namespace default -id $prefix[0-9]+ -address $w/" >/dev/null \
      || pgrep -f -- "--config $w/run/" >/dev/null || pgrep -f "virtiofsd.*$w/run/" >/dev/null \
      || pgrep -f "$RUNSC_ROOT/default( |$)" >/dev/null || break
    sleep 0.1
  done
  for _ in $(seq 50); do [ "$(mounts)" -le "$m0" ] && [ "$(zombies)" -le "$z0" ] && break; sleep 0.1; done
  x=$(c task ls -q 2>/dev/null | grep -E "^$prefix[0-9]+$" || true); [ -z "$x" ] || leaks+=("tasks: $x")
  x=$(c container ls -q 2>/dev/null | grep -E "^$prefix[0-9]+$" || true); [ -z "$x" ] || leaks+=("containers: $x")
  x=$(pgrep -af "containerd-shim-(husk|runc)-v2 .*-address $w/" || true); [ -z "$x" ] || leaks+=("shims: $x")
  x=$(pgrep -af -- "--config $w/run/" || true); [ -z "$x" ] || leaks+=("husk-vmms: $x")
  x=$(pgrep -af "virtiofsd.*$w/run/" || true); [ -z "$x" ] || leaks+=("virtiofsds: $x")
  # runsc's processes of this test's containers (namespace default; a CRI pod's are under k8s.io)
  x=$(pgrep -af "$RUNSC_ROOT/default( |$)" || true); [ -z "$x" ] || leaks+=("runsc processes: $x")
  x=$(pgrep -af "runc init" || true); [ -z "$x" ] || leaks+=("runc init: $x")
  x=$(find "$w/run" -mindepth 1 -maxdepth 1 2>/dev/null || true); [ -z "$x" ] || leaks+=("pod state dirs: $x")
  x=$(ls "$w/state/io.containerd.runtime.v2.task/default" 2>/dev/null | grep -E "^$prefix[0-9]+$" || true)
  [ -z "$x" ] || leaks+=("containerd task dirs: $x")
  x=$(ls /run/containerd/runc/default "$RUNSC_ROOT/default" 2>/dev/null | grep -E "^$prefix[0-9]+$" || true)
  [ -z "$x" ] || leaks+=("runc/runsc state dirs: $x")
  x=$(grep "$w/run" /proc/mounts || true); [ -z "$x" ] || leaks+=("mounts under $w/run: $x")
  # (files, not <(...): the nested test host has no /dev/fd)
  husk_mounts > "$w/husk-mounts1"
  x=$(diff "$w/husk-mounts0" "$w/husk-mounts1" | grep '^>' || true); [ -z "$x" ] || leaks+=("mounts under /run/husk: $x")
  [ "$(mounts)" -le "$m0" ] || leaks+=("$(mounts) mounts, $m0 before: $(diff "$w/mounts0" /proc/mounts | grep '^>' | head -10)")
  [ "$(taps)" -le "$tap0" ] || leaks+=("taps: $(ip -o link | grep husk_tap)")
  [ "$(zombies)" -le "$z0" ] || leaks+=("zombies: $(ps -eo pid,ppid,stat,args | awk '$3 ~ /^Z/')")
  if [ ${#leaks[@]} -gt 0 ]; then
    for x in "${leaks[@]}"; do echo "LEAK ($label): $x" >&2; done
    fail "$label: ${#leaks[@]} kind(s) of leftovers after removing every pod"
  fi
  assert_nothing_left
  echo "density $label: nothing left" >&2
}

# density LABEL SUFFIX PREFIX FLAGS...: one pod alone, then $n at once; prints the figures
density() {
  local label=$1 sfx=$2 p=$3 one total u0 u1 t rt; shift 3
  t=$(start_all "${p}a" 1 "$@")
  sleep "$idle"
  one=$(TREE_PSS_VERBOSE=1 pods_pss "${p}a" 1)
  [ "$label" = husk ] && big_mappings "$(pidof_file "$w/run/${p}a1/vmm.pid")"
  echo "density $label: 1 pod started in $t ms, $(mib "$one") MiB (PSS)" >&2
  remove_all "${p}a" 1 >/dev/null
  nothing_left "$label, 1 pod" "${p}a"
  u0=$(host_used_kib)
  t=$(start_all "$p" "$n" "$@")
  if [ "$label" = husk ]; then
    local got
    got=$(husk_counts "$p")
    [ "$got" = "$n $n $n $n $n" ] || fail "husk: tasks/shims/vmms/virtiofsds/dirs are '$got', want $n each"
  fi
  echo "density $label: $n pods running after $t ms" >&2
  echo "BENCH pods_started_per_s$sfx $(awk -v n="$n" -v ms="$t" 'BEGIN {printf "%.2f", n * 1000 / ms}') pods/s"
  sleep "$idle"
  total=$(pods_pss "$p" "$n")
  u1=$(host_used_kib)
  [ "$label" = husk ] && big_mappings "$(pidof_file "$w/run/${p}1/vmm.pid")"
  echo "density $label: $n pods $(mib "$total") MiB (PSS), 1 pod $(mib "$one") MiB; host MemTotal-MemAvailable rose $(mib $((u1 - u0))) MiB ($(mib $(((u1 - u0) / n))) per pod)" >&2
  echo "BENCH pods_total_mib$sfx $(mib "$total") MiB"
  echo "BENCH pod_marginal_mib$sfx $(mib $(((total - one) / (n - 1)))) MiB"
  rt=$(remove_all "$p" "$n")
  echo "density $label: $n pods removed in parallel in $rt ms" >&2
  nothing_left "$label, $n pods" "$p"
}

# a first pod makes the VM template every later pod of this shape is restored from
t0=$(date +%s%N)
c run --rm --runtime io.containerd.husk.v2 --rootfs "$w/rootfs" warmup /bin/true </dev/null || fail "warm-up pod"
echo "density: warm-up husk pod (makes the template) took $(ms "$t0") ms" >&2
c run --rm --runtime io.containerd.runc.v2 --rootfs "$w/rootfs" warmup-runc /bin/true </dev/null || fail "warm-up runc"
assert_nothing_left
m0=$(mounts) z0=$(zombies) tap0=$(taps)
husk_mounts > "$w/husk-mounts0"
cp /proc/mounts "$w/mounts0"
tdir=$(awk -F'"' '/^template_dir/ {print $2}' "$w/husk.toml")
[ -d "$tdir" ] && echo "density: templates in $tdir: $(du -sk "$tdir" | awk '{printf "%.1f", $1 / 1024}') MiB (tmpfs, in no pod's PSS)" >&2

density husk "" p --runtime io.containerd.husk.v2
density runc _runc r --runtime io.containerd.runc.v2
# shellcheck disable=SC2207
RUNSC_FLAGS=($(runsc_ctr_flags "$w"))
if [ ! -x "$RUNSC" ]; then
  bench_skip "no $RUNSC (apt-get install runsc)" pods_started_per_s_runsc pods_total_mib_runsc pod_marginal_mib_runsc
elif ! out=$(c run --rm "${RUNSC_FLAGS[@]}" --rootfs "$w/rootfs" warmup-runsc /bin/true </dev/null 2>&1); then
  bench_skip "ctr run under runsc (${RUNSC_FLAGS[*]}) failed: $(one_line "$out")" pods_started_per_s_runsc pods_total_mib_runsc pod_marginal_mib_runsc
else
  density runsc _runsc g "${RUNSC_FLAGS[@]}"
fi
echo "density: ok, nothing left by any runtime" >&2
