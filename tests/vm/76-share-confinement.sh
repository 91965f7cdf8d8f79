#!/usr/bin/env bash
# Catalogue cases 24 and 30 at VM level: the shared filesystem from guest root.
# 24: a read-only volume stays read-only even for a privileged container (root in the guest
#     with CAP_SYS_ADMIN), which remounts it read-write in the guest and writes: the write
#     fails at the host side of the share, and the host directory is unchanged.
# 30: guest root plants symlinks and hard links with absolute and `..` targets in a
#     read-write volume and writes through them: nothing outside the share changes on the
#     host (a canary file beside the share), the links on the host are plain symlinks
#     nobody follows, and virtiofsd runs confined: seccomp on (Seccomp: 2) and in its own
#     mount namespace (--sandbox=namespace). After delete, the canary is still unchanged.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
shim_vm_require
shim_vm_setup husk-share sh echo cat ln mount touch ls true sleep
fail() { show_logs || true; echo "FAIL: $*" >&2; exit 1; }
mkdir -p "$w/vol-ro" "$w/vol-rw"
echo ro-original > "$w/vol-ro/f"
echo canary-original > "$w/canary"
sum_ro=$(cd "$w/vol-ro" && ls -la; cat f)

c run -d --privileged --runtime io.containerd.husk.v2 \
  --mount "type=bind,src=$w/vol-ro,dst=/ro,options=rbind:ro" \
  --mount "type=bind,src=$w/vol-rw,dst=/rw,options=rbind:rw" \
  --rootfs "$w/rootfs" t-share /bin/sleep 100000 </dev/null || fail "ctr run -d"
wait_task_state t-share RUNNING 120 || fail "t-share not running"
x() { CTR_TIMEOUT=60 c task exec --exec-id "x$RANDOM" t-share /bin/sh -c "$1" </dev/null 2>&1; }

# --- 24: remount read-write in the guest, then write
out=$(x 'mount -o remount,rw /ro 2>&1; echo remount=$?; echo pwned > /ro/f 2>&1; echo write=$?; touch /ro/new 2>&1; echo touch=$?')
echo "privileged container on the read-only volume: $(echo $out)"
echo "$out" | grep -q 'write=0' && fail "a write to the read-only volume succeeded in the guest"
echo "$out" | grep -q 'touch=0' && fail "a create on the read-only volume succeeded in the guest"
[ "$(cd "$w/vol-ro" && ls -la; cat f)" = "$sum_ro" ] || fail "the read-only volume changed on the host"

# --- 30: links planted from guest root
out=$(x "ln -s $w/canary /rw/abs; ln -s ../../../../../../../../$w/canary /rw/dotdot; ln /rw/abs /rw/hard 2>&1;
  echo pwned > /rw/abs 2>&1; echo abs=\$?; echo pwned > /rw/dotdot 2>&1; echo dotdot=\$?; cat /rw/dotdot 2>&1; echo")
echo "links from guest root: $(echo $out)"
[ "$(cat "$w/canary")" = canary-original ] || fail "a write through a guest-planted link changed the host's canary"
[ -L "$w/vol-rw/abs" ] && [ -L "$w/vol-rw/dotdot" ] || fail "the guest's symlinks are not plain symlinks on the host: $(ls -la "$w/vol-rw")"

# --sandbox=namespace: the virtiofsd that serves is a child in namespaces of its own (its
# parent only waits for it); every thread of the serving one has a seccomp filter
vfsd=""
for p in $(pgrep -f "virtiofsd.*$w/run/t-share/"); do
  [ "$(readlink "/proc/$p/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ] && vfsd=$p
done
[ -n "$vfsd" ] || fail "no virtiofsd of t-share runs in a mount namespace of its own: $(pgrep -af virtiofsd)"
seccomp=$(cat /proc/"$vfsd"/task/*/status | awk '/^Seccomp:/ {print $2}' | sort -u | tr '\n' ' ')
[ "$seccomp" = "2 " ] || fail "virtiofsd's threads run with Seccomp: $seccomp (want 2 on every thread)"
echo "virtiofsd $vfsd: Seccomp 2 on $(ls /proc/$vfsd/task | wc -l) threads, own mount namespace"

kill_and_delete t-share
assert_nothing_left
[ "$(cat "$w/canary")" = canary-original ] || fail "the canary changed by the pod's cleanup"
[ -e "$w/vol-rw/abs" ] || [ -L "$w/vol-rw/abs" ] || fail "cleanup removed the volume's contents"
echo "cases 24 and 30: read-only volume holds against guest root, planted links change nothing on the host, virtiofsd confined: ok"
