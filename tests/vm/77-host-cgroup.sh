#!/usr/bin/env bash
# Issue 16, host cgroups (Kata's sandbox_cgroup_only): a pod's shim, vmm and virtiofsd run
# in the cgroup containerd gives the sandbox (`ctr run --cgroup`, the cgroupfs form), and
# so does the systemd form (slice:prefix:name). Checks: every husk process of the pod is
# in that cgroup's cgroup.procs and no other process is; its memory.current covers guest
# RAM the guest touched (more than the shim's and virtiofsd's own RSS); a memory.max set on
# the parent (as the kubelet sets the pod's limit) is what the pod runs under; after delete
# the pod's cgroup is gone and nothing of the pod runs.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
shim_vm_require
[ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] || skip "/sys/fs/cgroup is not cgroup v2"
shim_vm_setup husk-host-cgroup sh sleep cat true
fail() { show_logs || true; echo "FAIL: $*" >&2; exit 1; }
parent=/sys/fs/cgroup/husk-test-$$
cleanup_cg() { rmdir "$parent"/*/ "$parent" 2>/dev/null || true; rmdir /sys/fs/cgroup/husktest$$.slice/*/ /sys/fs/cgroup/husktest$$.slice 2>/dev/null || true; }
trap 'cleanup_cg; shim_vm_cleanup' EXIT

# check_pod ID CGDIR: the pod's processes are exactly the cgroup's
check_pod() {
  local id=$1 dir=$2 shim vmm vfsd p procs
  [ -d "$dir" ] || fail "$id: no cgroup $dir"
  vmm=$(pidof_file "$w/run/$id/vmm.pid")
  vfsd=$(pidof_file "$w/run/$id/virtiofsd.pid")
  shim=$(pgrep -f "containerd-shim-husk-v2.*-id $id( |$)" | head -1)
  [ -n "$shim" ] || fail "$id: no shim process"
  procs=$(sort -n "$dir/cgroup.procs" | tr '\n' ' ')
  for p in "$shim" "$vmm" "$vfsd" $(pgrep -P "$vfsd" || true); do
    grep -qx "$p" "$dir/cgroup.procs" || fail "$id: pid $p ($(tr '\0' ' ' < /proc/$p/cmdline | cut -c1-80)) is in $(cat /proc/$p/cgroup), not $dir (procs: $procs)"
  done
  # A process that exits as we look (the template maker's vmm) is not one of the pod's.
  sleep 1
  procs=$(sort -n "$dir/cgroup.procs" | tr '\n' ' ')
  for p in $procs; do
    # KVM's own kernel thread for the VM (kvm-nx-lpage-recovery) joins its owner's
    # cgroups: the pod's, rightly.
    [ "$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null)" = 2 ] && case $(cat "/proc/$p/comm" 2>/dev/null) in kvm*) continue ;; esac
    case " $shim $vmm $vfsd $(pgrep -P "$vfsd" | tr '\n' ' ') " in *" $p "*) ;; *)
      fail "$id: pid $p ($(cat /proc/$p/comm 2>/dev/null) $(awk '{print $3}' /proc/$p/stat 2>/dev/null) $(tr '\0' ' ' < /proc/$p/cmdline 2>/dev/null), parent $(awk '{print $4}' /proc/$p/stat 2>/dev/null)) is in the pod's cgroup" ;; esac
  done
  local cur rss=0
  cur=$(cat "$dir/memory.current")
  for p in "$shim" "$vfsd"; do rss=$((rss + $(awk '/^VmRSS:/ {print $2}' /proc/$p/status) * 1024)); done
  echo "$id: cgroup $dir holds shim $shim, vmm $vmm, virtiofsd $vfsd; memory.current $((cur / 1048576)) MiB (shim + virtiofsd RSS $((rss / 1048576)) MiB)"
  [ "$cur" -gt $((rss + 8 * 1048576)) ] || fail "$id: memory.current $cur does not cover guest RAM"
}

mkdir "$parent"
echo "+memory +pids +cpu" > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
echo $((1024 * 1048576)) > "$parent/memory.max"
c run -d --runtime io.containerd.husk.v2 --cgroup "/husk-test-$$/pod1" \
  --rootfs "$w/rootfs" t-cg1 /bin/sleep 600 </dev/null || fail "ctr run -d t-cg1"
wait_task_state t-cg1 RUNNING 120 || fail "t-cg1 not running: $(c task ls)"
check_pod t-cg1 "$parent/pod1"
[ "$(cat "$parent/memory.current")" -ge "$(cat "$parent/pod1/memory.current")" ] || fail "the parent is not charged"
out=$(c task exec --exec-id e1 t-cg1 /bin/cat /proc/self/cgroup) || fail "exec in t-cg1"
echo "t-cg1: the container sees its guest cgroup: $out"

# the systemd driver's form
c run -d --runtime io.containerd.husk.v2 --cgroup "husktest$$.slice:husk:t-cg2" \
  --rootfs "$w/rootfs" t-cg2 /bin/sleep 600 </dev/null || fail "ctr run -d t-cg2"
wait_task_state t-cg2 RUNNING 120 || fail "t-cg2 not running: $(c task ls)"
check_pod t-cg2 "/sys/fs/cgroup/husktest$$.slice/husk-t-cg2.scope"

for id in t-cg1 t-cg2; do kill_and_delete "$id" >/dev/null; done
assert_nothing_left
for _ in $(seq 50); do [ ! -e "$parent/pod1" ] && [ ! -e "/sys/fs/cgroup/husktest$$.slice/husk-t-cg2.scope" ] && break; sleep 0.1; done
[ ! -e "$parent/pod1" ] || fail "the pod's cgroup $parent/pod1 is left (procs: $(cat "$parent/pod1/cgroup.procs" | tr '\n' ' '))"
[ ! -e "/sys/fs/cgroup/husktest$$.slice/husk-t-cg2.scope" ] || fail "the systemd-form scope is left"
[ ! -e "/sys/fs/cgroup/husktest$$.slice" ] || fail "the slice the shim made is left"
echo "host cgroups: shim, vmm and virtiofsd of each pod in its sandbox cgroup (cgroupfs and systemd forms), guest RAM charged there, removed with the pod: ok"
