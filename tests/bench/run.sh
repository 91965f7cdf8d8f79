#!/usr/bin/env bash
# `make bench`: runs every benchmark script and gathers the figures.
#   tests/bench/host/*.sh  run on this machine (engine, binaries)
#   tests/bench/vm/*.sh    run together in one nested test host session (or directly on
#                          hardware KVM), so peers are compared inside the same run
# Each script prints lines `BENCH <name> <value> <unit>`; they are echoed and written to
# target/bench.json as {"name": {"value": v, "unit": "u"}, ...}.
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
for s in tests/bench/host/*.sh; do
  [ -e "$s" ] || continue
  echo "== bench $s" >&2
  bash "$s" | tee -a "$out" || { echo "bench: $s failed" >&2; status=1; }
done
if ls tests/bench/vm/*.sh >/dev/null 2>&1; then
  echo "== bench tests/bench/vm (nested test host)" >&2
  # A failed script (a VM that did not boot) is reported and the others still run: one
  # bad boot must not lose every other figure of the run.
  tests/nested/host.sh -- 'st=0; for s in tests/bench/vm/*.sh; do echo "== bench $s" >&2; bash "$s" || { echo "bench: $s failed" >&2; st=1; }; done; exit $st' | tee -a "$out" || status=1
fi
mkdir -p target
python3 - "$out" target/bench.json <<'PY'
import json, sys
figs = {}
for line in open(sys.argv[1], errors="replace"):
    p = line.split()
    if len(p) >= 4 and p[0] == "BENCH":
        try:
            figs[p[1]] = {"value": float(p[2]), "unit": " ".join(p[3:])}
        except ValueError:
            pass
json.dump(figs, open(sys.argv[2], "w"), indent=1, sort_keys=True)
print(f"bench: {len(figs)} figures in {sys.argv[2]}", file=sys.stderr)
PY
exit $status
