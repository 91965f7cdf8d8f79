#!/usr/bin/env bash
# Issue 16, `husk ps` and `husk metrics`: two pods started with ctr run -d are listed with
# their vmm's pid, vCPUs, memory (PSS, guest RAM held), uptime and start time (the second
# restored from the first's template); after a health check their agent is healthy in the
# Prometheus output, every sample line of which is well-formed; a deleted pod is gone.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
shim_vm_require
husk=$(first_built husk HUSK_CLI); [ -n "$husk" ] || fail "no husk binary: run make"
shim_vm_setup husk-ps sh sleep true
fail() { show_logs || true; echo "FAIL: $*" >&2; exit 1; }
# Health checks every 2 s, so one has run by the time we look.
echo "health_check_interval_secs = 2" >> "$w/husk.toml"

for id in t-ps1 t-ps2; do
  c run -d --runtime io.containerd.husk.v2 --rootfs "$w/rootfs" "$id" /bin/sleep 600 </dev/null || fail "ctr run -d $id"
  wait_task_state "$id" RUNNING 120 || fail "$id not running: $(c task ls)"
done
sleep 5
ps_out=$("$husk" --state-dir "$w/run" ps) || fail "husk ps"
echo "$ps_out"
for id in t-ps1 t-ps2; do
  line=$(echo "$ps_out" | awk -v id="$id" '$1 == id') || true
  [ -n "$line" ] || fail "husk ps does not list $id"
  set -- $line
  [ "$2" = "$(pidof_file "$w/run/$id/vmm.pid")" ] || fail "$id: vmm pid $2, pid file $(cat "$w/run/$id/vmm.pid")"
  awk -v p="$5" -v g="$6" -v s="$8" 'BEGIN { exit !(p > 5 && g > 1 && s > 0) }' || fail "$id: PSS $5, guest $6 MiB, start $8 ms"
  case "$line" in *running*) ;; *) fail "$id is not running in husk ps: $line" ;; esac
done
echo "$ps_out" | awk '$1 == "t-ps2"' | grep -q "(restored)" || fail "t-ps2 was not restored from a template"

m=$("$husk" --state-dir "$w/run" metrics) || fail "husk metrics"
bad=$(echo "$m" | grep -v '^#' | grep -vE '^[a-z_]+\{pod="[^"]*"\} [0-9.e+-]+$' || true)
[ -z "$bad" ] || fail "malformed metric lines: $bad"
for id in t-ps1 t-ps2; do
  for f in husk_pod_up husk_pod_agent_healthy; do
    echo "$m" | grep -qx "$f{pod=\"$id\"} 1" || fail "$f of $id is not 1: $(echo "$m" | grep "^$f")"
  done
  echo "$m" | grep -E "^husk_pod_agent_health_checks_total\{pod=\"$id\"\} [1-9]" >/dev/null || fail "no health check of $id counted"
  echo "$m" | grep -E "^husk_pod_vcpu_seconds_total\{pod=\"$id\"\} " >/dev/null || fail "no vCPU time for $id"
done
echo "$m" | grep -E 'pod="t-ps1"' | head -20

kill_and_delete t-ps1 >/dev/null
"$husk" --state-dir "$w/run" ps | awk '$1 == "t-ps1"' | grep . && fail "t-ps1 is still listed after delete"
kill_and_delete t-ps2 >/dev/null
assert_nothing_left
echo "husk ps and husk metrics: both pods listed with their vmm, memory, uptime and start time, health in the metrics, a deleted pod gone: ok"
