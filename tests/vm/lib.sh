# Helpers for VM-level tests (sourced). These run inside the nested test host, or directly
# where /dev/kvm is hardware-backed; they need target/guest/{bzImage,vmlinux,rootfs.cpio}.
top=${HUSK_TOP:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}

# staged PATH: PATH, or where it lies on 9p (the checkout inside the nested test host) a
# copy of it in tmpfs, made once per test host. The test host mounts the checkout over 9p
# without a page cache, so every exec of a husk binary and every kernel or initrd load
# would read the file again over virtio-9p (a 7 MB shim: ~130 ms per exec), while
# containerd, runc and QEMU come from the page-cached host root. Staged, husk's files are
# read from memory as installed files are (`make install` to a local disk): husk and its
# peers are measured alike.
STAGE_DIR=/run/husk-stage
on_9p() { [ "$(findmnt -n -o FSTYPE -T "$1" 2>/dev/null)" = 9p ]; }
staged() {
  local src=$1 dst
  on_9p "$src" || { echo "$src"; return; }
  dst=$STAGE_DIR$(realpath "$src")
  if [ ! -e "$dst" ] || [ "$src" -nt "$dst" ]; then
    mkdir -p "$(dirname "$dst")"
    cp -p "$src" "$dst.$$" && mv -f "$dst.$$" "$dst" || { echo "$src"; return; }
  fi
  echo "$dst"
}
# staged_guest DIR: DIR, or a tmpfs copy of the guest files in it (see staged)
staged_guest() {
  local f d=$1
  on_9p "$d" || { echo "$d"; return; }
  for f in vmlinux bzImage rootfs.cpio husk-agent; do [ -f "$d/$f" ] && staged "$d/$f" >/dev/null; done
  echo "$STAGE_DIR$(realpath "$d")"
}
guest=$(staged_guest "${HUSK_GUEST_DIR:-$top/target/guest}")
AGENT_FIRST_LINE="husk-agent: started"

fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIP: $*" >&2; exit 77; }

# wait_for_line FILE PATTERN TIMEOUT_S: waits until FILE has a line matching PATTERN
wait_for_line() {
  local file=$1 pat=$2 limit=$3 start
  start=$(date +%s%N)
  while ! grep -qE "$pat" "$file" 2>/dev/null; do
    if [ $(( ($(date +%s%N) - start) / 1000000000 )) -ge "$limit" ]; then return 1; fi
    sleep 0.02
  done
}

# guest_ram_kib PID: resident KiB of PID's mappings of guest RAM (husk-vmm's memfd
# `husk-guest-ram`, or its unlinked file in a pod's `ram/` tmpfs), from smaps. Not
# RssShmem: staged binaries live in tmpfs too, and their pages are shmem as well.
guest_ram_kib() {
  awk '/^[0-9a-f]+-[0-9a-f]+ / { g = ($0 ~ /memfd:husk-guest-ram/ || $0 ~ /\/ram\/#[0-9]+ \(deleted\)$/) }
       g && /^Rss:/ { s += $2 } END { print s + 0 }' "/proc/$1/smaps"
}

# qemu_microvm LOG [extra qemu args...]: boots the husk kernel + rootfs under QEMU's microvm
# machine (the reference VMM) in the background, serial to LOG; sets QEMU_PID
qemu_microvm() {
  local log=$1; shift
  qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off,acpi=off -enable-kvm -cpu host \
    -m "${VM_MEM:-256M}" -smp "${VM_CPUS:-1}" -nodefaults -no-user-config -nographic -no-reboot \
    -serial "file:$log" -kernel "${VM_KERNEL:-$guest/bzImage}" -initrd "$guest/rootfs.cpio" \
    -append "console=ttyS0 reboot=k panic=-1 ${VM_CMDLINE:-}" "$@" </dev/null >/dev/null 2>"$log.err" &
  QEMU_PID=$!
}

# start_containerd DIR [ENV=VALUE...]: Debian's containerd with its root, state and socket
# under DIR (CRI off), the extra environment given (e.g. HUSK_CONFIG=..., PATH=...);
# writes DIR/containerd.pid and waits for DIR/containerd.sock
start_containerd() {
  local dir=$1; shift
  cat > "$dir/containerd.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/containerd.sock"
TOML
  env "$@" setsid containerd -c "$dir/containerd.toml" >"$dir/containerd.log" 2>&1 &
  echo $! > "$dir/containerd.pid"
  local _
  for _ in $(seq 100); do [ -S "$dir/containerd.sock" ] && return 0; sleep 0.1; done
  echo "containerd did not start:" >&2; tail -20 "$dir/containerd.log" >&2; return 1
}

# pidof_file FILE: the pid in a shim pid file ("<pid> <start time>")
pidof_file() { cut -d' ' -f1 "$1"; }
# zombies, mounts: counts of zombie processes and of this host's mounts (leak checks)
zombies() { ps -eo stat= | grep -c '^Z' || true; }
mounts() { wc -l < /proc/mounts; }

# ---- the shim through containerd and real VMs (tests 50, 52; bench 50) ---------------------

# first_built NAME ENVVAR: $ENVVAR if set, else the first built copy of NAME (staged)
first_built() {
  local n=$1 v=${!2:-} c
  [ -n "$v" ] && { staged "$v"; return; }
  for c in "$top/target/debug/$n" "$top/target/release/$n" "${CARGO_TARGET_DIR:-/nonexistent}/debug/$n" /usr/local/bin/"$n"; do
    [ -x "$c" ] && { staged "$c"; return; }
  done
}

# shim_vm_require: skips unless this host can run husk pods under containerd (real KVM,
# containerd, virtiofsd, static busybox); sets shim, vmm, vfsd and busybox
shim_vm_require() {
  [ -e /dev/kvm ] || skip "no /dev/kvm"
  if [ -e /sys/module/kvm_pvm ] || ! grep -qE 'vmx|svm' /proc/cpuinfo; then
    skip "this /dev/kvm cannot boot the guest at speed (PVM or emulation): run in the nested test host"
  fi
  command -v containerd >/dev/null && command -v ctr >/dev/null || skip "containerd not installed (apt-get install containerd)"
  shim=$(first_built containerd-shim-husk-v2 HUSK_SHIM); [ -n "$shim" ] || fail "no containerd-shim-husk-v2: run make"
  vmm=$(first_built husk-vmm HUSK_VMM); [ -n "$vmm" ] || fail "no husk-vmm: run make"
  vfsd=${HUSK_VIRTIOFSD:-$(command -v virtiofsd || echo "$HOME/.cargo/bin/virtiofsd")}
  [ -x "$vfsd" ] || skip "no virtiofsd (cargo install virtiofsd)"
  [ -f "$guest/vmlinux" ] && [ -f "$guest/rootfs.cpio" ] || fail "missing $guest/{vmlinux,rootfs.cpio}: run make"
  busybox=$(command -v busybox) || skip "no busybox (apt-get install busybox-static)"
  if ldd "$busybox" 2>&1 | grep -q '=>'; then skip "$busybox is not static (apt-get install busybox-static)"; fi
}

# shim_vm_setup PREFIX APPLET...: a work dir $w (removed on exit, with whatever still runs
# or is mounted under it), a busybox rootfs $w/rootfs with the applets, a husk config,
# containerd running the shim; defines ctr_run, c (ctr on this containerd), show_logs and a
# fail that shows the logs first. Pod logs are copied to $w/logs as they are written.
shim_vm_setup() {
  local prefix=$1 a; shift
  w=$(mktemp -d "/tmp/$prefix.XXXXXX")
  trap shim_vm_cleanup EXIT
  mkdir -p "$w/bin" "$w/rootfs/bin" "$w/rootfs/tmp" "$w/run" "$w/logs"
  ln -s "$shim" "$w/bin/containerd-shim-husk-v2"
  cp "$busybox" "$w/rootfs/bin/busybox"
  for a in "$@"; do ln -s busybox "$w/rootfs/bin/$a"; done
  cat > "$w/husk.toml" <<TOML
kernel = "$guest/vmlinux"
rootfs = "$guest/rootfs.cpio"
vmm = "$vmm"
virtiofsd = "$vfsd"
state_dir = "$w/run"
debug_console = ${HUSK_TEST_DEBUG_CONSOLE:-true}
boot_timeout_secs = 120
log_level = "${HUSK_TEST_LOG_LEVEL:-debug}"
# VM templates (the default): made by the first pod of a shape, shared by later tests
vm_template = ${HUSK_TEST_VM_TEMPLATE:-true}
template_dir = "/run/husk/.templates"
TOML
  start_containerd "$w" HUSK_CONFIG="$w/husk.toml" PATH="$w/bin:$PATH"
  # The pod directory goes with the pod: keep copies of its logs for failures. Only what
  # changed is copied, and the wait is bash's own (read -t on a FIFO nobody writes): on a
  # one-vCPU test host a cp and a sleep forked twice a second are felt in every timing.
  mkfifo "$w/.tick"
  ( exec 9<>"$w/.tick"
    while :; do
      for f in "$w"/run/*/console.log "$w"/run/*/vmm.log "$w"/run/*/virtiofsd.log; do
        p=${f%/*}; d="$w/logs/${p##*/}-${f##*/}"
        [ -f "$f" ] && [ "$f" -nt "$d" ] && cp "$f" "$d"
      done
      read -r -t 0.5 -u 9 _
    done ) &
  echo $! > "$w/logcopy.pid"
}

shim_vm_cleanup() {
  set +e
  local p
  for p in "$w"/*.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done
  sleep 0.5
  # what a failed test left of its pods (pid files: "<pid> <start time>")
  for p in "$w"/run/*/*.pid; do [ -f "$p" ] && kill -9 "$(cut -d' ' -f1 "$p")" 2>/dev/null; done
  awk -v w="$w" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l
  rm -rf "$w"
}

# c ARGS...: ctr against the test's containerd
c() { timeout "${CTR_TIMEOUT:-300}" ctr -a "$w/containerd.sock" "$@"; }

# ctr_run ID [--flag value]... ARGS...: runs busybox ARGS in a husk VM (--rm, foreground)
ctr_run() {
  local id=$1 flags=(); shift
  while [ "${1:-}" != "${1#--}" ]; do flags+=("$1" "$2"); shift 2; done
  c run --rm --runtime io.containerd.husk.v2 "${flags[@]}" --rootfs "$w/rootfs" "$id" "$@"
}

# wait_task_state ID STATE [TIMEOUT_S]: until `ctr task ls` shows the task in STATE
wait_task_state() {
  local id=$1 state=$2 i
  for i in $(seq $((${3:-60} * 10))); do
    c task ls 2>/dev/null | grep -qE "^$id +[0-9]+ +$state" && return 0
    sleep 0.1
  done
  return 1
}

# kill_and_delete ID: SIGKILL, wait for STOPPED, delete task and container
kill_and_delete() {
  c task kill -s SIGKILL "$1" 2>/dev/null || true
  wait_task_state "$1" STOPPED 60 || true
  c task delete "$1" >/dev/null
  c container delete "$1"
}

show_logs() {
  grep -v 'loading plugin\|skip plugin\|devmapper' "$w/containerd.log" | tail -15
  local f
  for f in "$w"/logs/*; do [ -f "$f" ] && { echo "== $f"; tail -25 "$f"; }; done
}

# assert_nothing_left: no vmm, virtiofsd or shim of this test running, nothing mounted
assert_nothing_left() {
  local i
  for i in $(seq 50); do
    pgrep -f -- "--config $w/" >/dev/null || pgrep -f "virtiofsd.*$w/" >/dev/null || pgrep -f "containerd-shim-husk-v2.*-address $w/" >/dev/null || break
    sleep 0.1
  done
  pgrep -af -- "--config $w/" && fail "a husk-vmm is still running"
  pgrep -af "virtiofsd.*$w/" && fail "a virtiofsd is still running"
  pgrep -af "containerd-shim-husk-v2.*-address $w/" && fail "a shim is still running"
  grep "$w/run" /proc/mounts && fail "mounts left under $w/run"
  return 0
}
