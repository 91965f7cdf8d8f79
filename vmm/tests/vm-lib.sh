# Helpers for the vmm's VM tests (tests/vm/2*-vmm-*.sh), sourced after tests/vm/lib.sh.
# They run inside the nested test host, or directly where /dev/kvm is hardware-backed.

vmm=${HUSK_VMM:-}
if [ -z "$vmm" ]; then
  for c in "$top/target/debug/husk-vmm" "${CARGO_TARGET_DIR:-/nonexistent}/debug/husk-vmm"; do
    [ -x "$c" ] && { vmm=$c; break; }
  done
fi
[ -n "$vmm" ] && [ -x "$vmm" ] || fail "no husk-vmm binary: run make"
vmm=$(staged "$vmm")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# probe_initrd OUT: an initramfs whose /init is the vmm's guest probe (vmm/examples/
# guest_probe.rs) plus the shared libraries it links, so no static build is needed.
probe_initrd() {
  local out=$1 probe spec lib
  probe="${CARGO_TARGET_DIR:-$top/target}/debug/examples/guest_probe"
  if [ ! -x "$probe" ]; then
    (cd "$top" && cargo build -q -p husk-vmm --example guest_probe) || fail "building guest_probe"
  fi
  spec="dir /dev 0755
nod /dev/console 0600 c 5 1
dir /proc 0755
dir /sys 0755
dir /lib 0755
dir /lib64 0755
dir /lib/x86_64-linux-gnu 0755
file /init 0755 $probe"
  for lib in $(ldd "$probe" | grep -oE '/[^ ]+\.so[^ ]*'); do
    spec="$spec
file $lib 0755 $(readlink -f "$lib")"
  done
  printf '%s\n' "$spec" | python3 "$top/rootfs/mkcpio.py" > "$out"
}

# run_vmm LOG ARGS...: runs husk-vmm in the background with the serial console in LOG;
# sets VMM_PID. `wait_vmm` returns its exit status.
run_vmm() {
  local log=$1; shift
  "$vmm" run --serial "$log" "$@" </dev/null >"$log.out" 2>"$log.err" &
  VMM_PID=$!
}

wait_vmm() {
  local limit=${1:-120} i=0
  while kill -0 "$VMM_PID" 2>/dev/null; do
    i=$((i + 1))
    if [ "$i" -gt $((limit * 10)) ]; then
      kill -9 "$VMM_PID" 2>/dev/null
      echo "husk-vmm did not exit within ${limit}s" >&2
      return 124
    fi
    sleep 0.1
  done
  wait "$VMM_PID"
}

# show LOG: prints the console and the vmm's own output (for failures).
show() {
  echo "--- console"; cat "$1" 2>/dev/null
  echo "--- husk-vmm stderr"; cat "$1.err" 2>/dev/null
}
