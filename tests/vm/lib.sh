# Helpers for VM-level tests (sourced). These run inside the nested test host, or directly
# where /dev/kvm is hardware-backed; they need target/guest/{bzImage,vmlinux,rootfs.cpio}.
top=${HUSK_TOP:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
guest=${HUSK_GUEST_DIR:-$top/target/guest}
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
