#!/usr/bin/env bash
# The shim end to end with Debian's containerd 1.6: `ctr run --runtime io.containerd.husk.v2`
# boots a husk VM per container and runs busybox in it: output, exit codes 0/1/137, stdin
# piped, the guest's kernel, and nothing left running or mounted afterwards.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
[ -e /dev/kvm ] || skip "no /dev/kvm"
if [ -e /sys/module/kvm_pvm ] || ! grep -qE 'vmx|svm' /proc/cpuinfo; then
  skip "this /dev/kvm cannot boot the guest at speed (PVM or emulation): run in the nested test host"
fi
command -v containerd >/dev/null && command -v ctr >/dev/null || skip "containerd not installed (apt-get install containerd)"
bin() { # bin NAME ENVVAR: the first built copy of NAME
  local n=$1 v=${!2:-} c
  [ -n "$v" ] && { echo "$v"; return; }
  for c in "$top/target/debug/$n" "$top/target/release/$n" "${CARGO_TARGET_DIR:-/nonexistent}/debug/$n" /usr/local/bin/"$n"; do
    [ -x "$c" ] && { echo "$c"; return; }
  done
}
shim=$(bin containerd-shim-husk-v2 HUSK_SHIM); [ -n "$shim" ] || fail "no containerd-shim-husk-v2: run make"
vmm=$(bin husk-vmm HUSK_VMM); [ -n "$vmm" ] || fail "no husk-vmm: run make"
vfsd=${HUSK_VIRTIOFSD:-$(command -v virtiofsd || echo "$HOME/.cargo/bin/virtiofsd")}
[ -x "$vfsd" ] || skip "no virtiofsd (cargo install virtiofsd)"
[ -f "$guest/vmlinux" ] && [ -f "$guest/rootfs.cpio" ] || fail "missing $guest/{vmlinux,rootfs.cpio}: run make"
busybox=$(command -v busybox) || skip "no busybox (apt-get install busybox-static)"
ldd "$busybox" 2>&1 | grep -q '=>' && skip "$busybox is not static (apt-get install busybox-static)"

w=$(mktemp -d /tmp/husk-shim-test.XXXXXX)
cleanup() {
  set +e
  for p in "$w"/*.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done
  sleep 0.5
  grep -q "$w" /proc/mounts && awk -v w="$w" '$2 ~ w {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l
  rm -rf "$w"
}
trap cleanup EXIT
mkdir -p "$w/bin" "$w/rootfs/bin" "$w/run"
ln -s "$shim" "$w/bin/containerd-shim-husk-v2"
cp "$busybox" "$w/rootfs/bin/busybox"
for c in sh echo cat uname true sleep nproc grep; do ln -s busybox "$w/rootfs/bin/$c"; done
cat > "$w/husk.toml" <<TOML
kernel = "$guest/vmlinux"
rootfs = "$guest/rootfs.cpio"
vmm = "$vmm"
virtiofsd = "$vfsd"
state_dir = "$w/run"
debug_console = true
boot_timeout_secs = 120
log_level = "debug"
TOML
start_containerd "$w" HUSK_CONFIG="$w/husk.toml" PATH="$w/bin:$PATH"
ctr_run() { # ctr_run ID [--flag value]... ARGS...: runs busybox ARGS in a husk VM
  local id=$1 flags=(); shift
  while [ "${1:-}" != "${1#--}" ]; do flags+=("$1" "$2"); shift 2; done
  timeout 300 ctr -a "$w/containerd.sock" run --rm --runtime io.containerd.husk.v2 "${flags[@]}" --rootfs "$w/rootfs" "$id" "$@"
}
# The pod directory goes with the pod: keep copies of its logs for failures.
mkdir -p "$w/logs"
( while sleep 0.5; do for f in "$w"/run/*/console.log "$w"/run/*/vmm.log "$w"/run/*/virtiofsd.log; do [ -f "$f" ] && cp "$f" "$w/logs/"; done; done ) &
echo $! > "$w/logcopy.pid"
show_logs() {
  grep -v 'loading plugin\|skip plugin\|devmapper' "$w/containerd.log" | tail -15
  for f in "$w"/logs/*; do [ -f "$f" ] && { echo "== $f"; tail -25 "$f"; }; done
}
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

# the VM is sized from the limits: 2 CPUs, 256 MiB (+ the guest's overhead)
out=$(ctr_run t-size --cpus 2 --memory-limit 268435456 /bin/sh -c 'nproc; grep MemTotal /proc/meminfo' </dev/null)
echo "sized pod sees: $(echo $out)"
[ "$(echo "$out" | head -1)" = 2 ] || fail "nproc in a --cpus 2 pod: $out"
memkb=$(echo "$out" | awk '/MemTotal/ {print $2}')
[ "$memkb" -ge $((200 * 1024)) ] && [ "$memkb" -le $((320 * 1024)) ] || fail "MemTotal ${memkb} kB for a 256 MiB limit"

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

sleep 1
pgrep -f "$vmm run --config $w" && fail "a husk-vmm is still running"
pgrep -f "containerd-shim-husk-v2.*-namespace" && fail "a shim is still running"
grep -q "$w/run" /proc/mounts && fail "mounts left under $w/run"
echo "shim: ctr run in husk VMs: exit codes 0/1/137, stdin, exec, guest kernel, sizing, a two-container pod in one VM: ok"
