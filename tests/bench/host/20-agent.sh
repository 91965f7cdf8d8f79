#!/usr/bin/env bash
# The agent's engine benchmarks (husk-agent oci run vs crun and runc, idle RSS), on the
# static release binary that goes into the guest image.
set -euo pipefail
top=$(cd "$(dirname "$0")/../../.." && pwd)
exec bash "$top/tests/bench/agent.sh" "$top/target/guest/husk-agent"
