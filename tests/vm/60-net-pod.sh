#!/usr/bin/env bash
# Pod networking (issue 6) through containerd's CRI with the CNI bridge and host-local
# plugins, dual stack: a husk pod runs busybox httpd; the host namespace fetches the page
# from the pod's IP; a second pod reaches the first, over IPv4 and IPv6; the host reaches
# the pod over IPv6; the pod reaches an address on the host bridge;
# the guest's eth0 has the MAC and MTU of the pod's veth; the tap and both redirects are
# in place while the pod runs; 4 MiB cross intact each way.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cri-lib.sh"
command -v ip >/dev/null && command -v tc >/dev/null || skip "no ip/tc (iproute2)"

start_containerd_cri || fail "containerd with CRI"
cri_import

page_cmd='mkdir -p /www && echo "hello-from-$HOSTNAME" > /www/index.html && exec httpd -f -p 80 -h /www'
web=$(cri pod-run web --handler husk --log-dir "$w/podlogs/web") || fail "RunPodSandbox web"
cri_track "$web"
srv=$(cri ctr-run "$web" web srv "$CRI_IMAGE" --log-dir "$w/podlogs/web" -- sh -c "HOSTNAME=web; $page_cmd") || fail "srv"
ip_web=$(cri pod-ip "$web")
say "pod web: $ip_web"
[[ "$ip_web" == "$CRI_SUBNET_PREFIX".* ]] || fail "pod IP '$ip_web' not in $CRI_SUBNET_PREFIX.0/24"

# the host namespace fetches the page from the pod's IP
page=$(retry_output 30 curl -s -m 5 "http://$ip_web/index.html")
say "host fetched from $ip_web: '$page'"
[ "$page" = "hello-from-web" ] || fail "host could not fetch the page from the pod (got '$page')"

# the pod's namespace: veth eth0, tap and redirects; the guest's eth0 has its MAC and MTU
ns=""
for n in $(ip netns list | awk '{print $1}'); do
  ip -n "$n" link show husk_tap0 >/dev/null 2>&1 && ip -n "$n" -4 addr show | grep -q "inet $ip_web/" && ns=$n
done
[ -n "$ns" ] || fail "no network namespace holds the pod's address and a husk_tap0"
veth_mac=$(ip -n "$ns" -o link show eth0 | grep -o 'link/ether [0-9a-f:]*' | awk '{print $2}')
veth_mtu=$(ip -n "$ns" -o link show eth0 | grep -o 'mtu [0-9]*' | awk '{print $2}')
tap_mtu=$(ip -n "$ns" -o link show husk_tap0 | grep -o 'mtu [0-9]*' | awk '{print $2}')
guest_mac=$(cri_exec "$srv" cat /sys/class/net/eth0/address)
guest_mtu=$(cri_exec "$srv" cat /sys/class/net/eth0/mtu)
say "veth eth0 in $ns: mac $veth_mac mtu $veth_mtu; tap mtu $tap_mtu; guest eth0: mac $guest_mac mtu $guest_mtu"
[ -n "$veth_mac" ] && [ "$guest_mac" = "$veth_mac" ] || fail "guest MAC $guest_mac, veth MAC $veth_mac"
# With VM templates the guest's NIC came up with the template's MAC: the agent gave it the
# pod's (the check above); say that this pod was indeed restored.
if [ "${HUSK_TEST_VM_TEMPLATE:-true}" = true ]; then
  grep -q 'the agent answered .* (restored from template ' "$w/containerd.log" \
    || fail "no pod was restored from a VM template: $(grep -o 'the agent answered [^"]*' "$w/containerd.log" | head -3)"
fi
[ -n "$veth_mtu" ] && [ "$guest_mtu" = "$veth_mtu" ] || fail "guest MTU $guest_mtu, veth MTU $veth_mtu"
[ "$tap_mtu" = "$veth_mtu" ] || fail "tap MTU $tap_mtu, veth MTU $veth_mtu"
for dev in eth0 husk_tap0; do
  f=$(tc -n "$ns" filter show dev "$dev" ingress)
  echo "$f" | grep -q 'mirred (Egress Redirect' || fail "no redirect filter on $dev: $f"
done
tc -n "$ns" filter show dev eth0 ingress | grep -q 'to device husk_tap0' || fail "eth0 does not redirect to the tap"
tc -n "$ns" filter show dev husk_tap0 ingress | grep -q 'to device eth0' || fail "the tap does not redirect to eth0"
guest_route=$(cri_exec "$srv" ip route)
echo "guest routes: $(echo $guest_route)"
echo "$guest_route" | grep -q "default via $CRI_SUBNET_PREFIX.1" || fail "no default route via the bridge in the guest"

# the pod reaches an address on the host bridge (an httpd in the host namespace there)
mkdir -p "$w/www" && echo hello-from-host > "$w/www/index.html"
busybox httpd -f -p "$CRI_SUBNET_PREFIX.1:8099" -h "$w/www" & echo $! > "$w/hosthttpd.pid"
page=$(retry_output 10 cri_get "$srv" "$CRI_SUBNET_PREFIX.1" 8099 /index.html)
say "pod fetched from the host bridge $CRI_SUBNET_PREFIX.1: '$page'"
[ "$page" = "hello-from-host" ] || fail "the pod could not reach the host bridge (got '$page')"

# bulk data both ways arrives intact (with the device's checksum and TSO offloads, 64 KiB
# frames cross the tap and the tc redirects in each direction)
big=4194304
head -c "$big" /dev/urandom > "$w/www/big"
want=$(md5sum < "$w/www/big" | awk '{print $1}')
got=$(cri_exec "$srv" sh -c 'printf "GET /big HTTP/1.0\r\n\r\n" | nc -w 30 "$0" 8099 | tail -c "$1" | md5sum' \
  "$CRI_SUBNET_PREFIX.1" "$big" | awk '{print $1}')
say "host -> pod, 4 MiB: md5 $got (sent $want)"
[ "$got" = "$want" ] || fail "4 MiB from the host bridge arrived corrupted or short in the pod"
want=$(cri_exec "$srv" sh -c 'head -c "$0" /dev/urandom > /www/big && md5sum < /www/big' "$big" | awk '{print $1}')
got=$(curl -s -m 120 "http://$ip_web/big" | md5sum | awk '{print $1}')
say "pod -> host, 4 MiB: md5 $got (sent $want)"
[ -n "$want" ] && [ "$got" = "$want" ] || fail "4 MiB from the pod arrived corrupted or short on the host"

# a second pod reaches the first
peer=$(cri pod-run peer --handler husk --log-dir "$w/podlogs/peer") || fail "RunPodSandbox peer"
cri_track "$peer"
cli=$(cri ctr-run "$peer" peer cli "$CRI_IMAGE" --log-dir "$w/podlogs/peer" -- sleep 100000) || fail "cli"
ip_peer=$(cri pod-ip "$peer")
page=$(cri_get "$cli" "$ip_web" 80 /index.html) || true
say "pod peer ($ip_peer) fetched from pod web ($ip_web): '$page'"
[ "$page" = "hello-from-web" ] || fail "pod peer could not reach pod web (got '$page')"
[ "$(cri_exec "$srv" cat /proc/sys/kernel/random/boot_id)" != "$(cri_exec "$cli" cat /proc/sys/kernel/random/boot_id)" ] \
  || fail "the two pods share a VM"

# IPv6: the pod's global address (from the CNI's second range) is on the guest's eth0
# with a default route via the bridge; the host and the other pod reach it (retried while
# duplicate address detection still holds the address tentative)
ip6_web=$(ip -n "$ns" -6 -o addr show dev eth0 scope global | awk '{print $4}' | cut -d/ -f1 | head -1)
[[ "$ip6_web" == "$CRI_SUBNET6_PREFIX":* ]] || fail "pod web has no IPv6 address from the CNI (got '$ip6_web')"
guest6=$(cri_exec "$srv" ip -6 addr show dev eth0)
echo "$guest6" | grep -q "inet6 $ip6_web/64" || fail "the guest's eth0 lacks $ip6_web/64: $guest6"
guest6_route=$(cri_exec "$srv" ip -6 route)
echo "$guest6_route" | grep -q "default via ${CRI_SUBNET6_PREFIX}:1" || fail "no IPv6 default route via the bridge in the guest: $guest6_route"
page=$(retry_output 30 curl -g -s -m 5 "http://[$ip6_web]/index.html")
say "host fetched from [$ip6_web]: '$page'"
[ "$page" = "hello-from-web" ] || fail "host could not fetch the page from the pod over IPv6 (got '$page')"
page=$(retry_output 10 cri_get "$cli" "$ip6_web" 80 /index.html)
say "pod peer fetched from pod web over IPv6: '$page'"
[ "$page" = "hello-from-web" ] || fail "pod peer could not reach pod web over IPv6 (got '$page')"

cri pod-rm "$peer" || fail "removing pod peer"
cri pod-rm "$web" || fail "removing pod web"
sleep 1
pgrep -f "$vmm run --config $rundir" && fail "a husk-vmm is still running after the pods were removed"
echo "pod networking: host -> pod, pod -> pod (IPv4 and IPv6), pod -> host bridge, MAC/MTU, tap and redirects: ok"
