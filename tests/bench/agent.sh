#!/usr/bin/env bash
# Agent benchmarks (root): `oci run` of busybox `true` under husk-agent, crun and runc,
# measured with hyperfine in one run, and the idle RSS of the agent API server.
# Prints BENCH lines:
#   BENCH engine_run_ratio_vs_crun <x> ratio
#   BENCH engine_run_ratio_vs_runc <x> ratio
#   BENCH agent_idle_rss_mib <x> MiB
#   BENCH agent_static_binary_mib <x> MiB
#
# usage: tests/bench/agent.sh [path/to/husk-agent]   (default: the static build of rootfs/build.sh, profile agent)
# On this project's hybrid-cgroup hosts crun runs with --cgroup-manager=disabled and husk
# skips cgroups (no cgroup v2 alone at /sys/fs/cgroup); runc still uses cgroup v1. In the
# nested host (cgroup2 alone) all three create a cgroup.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
HUSK=${1:-${HUSK_AGENT_STATIC:-${CARGO_TARGET_DIR:-$top/target}/x86_64-unknown-linux-gnu/agent/husk-agent}}
RUNS=${BENCH_RUNS:-30}
if [ "$(id -u)" != 0 ]; then echo "SKIP agent benchmarks: need root"; exit 0; fi
need=()
command -v hyperfine >/dev/null || need+=(hyperfine)
command -v runc >/dev/null || need+=(runc)
command -v crun >/dev/null || need+=(crun)
file -L /bin/busybox 2>/dev/null | grep -q static || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}" >/dev/null
fi
if [ ! -x "$HUSK" ]; then
    echo "building static husk-agent" >&2
    (cd "$top" && RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --release --target x86_64-unknown-linux-gnu -p husk-agent >&2)
fi
HUSK=$(readlink -f "$HUSK")

W=$(mktemp -d /tmp/husk-bench.XXXXXX)
SERVER=
cleanup() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
mkdir -p "$W/b/rootfs"/{bin,proc,sys,dev,tmp}
cp /bin/busybox "$W/b/rootfs/bin/" && ln -s busybox "$W/b/rootfs/bin/true"
(cd "$W/b" && runc spec && python3 - <<'PY'
import json
s = json.load(open("config.json"))
s["process"]["terminal"] = False
s["process"]["args"] = ["/bin/true"]
json.dump(s, open("config.json", "w"))
PY
)
HF=(hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$W/h.json"
    -n husk "$HUSK oci --root $W/husk run --bundle $W/b bh"
    -n crun "crun --cgroup-manager=disabled --root $W/crun run --bundle $W/b bc"
    -n runc "runc --root $W/runc run --bundle $W/b br")
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    "${HF[@]}" >&2
else
    # Hybrid host: crun refuses it even with cgroups disabled, so all three runtimes run
    # in one private mount namespace where the empty v2 hierarchy is unmounted (crun then
    # sees plain cgroup v1). Same namespace for all: no per-run overhead for anyone.
    echo "hybrid cgroups: measuring in a mount namespace without /sys/fs/cgroup/unified" >&2
    unshare -m --propagation private sh -c 'umount -l /sys/fs/cgroup/unified; exec "$@"' sh "${HF[@]}" >&2
fi
python3 - "$W/h.json" <<'PY'
import json, sys
res = json.load(open(sys.argv[1]))["results"]
med = {x["command"]: x["median"] for x in res}
mean = {x["command"]: x["mean"] for x in res}
for k in ("husk", "crun", "runc"):
    print(f"{k}: median {med[k]*1e3:.2f} ms, mean {mean[k]*1e3:.2f} ms", file=sys.stderr)
# Medians: the 2-core machine is shared with QEMU/TCG and builds; means carry their spikes.
print(f"BENCH engine_run_ratio_vs_crun {med['husk']/med['crun']:.3f} ratio")
print(f"BENCH engine_run_ratio_vs_runc {med['husk']/med['runc']:.3f} ratio")
PY

"$HUSK" serve --address "unix://$W/agent.sock" --root "$W/agent" &
SERVER=$!
for _ in $(seq 100); do [ -S "$W/agent.sock" ] && break; sleep 0.05; done
sleep 1
RSS_KB=$(awk '/^VmRSS/ {print $2}' "/proc/$SERVER/status")
python3 -c "print(f'BENCH agent_idle_rss_mib {$RSS_KB/1024:.2f} MiB')"
python3 -c "import os; print(f'BENCH agent_static_binary_mib {os.path.getsize(\"$HUSK\")/1048576:.2f} MiB')"
