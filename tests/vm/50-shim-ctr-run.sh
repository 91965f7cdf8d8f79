#!/usr/bin/env bash
# The shim end to end with Debian's containerd 1.6: `ctr run --runtime io.containerd.husk.v2`
# boots a husk VM per container and runs busybox in it: output, exit codes 0/1/137, stdin
# piped, the guest's kernel, and nothing left running or mounted afterwards.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
shim_vm_require
shim_vm_setup husk-shim-test sh echo cat uname true sleep nproc grep
fail() { show_logs; echo "FAIL: $*" >&2; exit 1; }

t0=$(date +%s%N)
out=$(ctr_run t-echo /bin/echo hello-from-husk </dev/null)
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
[ "$out" = "hello-from-husk" ] || fail "echo printed '$out'"
echo "ctr run echo: ${ms} ms"

host_kernel=$(uname -r)
guest_kernel=$(ctr_run t-uname /bin/uname -r </dev/null)
echo "host kernel $host_kernel, guest kernel $guest_kernel"
[ -n "$guest_kernel" ] && [ "$guest_kernel" != "$host_kernel" ] || fail "the container did not run on husk's kernel"

# the VM is sized from the limits: 2 CPUs, 256 MiB (+ the guest's overhead); the
# container's own network namespace has its loopback up (flags 0x9, UP|LOOPBACK), as runc
# gives it
out=$(ctr_run t-size --cpus 2 --memory-limit 268435456 /bin/sh -c 'nproc; grep MemTotal /proc/meminfo; echo lo=$(cat /sys/class/net/lo/flags)' </dev/null)
echo "sized pod sees: $(echo $out)"
[ "$(echo "$out" | head -1)" = 2 ] || fail "nproc in a --cpus 2 pod: $out"
memkb=$(echo "$out" | awk '/MemTotal/ {print $2}')
[ "$memkb" -ge $((200 * 1024)) ] && [ "$memkb" -le $((320 * 1024)) ] || fail "MemTotal ${memkb} kB for a 256 MiB limit"
echo "$out" | grep -qx 'lo=0x9' || fail "the container's loopback is not up: $out"

set +e
ctr_run t-exit1 /bin/sh -c 'exit 1' </dev/null; rc1=$?
set -e
[ "$rc1" = 1 ] || fail "exit 1 came back as $rc1"
# ctr task kill -s SIGKILL: the waiting `ctr run` sees 137
ctr_run t-kill /bin/sleep 1000 </dev/null & runpid=$!
for _ in $(seq 600); do ctr -a "$w/containerd.sock" task ls 2>/dev/null | grep -qE '^t-kill +[0-9]+ +RUNNING' && break; sleep 0.1; done
ctr -a "$w/containerd.sock" task kill -s SIGKILL t-kill
set +e; wait "$runpid"; rc137=$?; set -e
[ "$rc137" = 137 ] || fail "SIGKILL came back as $rc137"

out=$(echo piped-stdin | ctr_run t-cat /bin/cat)
[ "$out" = "piped-stdin" ] || fail "cat echoed '$out'"

# exec into a running container
timeout 300 ctr -a "$w/containerd.sock" run -d --runtime io.containerd.husk.v2 --rootfs "$w/rootfs" t-long /bin/sleep 1000 </dev/null
out=$(timeout 120 ctr -a "$w/containerd.sock" task exec --exec-id e1 t-long /bin/echo exec-ok </dev/null)
[ "$out" = "exec-ok" ] || fail "exec printed '$out'"
timeout 60 ctr -a "$w/containerd.sock" task kill -s SIGKILL t-long
for _ in $(seq 100); do ctr -a "$w/containerd.sock" task ls | grep -qE '^t-long +[0-9]+ +STOPPED' && break; sleep 0.1; done
timeout 60 ctr -a "$w/containerd.sock" task delete t-long >/dev/null
timeout 60 ctr -a "$w/containerd.sock" container delete t-long

# a pod: a CRI-annotated member joins its sandbox's VM (same guest boot id)
a=io.kubernetes.cri
timeout 300 ctr -a "$w/containerd.sock" run -d --runtime io.containerd.husk.v2 \
  --annotation $a.container-type=sandbox --annotation $a.sandbox-id=p1 --rootfs "$w/rootfs" p1 /bin/sleep 1000 </dev/null
boot_sandbox=$(timeout 120 ctr -a "$w/containerd.sock" task exec --exec-id b p1 /bin/cat /proc/sys/kernel/random/boot_id </dev/null)
boot_member=$(timeout 300 ctr -a "$w/containerd.sock" run --rm --runtime io.containerd.husk.v2 \
  --annotation $a.container-type=container --annotation $a.sandbox-id=p1 --rootfs "$w/rootfs" c2 /bin/cat /proc/sys/kernel/random/boot_id </dev/null)
[ -n "$boot_sandbox" ] && [ "$boot_sandbox" = "$boot_member" ] || fail "member ran in another VM: $boot_sandbox vs $boot_member"
[ "$(pgrep -fc "$vmm run --config $w")" = 1 ] || fail "a pod of two containers runs $(pgrep -fc "$vmm run --config $w") vmms"
timeout 60 ctr -a "$w/containerd.sock" task kill -s SIGKILL p1
for _ in $(seq 100); do ctr -a "$w/containerd.sock" task ls | grep -qE '^p1 +[0-9]+ +STOPPED' && break; sleep 0.1; done
timeout 60 ctr -a "$w/containerd.sock" task delete p1 >/dev/null
timeout 60 ctr -a "$w/containerd.sock" container delete p1

assert_nothing_left
echo "shim: ctr run in husk VMs: exit codes 0/1/137, stdin, exec, guest kernel, sizing, a two-container pod in one VM: ok"
