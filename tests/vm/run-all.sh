#!/usr/bin/env bash
# Runs every VM-level test (tests/vm/NN-*.sh) in order, each with a time limit, and prints
# a runner's closing line. Exit status 77 from a test means skipped (it says why).
# A failed test is run once more (VM_TEST_RETRIES, default 1), as nextest's retries do; one
# that passes on a retry is reported as FLAKY by name, so flakiness stays visible. A test
# named in tests/vm/QUARANTINE (a known bug, with its reason) still runs; its failure is
# printed as QUARANTINED-FAIL and listed at the end, but does not fail the run.
# With VM_TESTS_STATE=FILE the run can be resumed in a new test host after the old one died
# (tests/run.sh does so): each test's start and result go to FILE; a finished test is not
# run again, and one that was running when its host died counts as a failed try (exit 124).
set -u
here=$(cd "$(dirname "$0")" && pwd)
pass=0 failn=0 skipn=0 failed=() flaky=() quarantined=()
# quarantined NAME: true if tests/vm/QUARANTINE names the test (its failures do not count)
is_quarantined() { grep -qE "^$1([[:space:]]|$)" "$here/QUARANTINE" 2>/dev/null; }
# run_test T NAME: runs a test with its retries; sets rc, ms, was_flaky
run_test() {
  local t=$1 name=$2 tries t0
  echo "=== $name"
  t0=$(date +%s%N)
  rc=124
  # tries that a dead test host cut short count as failed tries
  tries=0
  if [ -n "$state" ]; then
    tries=$(grep -cE "^start $name$" "$state" 2>/dev/null || true)
    tries=${tries:-0}
    [ "$tries" -gt 0 ] && echo "--- $name was running when its test host died ($tries time(s))"
    [ "$tries" -gt "${VM_TEST_RETRIES:-1}" ] && echo "--- $name: no more tries"
  fi
  while [ "$tries" -le "${VM_TEST_RETRIES:-1}" ]; do
    [ -n "$state" ] && echo "start $name" >> "$state"
    timeout -k 5 "${VM_TEST_TIMEOUT:-600}" bash "$t"
    rc=$?
    case $rc in 0|77) break ;; esac
    [ "$tries" -lt "${VM_TEST_RETRIES:-1}" ] || break
    tries=$((tries+1))
    echo "--- RETRY $name (exit $rc)"
  done
  was_flaky=0
  if [ "$rc" = 0 ] && [ "$tries" -gt 0 ]; then
    was_flaky=1
    echo "--- FLAKY $name (failed, then passed on retry $tries)"
  fi
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  [ -n "$state" ] && echo "done $name $rc $ms $was_flaky" >> "$state"
  return 0
}
state=${VM_TESTS_STATE:-}
for t in "$here"/[0-9][0-9]-*.sh; do
  [ -e "$t" ] || continue
  name=$(basename "$t" .sh)
  [ -n "${VM_TESTS:-}" ] && ! [[ "$name" =~ $VM_TESTS ]] && continue
  prev=""
  [ -n "$state" ] && prev=$(grep -E "^done $name " "$state" 2>/dev/null | tail -1)
  if [ -n "$prev" ]; then
    read -r _ _ rc ms was_flaky <<<"$prev"
    echo "=== $name (result from an earlier test host)"
  else
    run_test "$t" "$name"
  fi
  [ "$was_flaky" = 1 ] && flaky+=("$name")
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
