#!/usr/bin/env bash
# `make fuzz`: builds every fuzz target and runs each for FUZZ_SECS seconds (default 120),
# FUZZ_JOBS at a time (default 2), with libFuzzer on stable Rust (see README "Fuzzing"):
#   FUZZ <target> execs=N crashes=N corpus=N secs=N
#   ...
#   N passed, N failed
# Corpus: each target starts from its committed seeds (<crate>/fuzz/seeds/<target>, made by
# tests/fuzz_seeds.py) and the corpus earlier runs grew, kept outside the checkout in
# ${HUSK_CACHE:-~/.cache/husk}/fuzz/<target>, where new inputs go. A crash, timeout or
# out-of-memory input is saved to target/fuzz-artifacts/<target>/ and printed (path, the
# panic, hex of its first bytes); it fails the run. FUZZ_TARGETS='regex' picks targets.
# Logs: target/fuzz-logs/<target>.log. Builds go to target/fuzz (incremental, kept;
# FUZZ_TARGET_DIR moves them).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
FUZZ_SECS=${FUZZ_SECS:-120}
FUZZ_JOBS=${FUZZ_JOBS:-2}
FUZZ_TARGETS=${FUZZ_TARGETS:-.}
cache=${HUSK_CACHE:-$HOME/.cache/husk}/fuzz
crates=(vmm/fuzz agent/fuzz shim/fuzz)
triple=x86_64-unknown-linux-gnu
# libfuzzer-sys on stable: the SanitizerCoverage instrumentation cargo-fuzz would ask for,
# passed by hand (every flag here is a stable rustc option; no -Z, no ASan). With --target,
# RUSTFLAGS reach only the target's crates, not build scripts or proc macros.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
  -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
  -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares \
  -Cllvm-args=-sanitizer-coverage-stack-depth"
# FUZZ_TARGET_DIR: keep the (long, about 10 minutes per crate on 2 cores) cold build outside
# a fresh checkout, e.g. under $HUSK_CACHE on a CI machine that clones anew each run.
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$top/target/fuzz}
bindir=$CARGO_TARGET_DIR/$triple/release
logs=$top/target/fuzz-logs
arts=$top/target/fuzz-artifacts
mkdir -p "$logs" "$arts" "$cache"

# target -> crate
declare -A crate_of=()
for c in "${crates[@]}"; do
  for t in $(awk '/^\[\[bin\]\]/{b=1} b&&/^name *=/{gsub(/[" ]/,"",$0); sub(/name=/,""); print; b=0}' "$c/Cargo.toml"); do
    [[ $t =~ $FUZZ_TARGETS ]] && crate_of[$t]=$c
  done
done
[ ${#crate_of[@]} -gt 0 ] || { echo "fuzz: no target matches FUZZ_TARGETS=$FUZZ_TARGETS" >&2; exit 1; }

for c in "${crates[@]}"; do
  need=0
  for t in "${!crate_of[@]}"; do [ "${crate_of[$t]}" = "$c" ] && need=1; done
  [ $need = 1 ] || continue
  t0=$SECONDS
  (cd "$c" && cargo build -q --release --target "$triple") || { echo "FUZZ build $c FAILED"; exit 1; }
  echo "FUZZ build $c secs=$((SECONDS - t0))"
done

run_one() {
  local t=$1 c=${crate_of[$1]}
  local corpus=$cache/$t seeds=$top/$c/seeds/$t art=$arts/$t log=$logs/$t.log
  mkdir -p "$corpus" "$art"
  local before; before=$(ls "$art" | sort)
  local t0=$SECONDS rc=0 dirs=("$corpus")
  [ -d "$seeds" ] && dirs+=("$seeds")
  # -timeout: one input running this long is a hang (a device model that loops on a guest's
  # ring is a denial of service), saved and failed like a crash.
  "$bindir/$t" -max_total_time="$FUZZ_SECS" -timeout=30 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$art/" "${dirs[@]}" >"$log" 2>&1 || rc=$?
  local execs; execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  local new; new=$(comm -13 <(echo "$before") <(ls "$art" | sort) | grep -v '^$' || true)
  local crashes; crashes=$(printf '%s' "$new" | grep -c . || true)
  [ "$rc" = 0 ] || [ "$crashes" -gt 0 ] || crashes=1   # died without saving an input
  local result="$t execs=${execs:-0} crashes=$crashes corpus=$(ls "$corpus" | wc -l) secs=$((SECONDS - t0))"
  {
    echo "FUZZ $result"
    if [ "$crashes" -gt 0 ]; then
      grep -m3 -E "panicked at|ERROR: libFuzzer|SUMMARY" "$log" | sed "s/^/FUZZ $t: /" || true
      for f in $new; do
        echo "FUZZ $t: input $art/$f ($(stat -c %s "$art/$f") bytes): $(od -An -tx1 -N64 -v "$art/$f" | tr -d ' \n')"
      done
      [ -n "$new" ] || { echo "FUZZ $t: exit $rc, no input saved; log tail:"; tail -5 "$log"; }
    fi
  } > "$logs/$t.result"
}

running=0
for t in $(printf '%s\n' "${!crate_of[@]}" | sort); do
  if [ $running -ge "$FUZZ_JOBS" ]; then wait -n || true; running=$((running - 1)); fi
  run_one "$t" &
  running=$((running + 1))
done
wait
pass=0 fail=0
for t in $(printf '%s\n' "${!crate_of[@]}" | sort); do
  cat "$logs/$t.result"
  if grep -q "crashes=0 " "$logs/$t.result"; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
done
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
