#!/usr/bin/env bash
# The reference: QEMU's microvm machine booting husk's kernel + rootfs to the agent's first
# line, median of 5. The vmm's own boot benchmark divides by this figure in the same run.
set -euo pipefail
. "$(dirname "$0")/../../vm/lib.sh"
runs=()
for i in 1 2 3 4 5; do
  log=$(mktemp)
  t0=$(date +%s%N)
  VM_CMDLINE=quiet qemu_microvm "$log"
  wait_for_line "$log" "$AGENT_FIRST_LINE" 120 || { cat "$log" >&2; exit 1; }
  runs+=($(( ($(date +%s%N) - t0) / 1000000 )))
  kill "$QEMU_PID"; wait "$QEMU_PID" 2>/dev/null || true
  rm -f "$log" "$log.err"
done
median=$(printf '%s\n' "${runs[@]}" | sort -n | sed -n 3p)
echo "runs ms: ${runs[*]}" >&2
echo "BENCH qemu_microvm_boot_ms $median ms"
