#!/usr/bin/env bash
# virtio-blk: the guest writes a 4 MiB pattern to /dev/vda, reads it back, and the host
# checks the image by sha256; a second drive given read-only stays unchanged even though
# the guest tries to write it.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$top/vmm/tests/vm-lib.sh"
[ -f "$guest/vmlinux" ] || fail "missing $guest/vmlinux"
probe_initrd "$tmp/probe.cpio"
img=$tmp/disk.img ro=$tmp/ro.img
truncate -s 8M "$img"
python3 -c "import sys; sys.stdout.buffer.write(b'\xaa' * (1 << 20))" > "$ro"
ro_sum=$(sha256sum < "$ro")

run_vmm "$tmp/blk.log" --kernel "$guest/vmlinux" --initrd "$tmp/probe.cpio" \
  --drive "path=$img" --drive "path=$ro,ro" \
  --cmdline "console=ttyS0 reboot=k panic=-1 probe=blk,reboot"
set +e; wait_vmm 300; rc=$?; set -e
grep 'probe:' "$tmp/blk.log" || true
[ "$rc" = 0 ] || { show "$tmp/blk.log"; fail "exit $rc, want 0"; }
grep -q 'probe: blk ok' "$tmp/blk.log" || { show "$tmp/blk.log"; fail "guest blk check failed"; }
grep -q 'probe: blk ro write refused=true' "$tmp/blk.log" || { show "$tmp/blk.log"; fail "read-only drive accepted a write"; }
want=$(python3 -c "
import hashlib, struct
h = hashlib.sha256()
for i in range(1024):
    h.update(struct.pack('<I', (i * 2654435761) & 0xffffffff) * 1024)
print(h.hexdigest())")
got=$(head -c 4M "$img" | sha256sum | cut -d' ' -f1)
[ "$got" = "$want" ] || fail "image sha256 $got, want $want"
echo "blk: image sha256 $got matches the pattern"
[ "$(sha256sum < "$ro")" = "$ro_sum" ] || fail "read-only image changed"
echo "blk: read-only image unchanged"
