#!/usr/bin/env bash
# `make test`: everything, in phases, each timed. Installs what it needs on a fresh machine.
#   1 deps     apt packages and rust components
#   2 lint     cargo fmt --check (workspace and fuzz crates), cargo clippy -D warnings, and
#              the supply chain (tests/supply-chain.sh: cargo deny with deny.toml, cargo audit)
#   3 unit     cargo test --workspace (unit + host integration tests)
#   3a fuzz    every fuzz target for FUZZ_SECS (default here 30) each, two at a time, on
#              stable Rust with a kept corpus (tests/fuzz.sh); a crash fails it
#   3b engine  the agent's engine against runc, bundle by bundle (root)
#   4 kernel   guest kernel (cached outside the checkout)
#   5 rootfs   guest initramfs with the static agent
#   6 vm       tests/vm/* inside the nested test host (or directly on hardware KVM)
# PHASES="unit vm" runs a subset.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
PHASES=${PHASES:-deps lint unit fuzz engine kernel rootfs vm}
declare -a times=()
phase() {
  local name=$1; shift
  [[ " $PHASES " == *" $name "* ]] || return 0
  echo "===== phase $name"
  local t0=$SECONDS
  "$@"
  times+=("$name $((SECONDS - t0))s")
  echo "===== phase $name done in $((SECONDS - t0))s"
}
phase deps tests/deps.sh
phase lint bash -c 'cargo fmt --all -- --check && for c in vmm agent shim; do cargo fmt --manifest-path $c/fuzz/Cargo.toml -- --check || exit 1; done && cargo clippy --workspace --all-targets -q -- -D warnings && tests/supply-chain.sh'
phase unit cargo test --workspace
# the instrumented fuzz builds (about 10 min per crate cold) are cached outside the checkout
phase fuzz env FUZZ_SECS="${FUZZ_SECS:-30}" FUZZ_TARGET_DIR="${FUZZ_TARGET_DIR:-${HUSK_CACHE:-$HOME/.cache/husk}/fuzz-target}" tests/fuzz.sh
phase engine bash -c 'cargo build -q -p husk-agent && tests/engine/diff.sh target/debug/husk-agent'
phase kernel guest-kernel/build.sh
phase rootfs rootfs/build.sh
vm_phase() {
  cargo build -q --workspace
  # the harness must carry the command's exit status back, not QEMU's
  local rc=0
  tests/nested/host.sh -- 'echo harness self-test; exit 7' || rc=$?
  [ "$rc" = 7 ] || { echo "nested harness returned $rc for a command that exited 7" >&2; return 1; }
  # A test host that dies or hangs (its watchdog stops it: exit 124; no status: 125) is
  # replaced by a new one that resumes after the test it was running, at most twice.
  local state=$top/target/vm-tests.state host
  rm -f "$state"
  for host in 1 2 3; do
    rc=0
    VM_TESTS_STATE=$state tests/nested/host.sh -- tests/vm/run-all.sh || rc=$?
    case $rc in 124|125) ;; *) return "$rc" ;; esac
    echo "vm: test host $host died (exit $rc) while running: $(grep '^start' "$state" | tail -1 | cut -d' ' -f2)"
  done
  return "$rc"
}
phase vm vm_phase
echo "===== phase times: ${times[*]}"
