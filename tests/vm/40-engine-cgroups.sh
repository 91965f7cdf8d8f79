#!/usr/bin/env bash
# The agent's cgroup v2 differential suite (runc vs husk-agent oci) needs cgroup2 mounted
# alone, which the nested test host provides; run here so it shares the host's one boot.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
agent=${HUSK_AGENT:-$top/target/debug/husk-agent}
[ -x "$agent" ] || fail "missing $agent: run make"
[ -f /sys/fs/cgroup/cgroup.controllers ] || skip "cgroup2 is not mounted alone at /sys/fs/cgroup"
out=$(mktemp)
bash "$top/tests/engine/cgroups.sh" "$agent" | tee "$out"
grep -q '^SKIP cgroup v2 suite' "$out" && skip "the cgroup suite skipped itself"
rm -f "$out"
