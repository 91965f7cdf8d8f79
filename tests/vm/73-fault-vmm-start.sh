#!/usr/bin/env bash
# Catalogue case 47: failures after the vmm is spawned.
# (a) the kernel is not a kernel (random bytes): husk-vmm fails to load it;
# (b) the guest boots but its agent never answers (an initrd whose /init is busybox's init,
#     which waits on the console): the shim's boot timeout ends it.
# Each time the `ctr run` fails within a bound with an error that names the cause, and
# every process the shim spawned (vmm, virtiofsd, template maker) is reaped: no vmm,
# virtiofsd or shim of the test runs, nothing is mounted, no state directory, socket or
# zombie is left. Then a good config runs a container again (nothing poisoned).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
shim_vm_require
command -v cpio >/dev/null || skip "no cpio"
shim_vm_setup husk-fault-start sh echo true
fail() { show_logs || true; echo "FAIL: $*" >&2; exit 1; }
z0=$(zombies)
cp "$w/husk.toml" "$w/husk.toml.good"

# with_config KEY VALUE...: husk.toml is the good one with these keys replaced
with_config() {
  local args=() k
  cp "$w/husk.toml.good" "$w/husk.toml"
  while [ $# -gt 0 ]; do
    k=$1
    sed -i "/^$k = /d" "$w/husk.toml"
    echo "$k = $2" >> "$w/husk.toml"
    shift 2
  done
}
# expect_failure ID LIMIT_S PATTERN: ctr run ID fails within LIMIT_S, its error matching PATTERN
expect_failure() {
  local id=$1 limit=$2 pat=$3 t0 ms rc=0
  t0=$(date +%s%N)
  CTR_TIMEOUT=$((limit + 30)) ctr_run "$id" /bin/true </dev/null >"$w/$id.out" 2>&1 || rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  [ "$rc" != 0 ] || fail "$id: ctr run succeeded"
  [ "$ms" -le $((limit * 1000)) ] || fail "$id: the failure took $ms ms (limit ${limit} s)"
  grep -qiE "$pat" "$w/$id.out" || fail "$id: the error does not say '$pat': $(tail -3 "$w/$id.out")"
  echo "$id: failed in $ms ms: $(grep -iE "$pat" "$w/$id.out" | head -1 | cut -c1-240)"
  c container delete "$id" >/dev/null 2>&1 || true
  assert_nothing_left
  [ -z "$(ls -A "$w/run" 2>/dev/null | grep -v '^\.')" ] || fail "$id: state left under $w/run: $(ls -la "$w/run")"
  for _ in $(seq 20); do [ "$(zombies)" -le "$z0" ] && break; sleep 0.1; done
  [ "$(zombies)" -le "$z0" ] || fail "$id: zombies left: $(ps -eo pid,ppid,stat,args | awk '$3 ~ /^Z/')"
}

# (a) a kernel that is not one
head -c 2M /dev/urandom > "$w/not-a-kernel"
with_config kernel "\"$w/not-a-kernel\""
expect_failure t-badkernel 60 'kernel|elf|load'

# (b) an agent that never answers: busybox init as /init
mkdir -p "$w/initrd/bin"
cp "$busybox" "$w/initrd/init"
cp "$busybox" "$w/initrd/bin/sh"
(cd "$w/initrd" && find . | cpio -o -H newc --quiet) > "$w/silent.cpio"
with_config rootfs "\"$w/silent.cpio\"" boot_timeout_secs 15 vm_template false
expect_failure t-silent 60 'agent|timed out|timeout'

# nothing is poisoned: the good config runs a container
cp "$w/husk.toml.good" "$w/husk.toml"
out=$(ctr_run t-good /bin/echo still-works </dev/null) || fail "a good pod after the failures"
[ "$out" = still-works ] || fail "the good pod printed '$out'"
assert_nothing_left
echo "case 47: bad kernel and silent agent fail cleanly, every spawned process reaped, nothing left: ok"
