#!/usr/bin/env bash
# Helpers for the VM benchmarks (sourced after tests/vm/lib.sh). tests/bench/run.sh runs
# every tests/bench/vm/*.sh, this one too: run directly it does nothing.
[ "${BASH_SOURCE[0]}" = "$0" ] && exit 0

# bench_release_binaries: HUSK_SHIM and HUSK_VMM default to the release builds (the
# benchmarks measure what ships), exported for tests/vm/lib.sh's shim_vm_require.
bench_release_binaries() {
  local rel=${CARGO_TARGET_DIR:-$top/target}/release
  HUSK_SHIM=${HUSK_SHIM:-$rel/containerd-shim-husk-v2}
  HUSK_VMM=${HUSK_VMM:-$rel/husk-vmm}
  [ -x "$HUSK_SHIM" ] && [ -x "$HUSK_VMM" ] || fail "no release shim/vmm: cargo build --release -p containerd-shim-husk-v2 -p husk-vmm"
  export HUSK_SHIM HUSK_VMM
}

# ---- gVisor (runsc) as a peer ------------------------------------------------------------
# Debian's runsc (0.0~20221219) has no containerd-shim-runsc-v1: it runs under containerd's
# runc shim (io.containerd.runc.v2) as its runc binary, with its own state root. Its
# default platform is ptrace (works inside the nested test host; measured: `ctr run` of a
# busybox `sh -c` with ptrace, with kvm, and with --ignore-cgroups all ran there). Extra
# runsc flags: HUSK_RUNSC_FLAGS (e.g. "--platform=kvm"), through a wrapper script.
RUNSC=${HUSK_RUNSC:-/usr/bin/runsc}
RUNSC_ROOT=/run/containerd/runsc
# runsc_bin DIR: the binary to give as --runc-binary (a wrapper in DIR when there are flags)
runsc_bin() {
  if [ -z "${HUSK_RUNSC_FLAGS:-}" ]; then echo "$RUNSC"; return; fi
  printf '#!/bin/sh\nexec %q %s "$@"\n' "$RUNSC" "$HUSK_RUNSC_FLAGS" > "$1/runsc-wrap"
  chmod 755 "$1/runsc-wrap"
  echo "$1/runsc-wrap"
}
# runsc_cri_bin DIR: the BinaryName for runsc as a CRI runtime handler: a wrapper in DIR
# that runs `runsc start` with its output in DIR/runsc-start.log. Why: in a pod of several
# containers (CRI's pause container, then the pod's), `runsc start` of a later container
# spawns that container's gofer, which inherits runsc's stdout/stderr; the runc shim reads
# them through a pipe (go-runc's cmdOutput) and waits for it to close, so StartContainer
# hung until its deadline though `runsc start` had exited 0 (seen in the nested test host:
# the shim's goroutine dump waited in go-runc.(*Runc).Start -> exec.(*Cmd).Wait, with the
# new runsc-gofer alive). containerd-shim-runsc-v1, which Debian does not ship, avoids it.
runsc_cri_bin() {
  cat > "$1/runsc-cri" <<SH
#!/bin/sh
# the subcommand: the first argument that is neither a global flag nor a flag's value
cmd= skip=
for a in "\$@"; do
  if [ -n "\$skip" ]; then skip=; continue; fi
  case "\$a" in --root|--log|--log-format|--rootless|--criu) skip=1 ;; -*) ;; *) cmd=\$a; break ;; esac
done
if [ "\$cmd" = start ]; then
  exec $(printf %q "$RUNSC") ${HUSK_RUNSC_FLAGS:-} "\$@" </dev/null >>$(printf %q "$1/runsc-start.log") 2>&1
fi
exec $(printf %q "$RUNSC") ${HUSK_RUNSC_FLAGS:-} "\$@"
SH
  chmod 755 "$1/runsc-cri"
  echo "$1/runsc-cri"
}
# runsc_ctr_flags DIR: the `ctr run` flags that run a container under runsc
runsc_ctr_flags() {
  echo "--runtime io.containerd.runc.v2 --runc-binary $(runsc_bin "$1") --runc-root $RUNSC_ROOT"
}
# bench_skip REASON NAME...: a `BENCH-SKIP <name> <reason>` line per figure, the reason on
# stderr too (a figure is never left out silently)
bench_skip() {
  local why=$1 n; shift
  echo "bench: cannot measure $*: $why" >&2
  for n in "$@"; do echo "BENCH-SKIP $n $why"; done
}
# one_line TEXT: TEXT on one line, at most 300 characters (for BENCH-SKIP reasons)
one_line() { tr '\n\t' '  ' <<<"$1" | sed 's/  */ /g' | cut -c1-300; }

# ---- host memory ---------------------------------------------------------------------
# Host memory is counted as PSS (/proc/PID/smaps_rollup): a page mapped by k processes
# counts 1/k in each, so summing PSS over a pod's processes counts the guest RAM file that
# husk-vmm and virtiofsd both map once, and splits pages shared by several pods (a VM
# template's, the binaries') between them. Summed over every pod, PSS is what the pods
# hold between them; pages of a tmpfs file that no process maps (a template file's
# untouched pages) are in nobody's PSS (vm_template_mib reports the templates).

# descendants PID: PID and every process under it
descendants() {
  ps -eo pid=,ppid= | awk -v root="$1" '
    { kids[$2] = kids[$2] " " $1 }
    END { q[1] = root; n = 1
          for (i = 1; i <= n; i++) { print q[i]; k = split(kids[q[i]], a, " "); for (j = 1; j <= k; j++) q[++n] = a[j] } }'
}
# pss_kib PID: PID's PSS in KiB (0 if it is gone)
pss_kib() { awk '/^Pss:/ {print $2; f = 1} END {if (!f) print 0}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
# tree_pss_kib PID...: PSS summed over each PID and its descendants (each process once);
# with TREE_PSS_VERBOSE set, a line per process on stderr
tree_pss_kib() {
  local root p total=0 k
  for p in $(for root in "$@"; do descendants "$root"; done | sort -un); do
    k=$(pss_kib "$p")
    [ -n "${TREE_PSS_VERBOSE:-}" ] && echo "  pid $p $(tr -d '\0' < "/proc/$p/comm" 2>/dev/null): Pss $k KiB" >&2
    total=$((total + k))
  done
  echo "$total"
}
# mib KIB: KiB as MiB with one decimal
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
# host_used_kib: MemTotal - MemAvailable (a system-wide cross-check of the PSS sums)
host_used_kib() { awk '/^MemTotal:/ {t = $2} /^MemAvailable:/ {a = $2} END {print t - a}' /proc/meminfo; }

# shim_pid_of ID: the pid of the shim (husk's or runc's) serving container ID on this
# test's containerd ($w)
shim_pid_of() {
  pgrep -f "containerd-shim-(husk|runc)-v2 -namespace default -id $1 -address $w/containerd.sock" | head -1
}
