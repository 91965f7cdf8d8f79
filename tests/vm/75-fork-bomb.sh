#!/usr/bin/env bash
# Catalogue case 36: a fork bomb in a container (which runs as root in the guest, with no
# pids limit from ctr: the bomb is bounded only by the guest) next to a neighbour pod.
# Checks, while the bomb runs and after it is killed: the bombing pod's agent still
# answers (an exec in its container succeeds within 60 s), the neighbour pod keeps
# answering execs, the bombing pod's vmm on the host keeps its thread count and its RSS
# outside guest RAM (guest RAM is bounded by the VM's size), and after the kill nothing is
# left. The bomb's effect stays inside its VM.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
shim_vm_require
shim_vm_setup husk-forkbomb sh echo sleep true cat
fail() { show_logs || true; echo "FAIL: $*" >&2; exit 1; }
threads() { awk '/^Threads:/ {print $2}' "/proc/$1/status"; }
rss_outside_ram() { echo $(( $(awk '/^VmRSS:/ {print $2}' "/proc/$1/status") - $(guest_ram_kib "$1") )); }

c run -d --runtime io.containerd.husk.v2 --rootfs "$w/rootfs" t-neighbour /bin/sleep 100000 </dev/null || fail "neighbour pod"
c run -d --runtime io.containerd.husk.v2 --rootfs "$w/rootfs" t-bomb /bin/sleep 100000 </dev/null || fail "bomb pod"
wait_task_state t-neighbour RUNNING 120 && wait_task_state t-bomb RUNNING 120 || fail "pods not running: $(c task ls)"
vmm=$(pidof_file "$w/run/t-bomb/vmm.pid")
thr0=$(threads "$vmm") rss0=$(rss_outside_ram "$vmm")
echo "bomb pod's vmm before: $thr0 threads, $rss0 KiB outside guest RAM"
# the bomb: an exec whose shell forks without end (each child forks two more)
c task exec --exec-id bomb t-bomb /bin/sh -c 'b() { b | b & }; b; sleep 100000' </dev/null >/dev/null 2>&1 &
bomb_ctr=$!
sleep 15
ok=0
for i in 1 2 3; do
  t0=$(date +%s%N)
  # an answer is the exec's output or the agent's own error (a fork refused for want of pids)
  out=$(CTR_TIMEOUT=60 c task exec --exec-id "probe$i" t-bomb /bin/echo alive </dev/null 2>&1) || true
  case $out in alive | *"agent: "*) ok=$((ok + 1)) ;; esac
  echo "during the bomb, probe $i: '$(echo "$out" | tail -1 | cut -c1-120)' in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  out=$(CTR_TIMEOUT=60 c task exec --exec-id "nb$i" t-neighbour /bin/echo alive </dev/null) || fail "the neighbour pod did not answer during the bomb"
  [ "$out" = alive ] || fail "the neighbour printed '$out'"
done
thr1=$(threads "$vmm") rss1=$(rss_outside_ram "$vmm")
echo "bomb pod's vmm during: $thr1 threads, $rss1 KiB outside guest RAM"
[ "$thr1" = "$thr0" ] || fail "the vmm's thread count changed under the bomb ($thr0 -> $thr1)"
[ "$rss1" -le $((rss0 + 4096)) ] || fail "the vmm's RSS outside guest RAM grew by more than 4 MiB ($rss0 -> $rss1 KiB)"
# the agent answers through the bomb (with the output, or its error when the guest has no
# pid left to fork); one probe may run into ctr's 60 s limit on a slow test host
[ "$ok" -ge 2 ] || fail "the bombing pod's agent answered $ok of 3 execs during the bomb"
# the container is killed: SIGKILL to the task kills the whole container (pid namespace)
c task kill -s SIGKILL t-bomb
wait_task_state t-bomb STOPPED 120 || fail "the bombing task did not stop"
kill "$bomb_ctr" 2>/dev/null || true
c task delete t-bomb >/dev/null; c container delete t-bomb
kill_and_delete t-neighbour
assert_nothing_left
echo "case 36: fork bomb contained in its VM ($ok/3 probes answered by the agent during it; vmm threads $thr0 -> $thr1, RSS outside guest RAM $rss0 -> $rss1 KiB), neighbour unaffected: ok"
