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
ln -s "$top/target/debug/containerd-shim-husk-v2" "$w/bin/"
cat > "$w/husk.toml" <<TOML
kernel = "$guest/vmlinux"
rootfs = "$guest/rootfs.cpio"
vmm = "$top/target/debug/husk-vmm"
virtiofsd = "$vfsd"
state_dir = "$w/run"
boot_timeout_secs = 120
TOML
start_containerd "$w" HUSK_CONFIG="$w/husk.toml" PATH="$w/bin:$PATH"
ctr="ctr -a $w/containerd.sock"
python3 "$top/tests/images/busybox-oci.py" "$w/busybox.tar"
$ctr image import "$w/busybox.tar" >/dev/null
echo "+ ctr run --rm --runtime io.containerd.husk.v2 docker.io/library/busybox:husk demo uname -a"
t0=$(date +%s%N)
if ! out=$(timeout 300 $ctr run --rm --runtime io.containerd.husk.v2 docker.io/library/busybox:husk demo uname -a); then
  echo "demo: ctr run failed; containerd's log:" >&2
  grep -vE 'loading plugin|skip plugin' "$w/containerd.log" | tail -20 >&2
  exit 1
fi
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
echo "$out"
echo "host kernel:  $(uname -r)"
echo "guest kernel: $(echo "$out" | awk '{print $3}')"
echo "ctr run --rm took ${ms} ms (nested virtualization: compare only as ratios)"
