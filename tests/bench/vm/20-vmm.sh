#!/usr/bin/env bash
# The vmm's figures (boot vs QEMU microvm in the same run, RSS overhead, vsock throughput).
set -euo pipefail
exec bash "$(cd "$(dirname "$0")/../../.." && pwd)/vmm/bench/vm.sh"
