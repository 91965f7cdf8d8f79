#!/usr/bin/env bash
# Runs every VM-level test (tests/vm/NN-*.sh) in order, each with a time limit, and prints
# a runner's closing line. Exit status 77 from a test means skipped (it says why).
set -u
here=$(cd "$(dirname "$0")" && pwd)
pass=0 failn=0 skipn=0 failed=()
for t in "$here"/[0-9][0-9]-*.sh; do
  [ -e "$t" ] || continue
  name=$(basename "$t" .sh)
  [ -n "${VM_TESTS:-}" ] && ! [[ "$name" =~ $VM_TESTS ]] && continue
  echo "=== $name"
  t0=$(date +%s%N)
  timeout -k 5 "${VM_TEST_TIMEOUT:-600}" bash "$t"
  rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  case $rc in
    0) pass=$((pass+1)); echo "--- PASS $name (${ms} ms)" ;;
    77) skipn=$((skipn+1)); echo "--- SKIP $name (${ms} ms)" ;;
    *) failn=$((failn+1)); failed+=("$name"); echo "--- FAIL $name (exit $rc, ${ms} ms)" ;;
  esac
done
[ ${#failed[@]} -gt 0 ] && echo "failed: ${failed[*]}"
echo "vm-tests: $pass passed, $failn failed, $skipn skipped"
[ "$failn" = 0 ]
