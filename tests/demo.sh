#!/usr/bin/env bash
# The main job, as far as husk goes today: boot husk's guest kernel and rootfs (the agent as
# PID 1) in a microVM on real KVM (the nested test host where this machine lacks hardware
# KVM), and print the guest's kernel next to the host's with the time it took.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
"$top/target/debug/husk-vmm" check || true
tests/nested/host.sh -- '
  . tests/vm/lib.sh
  log=$(mktemp); t0=$(date +%s%N)
  qemu_microvm "$log"
  wait_for_line "$log" "$AGENT_FIRST_LINE" 120 || { cat "$log"; exit 1; }
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  kill $QEMU_PID; wait $QEMU_PID 2>/dev/null
  echo "host (L1) kernel:  $(uname -sr)"
  echo "guest (L2) kernel: $(grep -m1 -o "Linux version [^ ]*" "$log")"
  echo "guest said:        $(grep -m1 "$AGENT_FIRST_LINE" "$log")"
  echo "boot to agent:     ${ms} ms (QEMU microvm reference VMM; nested-virt timing)"
'
