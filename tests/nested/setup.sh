#!/usr/bin/env bash
# Installs what the nested test host needs (QEMU, busybox, kmod, a Debian kernel with
# kvm_amd and 9p as modules) and builds its small initramfs. Idempotent and cached in
# $HUSK_CACHE/nested; prints what it does on stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${HUSK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/husk}
log() { echo "[nested-setup] $*" >&2; }

apt_ready() {
  [ -n "$(find /var/lib/apt/lists -name '*_Packages*' -newermt '-1 day' 2>/dev/null | head -1)" ] || apt-get update -q >/dev/null
}
need=()
[ -x /bin/busybox ] || need+=(busybox-static)
command -v depmod >/dev/null || need+=(kmod)
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt_ready
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

"$here/qemu.sh"
mkdir -p "$CACHE/nested"
# The kernel: Debian's generic amd64 flavour (9p, overlay, kvm_amd as modules), pinned to
# what linux-image-amd64 names. Cached by version, so a machine keeps the one it has.
if [ -f "$CACHE/nested/current" ] && [ -f "$CACHE/nested/$(cat "$CACHE/nested/current")/vmlinuz" ]; then
  kver=$(cat "$CACHE/nested/current")
else
  apt_ready
  kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  [ -n "$kpkg" ] || { echo "nested: cannot find the kernel linux-image-amd64 depends on" >&2; exit 1; }
  kver=${kpkg#linux-image-}
  kroot="$CACHE/nested/$kver"
  log "fetching $kpkg-unsigned"
  tmp=$(mktemp -d); chmod 755 "$tmp"
  (cd "$tmp" && apt-get download -q "$kpkg-unsigned" >/dev/null 2>&1 || apt-get download -q "$kpkg" >/dev/null)
  rm -rf "$kroot"; mkdir -p "$kroot"
  dpkg-deb -x "$tmp"/*.deb "$kroot"
  rm -rf "$tmp"
  cp "$kroot/boot/vmlinuz-$kver" "$kroot/vmlinuz"
  depmod -b "$kroot" "$kver"
  echo "$kver" > "$CACHE/nested/current"
fi
kroot="$CACHE/nested/$kver"
mods="$kroot/lib/modules/$kver"

# The initramfs: static busybox, the stage-1 init, and the modules needed to reach the
# 9p root (with their dependencies from modules.dep, in load order).
key=$(cat "$here/init-stage1" "$here/setup.sh" | sha256sum | cut -c1-16)
if [ ! -f "$kroot/initrd.key" ] || [ "$(cat "$kroot/initrd.key")" != "$key" ]; then
  log "building the test host initramfs"
  work=$(mktemp -d)
  mkdir -p "$work"/{bin,dev,proc,sys,newroot,mnt/lower,mnt/rw,mods}
  cp /bin/busybox "$work/bin/busybox"
  cp "$here/init-stage1" "$work/init"; chmod 755 "$work/init"
  declare -A seen=()
  order=()
  add() { # add module path (relative to $mods) after its dependencies
    local m=$1 d
    [ -n "${seen[$m]:-}" ] && return 0
    seen[$m]=1
    for d in $(awk -v m="$m:" '$1==m{for(i=2;i<=NF;i++) print $i}' "$mods/modules.dep"); do add "$d"; done
    order+=("$m")
  }
  for name in virtio_pci 9pnet_virtio 9p overlay virtio-rng; do
    p=$(awk -F: -v n="/$name.ko" 'index($1, n) && substr($1, length($1)-length(n)+1)==n {print $1; exit}' "$mods/modules.dep")
    [ -n "$p" ] || { echo "nested: module $name not in $kver" >&2; exit 1; }
    add "$p"
  done
  i=0
  for m in "${order[@]}"; do
    i=$((i+1)); cp "$mods/$m" "$work/mods/$(printf %02d $i)-$(basename "$m")"
  done
  (cd "$work" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -n -1) > "$kroot/initrd.cpio.gz"
  rm -rf "$work"
  echo "$key" > "$kroot/initrd.key"
fi
log "ready: kernel $kver"
