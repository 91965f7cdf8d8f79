#!/usr/bin/env bash
# Builds the hostile guest (a static x86_64 ELF husk-vmm loads as its kernel) and prints
# its path. Only `core` is used, so the host target does: the linker script puts it at
# 1 MiB, -nostdlib keeps libc and crt out.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target_dir=${HOSTILE_GUEST_TARGET_DIR:-$here/../../target/hostile-guest}
cargo rustc --quiet --manifest-path "$here/Cargo.toml" --release --target-dir "$target_dir" -- \
  -C relocation-model=static -C panic=abort -C target-feature=-sse,-sse2 \
  -C link-arg=-nostdlib -C link-arg=-static -C link-arg=-no-pie \
  -A warnings -C link-arg=-Wl,--build-id=none -C link-arg=-Wl,-T,"$here/link.ld" >&2
echo "$(cd "$target_dir/release" && pwd)/hostile-guest"
