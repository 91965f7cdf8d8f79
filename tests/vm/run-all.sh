#!/usr/bin/env bash
# Runs every VM-level test (tests/vm/NN-*.sh) in order, each with a time limit, and prints
# a runner's closing line. Exit status 77 from a test means skipped (it says why).
# A failed test is run once more (VM_TEST_RETRIES, default 1), as nextest's retries do; one
# that passes on a retry is reported as FLAKY by name, so flakiness stays visible. A test
# named in tests/vm/QUARANTINE (a known bug, with its reason) still runs; its failure is
# printed as QUARANTINED-FAIL and listed at the end, but does not fail the run.
set -u
here=$(cd "$(dirname "$0")" && pwd)
pass=0 failn=0 skipn=0 failed=() flaky=() quarantined=()
# quarantined NAME: true if tests/vm/QUARANTINE names the test (its failures do not count)
is_quarantined() { grep -qE "^$1([[:space:]]|$)" "$here/QUARANTINE" 2>/dev/null; }
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
    *) if is_quarantined "$name"; then
         quarantined+=("$name"); echo "--- QUARANTINED-FAIL $name (exit $rc, ${ms} ms): $(grep -E "^$name" "$here/QUARANTINE" | sed -E 's/^[^ ]+ +//')"
       else
         failn=$((failn+1)); failed+=("$name"); echo "--- FAIL $name (exit $rc, ${ms} ms)"
       fi ;;
  esac
done
[ ${#flaky[@]} -gt 0 ] && echo "flaky (passed on a retry): ${flaky[*]}"
[ ${#quarantined[@]} -gt 0 ] && echo "QUARANTINED tests that failed (known bugs, see tests/vm/QUARANTINE): ${quarantined[*]}"
[ ${#failed[@]} -gt 0 ] && echo "failed: ${failed[*]}"
echo "vm-tests: $pass passed, $failn failed, $skipn skipped"
[ "$failn" = 0 ]
