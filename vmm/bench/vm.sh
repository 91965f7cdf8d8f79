#!/usr/bin/env bash
# vmm benchmarks, run where real KVM is (inside the nested test host, or on hardware):
#   BENCH vmm_boot_ms / qemu_microvm_boot_ms / vmm_boot_ratio_vs_qemu: start to the agent's
#     first line, same bzImage and rootfs, same vCPUs and memory, runs alternated, medians
#   BENCH vmm_rss_overhead_mib: husk-vmm's RSS after boot minus its guest RAM mapping's
#   BENCH vmm_vsock_echo_mib_s / qemu_vsock_echo_mib_s / vmm_vsock_ratio_vs_qemu: 64 MiB
#     each way through the guest probe's echo server; QEMU uses in-kernel vhost-vsock
#   BENCH vmm_blk_{read,write}_mib_s / qemu_blk_{read,write}_mib_s / vmm_blk_{read,write}_
#     ratio_vs_qemu: the guest reads a 256 MiB raw image whole and writes 64 MiB, O_DIRECT
#     1 MiB requests, timed in the guest; the same image under both (host page cache warm)
# Guest RAM: a huge=within_size tmpfs, as the shim sets up for a pod. Uses $HUSK_VMM (make bench: the static size-optimized `make vmm-release` build), else target/release/husk-vmm. Rounds: $ROUNDS (3).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
. "$top/tests/vm/lib.sh"
HUSK_VMM=${HUSK_VMM:-${CARGO_TARGET_DIR:-$top/target}/release/husk-vmm}
export HUSK_VMM
. "$top/vmm/tests/vm-lib.sh"
ROUNDS=${ROUNDS:-3}
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
# Guest RAM as the shim gives it to a pod: an unlinked file on a tmpfs mounted
# huge=within_size (shim/src/ram.rs), so the guest gets transparent huge pages as QEMU's
# anonymous RAM does.
ram=$tmp/ram
mkdir -p "$ram"
if mount -t tmpfs -o huge=within_size,size=0,mode=0700 husk-guest-ram "$ram"; then
  trap 'umount -l "$ram" 2>/dev/null; rm -rf "$tmp"' EXIT
  mem_dir=(--mem-dir "$ram")
else
  echo "vmm bench: no huge=within_size tmpfs; guest RAM in a memfd" >&2
  mem_dir=()
fi
q=() h=() rss=()
for r in $(seq "$ROUNDS"); do
  t0=$(date +%s%N)
  VM_CPUS=1 VM_MEM=256M qemu_microvm "$tmp/q$r.log"
  wait_for_line "$tmp/q$r.log" "$AGENT_FIRST_LINE" 300 || fail "qemu: no agent line"
  q+=("$(ms "$t0")")
  kill "$QEMU_PID"; wait "$QEMU_PID" 2>/dev/null || true
  t0=$(date +%s%N)
  run_vmm "$tmp/h$r.log" --kernel "$guest/bzImage" --initrd "$guest/rootfs.cpio" --vcpus 1 --mem 256 "${mem_dir[@]}"
  wait_for_line "$tmp/h$r.log" "$AGENT_FIRST_LINE" 300 || { show "$tmp/h$r.log"; fail "husk-vmm: no agent line"; }
  h+=("$(ms "$t0")")
  r_kib=$(awk '/^VmRSS/ {print $2}' "/proc/$VMM_PID/status")
  s_kib=$(guest_ram_kib "$VMM_PID")
  rss+=("$((r_kib - s_kib))")
  kill -TERM "$VMM_PID"; wait_vmm 30 || true
  echo "round $r: qemu ${q[-1]} ms, husk-vmm ${h[-1]} ms, husk-vmm RSS minus guest ${rss[-1]} KiB" >&2
done
qm=$(median "${q[@]}")
hm=$(median "${h[@]}")
rm_kib=$(median "${rss[@]}")
echo "BENCH qemu_microvm_boot_ms $qm ms"
echo "BENCH vmm_boot_ms $hm ms"
echo "BENCH vmm_boot_ratio_vs_qemu $(awk -v h="$hm" -v q="$qm" 'BEGIN {printf "%.2f", h / q}') x"
echo "BENCH vmm_rss_overhead_mib $(awk -v k="$rm_kib" 'BEGIN {printf "%.1f", k / 1024}') MiB"

# Device throughput: both VMMs boot the vmm's probe as /init (1 vCPU, 256 MiB). QEMU takes
# the probe through a second -initrd, which overrides the rootfs one (last one wins).
probe=$tmp/probe.cpio
probe_initrd "$probe"
ratio() { awk -v h="$1" -v q="$2" 'BEGIN {printf "%.2f", (q > 0) ? h / q : 0}'; }
probe_line() { grep -m1 -o "probe: $2 .*" "$1" || { show "$1"; fail "no '$2' line"; }; }
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }

img=$tmp/blk.img
dd if=/dev/zero of="$img" bs=1M count=256 status=none
cat "$img" > /dev/null
hr=() hw=() qr=() qw=() hv=() qv=()
for r in $(seq "$ROUNDS"); do
  run_vmm "$tmp/hb$r.log" --kernel "$guest/bzImage" --initrd "$probe" --vcpus 1 --mem 256 "${mem_dir[@]}" \
    --drive "path=$img" --cmdline "console=ttyS0 reboot=k panic=-1 probe=blkbench,reboot"
  wait_vmm 300 || { show "$tmp/hb$r.log"; fail "husk-vmm blkbench run"; }
  l=$(probe_line "$tmp/hb$r.log" blkbench)
  hr+=("$(echo "$l" | field read_mib_s)"); hw+=("$(echo "$l" | field write_mib_s)")
  VM_CMDLINE="probe=blkbench,reboot" qemu_microvm "$tmp/qb$r.log" -initrd "$probe" \
    -drive "id=d0,file=$img,format=raw,if=none" -device virtio-blk-device,drive=d0
  # microvm does not end on the guest's reboot=k even with -no-reboot: stop it ourselves.
  wait_for_line "$tmp/qb$r.log" 'probe: blkbench' 300 || { cat "$tmp/qb$r.log.err"; fail "qemu blkbench run"; }
  kill "$QEMU_PID" 2>/dev/null; wait "$QEMU_PID" 2>/dev/null || true
  l=$(probe_line "$tmp/qb$r.log" blkbench)
  qr+=("$(echo "$l" | field read_mib_s)"); qw+=("$(echo "$l" | field write_mib_s)")

  sock=$tmp/v$r.sock
  run_vmm "$tmp/hv$r.log" --kernel "$guest/bzImage" --initrd "$probe" --vcpus 1 --mem 256 "${mem_dir[@]}" \
    --vsock "cid=3,socket=$sock" --cmdline "console=ttyS0 reboot=k panic=-1 probe=vsock,reboot"
  wait_for_line "$tmp/hv$r.log" 'probe: vsock listening' 300 || { show "$tmp/hv$r.log"; fail "husk-vmm vsock"; }
  hv+=("$(python3 "$here/vsock_echo.py" unix "$sock" 64)") || fail "husk-vmm vsock echo"
  wait_vmm 60 || true
  cid=$((100 + r))
  VM_CMDLINE="probe=vsock,reboot" qemu_microvm "$tmp/qv$r.log" -initrd "$probe" \
    -device "vhost-vsock-device,guest-cid=$cid"
  wait_for_line "$tmp/qv$r.log" 'probe: vsock listening' 300 || { cat "$tmp/qv$r.log.err"; fail "qemu vsock"; }
  qv+=("$(python3 "$here/vsock_echo.py" vsock "$cid" 64)") || fail "qemu vsock echo"
  kill "$QEMU_PID" 2>/dev/null; wait "$QEMU_PID" 2>/dev/null || true
  echo "round $r: blk read husk ${hr[-1]} / qemu ${qr[-1]} MiB/s, write husk ${hw[-1]} / qemu ${qw[-1]} MiB/s; vsock echo husk ${hv[-1]} / qemu ${qv[-1]} MiB/s" >&2
done
m_hr=$(median "${hr[@]}") m_hw=$(median "${hw[@]}") m_hv=$(median "${hv[@]}")
m_qr=$(median "${qr[@]}") m_qw=$(median "${qw[@]}") m_qv=$(median "${qv[@]}")
echo "BENCH vmm_blk_read_mib_s $m_hr MiB/s"
echo "BENCH qemu_blk_read_mib_s $m_qr MiB/s"
echo "BENCH vmm_blk_read_ratio_vs_qemu $(ratio "$m_hr" "$m_qr") x"
echo "BENCH vmm_blk_write_mib_s $m_hw MiB/s"
echo "BENCH qemu_blk_write_mib_s $m_qw MiB/s"
echo "BENCH vmm_blk_write_ratio_vs_qemu $(ratio "$m_hw" "$m_qw") x"
echo "BENCH vmm_vsock_echo_mib_s $m_hv MiB/s"
echo "BENCH qemu_vsock_echo_mib_s $m_qv MiB/s"
echo "BENCH vmm_vsock_ratio_vs_qemu $(ratio "$m_hv" "$m_qv") x"
