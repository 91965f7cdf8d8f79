#!/usr/bin/env bash
# Installs what building and testing husk needs on a fresh Debian 12 machine. Idempotent.
# runc, crun and runsc (gVisor) are the peers the benchmarks measure husk against.
set -euo pipefail
pkgs=(busybox-static kmod cpio python3 hyperfine runc crun runsc containerd file
      linux-source-6.12 bc flex bison libelf-dev libssl-dev make gcc xz-utils
      libcap-ng-dev libseccomp-dev pkg-config protobuf-compiler containernetworking-plugins)
need=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]}"
  [ "$(id -u)" = 0 ] || { echo "deps: need root to apt-get install ${need[*]}" >&2; exit 1; }
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "deps: cargo not found; install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
if command -v rustup >/dev/null; then
  rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt
fi
# virtiofsd (the virtio-fs backend, one per pod) comes from crates.io
if ! command -v virtiofsd >/dev/null && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/virtiofsd" ]; then
  echo "deps: cargo install virtiofsd (a few minutes, once per machine)"
  cargo install -q --locked virtiofsd
fi
# Supply-chain checks (lint phase): pinned versions, built from crates.io with their own lock
# files. On a clean 2-core machine each takes about 10 minutes to build, once.
cargo_tool() {
  local bin=$1 crate=$2 version=$3
  if ! "$bin" --version 2>/dev/null | grep -qF "$version"; then
    echo "deps: cargo install $crate $version (about 10 minutes, once per machine)"
    local t0=$SECONDS
    cargo install -q --locked "$crate" --version "$version"
    echo "deps: $crate built in $((SECONDS - t0))s"
  fi
}
cargo_tool cargo-deny cargo-deny 0.20.2
cargo_tool cargo-audit cargo-audit 0.22.2
"$(dirname "$0")/nested/qemu.sh"
echo "deps: ok"
