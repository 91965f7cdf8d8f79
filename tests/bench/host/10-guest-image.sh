#!/usr/bin/env bash
# Sizes of what a pod boots: guest kernel images and the guest rootfs (agent inside).
set -euo pipefail
g=$(cd "$(dirname "$0")/../../.." && pwd)/target/guest
mib() { awk -v b="$(stat -c %s "$1")" 'BEGIN{printf "%.2f", b/1048576}'; }
echo "BENCH guest_bzimage_mib $(mib "$g/bzImage") MiB"
echo "BENCH guest_vmlinux_mib $(mib "$g/vmlinux") MiB"
echo "BENCH guest_rootfs_mib $(mib "$g/rootfs.cpio") MiB"
