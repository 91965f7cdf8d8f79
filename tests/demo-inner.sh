#!/usr/bin/env bash
# The body of `make demo` (see tests/demo.sh); runs where /dev/kvm is real KVM.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/tests/vm/lib.sh"
vfsd=$(command -v virtiofsd || echo "${CARGO_HOME:-$HOME/.cargo}/bin/virtiofsd")
for f in "$top/target/debug/containerd-shim-husk-v2" "$top/target/debug/husk-vmm" "$guest/vmlinux" "$guest/rootfs.cpio" "$vfsd"; do
  [ -e "$f" ] || { echo "demo: missing $f (run make deps all)" >&2; exit 1; }
done
w=$(mktemp -d /tmp/husk-demo.XXXXXX)
cleanup() {
  [ -f "$w/containerd.pid" ] && kill "$(cat "$w/containerd.pid")" 2>/dev/null
  sleep 0.3
  awk -v w="$w" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l
  rm -rf "$w"
}
trap cleanup EXIT
mkdir -p "$w/bin" "$w/run"
# husk's binaries as the VM tests run them: copied to tmpfs when the checkout is on 9p (the
# nested test host), as runc and containerd come from the host's page-cached root
ln -s "$(staged "$top/target/debug/containerd-shim-husk-v2")" "$w/bin/containerd-shim-husk-v2"
cat > "$w/husk.toml" <<TOML
kernel = "$guest/vmlinux"
rootfs = "$guest/rootfs.cpio"
vmm = "$(staged "$top/target/debug/husk-vmm")"
virtiofsd = "$vfsd"
state_dir = "$w/run"
boot_timeout_secs = 120
# a template directory of the demo's own, so the first run below is the one that makes it
template_dir = "$w/templates"
TOML
start_containerd "$w" HUSK_CONFIG="$w/husk.toml" PATH="$w/bin:$PATH"
ctr="ctr -a $w/containerd.sock"
python3 "$top/tests/images/busybox-oci.py" "$w/busybox.tar"
$ctr image import "$w/busybox.tar" >/dev/null
# timed_run LABEL ID RUNTIME: ctr run --rm of `uname -a` in busybox, timed; sets out, ms
timed_run() {
  echo "+ ctr run --rm --runtime $3 docker.io/library/busybox:husk $2 uname -a    # $1"
  local t0
  t0=$(date +%s%N)
  if ! out=$(timeout 300 $ctr run --rm --runtime "$3" docker.io/library/busybox:husk "$2" uname -a); then
    echo "demo: ctr run ($1) failed; containerd's log:" >&2
    grep -vE 'loading plugin|skip plugin' "$w/containerd.log" | tail -20 >&2
    exit 1
  fi
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  echo "$out"
  echo "  took ${ms} ms"
}
timed_run "first husk run: boots a VM and makes the VM template of this pod shape" demo io.containerd.husk.v2
first=$ms guest_kernel=$(echo "$out" | awk '{print $3}')
timed_run "second husk run: restored from that template" demo2 io.containerd.husk.v2
second=$ms
timed_run "the same under runc, no VM" demo-runc io.containerd.runc.v2
runc_first=$ms
timed_run "runc again" demo-runc2 io.containerd.runc.v2
runc_ms=$ms
echo
echo "host kernel:  $(uname -r)"
echo "guest kernel: $guest_kernel"
grep -oE 'template [^")]* made[^")]*|restored from template[^")]*|cold-booted[^")]*' "$w/containerd.log" | cut -c1-160 | sed 's/^/shim: /' || true
echo "ctr run --rm: first husk run ${first} ms, second husk run ${second} ms; runc ${runc_first} ms, then ${runc_ms} ms (second husk / second runc $(awk -v a="$second" -v b="$runc_ms" 'BEGIN {printf "%.2f", a / b}')x)"
echo "(debug builds of the shim and the vmm; make bench measures release builds)"
if [ -n "${HUSK_NESTED:-}" ]; then
  echo "(inside the nested test host, a TCG-emulated VM: compare only as ratios)"
fi
