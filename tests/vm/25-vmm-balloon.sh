#!/usr/bin/env bash
# Free page reporting (virtio-balloon): a guest that touches 64 MiB and frees it gives the
# memory back to the host. Two boots of the probe guest, the same except for
# --free-page-reporting; after the guest has freed its 64 MiB and idled, the vmm's guest
# memory (RssShmem: the guest-RAM memfd) must be at least 48 MiB lower with reporting on.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$top/vmm/tests/vm-lib.sh"
[ -f "$guest/vmlinux" ] || fail "missing $guest/vmlinux"
probe=$tmp/probe.cpio
probe_initrd "$probe"
idle=${BALLOON_IDLE_SECS:-15}

# guest_kib NAME ARGS...: boots, waits for the probe, idles, prints RssShmem in KiB
guest_kib() {
  local name=$1; shift
  run_vmm "$tmp/$name.log" --kernel "$guest/vmlinux" --initrd "$probe" --mem 256 "$@" \
    --cmdline "console=ttyS0 reboot=k panic=-1 page_reporting.page_reporting_order=5 probe=memtouch"
  if ! wait_for_line "$tmp/$name.log" "probe: done" 120; then
    kill -9 "$VMM_PID" 2>/dev/null || true; show "$tmp/$name.log" >&2; fail "$name: probe did not finish"
  fi
  grep -q 'probe: memtouch 16384 pages' "$tmp/$name.log" || { show "$tmp/$name.log" >&2; fail "$name: memtouch"; }
  sleep "$idle"
  awk '/^RssShmem/ {print $2}' "/proc/$VMM_PID/status"
  kill -TERM "$VMM_PID"
  set +e; wait_vmm 10; local rc=$?; set -e
  [ "$rc" = 5 ] || { show "$tmp/$name.log" >&2; fail "$name: SIGTERM exit $rc, want 5"; }
}

off=$(guest_kib off)
on=$(guest_kib on --free-page-reporting)
echo "guest memory held by the vmm after ${idle}s idle: ${off} KiB without free page reporting, ${on} KiB with"
grep -q 'virtio_balloon\|balloon' "$tmp/on.log" 2>/dev/null && grep -i balloon "$tmp/on.log" | head -3 || true
[ "$on" -le $((off - 48 * 1024)) ] || { show "$tmp/on.log"; fail "free page reporting gave back less than 48 MiB"; }
echo "free page reporting: $(( (off - on) / 1024 )) MiB given back"
