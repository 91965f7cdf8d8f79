#!/usr/bin/env bash
# `make soak` (catalogue cases 48 and 50, as far as one test host allows): HUSK_SOAK_SECS
# (default 3600) of churn against husk pods with leak checks. A long-lived pod runs an exec
# loop (each exec writes a counting file and reads it back, checked) while short `ctr run`
# pods come and go and every HUSK_SOAK_BURST_EVERY rounds a burst of HUSK_PODS pods starts at
# once and is removed in parallel. Every HUSK_SOAK_SAMPLE_SECS the long-lived pod's shim, vmm and
# virtiofsd are sampled (RSS, fds, threads) with the host's mount count and zombies; at the
# end the last samples are compared with the first after warm-up: RSS may grow by at most
# HUSK_SOAK_RSS_SLACK_KIB (default 4096) per process, threads by 2 (tokio's blocking pool
# comes and goes), fds not at all, mounts and
# zombies back to their baseline. Prints one line per sample and a closing line.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
shim_vm_require
shim_vm_setup husk-soak sh echo cat sleep true seq md5sum
fail() { show_logs; echo "FAIL: $*" >&2; exit 1; }
secs=${HUSK_SOAK_SECS:-3600}
sample_every=${HUSK_SOAK_SAMPLE_SECS:-60}
burst_every=${HUSK_SOAK_BURST_EVERY:-20}
slack=${HUSK_SOAK_RSS_SLACK_KIB:-4096}
# proc_stats PID: "rss_kib fds threads" (guest RAM not counted: it is the guest's to use)
proc_stats() {
  local rss fds thr ram
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$1/status")
  ram=$(guest_ram_kib "$1")
  fds=$(find "/proc/$1/fd" -mindepth 1 -maxdepth 1 | wc -l)
  thr=$(awk '/^Threads:/ {print $2}' "/proc/$1/status")
  echo "$((rss - ram)) $fds $thr"
}

c run -d --runtime io.containerd.husk.v2 --rootfs "$w/rootfs" soak-long /bin/sleep 1000000000 </dev/null || fail "long-lived pod"
wait_task_state soak-long RUNNING 120 || fail "soak-long not running"
shim_pid=$(pgrep -f "containerd-shim-husk-v2 -namespace default -id soak-long ")
vmm_pid=$(pidof_file "$w/run/soak-long/vmm.pid")
vfsd_pid=$(pgrep -f "virtiofsd.*$w/run/soak-long/" | head -1)
m0=$(mounts) z0=$(zombies)
sample() { echo "$(proc_stats "$shim_pid") $(proc_stats "$vmm_pid") $(proc_stats "$vfsd_pid") $(mounts) $(zombies)"; }
echo "columns: shim(rss fds thr) vmm(rss fds thr) virtiofsd(rss fds thr) mounts zombies"
start=$SECONDS next_sample=0 rounds=0 execs=0 runs=0 bursts=0 first="" last=""
while [ $((SECONDS - start)) -lt "$secs" ]; do
  rounds=$((rounds + 1))
  # an exec that writes a counting sequence and checks it back (data integrity end to end)
  want=$(seq 1 2000 | md5sum | cut -d' ' -f1)
  got=$(c task exec --exec-id "e$rounds" soak-long /bin/sh -c 'seq 1 2000 > /tmp/s && md5sum < /tmp/s' </dev/null | cut -d' ' -f1) \
    || fail "exec $rounds failed"
  [ "$got" = "$want" ] || fail "exec $rounds: checksum $got, want $want"
  execs=$((execs + 1))
  out=$(ctr_run "r$rounds" /bin/echo "run-$rounds" </dev/null) || fail "ctr run $rounds failed"
  [ "$out" = "run-$rounds" ] || fail "ctr run $rounds printed '$out'"
  runs=$((runs + 1))
  if [ $((rounds % burst_every)) = 0 ]; then
    HUSK_PODS=${HUSK_PODS:-8} HUSK_PODS_ROUNDS=1 bash "$(dirname "$0")/74-pods-parallel.sh" >"$w/burst.log" 2>&1 \
      || { tail -20 "$w/burst.log"; fail "burst of parallel pods (round $rounds)"; }
    bursts=$((bursts + 1))
  fi
  if [ $((SECONDS - start)) -ge "$next_sample" ]; then
    last=$(sample)
    echo "[$((SECONDS - start)) s] rounds=$rounds $last"
    # the first sample after the warm-up (two sample periods) is the reference
    [ -z "$first" ] && [ $((SECONDS - start)) -ge $((2 * sample_every)) ] && first=$last
    next_sample=$((next_sample + sample_every))
  fi
done
last=$(sample)
[ -n "$first" ] || first=$last
echo "first: $first"
echo "last:  $last"
read -r -a a <<<"$first"
read -r -a b <<<"$last"
problems=()
names=(shim vmm virtiofsd)
for k in 0 1 2; do
  i=$((k * 3))
  [ "${b[$i]}" -le $((a[$i] + slack)) ] || problems+=("${names[$k]} RSS ${a[$i]} -> ${b[$i]} KiB")
  [ "${b[$((i + 1))]}" -le "${a[$((i + 1))]}" ] || problems+=("${names[$k]} fds ${a[$((i + 1))]} -> ${b[$((i + 1))]}")
  [ "${b[$((i + 2))]}" -le $((a[$((i + 2))] + 2)) ] || problems+=("${names[$k]} threads ${a[$((i + 2))]} -> ${b[$((i + 2))]}")
done
[ "${b[9]}" -le "$m0" ] || problems+=("mounts $m0 -> ${b[9]}")
[ "${b[10]}" -le "$z0" ] || problems+=("zombies $z0 -> ${b[10]}")
kill_and_delete soak-long >/dev/null
assert_nothing_left
echo "soak: $((SECONDS - start)) s, $execs execs (checksummed), $runs ctr runs, $bursts bursts of parallel pods"
if [ ${#problems[@]} -gt 0 ]; then
  printf 'LEAK: %s\n' "${problems[@]}"
  echo "soak: 0 passed, 1 failed"
  exit 1
fi
echo "soak: 1 passed, 0 failed"
