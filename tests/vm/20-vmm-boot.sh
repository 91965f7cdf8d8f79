#!/usr/bin/env bash
# husk-vmm boots the husk guest (kernel + rootfs) to the agent's first line with 2 vCPUs,
# stops cleanly on SIGTERM (exit 5), ends with exit 0 when the guest reboots, with exit 4
# when the guest kernel panics, and boots a bzImage as well as a vmlinux.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$top/vmm/tests/vm-lib.sh"
[ -f "$guest/vmlinux" ] && [ -f "$guest/rootfs.cpio" ] || fail "missing $guest/{vmlinux,rootfs.cpio}"

# 1. The real guest: agent first line, 2 CPUs, then SIGTERM.
log=$tmp/boot.log
t0=$(date +%s%N)
run_vmm "$log" --kernel "$guest/vmlinux" --initrd "$guest/rootfs.cpio" --vcpus 2 --mem 256
if ! wait_for_line "$log" "$AGENT_FIRST_LINE" 120; then
  kill "$VMM_PID" 2>/dev/null || true; show "$log"; fail "no agent first line within 120 s"
fi
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
grep -m1 'Linux version' "$log"
grep -m1 "$AGENT_FIRST_LINE" "$log"
grep -qE 'Brought up 1 node, 2 CPUs' "$log" || { show "$log"; fail "guest did not bring up 2 CPUs"; }
echo "guest: 2 CPUs; agent first line ${ms} ms after husk-vmm start"
echo "BENCH vmm_boot_to_agent_ms $ms ms"
# Guest RAM is a shared memfd mapping; the rest is the vmm's own overhead.
rss=$(awk '/^VmRSS/ {print $2}' "/proc/$VMM_PID/status")
shm=$(guest_ram_kib "$VMM_PID")
echo "husk-vmm RSS after boot: ${rss} KiB, of which guest memory ${shm} KiB"
echo "BENCH vmm_rss_overhead_mib $(awk -v r="$rss" -v s="$shm" 'BEGIN {printf "%.1f", (r - s) / 1024}') MiB"
kill -TERM "$VMM_PID"
set +e; wait_vmm 10; rc=$?; set -e
[ "$rc" = 5 ] || { show "$log"; fail "SIGTERM: exit $rc, want 5"; }
echo "SIGTERM: clean stop, exit 5"

# 2. Guest reboot ends the VM with 0; a guest panic with 4 (the probe as /init).
probe=$tmp/probe.cpio
probe_initrd "$probe"
run_vmm "$tmp/reboot.log" --kernel "$guest/vmlinux" --initrd "$probe" --vcpus 2 \
  --cmdline "console=ttyS0 reboot=k panic=-1 probe=cpus,reboot"
set +e; wait_vmm 120; rc=$?; set -e
grep -q 'probe: cpus=2' "$tmp/reboot.log" || { show "$tmp/reboot.log"; fail "probe did not see 2 CPUs"; }
[ "$rc" = 0 ] || { show "$tmp/reboot.log"; fail "guest reboot: exit $rc, want 0"; }
echo "guest reboot: exit 0"

run_vmm "$tmp/panic.log" --kernel "$guest/vmlinux" --initrd "$probe" \
  --cmdline "console=ttyS0 reboot=k panic=-1 probe=panic"
set +e; wait_vmm 120; rc=$?; set -e
[ "$rc" = 4 ] || { show "$tmp/panic.log"; fail "guest panic: exit $rc, want 4"; }
echo "guest panic: exit 4"

# 3. bzImage boots too.
if [ -f "$guest/bzImage" ]; then
  run_vmm "$tmp/bz.log" --kernel "$guest/bzImage" --initrd "$probe" \
    --cmdline "console=ttyS0 reboot=k panic=-1 probe=reboot"
  set +e; wait_vmm 120; rc=$?; set -e
  [ "$rc" = 0 ] && grep -q 'probe: started' "$tmp/bz.log" || { show "$tmp/bz.log"; fail "bzImage boot: exit $rc"; }
  echo "bzImage: boots, exit 0"
fi
