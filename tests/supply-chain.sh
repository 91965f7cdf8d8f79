#!/usr/bin/env bash
# Supply chain (lint phase of `make test`): cargo deny (licenses, bans incl. duplicate
# versions, sources, advisories; policy in deny.toml) and cargo audit, on Cargo.lock.
# The RustSec advisory database is a git repository on github.com, which CI here cannot
# always reach: a copy is kept in $HUSK_CACHE/advisory-dbs (default ~/.cache/husk), cloned
# or refreshed when reachable and used as it is when not; with no copy at all, one line
# says `supply-chain: advisories NOT CHECKED: <reason>` and the other checks still run
# (and can fail).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
export HUSK_CACHE=${HUSK_CACHE:-$HOME/.cache/husk}
url=${HUSK_ADVISORY_DB_URL:-https://github.com/rustsec/advisory-db}
# The directory cargo-deny derives from the default URL under db-path (deny.toml).
db=$HUSK_CACHE/advisory-dbs/advisory-db-3157b0e258782691
mkdir -p "$(dirname "$db")"
export GIT_TERMINAL_PROMPT=0

refreshed="" why=""
gitlog=$(mktemp)
if [ -d "$db/.git" ]; then
  if timeout 60 git -C "$db" fetch -q --depth 1 "$url" HEAD 2>"$gitlog" &&
     git -C "$db" reset -q --hard FETCH_HEAD; then
    refreshed=yes
  fi
else
  rm -rf "$db.tmp"
  if timeout 120 git clone -q --depth 1 "$url" "$db.tmp" 2>"$gitlog"; then
    mv "$db.tmp" "$db"
    refreshed=yes
  fi
  rm -rf "$db.tmp"
fi
[ -n "$refreshed" ] || why="fetching $url failed ($(tail -1 "$gitlog" | tr -d '\r' | cut -c1-120))"
rm -f "$gitlog"

rc=0
cargo deny --offline check --hide-inclusion-graph licenses bans sources || rc=1
if [ -d "$db/crates" ]; then
  when=$(git -C "$db" log -1 --format=%cs 2>/dev/null || echo unknown)
  if [ -n "$refreshed" ]; then
    echo "supply-chain: advisories checked against RustSec as of $when (refreshed)"
  else
    echo "supply-chain: advisories checked against a cached RustSec copy of $when (not refreshed: $why)"
  fi
  cargo deny --offline check --hide-inclusion-graph advisories || rc=1
  cargo audit --no-fetch --stale --db "$db" --file Cargo.lock || rc=1
else
  echo "supply-chain: advisories NOT CHECKED: no cached copy in $db and $why"
fi
[ $rc = 0 ] && echo "supply-chain: ok" || echo "supply-chain: FAILED"
exit $rc
