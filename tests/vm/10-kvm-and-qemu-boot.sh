#!/usr/bin/env bash
# Smoke test of the foundation: /dev/kvm is real KVM (KVM_CREATE_VM works, via
# `husk-vmm check`), and the husk guest kernel + rootfs boot to the agent's first line under
# QEMU's microvm machine, the reference VMM.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
[ -f "$guest/bzImage" ] && [ -f "$guest/rootfs.cpio" ] || fail "missing $guest/{bzImage,rootfs.cpio}: run make kernel rootfs"
vmm=${HUSK_VMM:-$top/target/debug/husk-vmm}
[ -x "$vmm" ] || fail "missing $vmm: run make"
"$vmm" check || fail "husk-vmm check: this host cannot run VMs"

log=$(mktemp)
VM_CPUS=2 qemu_microvm "$log"
trap 'kill $QEMU_PID 2>/dev/null; wait $QEMU_PID 2>/dev/null; rm -f "$log" "$log.err"' EXIT
t0=$(date +%s%N)
if ! wait_for_line "$log" "$AGENT_FIRST_LINE" 120; then
  cat "$log" "$log.err"
  fail "no agent first line within 120 s"
fi
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
grep -m1 'Linux version' "$log" || fail "no kernel banner"
grep -m1 "$AGENT_FIRST_LINE" "$log"
cpus=$(grep -m1 -oE 'Brought up [0-9]+ node[s]?, [0-9]+ CPU' "$log" || true)
echo "guest: ${cpus:-cpu count not printed}; agent first line ${ms} ms after QEMU start"
