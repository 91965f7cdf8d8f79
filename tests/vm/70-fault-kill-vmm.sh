#!/usr/bin/env bash
# Catalogue case 43: `kill -9` the vmm during heavy I/O. A pod's init and an exec'd process
# both write (dd conv=fsync) to a volume, an ext4 image loop-mounted on the host and
# bind-mounted into the container; the pod's vmm is killed with -9 mid-write.
# Checks: the container's task and the exec are both reported exited within 10 s (the shim
# watches its vmm: no polling interval to wait for); after delete no vmm, virtiofsd or shim
# of the pod runs, nothing of it is mounted, its state directory (sockets, pid files) is
# gone and no zombie is left; the volume's filesystem passes `e2fsck -fn`.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
shim_vm_require
command -v mkfs.ext4 >/dev/null && command -v e2fsck >/dev/null || skip "no e2fsprogs"
shim_vm_setup husk-fault-vmm sh dd sleep cat true
fail() { show_logs || true; echo "FAIL: $*" >&2; exit 1; }
z0=$(zombies)

truncate -s 256M "$w/vol.img"
mkfs.ext4 -q -F "$w/vol.img"
mkdir "$w/vol"
[ -e /dev/loop-control ] || modprobe loop 2>/dev/null || true
mount -o loop "$w/vol.img" "$w/vol"

writer='i=0; while :; do dd if=/dev/zero of=/vol/$0.$((i % 4)) bs=64k count=32 conv=fsync 2>/dev/null; i=$((i + 1)); done'
c run -d --runtime io.containerd.husk.v2 --mount "type=bind,src=$w/vol,dst=/vol,options=rbind:rw" \
  --rootfs "$w/rootfs" t-io /bin/sh -c "$writer" init </dev/null \
  || fail "ctr run -d t-io"
wait_task_state t-io RUNNING 120 || fail "t-io not running: $(c task ls)"
c task exec --exec-id io2 t-io /bin/sh -c "$writer" exec </dev/null >/dev/null 2>&1 &
exec_pid=$!
# both writers have written to the host's filesystem before the kill
for _ in $(seq 600); do
  [ -s "$w/vol/init.0" ] && [ -s "$w/vol/exec.0" ] && break
  sleep 0.1
done
[ -s "$w/vol/init.0" ] && [ -s "$w/vol/exec.0" ] || fail "the writers wrote nothing: $(ls -l "$w/vol")"
vmm_pid=$(pidof_file "$w/run/t-io/vmm.pid")
echo "writers running (vmm $vmm_pid): $(du -sh "$w/vol" | cut -f1) written"

t0=$(date +%s%N)
kill -9 "$vmm_pid"
stopped=""
for _ in $(seq 200); do
  if [ -z "$stopped" ] && c task ls 2>/dev/null | grep -qE '^t-io +[0-9]+ +STOPPED'; then
    stopped=$(( ($(date +%s%N) - t0) / 1000000 ))
  fi
  [ -n "$stopped" ] && ! kill -0 "$exec_pid" 2>/dev/null && break
  sleep 0.05
done
exec_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
[ -n "$stopped" ] || fail "t-io not STOPPED 10 s after its vmm was killed: $(c task ls)"
kill -0 "$exec_pid" 2>/dev/null && fail "the exec's ctr still waits 10 s after the vmm was killed"
set +e; wait "$exec_pid"; exec_rc=$?; set -e
echo "vmm killed: task STOPPED after ${stopped} ms, exec ended after <= ${exec_ms} ms (ctr exit $exec_rc)"
[ "$exec_rc" != 0 ] || fail "the exec reported success after its VM was killed"
status=$(c task ls | awk '$1 == "t-io" {print $3}')
c task delete t-io >/dev/null || fail "task delete after the vmm was killed"
c container delete t-io || fail "container delete"

assert_nothing_left
[ -e "$w/run/t-io" ] && fail "the pod's state directory is left: $(ls -la "$w/run/t-io")"
find "$w/run" -type s | grep . && fail "sockets left under the state dir"
for _ in $(seq 20); do [ "$(zombies)" -le "$z0" ] && break; sleep 0.1; done
[ "$(zombies)" -le "$z0" ] || fail "zombies left: $(ps -eo pid,ppid,stat,args | awk '$3 ~ /^Z/')"
umount "$w/vol"
e2fsck -fn "$w/vol.img" >"$w/fsck.log" 2>&1 || { cat "$w/fsck.log"; fail "the volume's filesystem is damaged"; }
echo "case 43: vmm killed under I/O: task $status, exec ended, nothing left, volume fsck clean: ok"
