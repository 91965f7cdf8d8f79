#!/usr/bin/env bash
# Catalogue case 46: containerd restarts under a live husk pod, then the shim is killed.
# 1. containerd stops (SIGTERM) and starts again on the same root and state: the shim and
#    the VM live on, containerd reconnects to the shim, and the task is still RUNNING with
#    the same pid; exec, metrics and kill work through the new containerd.
# 2. The shim is killed with -9: containerd runs `shim delete`, which stops the VM; the task
#    is reported stopped, delete works, and nothing of the pod is left (processes, mounts,
#    state directory).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
shim_vm_require
shim_vm_setup husk-fault-ctrd sh echo cat sleep true
fail() { show_logs || true; echo "FAIL: $*" >&2; exit 1; }
shim_of() { pgrep -f "containerd-shim-husk-v2 -namespace default -id $1 "; }

restart_containerd() {
  local pid
  pid=$(cat "$w/containerd.pid")
  kill "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && fail "containerd did not stop on SIGTERM"
  rm -f "$w/containerd.sock"
  start_containerd "$w" HUSK_CONFIG="$w/husk.toml" PATH="$w/bin:$PATH" || fail "containerd did not start again"
}

c run -d --runtime io.containerd.husk.v2 --rootfs "$w/rootfs" t-live /bin/sleep 1000 </dev/null || fail "ctr run -d"
wait_task_state t-live RUNNING 120 || fail "t-live not running: $(c task ls)"
pid1=$(c task ls | awk '$1 == "t-live" {print $2}')
shim1=$(shim_of t-live) || fail "no shim for t-live"
vmm1=$(pidof_file "$w/run/t-live/vmm.pid")

# --- 1. containerd restarts; the pod lives on and is reconnected
restart_containerd
wait_task_state t-live RUNNING 60 || fail "after containerd's restart t-live is not RUNNING: $(c task ls)"
pid2=$(c task ls | awk '$1 == "t-live" {print $2}')
[ "$pid1" = "$pid2" ] || fail "the task's pid changed across the restart ($pid1 -> $pid2)"
[ "$(shim_of t-live)" = "$shim1" ] || fail "the shim changed across containerd's restart"
kill -0 "$vmm1" || fail "the vmm died with containerd's restart"
out=$(c task exec --exec-id e1 t-live /bin/echo exec-after-restart </dev/null) || fail "exec after restart"
[ "$out" = exec-after-restart ] || fail "exec after restart printed '$out'"
c task metrics t-live >"$w/metrics.txt" || fail "metrics after restart"
grep -qi memory "$w/metrics.txt" || fail "no memory in metrics after restart: $(cat "$w/metrics.txt")"
echo "containerd restarted: t-live still RUNNING (pid $pid2, same shim and vmm), exec and metrics work"

# --- 2. the shim is killed with -9: containerd's shim delete stops the VM
kill -9 "$shim1"
for _ in $(seq 200); do kill -0 "$vmm1" 2>/dev/null || break; sleep 0.1; done
kill -0 "$vmm1" 2>/dev/null && fail "the vmm still runs 20 s after its shim was killed"
for _ in $(seq 100); do c task ls 2>/dev/null | grep -qE '^t-live +[0-9]+ +RUNNING' || break; sleep 0.1; done
c task ls | grep -qE '^t-live +[0-9]+ +RUNNING' && fail "t-live still RUNNING after its shim was killed"
c task delete t-live >/dev/null 2>&1 || true
c container delete t-live || fail "container delete after the shim was killed"
assert_nothing_left
[ -e "$w/run/t-live" ] && fail "the pod's state directory is left: $(ls -la "$w/run/t-live")"
echo "case 46: containerd restart reconnects, shim kill -9 cleaned up by shim delete: ok"
