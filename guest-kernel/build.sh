#!/usr/bin/env bash
# Builds the husk guest kernel (vmlinux + bzImage) from Debian's linux-source-6.12:
# tinyconfig + husk.config. The build is cached outside the checkout, keyed by a hash
# of the fragment's options, the recipe number below and the source package version, so a rebuild is instant.
# Output: $OUT (default target/guest)/{vmlinux,bzImage,config}.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
OUT=${OUT:-$top/target/guest}
CACHE=${HUSK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/husk}
SRC_PKG=linux-source-6.12
t0=$(date +%s)
log() { echo "[kernel $(( $(date +%s) - t0 ))s] $*"; }

need=()
dpkg -s "$SRC_PKG" >/dev/null 2>&1 || need+=("$SRC_PKG")
for p in bc flex bison libelf-dev libssl-dev make gcc xz-utils; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  [ -n "$(find /var/lib/apt/lists -name '*Packages*' -newermt '-1 day' 2>/dev/null | head -1)" ] || apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

src_ver=$(dpkg-query -W -f '${Version}' "$SRC_PKG")
# bump RECIPE when a change to this script changes the kernel it produces
RECIPE=2
# Built for size (tinyconfig's -Os), but with memcpy/memset as calls: -Os alone inlines them
# as byte-wise `rep movsb`/`rep stosb` (5,366 sites), slow on CPUs without ERMS and under
# emulation. Nested test host, probe at /init, medians of 8: -Os 1.005 s, this 0.845 s, -O2
# 0.735 s. Not -O2: its text passes 4 MiB, and the image's parts are 2 MiB-aligned (strict
# kernel RWX) in guest RAM backed by 2 MiB pages, so every pod would hold 4 MiB more (an idle
# pod 35.8 -> 39.9 MiB). The text ends 63 KiB under 4 MiB (6.12.117, PTP clocks off).
KCFLAGS="-mstringop-strategy=libcall"
key=$( { echo "$src_ver recipe=$RECIPE kcflags=$KCFLAGS"; grep -E '^(# )?CONFIG_' "$here/husk.config"; } | sha256sum | cut -c1-16)
build="$CACHE/kernel/build-$key"
mkdir -p "$OUT"

if [ -f "$build/done" ]; then
  log "cached build $key (linux-source $src_ver)"
else
  srcdir="$CACHE/kernel/src-$src_ver"
  if [ ! -f "$srcdir/.unpacked" ]; then
    log "unpacking linux-source $src_ver"
    rm -rf "$srcdir"; mkdir -p "$srcdir"
    tar -xf /usr/src/linux-source-6.12.tar.xz -C "$srcdir" --strip-components=1
    touch "$srcdir/.unpacked"
  fi
  rm -rf "$build"; mkdir -p "$build"
  log "configuring: tinyconfig + husk.config"
  make -s -C "$srcdir" O="$build" tinyconfig >/dev/null
  grep -E '^(# )?CONFIG_' "$here/husk.config" > "$build/fragment.config"
  (cd "$build" && KCONFIG_CONFIG=.config "$srcdir/scripts/kconfig/merge_config.sh" -m -O "$build" .config fragment.config >/dev/null)
  make -s -C "$srcdir" O="$build" olddefconfig >/dev/null
  # every option the fragment asks for must have survived olddefconfig
  missing=0
  while read -r line; do
    opt=${line%%=*}; want=${line#*=}
    got=$(grep -E "^$opt=" "$build/.config" | cut -d= -f2- || true)
    if [ "$got" != "$want" ]; then echo "guest-kernel: $opt wanted $want, got '${got:-unset}'" >&2; missing=1; fi
  done < <(grep -E '^CONFIG_' "$here/husk.config")
  # and every option it turns off must be off
  for off in $(sed -nE 's/^# (CONFIG_[A-Z0-9_]+) is not set$/\1/p' "$here/husk.config"); do
    if grep -qE "^$off=" "$build/.config"; then echo "guest-kernel: $off must stay off" >&2; missing=1; fi
  done
  [ $missing = 0 ] || { echo "guest-kernel: fragment does not apply cleanly" >&2; exit 1; }
  jobs=$(nproc)
  log "building vmlinux and bzImage with -j$jobs (about 5 minutes on 2 cores)"
  # progress: one line per 200 objects compiled, so a long build is visibly alive
  make -C "$srcdir" O="$build" -j"$jobs" KCFLAGS="$KCFLAGS" KBUILD_BUILD_TIMESTAMP=husk KBUILD_BUILD_USER=husk KBUILD_BUILD_HOST=husk \
       vmlinux bzImage 2>&1 | awk '/^  (CC|AS|LD|AR)/{n++; if (n%200==0) {printf "[kernel] %d objects\n", n; fflush()}} /(error|Error [0-9]):/{print}'
  [ -f "$build/arch/x86/boot/bzImage" ] || { echo "guest-kernel: build failed (see $build)" >&2; exit 1; }
  touch "$build/done"
  log "built $key"
fi
cp "$build/vmlinux" "$OUT/vmlinux"
cp "$build/arch/x86/boot/bzImage" "$OUT/bzImage"
cp "$build/.config" "$OUT/config"
strings "$OUT/bzImage" | grep -m1 -E '^[0-9]+\.[0-9]+\.[0-9]+' > "$OUT/version" || true
log "vmlinux $(stat -c %s "$OUT/vmlinux") bytes, bzImage $(stat -c %s "$OUT/bzImage") bytes, $(cat "$OUT/version")"
