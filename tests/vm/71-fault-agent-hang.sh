#!/usr/bin/env bash
# Catalogue case 44: the agent stops answering. The pod's whole VM is frozen with SIGSTOP
# on its vmm (from the shim's side, a wedged agent: the vsock connection stays open and
# nothing answers). The shim's health check (the agent's Check call every
# health_check_interval_secs, here 2, failing health_check_failures times, here 2) must
# declare the VM dead within a hard deadline (30 s here): the task is reported stopped,
# the vmm is killed and reaped (no orphan), and after delete nothing of the pod is left.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
shim_vm_require
shim_vm_setup husk-fault-hang sh sleep true
fail() { show_logs || true; echo "FAIL: $*" >&2; exit 1; }
printf '%s\n' 'health_check_interval_secs = 2' 'health_check_failures = 2' >> "$w/husk.toml"

c run -d --runtime io.containerd.husk.v2 --rootfs "$w/rootfs" t-hang /bin/sleep 100000 </dev/null || fail "ctr run -d"
wait_task_state t-hang RUNNING 120 || fail "t-hang not running"
vmm=$(pidof_file "$w/run/t-hang/vmm.pid")
# healthy for a while first: the check must not kill a live pod
sleep 6
c task ls | grep -qE '^t-hang +[0-9]+ +RUNNING' || fail "a healthy pod was stopped: $(c task ls)"
kill -0 "$vmm" || fail "the healthy pod's vmm died"

t0=$(date +%s%N)
kill -STOP "$vmm"
stopped=""
for _ in $(seq 300); do
  if c task ls 2>/dev/null | grep -qE '^t-hang +[0-9]+ +STOPPED'; then
    stopped=$(( ($(date +%s%N) - t0) / 1000000 )); break
  fi
  sleep 0.1
done
[ -n "$stopped" ] || { kill -CONT "$vmm" 2>/dev/null; fail "the task is not stopped 30 s after its VM froze"; }
for _ in $(seq 100); do [ -e "/proc/$vmm" ] || break; sleep 0.1; done
[ -e "/proc/$vmm" ] && { kill -9 "$vmm"; fail "the frozen vmm was not killed and reaped: $(cat /proc/$vmm/status | head -3)"; }
echo "VM frozen: task STOPPED after $stopped ms, vmm killed and reaped"
grep -rhoiE '[^"]*(health|not answer)[^"]*' "$w"/logs/ "$w/containerd.log" 2>/dev/null | head -2 || true
c task delete t-hang >/dev/null || fail "task delete"
c container delete t-hang || fail "container delete"
assert_nothing_left
[ -e "$w/run/t-hang" ] && fail "the pod's state directory is left"
echo "case 44: a frozen VM is found by the health check, stopped and cleaned up in $stopped ms: ok"
