#!/usr/bin/env bash
# Differential suite: the same OCI bundles under runc and `husk-agent oci`, comparing what
# the container process sees. Needs root, runc and busybox-static (installed from apt if
# missing). Prints PASS/FAIL per case and a summary; exits 1 on any failure.
#
# usage: tests/engine/diff.sh [path/to/husk-agent]
set -u
top=$(cd "$(dirname "$0")/../.." && pwd)
HUSK=${1:-${HUSK_AGENT:-${CARGO_TARGET_DIR:-$top/target}/debug/husk-agent}}
HUSK=$(readlink -f "$HUSK")
if [ "$(id -u)" != 0 ]; then
    echo "SKIP engine differential suite: needs root"; exit 0
fi
if ! command -v runc >/dev/null || [ ! -x /bin/busybox ] || ! file -L /bin/busybox | grep -q static; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y runc busybox-static >/dev/null 2>&1 || true
fi
command -v runc >/dev/null || { echo "FAIL: runc not installable"; exit 1; }
[ -x "$HUSK" ] || { echo "FAIL: no husk-agent at $HUSK"; exit 1; }

WORK=$(mktemp -d /tmp/husk-diff.XXXXXX)
chmod 755 "$WORK"   # a user-namespaced root must reach the rootfs
trap '[ -n "${KEEP:-}" ] || rm -rf "$WORK"; rm -rf /run/husk-diff /run/runc-diff' EXIT
ROOTFS=$WORK/rootfs
mkdir -p "$ROOTFS"/{bin,etc,proc,sys,dev,tmp,data,root}
cp /bin/busybox "$ROOTFS/bin/"
for c in $("$ROOTFS/bin/busybox" --list); do [ "$c" = busybox ] || ln -sf busybox "$ROOTFS/bin/$c"; done
printf 'root:x:0:0:root:/root:/bin/sh\nu1000:x:1000:1000::/home/u:/bin/sh\n' > "$ROOTFS/etc/passwd"
mkdir -p "$WORK/hostdata" && echo hostdata > "$WORK/hostdata/file"
(cd "$WORK" && runc spec)
BASE=$WORK/config.base.json
mv "$WORK/config.json" "$BASE"

PASS=0; FAIL=0; FAILED=()

# Prints what the process sees, normalised: mount ids and device numbers dropped, cgroup
# mounts dropped (runc mounts the host's v1 hierarchy here; husk always mounts cgroup2).
PROBE='echo pid=$$; id; hostname; domainname 2>/dev/null; grep -E "^(Cap|NoNewPrivs|Seccomp)" /proc/self/status;
pwd; env | sort; umask; ulimit -n; ulimit -u;
ls /proc/self/fd | sort -n | tr "\n" " "; echo;
ls -l /dev | awk "{print \$1, \$NF}" | grep -v ^total;
cut -d" " -f4- /proc/self/mountinfo | grep -v /sys/fs/cgroup | sed -E "s/ - ([^ ]+) [^ ]+ .*/ - \1/" | sort'

# edit_spec <out> <python expression statements over `s`>
edit_spec() {
    local out=$1; shift
    python3 - "$BASE" "$out" "$ROOTFS" "$WORK" "$PROBE" "$@" <<'EOF'
import json, sys
base, out, rootfs, work, probe, code = sys.argv[1:7]
s = json.load(open(base))
s["root"]["path"] = rootfs
s["process"]["terminal"] = False
s["process"]["args"] = ["sh", "-c", probe]
exec(code)
json.dump(s, open(out, "w"), indent=1)
EOF
}

run_both() { # run_both <case> ; bundle in $WORK/b-<case>
    local name=$1 b=$WORK/b-$1
    (cd "$b" && runc --root /run/runc-diff run "d-$name" >"$b/runc.out" 2>&1 </dev/null; echo "exit=$?" >>"$b/runc.out")
    (cd "$b" && "$HUSK" oci --root /run/husk-diff run "d-$name" >"$b/husk.out" 2>&1 </dev/null; echo "exit=$?" >>"$b/husk.out")
}

check() { # check <case> <python edits>
    local name=$1 b=$WORK/b-$1
    mkdir -p "$b"
    edit_spec "$b/config.json" "$2"
    run_both "$name"
    # Error texts differ by runtime; that an error happened (and the exit code) must not.
    sed -i -E 's/^time=.*level=error.*/<runtime error>/; s/^husk-agent: .*/<runtime error>/' "$b/runc.out" "$b/husk.out"
    if diff -u "$b/runc.out" "$b/husk.out" >"$b/diff"; then
        PASS=$((PASS+1)); echo "PASS $name"
    else
        FAIL=$((FAIL+1)); FAILED+=("$name"); echo "FAIL $name"; sed 's/^/    /' "$b/diff" | head -40
    fi
}

check default ''
check user-groups-umask 's["process"]["user"]={"uid":1000,"gid":1000,"additionalGids":[10,20],"umask":63}; s["process"]["cwd"]="/tmp"'
check caps-reduced 's["process"]["capabilities"]={k:["CAP_KILL","CAP_NET_BIND_SERVICE","CAP_CHOWN"] for k in ["bounding","effective","permitted","inheritable"]}; s["process"]["capabilities"]["ambient"]=["CAP_KILL"]'
check caps-nonroot-ambient 's["process"]["user"]={"uid":1000,"gid":1000}; s["process"]["capabilities"]={k:["CAP_KILL","CAP_CHOWN"] for k in ["bounding","effective","permitted","inheritable","ambient"]}'
check no-new-privs-off 's["process"]["noNewPrivileges"]=False'
check env-cwd 's["process"]["env"]=["PATH=/bin","A=1","B=two words","HOME=/data"]; s["process"]["cwd"]="/data"'
check rlimits 's["process"]["rlimits"]=[{"type":"RLIMIT_NOFILE","hard":512,"soft":256},{"type":"RLIMIT_NPROC","hard":77,"soft":66}]'
check hostname-domain 's["hostname"]="box-1"; s["domainname"]="example.org"'
check rw-root-tmpfs-bind 's["root"]["readonly"]=False; s["mounts"].append({"destination":"/scratch","type":"tmpfs","source":"tmpfs","options":["nosuid","size=1m","mode=700"]}); s["mounts"].append({"destination":"/data/host","type":"bind","source":work+"/hostdata","options":["rbind","ro","nodev"]}); s["process"]["args"][2]="cat /data/host/file; touch /data/host/x 2>&1 | sed s/.*touch/touch/; "+probe'
check masked-readonly 's["linux"]["maskedPaths"]=["/proc/kcore","/proc/acpi","/etc/passwd"]; s["linux"]["readonlyPaths"]=["/proc/sys","/tmp"]; s["root"]["readonly"]=False; s["process"]["args"][2]="cat /etc/passwd | wc -c; touch /tmp/x 2>&1 | sed s/.*touch/touch/; "+probe'
check seccomp-deny 's["linux"]["seccomp"]={"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],"syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1},{"names":["chmod","fchmodat"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}; s["process"]["args"][2]="mkdir /tmp/x 2>&1 | sed s/.*mkdir/mkdir/; chmod 700 /tmp 2>&1 | sed s/.*chmod/chmod/; "+probe; s["root"]["readonly"]=False'
check seccomp-args 's["linux"]["seccomp"]={"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["personality"],"action":"SCMP_ACT_ERRNO","errnoRet":22,"args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]}],"defaultErrnoRet":1}; s["linux"]["seccomp"]["defaultAction"]="SCMP_ACT_ALLOW"; s["process"]["args"][2]="setarch linux32 true 2>&1 | sed s/.*setarch/setarch/; setarch 8 true 2>&1 | sed \"s/.*setarch/setarch/\"; "+probe'
check user-namespace 's["linux"]["namespaces"].append({"type":"user"}); s["linux"]["uidMappings"]=[{"containerID":0,"hostID":100000,"size":65536}]; s["linux"]["gidMappings"]=[{"containerID":0,"hostID":100000,"size":65536}]; s["mounts"]=[m for m in s["mounts"] if m["destination"] not in ("/sys","/sys/fs/cgroup")]; s["process"]["args"][2]="cat /proc/self/uid_map; "+probe'
check exit-code 's["process"]["args"]=["sh","-c","exit 3"]'
check killed-by-signal 's["process"]["args"]=["sh","-c","kill -9 $$"]'
check no-such-binary 's["process"]["args"]=["/nope"]; s["process"]["args"]=["/nope"]' 2>/dev/null || true
check sysctl 's["linux"]["sysctl"]={"net.ipv4.ip_forward":"1","kernel.shm_rmid_forced":"1"}; s["process"]["args"][2]="cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shm_rmid_forced"'
check oom-score-adj 's["process"]["oomScoreAdj"]=123; s["process"]["args"][2]="cat /proc/self/oom_score_adj"'
# A new network namespace comes with its loopback up (runc's "loopback" network strategy).
check loopback-netns 's["process"]["args"][2]="cat /sys/class/net/lo/flags; ping -c1 -W1 127.0.0.1 >/dev/null 2>&1; echo ping=$?"'
check devices 's["linux"]["devices"]=[{"path":"/dev/fuse","type":"c","major":10,"minor":229,"fileMode":432,"uid":0,"gid":0}]; s["process"]["args"][2]="ls -ln /dev/fuse | cut -d\" \" -f1,5-7"'

# Hooks: each kind runs once, in order, with the state on stdin (poststop after delete).
HOOK=$WORK/hook.sh
printf '#!/bin/sh\nread -r s; echo "$1 $(echo "$s" | grep -o "\\"status\\": *\\"[a-z]*\\"" | tr -d " ")" >> %s/hooks.$RT\n' "$WORK" > "$HOOK"; chmod +x "$HOOK"
b=$WORK/b-hooks; mkdir -p "$b"
edit_spec "$b/config.json" 's["process"]["args"]=["true"]; h=lambda n: [{"path":work+"/hook.sh","args":["hook.sh",n]}]; s["hooks"]={"createRuntime":h("createRuntime"),"poststart":h("poststart"),"poststop":h("poststop")}'
sed -i "s|\$RT|runc|" "$HOOK"; (cd "$b" && runc --root /run/runc-diff run d-hooks >/dev/null 2>&1 </dev/null)
sed -i "s|hooks.runc|hooks.husk|" "$HOOK"; (cd "$b" && "$HUSK" oci --root /run/husk-diff run d-hooks >/dev/null 2>&1 </dev/null)
# Known difference: runc 1.1 hands poststart the state saved before start ("created");
# husk hands the state the runtime spec describes at that point ("running").
sed -i 's/^poststart "status":"created"/poststart "status":"running"/' "$WORK/hooks.runc"
if [ -s "$WORK/hooks.husk" ] && diff -u "$WORK/hooks.runc" "$WORK/hooks.husk" >"$b/diff"; then
    PASS=$((PASS+1)); echo "PASS hooks"; sed 's/^/    /' "$WORK/hooks.husk"; else FAIL=$((FAIL+1)); FAILED+=(hooks); echo "FAIL hooks"; cat "$b/diff" "$WORK/hooks.runc" "$WORK/hooks.husk" 2>&1 | sed 's/^/    /'; fi

# fd leak: an fd open in the caller must not reach the container (runc CVE-2016-9962 class).
b=$WORK/b-fd-leak; mkdir -p "$b"; edit_spec "$b/config.json" 's["process"]["args"]=["sh","-c","ls /proc/self/fd | sort -n | tr \"\\n\" \" \""]'
(cd "$b" && exec 7<"$BASE" && "$HUSK" oci --root /run/husk-diff run d-fd >"$b/husk.out" 2>&1 </dev/null)
(cd "$b" && exec 7<"$BASE" && runc --root /run/runc-diff run d-fd >"$b/runc.out" 2>&1 </dev/null)
if diff -u "$b/runc.out" "$b/husk.out" >"$b/diff" && ! grep -qw 7 "$b/husk.out"; then
    PASS=$((PASS+1)); echo "PASS fd-leak"; else FAIL=$((FAIL+1)); FAILED+=(fd-leak); echo "FAIL fd-leak"; cat "$b/diff"; fi

# Lifecycle: create / state / start / state / kill / state / delete, statuses compared.
lifecycle() { # lifecycle <runtime cmd...>
    local id=d-life
    "$@" create --bundle "$b" --pid-file "$b/pid" $id </dev/null >/dev/null 2>&1 || echo create-failed
    "$@" state $id | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["status"], s["id"], s["pid"]>0, sorted(s))'
    [ -s "$b/pid" ] && echo pidfile-ok
    "$@" start $id; sleep 0.2
    "$@" state $id | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])'
    "$@" delete $id 2>/dev/null && echo delete-running-allowed
    "$@" kill $id KILL; sleep 0.3
    "$@" state $id | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])'
    "$@" delete $id && echo deleted
    "$@" state $id >/dev/null 2>&1 || echo gone
}
b=$WORK/b-lifecycle; mkdir -p "$b"; edit_spec "$b/config.json" 's["process"]["args"]=["sleep","100"]'
lifecycle runc --root /run/runc-diff >"$b/runc.out" 2>&1
lifecycle "$HUSK" oci --root /run/husk-diff >"$b/husk.out" 2>&1
if diff -u "$b/runc.out" "$b/husk.out" >"$b/diff"; then
    PASS=$((PASS+1)); echo "PASS lifecycle"; else FAIL=$((FAIL+1)); FAILED+=(lifecycle); echo "FAIL lifecycle"; cat "$b/diff"; fi

echo "engine differential suite: $PASS passed, $FAIL failed (of $((PASS+FAIL)) cases)${FAILED:+: ${FAILED[*]}}"
[ "$FAIL" = 0 ]
