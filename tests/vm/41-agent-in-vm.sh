#!/usr/bin/env bash
# The agent as PID 1 of a guest under QEMU microvm with vhost-vsock: the agent API over
# vsock runs a container with cgroup limits and reports its OOM kill (tests/engine/agent-vm.sh).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
out=$(mktemp)
bash "$top/tests/engine/agent-vm.sh" | tee "$out"
grep -q '^SKIP agent VM test' "$out" && { rm -f "$out"; skip "the agent VM test skipped itself"; }
rm -f "$out"
