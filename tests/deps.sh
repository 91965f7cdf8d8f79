#!/usr/bin/env bash
# Installs what building and testing husk needs on a fresh Debian 12 machine. Idempotent.
set -euo pipefail
pkgs=(busybox-static kmod cpio python3 hyperfine runc crun containerd file
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
"$(dirname "$0")/nested/qemu.sh"
echo "deps: ok"
