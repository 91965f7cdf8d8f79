#!/usr/bin/env bash
# The agent as PID 1 of a real guest, reached over vsock: boots the husk guest kernel with
# an initramfs whose /init is the static husk-agent under QEMU's microvm machine with a
# vhost-vsock device, waits for the agent's first console lines, then calls the agent API
# over vsock from the host with `husk-agent ctl`: health check, guest details, and two
# containers run by the agent inside the guest (cgroup limits seen inside, an OOM kill).
# Needs real KVM and vhost_vsock (the nested test host):
#
#   make nested CMD='tests/engine/agent-vm.sh'
#
# Env: HUSK_GUEST_DIR (bzImage; default target/guest), HUSK_AGENT_STATIC (the static agent
# for /init; default: built like rootfs/build.sh), HUSK_AGENT (host-side client binary).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
guest=${HUSK_GUEST_DIR:-$top/target/guest}
CID=${HUSK_TEST_CID:-42}
skip() { echo "SKIP agent VM test: $*"; exit 0; }
fail() { echo "FAIL agent VM test: $*"; exit 1; }
[ "$(id -u)" = 0 ] || skip "needs root"
[ -c /dev/kvm ] || skip "no /dev/kvm"
if [ -e /sys/module/kvm_pvm ] && [ -z "${HUSK_NESTED:-}" ]; then
    skip "this /dev/kvm is PVM; run it with make nested CMD='tests/engine/agent-vm.sh'"
fi
modprobe vhost_vsock 2>/dev/null || true
[ -c /dev/vhost-vsock ] || skip "no /dev/vhost-vsock"
[ -f "$guest/bzImage" ] || fail "no $guest/bzImage: run make kernel"
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 missing"

static=${HUSK_AGENT_STATIC:-${CARGO_TARGET_DIR:-$top/target}/x86_64-unknown-linux-gnu/agent/husk-agent}
[ -x "$static" ] || fail "no static agent at $static (RUSTFLAGS='-C target-feature=+crt-static' cargo build --profile agent --target x86_64-unknown-linux-gnu -p husk-agent, as rootfs/build.sh does)"
client=${HUSK_AGENT:-$static}

w=$(mktemp -d /tmp/husk-agent-vm.XXXXXX)
QEMU_PID=
trap '[ -n "$QEMU_PID" ] && kill $QEMU_PID 2>/dev/null; wait 2>/dev/null; rm -rf "$w"' EXIT
busybox=$(command -v busybox) || skip "no busybox (apt-get install busybox-static)"
file -L "$busybox" | grep -q static || skip "busybox is not static"
python3 "$top/rootfs/mkcpio.py" > "$w/rootfs.cpio" <<SPEC
dir /dev 0755
nod /dev/console 0600 c 5 1
nod /dev/null 0666 c 1 3
dir /etc 0755
file /init 0755 $static
dir /proc 0755
dir /run 0755
dir /sys 0755
dir /tmp 1777
dir /bundle 0755
dir /bundle/rootfs 0755
dir /bundle/rootfs/bin 0755
file /bundle/rootfs/bin/busybox 0755 $busybox
slink /bundle/rootfs/bin/sh 0777 busybox
slink /bundle/rootfs/bin/cat 0777 busybox
slink /bundle/rootfs/bin/echo 0777 busybox
slink /bundle/rootfs/bin/hostname 0777 busybox
slink /bundle/rootfs/bin/dd 0777 busybox
dir /bundle/rootfs/proc 0755
dir /bundle/rootfs/dev 0755
dir /bundle/rootfs/sys 0755
dir /bundle/rootfs/tmp 1777
SPEC

log=$w/console.log
t0=$(date +%s%N)
qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off,acpi=off -enable-kvm -cpu host \
    -m 256M -smp 2 -nodefaults -no-user-config -nographic -no-reboot \
    -serial "file:$log" -kernel "$guest/bzImage" -initrd "$w/rootfs.cpio" \
    -append "console=ttyS0 reboot=k panic=-1" \
    -device "vhost-vsock-device,guest-cid=$CID" </dev/null >/dev/null 2>"$w/qemu.err" &
QEMU_PID=$!

wait_for() { # wait_for PATTERN SECONDS
    local end=$(( $(date +%s) + $2 ))
    until grep -q "$1" "$log" 2>/dev/null; do
        [ "$(date +%s)" -lt "$end" ] || return 1
        kill -0 $QEMU_PID 2>/dev/null || return 1
        sleep 0.05
    done
}
wait_for "husk-agent: started" 120 || { cat "$log" "$w/qemu.err"; fail "no agent first line"; }
first_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
wait_for "husk-agent: serving on" 60 || { cat "$log"; fail "agent did not start serving"; }
grep "husk-agent:" "$log"
line=$("$client" ctl --address "vsock://$CID:1024" --timeout 60) || { cat "$log"; fail "agent API over vsock did not answer"; }
api_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
echo "$line"
echo "$line" | grep -q "serving=true" || fail "agent not serving"
echo "$line" | grep -q "cpus=2" || fail "guest details: expected 2 CPUs"
# A container inside the guest: the engine under PID 1, its cgroup v2 limits, its exit code.
spec() { # spec ARGS_JSON RESOURCES_JSON
    cat <<EOF
{"ociVersion":"1.0.2","root":{"path":"/bundle/rootfs","readonly":true},"hostname":"vm-ctr",
 "process":{"cwd":"/","args":$1,"env":["PATH=/bin"],"user":{"uid":0,"gid":0},"noNewPrivileges":true},
 "mounts":[{"destination":"/proc","type":"proc","source":"proc"},
           {"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","mode=755"]},
           {"destination":"/sys","type":"sysfs","source":"sysfs","options":["ro","nosuid","nodev","noexec"]},
           {"destination":"/sys/fs/cgroup","type":"cgroup","source":"cgroup","options":["ro","nosuid","nodev","noexec"]}],
 "linux":{"namespaces":[{"type":"pid"},{"type":"mount"},{"type":"uts"},{"type":"ipc"},{"type":"cgroup"}],
          "resources":$2}}
EOF
}
spec '["sh","-c","echo hello from $(hostname) pid $$; cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max"]' \
    '{"memory":{"limit":33554432},"pids":{"limit":10}}' > "$w/run.json"
out=$("$client" ctl --address "vsock://$CID:1024" --run "$w/run.json") || { cat "$log"; fail "container run in the guest failed: $out"; }
echo "$out"
[ "$out" = "$(printf 'hello from vm-ctr pid 1\n33554432\n10')" ] || fail "unexpected container output"
spec '["sh","-c","dd if=/dev/zero of=/dev/null bs=48M count=1"]' '{"memory":{"limit":16777216}}' > "$w/oom.json"
rc=0; "$client" ctl --address "vsock://$CID:1024" --run "$w/oom.json" >/dev/null 2>&1 || rc=$?
[ "$rc" = 137 ] || fail "allocation past the memory limit: exit $rc, expected 137 (OOM kill)"
echo "container past its memory limit: exit 137 (OOM-killed) in the guest"
oom=$("$client" ctl --address "vsock://$CID:1024" --next-oom --timeout 20) || fail "no OOM event from the agent"
[ "$oom" = ctl-run ] || fail "OOM event names $oom, expected ctl-run"
echo "OOM event reported for container $oom"
if grep -q "husk-agent: init" "$log"; then
    echo "init warnings:"; grep "husk-agent: init" "$log"
fi
echo "PASS agent-vm: first line ${first_ms} ms, API answered over vsock ${api_ms} ms after QEMU start"
