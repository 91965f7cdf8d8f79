#!/usr/bin/env bash
# Pod networking outside CRI, and its teardown (issue 6): a network namespace made by hand
# (a veth pair, the pod end eth0 with an address and MTU 1400) is named in a `ctr run`
# spec (--with-ns network:...). The host reaches the container's httpd at the veth's
# address; after the container is gone no tap, qdisc or filter is left in the namespace.
# A container without a network namespace in its spec has loopback only.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cri-lib.sh"
command -v ip >/dev/null && command -v tc >/dev/null || skip "no ip/tc (iproute2)"

start_containerd_cri || fail "containerd"
python3 "$top/tests/images/busybox-oci.py" "$w/busybox.tar" "$CRI_IMAGE" 2>/dev/null
ctr -a "$w/containerd.sock" images import "$w/busybox.tar" >/dev/null
ns=hk-t$$
hv=hkv$$
ip netns add "$ns"
cleanup_ns() { set +e; ip netns del "$ns" 2>/dev/null; ip link del "$hv" 2>/dev/null; cri_cleanup; }
trap cleanup_ns EXIT
ip link add "$hv" type veth peer name eth0 netns "$ns"
ip addr add 10.99.0.1/24 dev "$hv"
ip link set "$hv" mtu 1400 up
ip -n "$ns" link set lo up
ip -n "$ns" link set eth0 mtu 1400 up
ip -n "$ns" addr add 10.99.0.2/24 dev eth0
ip -n "$ns" route add default via 10.99.0.1
veth_mac=$(ip -n "$ns" -o link show eth0 | grep -o 'link/ether [0-9a-f:]*' | awk '{print $2}')

c() { timeout 300 ctr -a "$w/containerd.sock" "$@"; }
c run -d --runtime io.containerd.husk.v2 --with-ns "network:/var/run/netns/$ns" "$CRI_IMAGE" n1 \
  sh -c 'mkdir -p /www && echo hello-from-n1 > /www/index.html && exec httpd -f -p 80 -h /www' </dev/null \
  || fail "ctr run with a network namespace"
ip -n "$ns" link show husk_tap0 >/dev/null || fail "no tap in the namespace while the container runs"
page=""
for _ in $(seq 100); do
  page=$(curl -s -m 5 http://10.99.0.2/index.html) && [ -n "$page" ] && break
  sleep 0.3
done
echo "host fetched from 10.99.0.2: '$page'"
[ "$page" = hello-from-n1 ] || fail "host could not reach the container at the veth's address"
guest=$(c task exec --exec-id e1 n1 sh -c 'cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu' </dev/null)
echo "guest eth0: $(echo $guest); veth: $veth_mac 1400"
[ "$(echo $guest)" = "$veth_mac 1400" ] || fail "guest eth0 is '$(echo $guest)', want '$veth_mac 1400'"

c task kill -s SIGKILL n1
for _ in $(seq 100); do c task ls | grep -qE '^n1 +[0-9]+ +STOPPED' && break; sleep 0.1; done
c task delete n1 >/dev/null
c container delete n1
sleep 1
left=$(ip -n "$ns" -o link show | awk -F': ' '{print $2}' | tr '\n' ' ')
echo "links left in the namespace: $left"
ip -n "$ns" link show husk_tap0 >/dev/null 2>&1 && fail "the tap is left after the container was removed"
tc -n "$ns" qdisc show dev eth0 | grep -q ingress && fail "an ingress qdisc is left on eth0: $(tc -n "$ns" qdisc show dev eth0)"
[ -z "$(tc -n "$ns" filter show dev eth0 ingress)" ] || fail "filters left on eth0"

# no network namespace in the spec (ctr run's default): loopback only
# (the guest kernel's own tunnel fallback devices, e.g. sit0, may be there: no Ethernet)
out=$(c run --rm --runtime io.containerd.husk.v2 "$CRI_IMAGE" n2 sh -c \
  'for i in /sys/class/net/*; do echo "${i##*/}:$(cat $i/type)"; done | tr "\n" " "' </dev/null)
echo "interfaces (name:ARPHRD type) of a container without a named netns: $out"
echo " $out" | grep -q ' lo:772' || fail "no loopback in '$out'"
echo " $out" | grep -q ':1 ' && fail "an Ethernet interface in a container without a netns: '$out'"
grep -q 'loopback only' "$w/containerd.log" || fail "the shim did not log that the pod has loopback only"
echo "netns from a ctr spec: reached from the host, MAC/MTU match, nothing left after removal: ok"
