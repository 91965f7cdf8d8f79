#!/usr/bin/env bash
# The CRI path (issue 5): containerd's CRI plugin, driven by the Rust CRI client
# (tests/cri-client), runs a pod sandbox with runtime handler `husk` and two busybox
# containers in it. One serves HTTP on localhost, the other fetches it over localhost:
# they share the pod's VM and its network namespace. Removing the pod leaves nothing.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cri-lib.sh"

start_containerd_cri || fail "containerd with CRI"
echo "CRI: $(cri version)"
cri_import

t0=$(date +%s%N)
pod=$(cri pod-run web --handler husk --log-dir "$w/podlogs/web") || fail "RunPodSandbox"
cri_track "$pod"
say "pod $pod: $(cri pod-state "$pod") in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
srv=$(cri ctr-run "$pod" web srv "$CRI_IMAGE" --log-dir "$w/podlogs/web" -- \
  sh -c 'mkdir -p /www && echo hello-from-srv > /www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www') \
  || fail "CreateContainer srv"
cli=$(cri ctr-run "$pod" web cli "$CRI_IMAGE" --log-dir "$w/podlogs/web" -- sleep 100000) || fail "CreateContainer cli"
say "containers srv=${srv:0:12} cli=${cli:0:12} started"

# one VM for the pod: both containers see the same guest boot id, one vmm runs
boot_srv=$(cri_exec "$srv" cat /proc/sys/kernel/random/boot_id) || fail "exec in srv"
boot_cli=$(cri_exec "$cli" cat /proc/sys/kernel/random/boot_id) || fail "exec in cli"
[ -n "$boot_srv" ] && [ "$boot_srv" = "$boot_cli" ] || fail "containers in different VMs: $boot_srv vs $boot_cli"
[ "$(uname -r)" != "$(cri_exec "$cli" uname -r)" ] || fail "the container runs on the host's kernel"
n=$(pgrep -fc "$vmm run --config $rundir" || true)
[ "$n" = 1 ] || fail "a pod of two containers runs $n vmms"

# cli reaches srv on localhost (retry while httpd starts). The request is made with
# busybox nc: the static busybox wget died with SIGSEGV in these containers in the nested host, cause not investigated.
page=""
for _ in $(seq 10); do
  page=$(cri_exec "$cli" sh -c 'printf "GET /index.html HTTP/1.0\r\n\r\n" | nc -w 5 127.0.0.1 8080' | tail -n 1) && [ -n "$page" ] && break
  sleep 0.2
done
say "cli fetched from srv over localhost: '$page'"
if [ "$page" != "hello-from-srv" ]; then
  for c in "$srv" "$cli"; do
    echo "-- container ${c:0:12}: netns $(cri_exec "$c" readlink /proc/self/ns/net), listening:"
    cri_exec "$c" netstat -ltn || true
  done
  fail "cli could not reach srv on localhost (got '$page')"
fi
# the pod's hostname is the pod's in both containers
h=$(cri_exec "$cli" hostname)
[ "$h" = web ] || fail "hostname in cli is '$h', want web"
# without shareProcessNamespace each container has a pid namespace of its own
cri_exec "$cli" ps -o args | grep -q '[h]ttpd' && fail "cli sees srv's httpd in a pod that does not share pids"

cri pod-rm "$pod" || fail "StopPodSandbox/RemovePodSandbox"
sleep 1
pgrep -f "$vmm run --config $rundir" && fail "a husk-vmm is still running after pod removal"
pgrep -f "containerd-shim-husk-v2.*$pod" && fail "the pod's shim is still running"
grep -q "$rundir" /proc/mounts && fail "mounts left under $rundir"
echo "CRI: pod sandbox (handler husk) with two containers sharing the VM and localhost: ok"

# shareProcessNamespace: the containers join the sandbox's pid namespace in the guest, so
# each sees the other's processes and the pause process is their pid 1
pod=$(cri pod-run shared --share-pid --handler husk --log-dir "$w/podlogs/shared") || fail "RunPodSandbox (shared pids)"
cri_track "$pod"
a=$(cri ctr-run --share-pid "$pod" shared a "$CRI_IMAGE" --log-dir "$w/podlogs/shared" -- sleep 4242) \
  || fail "CreateContainer a (shared pids)"
b=$(cri ctr-run --share-pid "$pod" shared b "$CRI_IMAGE" --log-dir "$w/podlogs/shared" -- sleep 100000) \
  || fail "CreateContainer b (shared pids)"
seen=$(cri_exec "$b" ps -o pid,args) || fail "ps in b"
say "b sees: $(echo "$seen" | tr '\n' ';')"
echo "$seen" | grep -q '[s]leep 4242' || fail "b does not see a's process in a pod that shares pids"
echo "$seen" | grep -qE '^ *1 +sleep 2147483647' || fail "pid 1 of the shared namespace is not the pause process"
cri pod-rm "$pod" || fail "StopPodSandbox/RemovePodSandbox (shared pids)"
echo "CRI: a pod with shareProcessNamespace: ok"

# hostPID: the node's pid namespace has no meaning in the VM, and the guest's root one is
# the agent's. The sandbox gets a pid namespace of its own, and containerd points the
# members at the sandbox's, so the pod shares one (the pause process is its pid 1) and
# nobody in it sees the agent
pod=$(cri pod-run hostpid --host-pid --handler husk --log-dir "$w/podlogs/hostpid") || fail "RunPodSandbox (hostPID)"
cri_track "$pod"
hp=$(cri ctr-run --host-pid "$pod" hostpid c "$CRI_IMAGE" --log-dir "$w/podlogs/hostpid" -- sleep 100000) \
  || fail "CreateContainer (hostPID)"
seen=$(cri_exec "$hp" ps -o pid,args) || fail "ps in the hostPID container"
say "the hostPID container sees: $(echo "$seen" | tr '\n' ';')"
echo "$seen" | grep -qE '^ *1 +sleep 2147483647' || fail "pid 1 of a hostPID pod is not its pause process"
echo "$seen" | grep -q '/init' && fail "a hostPID container sees the agent"
cri pod-rm "$pod" || fail "StopPodSandbox/RemovePodSandbox (hostPID)"
echo "CRI: a hostPID pod gets a pid namespace of its own, not the agent's: ok"
