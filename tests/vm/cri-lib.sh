# Helpers for the CRI tests (sourced after lib.sh): containerd with its CRI plugin on,
# runtime handler `husk` (io.containerd.husk.v2) next to `runc`, the CNI bridge and
# host-local plugins (Debian's containernetworking-plugins), busybox and a busybox-based
# pause image imported offline, and `cri`, the Rust CRI client (tests/cri-client).
# Sets: w (work dir), rundir (the shim's state dir), CRI_IMAGE, CRI_BRIDGE, CRI_SUBNET_PREFIX; defines cri, cri_cleanup.
[ -e /dev/kvm ] || skip "no /dev/kvm"
if [ -e /sys/module/kvm_pvm ] || ! grep -qE 'vmx|svm' /proc/cpuinfo; then
  skip "this /dev/kvm cannot boot the guest at speed (PVM or emulation): run in the nested test host"
fi
command -v containerd >/dev/null && command -v ctr >/dev/null || skip "containerd not installed (apt-get install containerd)"
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] || skip "no CNI plugins (apt-get install containernetworking-plugins)"
shim=$(first_built containerd-shim-husk-v2 HUSK_SHIM); [ -n "$shim" ] || fail "no containerd-shim-husk-v2: run make"
vmm=$(first_built husk-vmm HUSK_VMM); [ -n "$vmm" ] || fail "no husk-vmm: run make"
husk_cri=$(first_built husk-cri HUSK_CRI); [ -n "$husk_cri" ] || fail "no husk-cri (tests/cri-client): run cargo build"
vfsd=${HUSK_VIRTIOFSD:-$(command -v virtiofsd || echo "$HOME/.cargo/bin/virtiofsd")}
[ -x "$vfsd" ] || skip "no virtiofsd (cargo install virtiofsd)"
[ -f "$guest/vmlinux" ] && [ -f "$guest/rootfs.cpio" ] || fail "missing $guest/{vmlinux,rootfs.cpio}: run make"
command -v busybox >/dev/null || skip "no busybox (apt-get install busybox-static)"

CRI_IMAGE=docker.io/library/busybox:husk
CRI_PAUSE=husk.local/pause:1
CRI_BRIDGE=huskcni0
CRI_SUBNET_PREFIX=10.88.77
# dual stack: every pod also gets an address from this unique-local IPv6 /64
CRI_SUBNET6_PREFIX=fd00:4b:77:
w=$(mktemp -d /tmp/husk-cri-test.XXXXXX)
# The pod's sockets live under the state dir, named by the 64-character pod id: keep the
# prefix short (a unix socket path has at most 107 bytes).
rundir=$(mktemp -d /run/hk.XXXXXX)
mkdir -p "$w/bin" "$w/cni" "$w/logs" "$w/podlogs"
ln -s "$shim" "$w/bin/containerd-shim-husk-v2"
cat > "$w/husk.toml" <<TOML
kernel = "$guest/vmlinux"
rootfs = "$guest/rootfs.cpio"
vmm = "$vmm"
virtiofsd = "$vfsd"
state_dir = "$rundir"
debug_console = true
boot_timeout_secs = 120
log_level = "debug"
# VM templates (the default), as in lib.sh: CRI pods get theirs with a NIC
vm_template = ${HUSK_TEST_VM_TEMPLATE:-true}
template_dir = "/run/husk/.templates"
TOML
cat > "$w/cni/10-husk.conflist" <<JSON
{"cniVersion": "0.4.0", "name": "husk-test", "plugins": [
  {"type": "bridge", "bridge": "$CRI_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local",
            "ranges": [[{"subnet": "$CRI_SUBNET_PREFIX.0/24"}], [{"subnet": "$CRI_SUBNET6_PREFIX:/64"}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}], "dataDir": "$w/cni-ipam"}}]}
JSON

# start_containerd_cri: start_containerd's config with the CRI plugin on
start_containerd_cri() {
  cat > "$w/containerd.toml" <<TOML
version = 2
root = "$w/root"
state = "$w/state"
[grpc]
  address = "$w/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$CRI_PAUSE"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.husk]
      runtime_type = "io.containerd.husk.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$w/cni"
TOML
  env HUSK_CONFIG="$w/husk.toml" PATH="$w/bin:$PATH" setsid containerd -c "$w/containerd.toml" >"$w/containerd.log" 2>&1 &
  echo $! > "$w/containerd.pid"
  local _
  for _ in $(seq 150); do [ -S "$w/containerd.sock" ] && "$husk_cri" -s "$w/containerd.sock" version >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "containerd with CRI did not start:" >&2; tail -20 "$w/containerd.log" >&2; return 1
}
cri() { timeout "${CRI_TIMEOUT:-300}" "$husk_cri" -s "$w/containerd.sock" "$@"; }
# cri_exec ID CMD...: ExecSync with a short limit (a hung exec fails the test, with logs)
cri_exec() { local id=$1; shift; CRI_TIMEOUT=150 cri exec --timeout 120 "$id" "$@"; }
# cri_get ID IP PORT PATH: the body's last line of an HTTP GET made inside container ID
# with busybox nc (busybox wget died with SIGSEGV in these containers in the nested host; not investigated)
cri_get() {
  cri_exec "$1" sh -c 'printf "GET $2 HTTP/1.0\r\n\r\n" | nc -w 10 "$0" "$1"' "$2" "$3" "$4" | tail -n 1
}
# retry_output TRIES CMD...: runs CMD (0.3 s apart, at most TRIES times) until it succeeds
# with output, and prints the last output it gave (for the failure message when none did)
retry_output() {
  local tries=$1 out="" _; shift
  for _ in $(seq "$tries"); do
    out=$("$@") && [ -n "$out" ] && break
    sleep 0.3
  done
  printf '%s\n' "$out"
}
# say MSG: a progress line with the test's elapsed seconds
say() { echo "[$SECONDS s] $*"; }

# cri_import: busybox and the pause image (busybox whose command is a long sleep), built
# offline and imported into the k8s.io namespace, where CRI finds them (nothing is pulled)
cri_import() {
  python3 "$top/tests/images/busybox-oci.py" "$w/busybox.tar" "$CRI_IMAGE" 2>/dev/null
  python3 "$top/tests/images/busybox-oci.py" "$w/pause.tar" "$CRI_PAUSE" sleep 2147483647 2>/dev/null
  ctr -a "$w/containerd.sock" -n k8s.io images import "$w/busybox.tar" >/dev/null
  ctr -a "$w/containerd.sock" -n k8s.io images import "$w/pause.tar" >/dev/null
}

# The pod directory goes with the pod: keep copies of its logs for failures.
( while sleep 0.5; do for f in "$rundir"/*/console.log "$rundir"/*/vmm.log "$rundir"/*/shim.log; do [ -f "$f" ] && cp "$f" "$w/logs/$(basename "$(dirname "$f")" | cut -c1-12)-$(basename "$f")"; done; done ) &
echo $! > "$w/logcopy.pid"
cri_show_logs() {
  set +e
  ps -eo pid,pcpu,etime,args | grep -E 'husk|virtiofsd|containerd' | grep -v grep | cut -c1-200
  grep -v 'loading plugin\|skip plugin\|devmapper\|level=info' "$w/containerd.log" | tail -25
  for f in "$w"/logs/* "$w"/podlogs/*/* "$rundir"/*/virtiofsd.log; do [ -f "$f" ] && { echo "== $f"; tail -25 "$f"; }; done
  echo "== dmesg"; dmesg 2>/dev/null | tail -15
}
fail() { cri_show_logs; echo "FAIL: $*" >&2; exit 1; }
cri_cleanup() {
  set +e
  local p
  for p in $(cri_pods_left 2>/dev/null); do cri pod-rm "$p" >/dev/null 2>&1; done
  for p in "$w"/*.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done
  sleep 1
  for p in $(pgrep -f "$vmm run --config $rundir"); do kill "$p"; done
  for d in "$w" "$rundir"; do
    grep -q "$d" /proc/mounts && awk -v w="$d" '$2 ~ w {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l
  done
  ip link del "$CRI_BRIDGE" 2>/dev/null
  rm -rf "$w" "$rundir"
}
# pod ids this test ran (cri_track ID records one for cleanup)
cri_track() { echo "$1" >> "$w/pods"; }
cri_pods_left() { [ -f "$w/pods" ] && cat "$w/pods"; }
trap cri_cleanup EXIT
# run-all's time limit sends SIGTERM: clean up then too
trap 'exit 143' TERM
