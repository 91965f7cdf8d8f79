#!/usr/bin/env bash
# Makes sure QEMU is 10.x or newer, from Debian's bookworm-backports (adds that suite to
# apt's sources if missing). Bookworm's own 7.2 boots the nested test host in about 17 s
# where 10.0 takes about 10 s. Idempotent; needs root only when it has to install.
set -euo pipefail
want=10
have=$(dpkg-query -W -f '${Version}' qemu-system-x86 2>/dev/null | sed -E 's/^[0-9]+://; s/[.].*//' || true)
if [ -n "$have" ] && [ "$have" -ge "$want" ] 2>/dev/null; then exit 0; fi
[ "$(id -u)" = 0 ] || { echo "qemu: need root to install qemu-system-x86 >= $want from bookworm-backports" >&2; exit 1; }
. /etc/os-release
suite="${VERSION_CODENAME:-bookworm}-backports"
if ! grep -rqs "$suite" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "qemu: adding $suite to apt's sources" >&2
  cat > "/etc/apt/sources.list.d/$suite.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
echo "qemu: installing qemu-system-x86 from $suite (have: ${have:-none})" >&2
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -t "$suite" qemu-system-x86 >/dev/null
qemu-system-x86_64 --version | head -1 >&2
