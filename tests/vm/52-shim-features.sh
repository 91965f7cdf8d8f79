#!/usr/bin/env bash
# The shim's containerd features through Debian's containerd 1.6 and real husk VMs:
# `ctr run -t` with a window size and a resize, `ctr task kill` with SIGTERM,
# pause/resume, an OOM past --memory-limit, --cpus 1, env/cwd/user/hostname, and nothing
# left running or mounted afterwards. (Volumes, big output and five pods: 53-shim-pods.)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
shim_vm_require
command -v script >/dev/null || skip "no script(1) (util-linux)"
command -v python3 >/dev/null || skip "no python3"
shim_vm_setup husk-shim-features sh echo cat true sleep nproc grep stty id pwd head tr hostname uname touch mv
fail() { show_logs; echo "FAIL: $*" >&2; exit 1; }
ctr_path=$(command -v ctr)
# HUSK_SHIM_FEATURES="tty oom ...": only those parts (while debugging one)
want() { [ -z "${HUSK_SHIM_FEATURES:-}" ] || [[ " $HUSK_SHIM_FEATURES " == *" $1 "* ]]; }

if want tty; then
# --- ctr run -t: the container's terminal has the size of ctr's, then follows a resize
# (ctr sends ResizePty at start and on SIGWINCH). The container waits for the change.
cat > "$w/tty.sh" <<EOF
stty rows 33 cols 77
$ctr_path -a $w/containerd.sock run -t --rm --runtime io.containerd.husk.v2 --rootfs $w/rootfs t-tty \\
  /bin/sh -c 'echo "size1 \$(stty size)"; i=0; while [ "\$(stty size)" = "33 77" ] && [ \$i -lt 1200 ]; do sleep 0.1; i=\$((i+1)); done; echo "size2 \$(stty size)"; tty' </dev/tty &
ctrpid=\$!
for i in \$(seq 1200); do grep -q size1 $w/tty.out 2>/dev/null && break; kill -0 \$ctrpid 2>/dev/null || break; sleep 0.1; done
stty rows 40 cols 100
kill -WINCH \$ctrpid
wait \$ctrpid
EOF
timeout -k 10 300 script -qec "bash $w/tty.sh" /dev/null > "$w/tty.out" </dev/null || fail "ctr run -t: exit $?: $(cat "$w/tty.out")"
# (script's NUL on its empty stdin comes back echoed as "^@")
tr -d '\r' < "$w/tty.out" | sed 's/^\^@//' > "$w/tty.txt"
echo "ctr run -t printed: $(tr '\n' '|' < "$w/tty.txt")"
grep -qx 'size1 33 77' "$w/tty.txt" || fail "the container's terminal did not start at 33x77"
grep -qx 'size2 40 100' "$w/tty.txt" || fail "the container did not see the resize to 40x100"
grep -qx '/dev/pts/[0-9]*' "$w/tty.txt" || fail "stdin is not a pty in the container"

fi
if want sigterm; then
# --- ctr task kill -s SIGTERM: the container's handler runs (exit 42)
ctr_run t-term /bin/sh -c 'trap "exit 42" TERM; echo ready; while :; do sleep 0.1; done' </dev/null > "$w/term.out" & runpid=$!
wait_task_state t-term RUNNING 300 || fail "t-term never ran"
for _ in $(seq 300); do grep -q ready "$w/term.out" && break; sleep 0.1; done
c task kill -s SIGTERM t-term
set +e; wait "$runpid"; rc=$?; set -e
[ "$rc" = 42 ] || fail "SIGTERM with a handler came back as $rc"
echo "SIGTERM: handler ran, exit $rc"

fi
if want pause; then
# --- pause/resume: PAUSED, then running again and making progress
c run -d --runtime io.containerd.husk.v2 --rootfs "$w/rootfs" t-pause \
  /bin/sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/count; sleep 0.1; done' </dev/null
wait_task_state t-pause RUNNING 300 || fail "t-pause never ran"
count() { # the container's counter (its writer replaces the file whole)
  local n k
  for k in $(seq 100); do
    n=$(c task exec --exec-id "r$1-$k" t-pause /bin/cat /tmp/count </dev/null 2>/dev/null || true)
    [[ "$n" =~ ^[0-9]+$ ]] && { echo "$n"; return 0; }
    sleep 0.2
  done
  return 1
}
count 0 >/dev/null || fail "the counter never appeared"
c task pause t-pause
c task ls | grep -qE '^t-pause +[0-9]+ +PAUSED' || fail "not PAUSED after pause: $(c task ls)"
c task resume t-pause
c task ls | grep -qE '^t-pause +[0-9]+ +RUNNING' || fail "not RUNNING after resume: $(c task ls)"
n1=$(count 1) || fail "no counter after resume"
sleep 1
n2=$(count 2) || fail "no counter after resume"
[ "$n2" -gt "$n1" ] || fail "the resumed container makes no progress ($n1 then $n2)"
echo "pause/resume: PAUSED, RUNNING, counter $n1 -> $n2"
kill_and_delete t-pause

fi
if want oom; then
# --- --memory-limit: an allocation past it is OOM-killed and reported
c events > "$w/events.txt" 2>&1 & echo $! > "$w/events.pid"
set +e
ctr_run t-oom --memory-limit 33554432 /bin/sh -c 'a=$(head -c 134217728 /dev/zero | tr "\0" x); echo survived' </dev/null; rc=$?
set -e
for _ in $(seq 50); do grep -q '/tasks/oom' "$w/events.txt" && break; sleep 0.1; done
[ "$rc" = 137 ] || fail "a 128 MiB allocation under a 32 MiB limit came back as $rc"
grep -q '/tasks/oom' "$w/events.txt" || fail "no /tasks/oom event: $(grep t-oom "$w/events.txt")"
echo "OOM: exit $rc, $(grep -c /tasks/oom "$w/events.txt") /tasks/oom event(s)"

fi
if want cpus; then
# --- --cpus 1: one CPU inside
out=$(ctr_run t-cpu1 --cpus 1 /bin/nproc </dev/null)
[ "$out" = 1 ] || fail "nproc with --cpus 1: $out"

fi
if want user; then
# --- env, cwd; user and hostname through a full spec (this ctr has no --user/--hostname)
out=$(ctr_run t-env --env HUSK_TEST=env-ok --cwd /tmp /bin/sh -c 'echo "$HUSK_TEST $(pwd)"' </dev/null)
[ "$out" = "env-ok /tmp" ] || fail "env/cwd: $out"
c oci spec > "$w/spec-base.json"
python3 - "$w/spec-base.json" "$w/spec-user.json" "$w/rootfs" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
s["process"]["user"] = {"uid": 1000, "gid": 1000}
s["process"]["args"] = ["/bin/sh", "-c", "echo $(id -u) $(id -g) $(hostname)"]
s["process"]["terminal"] = False
s["hostname"] = "husk-pod-1"
s["root"] = {"path": sys.argv[3]}
json.dump(s, open(sys.argv[2], "w"))
PY
out=$(c run --rm --runtime io.containerd.husk.v2 --config "$w/spec-user.json" t-user </dev/null)
[ "$out" = "1000 1000 husk-pod-1" ] || fail "user 1000:1000 and hostname husk-pod-1: got '$out'"
# without a hostname in the spec the container shows the host's name, as with runc
out=$(ctr_run t-host /bin/uname -n </dev/null)
[ "$out" = "$(uname -n)" ] || fail "hostname without one in the spec: '$out', host '$(uname -n)'"
echo "env/cwd/user/hostname: ok"

fi
assert_nothing_left
echo "shim features: tty and resize, SIGTERM, pause/resume, OOM, --cpus 1, env/cwd/user/hostname: ok"
