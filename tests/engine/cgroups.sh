#!/usr/bin/env bash
# cgroup v2 differential suite: the same bundles with linux.resources under runc and
# `husk-agent oci`, comparing the interface files the container sees, an OOM kill, the
# pids limit, io settings and pause/resume. Needs root and cgroup2 mounted alone at
# /sys/fs/cgroup (the nested test host):
#
#   make nested CMD='tests/engine/cgroups.sh'
#
# Elsewhere it prints SKIP and exits 0. Exits 1 on any failure.
set -u
top=$(cd "$(dirname "$0")/../.." && pwd)
HUSK=${1:-${HUSK_AGENT:-${CARGO_TARGET_DIR:-$top/target}/debug/husk-agent}}
if [ "$(id -u)" != 0 ]; then echo "SKIP cgroup v2 suite: needs root"; exit 0; fi
if [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then
    echo "SKIP cgroup v2 suite: cgroup2 is not mounted alone at /sys/fs/cgroup (run it with make nested CMD='tests/engine/cgroups.sh')"
    exit 0
fi
for c in memory cpu cpuset pids io; do
    grep -qw $c /sys/fs/cgroup/cgroup.controllers || { echo "FAIL: controller $c missing"; exit 1; }
done
command -v runc >/dev/null || { echo "FAIL: runc missing"; exit 1; }
HUSK=$(readlink -f "$HUSK")
[ -x "$HUSK" ] || { echo "FAIL: no husk-agent at $HUSK"; exit 1; }

WORK=$(mktemp -d /tmp/husk-cg.XXXXXX)
chmod 755 "$WORK"
trap '[ -n "${KEEP:-}" ] || rm -rf "$WORK"; rm -rf /run/husk-cg /run/runc-cg' EXIT
ROOTFS=$WORK/rootfs
mkdir -p "$ROOTFS"/{bin,etc,proc,sys,dev,tmp}
cp /bin/busybox "$ROOTFS/bin/"
for c in $("$ROOTFS/bin/busybox" --list); do [ "$c" = busybox ] || ln -sf busybox "$ROOTFS/bin/$c"; done
(cd "$WORK" && runc spec)
BASE=$WORK/config.base.json
mv "$WORK/config.json" "$BASE"
PASS=0; FAIL=0; FAILED=(); SKIPPED=()

edit_spec() {
    python3 - "$BASE" "$1" "$ROOTFS" "$2" <<'EOF'
import json, sys
base, out, rootfs, code = sys.argv[1:5]
s = json.load(open(base))
s["root"]["path"] = rootfs
s["process"]["terminal"] = False
exec(code)
json.dump(s, open(out, "w"), indent=1)
EOF
}

check() { # check <case> <python edits setting s>
    local name=$1 b=$WORK/b-$1
    mkdir -p "$b"
    edit_spec "$b/config.json" "$2"
    (cd "$b" && runc --root /run/runc-cg run "r-$name" >"$b/runc.out" 2>&1 </dev/null; echo "exit=$?" >>"$b/runc.out")
    (cd "$b" && "$HUSK" oci --root /run/husk-cg run "h-$name" >"$b/husk.out" 2>&1 </dev/null; echo "exit=$?" >>"$b/husk.out")
    if diff -u "$b/runc.out" "$b/husk.out" >"$b/diff"; then
        PASS=$((PASS+1)); echo "PASS $name"; sed 's/^/    /' "$b/husk.out" | head -12
    else
        FAIL=$((FAIL+1)); FAILED+=("$name"); echo "FAIL $name"; sed 's/^/    /' "$b/diff" | head -40
    fi
}

CAT='cd /sys/fs/cgroup; for f in memory.max memory.low memory.swap.max cpu.weight cpu.max cpuset.cpus pids.max; do echo "$f $(cat $f)"; done'
# docker run --memory 64m --memory-reservation 32m --memory-swap 128m --cpu-shares 512 --cpus 1.5 --cpuset-cpus 0 --pids-limit 20
check limits 's["process"]["args"]=["sh","-c",'"'$CAT'"']; s["linux"]["resources"]={"memory":{"limit":67108864,"reservation":33554432,"swap":134217728},"cpu":{"shares":512,"quota":150000,"period":100000,"cpus":"0"},"pids":{"limit":20}}'
check unlimited 's["process"]["args"]=["sh","-c",'"'$CAT'"']; s["linux"]["resources"]={"memory":{"limit":-1,"swap":-1},"cpu":{"quota":-1,"period":50000},"pids":{"limit":-1}}'
# An allocation past the limit is OOM-killed, and memory.events counts it.
check oom-kill 's["process"]["args"]=["sh","-c","dd if=/dev/zero of=/dev/null bs=48M count=1 2>/dev/null; echo dd-exit=$?; grep oom_kill /sys/fs/cgroup/memory.events"]; s["linux"]["resources"]={"memory":{"limit":16777216,"swap":16777216}}'
# No more than pids.max processes.
# The subshell forks sleeps until the limit refuses one; `read` counts without forking.
check pids-limit 's["process"]["args"]=["sh","-c","(for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 2 & done) 2>/dev/null; echo subshell-exit=$?; read n < /sys/fs/cgroup/pids.current; read m < /sys/fs/cgroup/pids.max; echo procs=$n max=$m"]; s["linux"]["resources"]={"pids":{"limit":6}}'
check io-weight 's["process"]["args"]=["sh","-c","cat /sys/fs/cgroup/io.weight 2>/dev/null | head -1 || echo none"]; s["linux"]["resources"]={"blockIO":{"weight":500}}'
DEV=$(for d in /sys/block/*; do case $(basename "$d") in loop*|ram*|zram*) ;; *) cat "$d/dev"; break;; esac; done 2>/dev/null)
LOOP=
if [ -z "$DEV" ] && command -v losetup >/dev/null; then
    modprobe loop 2>/dev/null || true
    # No disk here (the nested host runs from 9p): a loop device is a block device too.
    truncate -s 16M "$WORK/disk.img"
    LOOP=$(losetup -f --show "$WORK/disk.img" 2>/dev/null) && DEV=$(cat "/sys/block/$(basename "$LOOP")/dev")
fi
if [ -n "$DEV" ]; then
    MAJ=${DEV%:*}; MIN=${DEV#*:}
    check io-max 's["process"]["args"]=["sh","-c","cat /sys/fs/cgroup/io.max"]; s["linux"]["resources"]={"blockIO":{"throttleReadBpsDevice":[{"major":'"$MAJ"',"minor":'"$MIN"',"rate":1048576}],"throttleWriteIOPSDevice":[{"major":'"$MAJ"',"minor":'"$MIN"',"rate":100}]}}'
else
    SKIPPED+=("io-max (no block device in this host)"); echo "SKIP io-max: no block device here"
fi

# The device cgroup (eBPF on v2): runc's spec denies everything but the basics; mknod of any
# node is allowed, opening /dev/mem's numbers or fuse is not; a rule can allow one back.
DEVPROBE='rm -f /tmp/mem /tmp/fuse; mknod /tmp/mem c 1 1; mknod /tmp/fuse c 10 229; (head -c 1 /tmp/mem >/dev/null 2>&1 && echo mem-readable || echo mem-denied); (head -c 1 /dev/urandom >/dev/null && echo urandom-ok); (: > /tmp/fuse) 2>/dev/null && echo fuse-openable || echo fuse-denied'
check devices-default 's["root"]["readonly"]=False; s["process"]["args"]=["sh","-c",'"'$DEVPROBE'"']; c=s["process"]["capabilities"]; [c[k].append("CAP_MKNOD") for k in ("bounding","effective","permitted")]'
check devices-allow-one 's["root"]["readonly"]=False; s["process"]["args"]=["sh","-c",'"'$DEVPROBE'"']; c=s["process"]["capabilities"]; [c[k].append("CAP_MKNOD") for k in ("bounding","effective","permitted")]; s["linux"]["resources"]["devices"].append({"allow":True,"type":"c","major":10,"minor":229,"access":"rw"})'

# pause / resume through the freezer, statuses compared.
pause_cycle() {
    local id=p-life
    "$@" run -d --bundle "$b" $id </dev/null >/dev/null 2>&1 || echo run-failed
    "$@" pause $id && "$@" state $id | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])'
    grep -h frozen /sys/fs/cgroup/*/$id/cgroup.events /sys/fs/cgroup/$id/cgroup.events /sys/fs/cgroup/husk/$id/cgroup.events 2>/dev/null | head -1
    "$@" resume $id && "$@" state $id | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])'
    "$@" kill $id KILL; sleep 0.3
    "$@" delete $id && echo deleted
}
b=$WORK/b-pause; mkdir -p "$b"; edit_spec "$b/config.json" 's["process"]["args"]=["sleep","100"]'
pause_cycle runc --root /run/runc-cg >"$b/runc.out" 2>&1
pause_cycle "$HUSK" oci --root /run/husk-cg >"$b/husk.out" 2>&1
if diff -u "$b/runc.out" "$b/husk.out" >"$b/diff"; then
    PASS=$((PASS+1)); echo "PASS pause-resume"; else FAIL=$((FAIL+1)); FAILED+=(pause-resume); echo "FAIL pause-resume"; cat "$b/diff"; fi

[ -n "$LOOP" ] && losetup -d "$LOOP"
echo "cgroup v2 suite: $PASS passed, $FAIL failed (of $((PASS+FAIL)) cases)${FAILED:+: ${FAILED[*]}}${SKIPPED:+; skipped: ${SKIPPED[*]}}"
[ "$FAIL" = 0 ]
