#!/usr/bin/env bash
# The shim with Debian's containerd and the real husk-agent, without a VM: the "vmm" is a
# stand-in that answers the vsock handshake and splices the stream to `husk-agent serve`
# on a Unix socket, and the "virtiofsd" binds the pod's shared directory where the agent
# looks for it (/run/husk/shared). So containerd -> shim -> agent API -> container engine
# run for real: an image (overlay rootfs), output, exit codes 0/1/137, stdin piped, OOM,
# exec, metrics, kill, pause/resume, the VM dying, the shim killed with -9.
# Runs inside the nested test host (cgroup v2 alone) or any root host with cgroup v2.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || skip "needs root"
command -v containerd >/dev/null && command -v ctr >/dev/null || skip "containerd not installed (apt-get install containerd)"
[ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] || skip "needs cgroup v2 alone (run in the nested test host)"
bin() { # bin NAME ENVVAR: the first built copy of NAME
  local n=$1 v=${!2:-} c
  [ -n "$v" ] && { staged "$v"; return; }
  for c in "$top/target/debug/$n" "$top/target/release/$n" "${CARGO_TARGET_DIR:-/nonexistent}/debug/$n" "$guest/$n"; do
    [ -x "$c" ] && { staged "$c"; return; }
  done
}
shim=$(bin containerd-shim-husk-v2 HUSK_SHIM); [ -n "$shim" ] || fail "no containerd-shim-husk-v2: run make"
agent=$(bin husk-agent HUSK_AGENT); [ -n "$agent" ] || fail "no husk-agent: run make"
busybox=$(command -v busybox) || skip "no busybox (apt-get install busybox-static)"
[ -e /run/husk/shared ] && grep -q ' /run/husk/shared ' /proc/mounts && skip "/run/husk/shared is in use"

w=$(mktemp -d /tmp/husk-shim-host.XXXXXX)
cleanup() {
  set +e
  for p in "$w"/*.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done
  sleep 0.5
  while umount -l /run/husk/shared 2>/dev/null; do :; done
  awk -v w="$w" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l
  rm -rf "$w"
}
trap cleanup EXIT
mkdir -p "$w/bin" "$w/rootfs/bin" "$w/rootfs/proc" "$w/rootfs/dev" "$w/rootfs/sys" "$w/run"
ln -s "$shim" "$w/bin/containerd-shim-husk-v2"
cp "$busybox" "$w/rootfs/bin/busybox"
for c in sh echo cat sleep true test head tr; do ln -s busybox "$w/rootfs/bin/$c"; done

cat > "$w/bin/vmm" <<'PY'
#!/usr/bin/env python3
# husk-vmm stand-in: serves CONNECT <port> on the vsock socket and splices to the agent.
import json, os, socket, sys, threading, time
log = open(os.environ["HUSK_TEST_TRACE"], "a", buffering=1)
log.write(f"{time.time():.3f} vmm stand-in started: {sys.argv}\n")
cfg = json.load(open(sys.argv[3]))
srv = socket.socket(socket.AF_UNIX)
srv.bind(cfg["vsock"]["socket"])
srv.listen(16)
log.write(f"{time.time():.3f} listening on {cfg['vsock']['socket']}\n")
def pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass
while True:
    c, _ = srv.accept()
    line = b""
    while not line.endswith(b"\n"):
        ch = c.recv(1)
        if not ch:
            break
        line += ch
    log.write(f"{time.time():.3f} {line!r}\n")
    a = socket.socket(socket.AF_UNIX)
    a.connect(os.environ["HUSK_TEST_AGENT_SOCKET"])
    c.sendall(b"OK 1073741824\n")
    threading.Thread(target=pipe, args=(c, a), daemon=True).start()
    threading.Thread(target=pipe, args=(a, c), daemon=True).start()
PY
cat > "$w/bin/virtiofsd" <<'SH'
#!/bin/sh
# virtiofsd stand-in: the guest would mount the share at /run/husk/shared; bind it there.
for a; do case $a in --socket-path=*) sock=${a#*=};; --shared-dir=*) dir=${a#*=};; esac; done
# One pod at a time here: drop the previous pod's binding first.
while umount -l /run/husk/shared 2>/dev/null; do :; done
mkdir -p /run/husk/shared && mount --bind "$dir" /run/husk/shared || { grep husk /proc/self/mountinfo >&2; exit 1; }
: > "$sock"
exec sleep 100000
SH
chmod +x "$w/bin/vmm" "$w/bin/virtiofsd"
cat > "$w/husk.toml" <<TOML
vmm = "$w/bin/vmm"
virtiofsd = "$w/bin/virtiofsd"
state_dir = "$w/run"
boot_timeout_secs = 90
log_level = "debug"
# The stand-in vmm cannot snapshot a VM
vm_template = false
TOML
# The agent on a host puts containers below /sys/fs/cgroup/husk; delegate the controllers
# to that level (in the guest the agent does this for itself).
mkdir -p /sys/fs/cgroup/husk
for ctl in $(cat /sys/fs/cgroup/cgroup.controllers); do echo "+$ctl" > /sys/fs/cgroup/husk/cgroup.subtree_control 2>/dev/null || true; done
"$agent" serve --address "unix://$w/agent.sock" --root "$w/agent-root" >"$w/agent.log" 2>&1 &
echo $! > "$w/agent.pid"
for _ in $(seq 100); do [ -S "$w/agent.sock" ] && break; sleep 0.1; done
start_containerd "$w" HUSK_TEST_TRACE="$w/vmm-trace.log" HUSK_TEST_AGENT_SOCKET="$w/agent.sock" \
  HUSK_CONFIG="$w/husk.toml" PATH="$w/bin:$PATH"
show_logs() { echo "== containerd"; grep -v 'level=info msg="loading plugin' "$w/containerd.log" | tail -25; echo "== agent"; tail -20 "$w/agent.log"; echo "== vmm stand-in"; tail -20 "$w/vmm-trace.log"; }
fail() { show_logs; echo "FAIL: $*" >&2; exit 1; }
c() { timeout 120 ctr -a "$w/containerd.sock" "$@"; }
# --cgroup "": no cgroupsPath (the agent on a host must not touch the host's own cgroups)
run() { local id=$1; shift; c run --rm --cgroup "" --runtime io.containerd.husk.v2 --rootfs "$w/rootfs" "$id" "$@"; }

# --memory-limit: an allocation past it is OOM-killed (137) and reported as /tasks/oom.
# First, because all pods share this one agent here: a GetOomEvent still waiting for an
# earlier (gone) pod's shim would take the event (in a VM each pod has its own agent).
c events >"$w/events.txt" 2>&1 & echo $! > "$w/events.pid"
set +e
c run --rm --cgroup "" --memory-limit 33554432 --runtime io.containerd.husk.v2 --rootfs "$w/rootfs" t-oom \
  /bin/sh -c 'a=$(head -c 134217728 /dev/zero | tr "\0" x); echo survived' </dev/null; rcoom=$?
set -e
[ "$rcoom" = 137 ] || fail "OOM run came back as $rcoom"
for _ in $(seq 50); do grep -q '/tasks/oom' "$w/events.txt" && break; sleep 0.1; done
grep -q '/tasks/oom' "$w/events.txt" || fail "no /tasks/oom event: $(cat "$w/events.txt")"

out=$(run t-echo /bin/echo hello-from-husk </dev/null)
[ "$out" = "hello-from-husk" ] || fail "echo printed '$out'"
# an image: containerd hands over overlay mounts, which the shim mounts and shares
python3 "$top/tests/images/busybox-oci.py" "$w/busybox.tar" docker.io/library/busybox:husk >/dev/null
c image import "$w/busybox.tar" >/dev/null
out=$(c run --rm --cgroup "" --runtime io.containerd.husk.v2 docker.io/library/busybox:husk t-img /bin/sh -c 'echo from-image; ls /etc/passwd' </dev/null)
[ "$out" = "from-image
/etc/passwd" ] || fail "image run printed '$out'"
grep -q " $w/root/io.containerd.runtime.v2.task/default/t-img/rootfs " /proc/mounts && fail "t-img rootfs still mounted"

set +e
run t-exit1 /bin/sh -c 'exit 1' </dev/null; rc1=$?
set -e
[ "$rc1" = 1 ] || fail "exit 1 came back as $rc1"
# ctr task kill -s SIGKILL: the waiting `ctr run` sees 137
run t-kill /bin/sleep 1000 </dev/null & runpid=$!
for _ in $(seq 300); do c task ls 2>/dev/null | grep -qE '^t-kill +[0-9]+ +RUNNING' && break; sleep 0.1; done
c task kill -s SIGKILL t-kill
set +e; wait "$runpid"; rc137=$?; set -e
[ "$rc137" = 137 ] || fail "SIGKILL came back as $rc137"
out=$(echo piped-stdin | run t-cat /bin/cat)
[ "$out" = "piped-stdin" ] || fail "cat echoed '$out'"
big=$(run t-big /bin/sh -c 'i=0; while [ $i -lt 20000 ]; do echo line-$i; i=$((i+1)); done' </dev/null | wc -l)
[ "$big" = 20000 ] || fail "large output: $big of 20000 lines"

# a long-running task: exec, pause/resume, kill
c run -d --cgroup "" --runtime io.containerd.husk.v2 --rootfs "$w/rootfs" t-long /bin/sleep 1000 </dev/null
out=$(c task exec --exec-id e1 t-long /bin/echo exec-ok </dev/null)
[ "$out" = "exec-ok" ] || fail "exec printed '$out'"
c task metrics t-long >"$w/metrics.txt" || fail "ctr task metrics failed"
grep -qi 'memory' "$w/metrics.txt" || fail "no memory in metrics: $(cat "$w/metrics.txt")"
c task ps t-long | grep -qE '^[0-9]+' || fail "ctr task ps shows no process"
shim_pid=$(pgrep -f 'containerd-shim-husk-v2 -namespace default -id t-long')
echo "BENCH shim_rss_mib $(awk '/VmRSS/ {printf "%.1f", $2/1024}' /proc/$shim_pid/status) MiB"
c task pause t-long
c task ls | grep -E '^t-long +[0-9]+ +PAUSED' >/dev/null || fail "not paused: $(c task ls)"
c task resume t-long
c task ls | grep -E '^t-long +[0-9]+ +RUNNING' >/dev/null || fail "not running: $(c task ls)"
c task kill -s SIGKILL t-long
for _ in $(seq 50); do c task ls | grep -q 'STOPPED' && break; sleep 0.1; done
c task ls | grep -E '^t-long +[0-9]+ +STOPPED' >/dev/null || fail "not stopped: $(c task ls)"
c task delete t-long
c container delete t-long

# the VM dies under a running task: the task stops (TaskExit), delete still works
bg() { c run -d --cgroup "" --runtime io.containerd.husk.v2 --rootfs "$w/rootfs" "$1" /bin/sleep 1000 </dev/null; }
bg t-vmdie
kill -9 "$(pidof_file "$w/run/t-vmdie/vmm.pid")"
for _ in $(seq 100); do c task ls | grep -qE '^t-vmdie +[0-9]+ +STOPPED' && break; sleep 0.1; done
c task ls | grep -qE '^t-vmdie +[0-9]+ +STOPPED' || fail "task not stopped after its vm died: $(c task ls)"
c task delete t-vmdie >/dev/null
c container delete t-vmdie
[ -e "$w/run/t-vmdie" ] && fail "pod directory of t-vmdie left behind"

# the shim is killed with -9: containerd runs `shim delete`, which stops the vm
bg t-shimkill
vmm_pid=$(pidof_file "$w/run/t-shimkill/vmm.pid")
kill -9 "$(pgrep -f 'containerd-shim-husk-v2 -namespace default -id t-shimkill')"
for _ in $(seq 100); do kill -0 "$vmm_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$vmm_pid" 2>/dev/null && fail "vmm of t-shimkill still running after shim delete"
c task delete t-shimkill >/dev/null 2>&1 || true
c container delete t-shimkill
grep -q "$w/run/t-shimkill" /proc/mounts && fail "mounts of t-shimkill left behind"

for _ in $(seq 100); do pgrep -f "containerd-shim-husk-v2 -namespace" >/dev/null || break; sleep 0.1; done
pgrep -af "containerd-shim-husk-v2 -namespace" && fail "a shim is still running"
pgrep -f "$w/bin/vmm" >/dev/null && fail "a vmm stand-in is still running"
grep -q " $w/run" /proc/mounts && fail "mounts left under $w/run"
echo "shim+agent on a host: image (overlay), exit codes 0/1/137, stdin, 20000 lines, OOM, exec, metrics, pause/resume, kill, vm death, shim kill -9: ok"
