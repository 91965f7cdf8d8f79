#!/usr/bin/env bash
# virtio-fs through virtiofsd (vhost-user): the guest mounts the share, reads a file the
# host put there and writes one the host then reads.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$top/vmm/tests/vm-lib.sh"
vfsd=${HUSK_VIRTIOFSD:-$(command -v virtiofsd || echo "$HOME/.cargo/bin/virtiofsd")}
[ -x "$vfsd" ] || skip "no virtiofsd (cargo install virtiofsd)"
[ -f "$guest/vmlinux" ] || fail "missing $guest/vmlinux"
probe_initrd "$tmp/probe.cpio"
mkdir "$tmp/share"
echo "hello from the host" > "$tmp/share/hello.txt"
"$vfsd" --socket-path "$tmp/vfsd.sock" --shared-dir "$tmp/share" --cache never \
  --sandbox none >"$tmp/vfsd.log" 2>&1 &
vfsd_pid=$!
for _ in $(seq 100); do [ -S "$tmp/vfsd.sock" ] && break; sleep 0.1; done
[ -S "$tmp/vfsd.sock" ] || { cat "$tmp/vfsd.log"; fail "virtiofsd did not start"; }
run_vmm "$tmp/fs.log" --kernel "$guest/vmlinux" --initrd "$tmp/probe.cpio" --mem 256 \
  --fs "tag=husk,socket=$tmp/vfsd.sock" \
  --cmdline "console=ttyS0 reboot=k panic=-1 probe=fs"
wait_for_line "$tmp/fs.log" 'probe: (fs ok|fs FAILED)' 180 || true
kill -TERM "$VMM_PID" 2>/dev/null || true
set +e; wait_vmm 30; rc=$?; set -e
kill "$vfsd_pid" 2>/dev/null || true
grep 'probe:' "$tmp/fs.log" || true
[ "$rc" = 5 ] || { show "$tmp/fs.log"; cat "$tmp/vfsd.log"; fail "exit $rc after SIGTERM, want 5"; }
grep -q 'probe: fs read "hello from the host"' "$tmp/fs.log" || { show "$tmp/fs.log"; cat "$tmp/vfsd.log"; fail "guest could not read the share"; }
grep -q 'probe: fs ok' "$tmp/fs.log" || { show "$tmp/fs.log"; fail "guest could not write the share"; }
[ "$(cat "$tmp/share/from-guest.txt")" = "written by the guest" ] || fail "host does not see the guest's file"
echo "virtio-fs: guest read the host's file and wrote one the host reads"
