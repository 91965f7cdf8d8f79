#!/usr/bin/env bash
# vmm benchmarks, run where real KVM is (inside the nested test host, or on hardware):
#   BENCH vmm_boot_ms / qemu_microvm_boot_ms / vmm_boot_ratio_vs_qemu: start to the agent's
#     first line, same bzImage and rootfs, same vCPUs and memory, runs alternated, medians
#   BENCH vmm_rss_overhead_mib: husk-vmm's RSS after boot minus guest memory (RssShmem)
#   BENCH vmm_vsock_echo_mib_s: 64 MiB each way through a host-initiated vsock connection
# Uses the release husk-vmm ($HUSK_VMM or target/release/husk-vmm). Rounds: $ROUNDS (3).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
. "$top/tests/vm/lib.sh"
HUSK_VMM=${HUSK_VMM:-${CARGO_TARGET_DIR:-$top/target}/release/husk-vmm}
export HUSK_VMM
. "$top/vmm/tests/vm-lib.sh"
ROUNDS=${ROUNDS:-3}
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
q=() h=() rss=()
for r in $(seq "$ROUNDS"); do
  t0=$(date +%s%N)
  VM_CPUS=1 VM_MEM=256M qemu_microvm "$tmp/q$r.log"
  wait_for_line "$tmp/q$r.log" "$AGENT_FIRST_LINE" 300 || fail "qemu: no agent line"
  q+=("$(ms "$t0")")
  kill "$QEMU_PID"; wait "$QEMU_PID" 2>/dev/null || true
  t0=$(date +%s%N)
  run_vmm "$tmp/h$r.log" --kernel "$guest/bzImage" --initrd "$guest/rootfs.cpio" --vcpus 1 --mem 256
  wait_for_line "$tmp/h$r.log" "$AGENT_FIRST_LINE" 300 || { show "$tmp/h$r.log"; fail "husk-vmm: no agent line"; }
  h+=("$(ms "$t0")")
  r_kib=$(awk '/^VmRSS/ {print $2}' "/proc/$VMM_PID/status")
  s_kib=$(awk '/^RssShmem/ {print $2}' "/proc/$VMM_PID/status")
  rss+=("$((r_kib - s_kib))")
  kill -TERM "$VMM_PID"; wait_vmm 30 || true
  echo "round $r: qemu ${q[-1]} ms, husk-vmm ${h[-1]} ms, husk-vmm RSS minus guest ${rss[-1]} KiB" >&2
done
qm=$(printf '%s\n' "${q[@]}" | median)
hm=$(printf '%s\n' "${h[@]}" | median)
rm_kib=$(printf '%s\n' "${rss[@]}" | median)
echo "BENCH qemu_microvm_boot_ms $qm ms"
echo "BENCH vmm_boot_ms $hm ms"
echo "BENCH vmm_boot_ratio_vs_qemu $(awk -v h="$hm" -v q="$qm" 'BEGIN {printf "%.2f", h / q}') x"
echo "BENCH vmm_rss_overhead_mib $(awk -v k="$rm_kib" 'BEGIN {printf "%.1f", k / 1024}') MiB"
VM_TESTS=22-vmm bash "$top/tests/vm/22-vmm-vsock.sh" | grep '^BENCH' || true
