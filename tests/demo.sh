#!/usr/bin/env bash
# `make demo`, the main job: a container in a husk microVM through containerd.
# Inside the nested test host (or directly where KVM is hardware-backed) it starts Debian's
# containerd with a private root, imports a busybox image built offline
# (tests/images/busybox-oci.py), and runs, each timed,
#   ctr run --rm --runtime io.containerd.husk.v2 docker.io/library/busybox:husk demo uname -a
# twice (the first run boots a VM and makes the VM template of the pod's shape, the second
# is restored from it: the start time a user sees from then on), then the same command under
# runc; it prints the guest's kernel next to the host's and the three times.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
target/debug/husk-vmm check || true
exec tests/nested/host.sh -- tests/demo-inner.sh
