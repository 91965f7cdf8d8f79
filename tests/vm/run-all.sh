#!/usr/bin/env bash
# Runs every VM-level test (tests/vm/NN-*.sh) in order, each with a time limit, and prints
# a runner's closing line. Exit status 77 from a test means skipped (it says why).
# A failed test is run once more (VM_TEST_RETRIES, default 1), as nextest's retries do; one
# that passes on a retry is reported as FLAKY by name, so flakiness stays visible.
set -u
here=$(cd "$(dirname "$0")" && pwd)
pass=0 failn=0 skipn=0 failed=() flaky=()
for t in "$here"/[0-9][0-9]-*.sh; do
  [ -e "$t" ] || continue
  name=$(basename "$t" .sh)
  [ -n "${VM_TESTS:-}" ] && ! [[ "$name" =~ $VM_TESTS ]] && continue
  echo "=== $name"
  t0=$(date +%s%N)
  tries=0
  while :; do
    timeout -k 5 "${VM_TEST_TIMEOUT:-600}" bash "$t"
    rc=$?
    case $rc in 0|77) break ;; esac
    [ "$tries" -lt "${VM_TEST_RETRIES:-1}" ] || break
    tries=$((tries+1))
    echo "--- RETRY $name (exit $rc)"
  done
  [ "$rc" = 0 ] && [ "$tries" -gt 0 ] && flaky+=("$name") && echo "--- FLAKY $name (failed, then passed on retry $tries)"
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  case $rc in
    0) pass=$((pass+1)); echo "--- PASS $name (${ms} ms)" ;;
    77) skipn=$((skipn+1)); echo "--- SKIP $name (${ms} ms)" ;;
    *) failn=$((failn+1)); failed+=("$name"); echo "--- FAIL $name (exit $rc, ${ms} ms)" ;;
  esac
done
[ ${#flaky[@]} -gt 0 ] && echo "flaky (passed on a retry): ${flaky[*]}"
[ ${#failed[@]} -gt 0 ] && echo "failed: ${failed[*]}"
echo "vm-tests: $pass passed, $failn failed, $skipn skipped"
[ "$failn" = 0 ]
