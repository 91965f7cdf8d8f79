#!/usr/bin/env bash
# Builds the husk guest image: an uncompressed initramfs whose /init is the static
# husk-agent. Output: $OUT (default target/guest)/rootfs.cpio.
#
# Why an initramfs and not a disk image: the agent is a single static binary, so the image
# is a few MiB; the kernel unpacks it into RAM before /init without any block or filesystem
# driver work, and it needs no virtio-blk device at boot (one device less to probe).
# Why uncompressed: unpacking a few MiB raw is faster than decompressing it, and the guest
# kernel then needs no decompressor (tinyconfig has none).
# Reproducible: the same agent binary gives the same bytes (see mkcpio.py).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
OUT=${OUT:-$top/target/guest}
TARGET=x86_64-unknown-linux-gnu
mkdir -p "$OUT"
cd "$top"
# static glibc: there is no musl target on these machines
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build -q --profile agent --target "$TARGET" -p husk-agent
# profile `agent` (Cargo.toml): size-optimized, since the image is held twice in guest RAM
agent="${CARGO_TARGET_DIR:-$top/target}/$TARGET/agent/husk-agent"
if ldd "$agent" 2>&1 | grep -q '=>'; then
  echo "rootfs: $agent is not static" >&2; exit 1
fi
python3 "$here/mkcpio.py" > "$OUT/rootfs.cpio.tmp" <<SPEC
dir /dev 0755
nod /dev/console 0600 c 5 1
nod /dev/null 0666 c 1 3
dir /etc 0755
file /init 0755 $agent
dir /proc 0755
dir /run 0755
dir /sys 0755
dir /tmp 1777
SPEC
mv "$OUT/rootfs.cpio.tmp" "$OUT/rootfs.cpio"
cp "$agent" "$OUT/husk-agent"
echo "rootfs: $OUT/rootfs.cpio $(stat -c %s "$OUT/rootfs.cpio") bytes (agent $(stat -c %s "$agent") bytes, static), sha256 $(sha256sum "$OUT/rootfs.cpio" | cut -c1-16)"
