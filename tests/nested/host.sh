#!/usr/bin/env bash
# The nested test host: runs one shell command where real KVM is available.
#
#   tests/nested/host.sh [--mem SIZE] [--cpus N] [--timeout SECONDS] -- COMMAND...
#
# Where /dev/kvm is hardware-backed (VMX/SVM, no kvm_pvm), COMMAND runs directly in the
# checkout. Elsewhere (this project's PVM machines) it boots a QEMU TCG VM with emulated
# SVM (`-cpu EPYC,+svm,+npt`) on a Debian kernel, with the machine's own root filesystem
# shared read-only over 9p under a tmpfs overlay and the checkout shared read-write at its
# own path; inside, kvm_amd is loaded (so /dev/kvm is real KVM) and cgroup2 is mounted
# alone with every controller enabled. COMMAND's output streams to stdout and its exit
# status is this script's exit status (carried back in a file, never guessed from QEMU).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
CACHE=${HUSK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/husk}
MEM=${HUSK_NESTED_MEM:-8G}
# One vCPU. With two, QEMU's multi-threaded TCG with emulated SVM delivers a cross-vCPU
# interrupt to a vCPU thread right after its VMRUN returns, before KVM has reloaded the
# host's GS base (RIP __svm_vcpu_run just after vmrun, in sysvec_reschedule_ipi): the test
# host's kernel then faults on every per-CPU access until its stack guard page panics it,
# and nested guests triple-fault. Measured with QEMU 10.0 and test 22 (2-vCPU guest,
# 64 MiB over vsock both ways) six times in one test host: 2 vCPUs, 1 of 4 passed, then the
# test host panicked; 1 vCPU, 6 of 6 passed. Nested guests may still have 2 vCPUs.
CPUS=${HUSK_NESTED_CPUS:-1}
TIMEOUT=${HUSK_NESTED_TIMEOUT:-2400}
# The test host writes a heartbeat every 5 s; none for this long means it hung (seen: a
# TCG test host whose vCPUs both spin while a nested guest runs), and it is stopped.
WATCHDOG=${HUSK_NESTED_WATCHDOG:-180}
while [ $# -gt 0 ]; do
  case "$1" in
    --mem) MEM=$2; shift 2 ;;
    --cpus) CPUS=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: $0 [--mem SIZE] [--cpus N] [--timeout S] -- COMMAND..." >&2; exit 2; }
CMD="$*"
log() { echo "[nested] $*" >&2; }

hardware_kvm() {
  [ -c /dev/kvm ] && [ ! -e /sys/module/kvm_pvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo
}

if hardware_kvm && [ "${HUSK_NESTED_FORCE_VM:-0}" != 1 ]; then
  log "hardware KVM: running directly"
  cd "$top"
  exec bash -c "$CMD"
fi

# ---- set-up: everything this needs, installed on first use --------------------------------
"$here/setup.sh" >&2
kver=$(cat "$CACHE/nested/current")
kroot="$CACHE/nested/$kver"
initrd="$kroot/initrd.cpio.gz"

# ---- one run directory per call, shared read-write with the VM ------------------------------
run=$(mktemp -d "${TMPDIR:-/tmp}/husk-nested.XXXXXX")
trap 'rm -rf "$run"' EXIT
printf '%s\n' "$CMD" > "$run/cmd"
{
  echo "export HUSK_TOP=$(printf %q "$top")"
  echo "export HUSK_NESTED=1"
  echo "export HUSK_KVER=$kver"
  echo "export HUSK_MODULES=$(printf %q "$kroot/lib/modules/$kver")"
  # what the command's environment carries in: CI, cargo and rust settings, and every
  # HUSK_* and VM_* knob of the test scripts
  for v in CI HOME PATH TERM CARGO_HOME RUSTUP_HOME CARGO_TARGET_DIR RUST_LOG RUST_BACKTRACE \
           $(compgen -e | grep -E '^(HUSK|VM)_' || true); do
    [ -n "${!v+x}" ] && echo "export $v=$(printf %q "${!v}")"
  done
} > "$run/env"

log "booting the test host: $CPUS vCPUs, $MEM, kernel $kver (TCG with emulated SVM)"
t0=$(date +%s)
# monitor COMMAND...: QEMU human-monitor commands through its socket; prints the replies
monitor() {
  timeout 20 python3 - "$run/monitor" "$@" <<'PY' || true
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.settimeout(2)
for c in sys.argv[2:]:
    s.sendall(c.encode() + b"\n")
out = b""
try:
    while True:
        b = s.recv(65536)
        if not b:
            break
        out += b
except OSError:
    pass
sys.stdout.write(out.decode(errors="replace").replace("\r", ""))
PY
}
# watchdog: once the heartbeat has started, a stale one stops the test host, after the
# vCPUs' registers are printed from QEMU's monitor (for finding out where it hung)
(
  while sleep 10; do
    [ -f "$run/heartbeat" ] || { [ -d "$run" ] && continue; exit 0; }
    age=$(( $(date +%s) - $(stat -c %Y "$run/heartbeat" 2>/dev/null || echo 0) ))
    [ "$age" -gt "$WATCHDOG" ] || continue
    log "the test host hung: no heartbeat for ${age}s; its vCPUs:"
    monitor "info cpus" "info registers -a" | grep -aE '^(CPU|\* CPU|RIP|RAX|RSP|CR0|EFL)' | head -40 >&2
    echo hung > "$run/hung"
    monitor quit >/dev/null
    exit 0
  done
) &
watchdog=$!
set +e
timeout --foreground -k 10 "$TIMEOUT" qemu-system-x86_64 \
  -accel tcg,thread=multi -cpu EPYC,+svm,+npt -smp "$CPUS" -m "$MEM" \
  -nodefaults -no-user-config -nographic -no-reboot -bios qboot.rom \
  -chardev stdio,id=con,signal=off -serial chardev:con \
  -kernel "$kroot/vmlinuz" -initrd "$initrd" \
  -append "console=ttyS0 loglevel=1 edd=off panic=-1 husk.top=$top" \
  -fsdev local,id=root,path=/,security_model=none,readonly=on,multidevs=remap \
  -device virtio-9p-pci,fsdev=root,mount_tag=hostroot \
  -fsdev local,id=top,path="$top",security_model=none \
  -device virtio-9p-pci,fsdev=top,mount_tag=checkout \
  -fsdev local,id=run,path="$run",security_model=none \
  -device virtio-9p-pci,fsdev=run,mount_tag=run \
  -monitor "unix:$run/monitor,server=on,wait=off" \
  -device virtio-rng-pci </dev/null 2> >(grep -v "TCG doesn't support requested feature" >&2) | sed -u 's/\r$//'
qrc=${PIPESTATUS[0]}
set -e
kill "$watchdog" 2>/dev/null || true
log "test host ran $(( $(date +%s) - t0 ))s (qemu exit $qrc)"
if [ -f "$run/hung" ]; then
  log "stopped by the watchdog (exit 124)"
  exit 124
fi
if [ -f "$run/status" ]; then
  rc=$(cat "$run/status")
  log "command exit status $rc"
  exit "$rc"
fi
[ "$qrc" = 124 ] && log "timed out after ${TIMEOUT}s" || log "the test host ended without reporting a status"
exit 125
