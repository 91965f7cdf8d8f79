//! Per-thread seccomp filters. Each thread installs its own allowlist when it starts; a
//! syscall outside it kills the process. vCPU threads run guest-controlled exits and may
//! only run KVM_RUN, signal eventfds and wait; the event-loop thread, which parses guest
//! queues and talks to host sockets and disk images, gets what that I/O needs and nothing
//! that opens files, maps new executables or spawns processes.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The threads of a running vmm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    Vcpu,
    EventLoop,
    Console,
    /// The main thread once the VM runs: waits, kicks vCPUs, tears down.
    Main,
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the {0:?} seccomp filter: {1}")]
    Build(ThreadKind, String),
    #[error("installing the {0:?} seccomp filter: {1}")]
    Install(ThreadKind, seccompiler::Error),
}

const KVM_RUN: u64 = 0xae80;
/// Read-only vCPU state, fetched once after a triple fault (`Vcpu::fault_state`).
const KVM_GET_REGS: u64 = 0x8090_ae81;
const KVM_GET_SREGS: u64 = 0x8138_ae83;
const KVM_GET_VCPU_EVENTS: u64 = 0x8040_ae9f;
const FIONBIO: u64 = 0x5421;
/// x86_64 only (as the filters): `c_ulong` is `u64`.
const TUNSETOFFLOAD: u64 = crate::devices::virtio::net::tap::TUNSETOFFLOAD;

/// Syscalls every Rust thread needs: memory, locks, signals, exit.
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_write,
    libc::SYS_close,
    // Dropping an fd in a debug build checks it with fcntl(F_GETFD).
    libc::SYS_fcntl,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_gettid,
    libc::SYS_getpid,
];

fn extra(kind: ThreadKind) -> &'static [i64] {
    match kind {
        // ioctl is added with an argument check below.
        ThreadKind::Vcpu => &[libc::SYS_read],
        ThreadKind::EventLoop => &[
            libc::SYS_read,
            libc::SYS_readv,
            libc::SYS_writev,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_lseek,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_accept4,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_shutdown,
            libc::SYS_sendto,
            libc::SYS_recvfrom,
            libc::SYS_sendmsg,
            libc::SYS_recvmsg,
            // Rate limiters arm their timerfds (made before the filter; read with read).
            libc::SYS_timerfd_settime,
        ],
        ThreadKind::Console => &[libc::SYS_fsync],
        ThreadKind::Main => &[libc::SYS_tgkill, libc::SYS_read, libc::SYS_epoll_ctl],
    }
}

fn ioctl_rule(kind: ThreadKind, request: u64) -> Result<SeccompRule, SeccompError> {
    let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
        .map_err(|e| SeccompError::Build(kind, e.to_string()))?;
    SeccompRule::new(vec![cond]).map_err(|e| SeccompError::Build(kind, e.to_string()))
}

/// The compiled filter for `kind`.
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in COMMON.iter().chain(extra(kind)) {
        rules.insert(nr, vec![]);
    }
    match kind {
        ThreadKind::Vcpu => {
            let mut ioctls = vec![];
            for req in [KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS, KVM_GET_VCPU_EVENTS] {
                ioctls.push(ioctl_rule(kind, req)?);
            }
            rules.insert(libc::SYS_ioctl, ioctls);
        }
        ThreadKind::EventLoop => {
            // TUNSETOFFLOAD: virtio-net sets the tap's offloads when the driver activates it.
            rules.insert(
                libc::SYS_ioctl,
                vec![ioctl_rule(kind, FIONBIO)?, ioctl_rule(kind, TUNSETOFFLOAD)?],
            );
            // fallocate only punches holes: the balloon gives guest pages back
            // (`memory::discard`); it never grows a file.
            let punch = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u64;
            let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, punch)
                .map_err(|e| SeccompError::Build(kind, e.to_string()))?;
            rules.insert(
                libc::SYS_fallocate,
                vec![SeccompRule::new(vec![cond])
                    .map_err(|e| SeccompError::Build(kind, e.to_string()))?],
            );
        }
        ThreadKind::Console | ThreadKind::Main => {}
    }
    let f = SeccompFilter::new(
        rules,
        // Trap, not kill: the SIGSYS handler (see `report_blocked_syscalls`) names the
        // syscall on stderr before the process exits, so a violation is diagnosable.
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build(kind, e.to_string()))?;
    f.try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Build(kind, e.to_string()))
}

impl ThreadKind {
    fn name(self) -> &'static [u8] {
        match self {
            ThreadKind::Vcpu => b"vcpu",
            ThreadKind::EventLoop => b"event-loop",
            ThreadKind::Console => b"console",
            ThreadKind::Main => b"main",
        }
    }
}

thread_local! {
    /// The filter this thread runs under, for the SIGSYS line: a const-initialised `Cell`
    /// of a static slice has no destructor and no lazy initialisation, so reading it in
    /// the signal handler is a plain TLS load.
    static FILTERED_AS: std::cell::Cell<&'static [u8]> = const { std::cell::Cell::new(b"unfiltered") };
}

/// Appends `n` in decimal to `buf` at `at`; returns the new end (signal-safe).
fn put_decimal(buf: &mut [u8], mut at: usize, n: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        if at < buf.len() {
            buf[at] = d;
            at += 1;
        }
    }
    at
}

fn put(buf: &mut [u8], mut at: usize, s: &[u8]) -> usize {
    for &b in s {
        if at < buf.len() {
            buf[at] = b;
            at += 1;
        }
    }
    at
}

/// Exit code after a blocked syscall: the vmm's internal-error code.
const BLOCKED_SYSCALL_EXIT: i32 = 1;

/// glibc's malloc gives threads arenas of their own. When a thread frees memory into
/// another arena's heap and that heap shrinks, glibc first reads
/// `/proc/sys/vm/overcommit_memory` (once per process): an `openat` that no thread's filter
/// allows. Seen as `seccomp blocked syscall 257 on the main thread` when the main thread
/// dropped the devices at a VM's end (VM test 27, under strace: `__libc_free` ->
/// `__open64_nocancel`). With one arena there are no such heaps (the main arena shrinks
/// with brk); the vmm's threads allocate little after start-up, so they hardly contend,
/// and fewer arenas are less memory. Must run before the vmm starts a thread.
fn single_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; no thread allocates concurrently
    // (the vmm has not started one yet).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Installs a process-wide SIGSYS handler that writes `husk-vmm: seccomp blocked syscall N
/// on the KIND thread (tid T)` on stderr and exits with the internal-error code, and keeps
/// the allocator from making syscalls the filters refuse (see [`single_malloc_arena`]).
/// Call once, before any filter and before the vmm starts a thread.
pub fn report_blocked_syscalls() -> std::io::Result<()> {
    single_malloc_arena();
    extern "C" fn on_sigsys(
        _sig: libc::c_int,
        info: *mut libc::siginfo_t,
        _ctx: *mut libc::c_void,
    ) {
        // Only async-signal-safe work here: no allocation, no locks; write(2) and
        // exit_group(2) are in every thread's filter.
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; for SIGSYS the
        // syscall number is the int at byte 24 (after si_signo, si_errno, si_code, padding
        // and the 8-byte _call_addr of the _sigsys union member).
        let nr = unsafe { std::ptr::read_unaligned((info as *const u8).add(24) as *const i32) };
        let kind = FILTERED_AS.try_with(|k| k.get()).unwrap_or(b"?");
        // SAFETY: gettid has no arguments and cannot fail.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        let mut line = [0u8; 128];
        let mut at = put(&mut line, 0, b"husk-vmm: seccomp blocked syscall ");
        at = put_decimal(&mut line, at, u64::from(nr.unsigned_abs()));
        at = put(&mut line, at, b" on the ");
        at = put(&mut line, at, kind);
        at = put(&mut line, at, b" thread (tid ");
        at = put_decimal(&mut line, at, tid.unsigned_abs());
        at = put(&mut line, at, b")\n");
        // SAFETY: writing a stack buffer to stderr and exiting; both are signal-safe.
        unsafe {
            libc::write(2, line.as_ptr().cast(), at);
            libc::_exit(BLOCKED_SYSCALL_EXIT);
        }
    }
    // SAFETY: an all-zero sigaction is a valid starting value.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_sigsys as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO;
    // SAFETY: installing a handler for SIGSYS with a valid sigaction; no old action wanted.
    let rc = unsafe { libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Installs the filter for `kind` on the calling thread.
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    let prog = filter(kind)?;
    seccompiler::apply_filter(&prog).map_err(|e| SeccompError::Install(kind, e))?;
    FILTERED_AS.with(|k| k.set(kind.name()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_syscall_is_named_and_exits_with_internal_error() {
        let mut fds = [0; 2];
        // SAFETY: creating a pipe into a valid array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: fork in a test; the child only makes raw syscalls and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: stderr of the child becomes the pipe's write end.
            unsafe { libc::dup2(fds[1], 2) };
            if report_blocked_syscalls().is_err() || apply(ThreadKind::Console).is_err() {
                // SAFETY: exiting the forked child.
                unsafe { libc::_exit(10) };
            }
            // SAFETY: plain syscall with a static path (glibc makes it openat); the filter traps it.
            unsafe { libc::open(c"/".as_ptr(), libc::O_RDONLY) };
            // SAFETY: exiting the forked child.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: closing our copy of the write end.
        unsafe { libc::close(fds[1]) };
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let mut out = [0u8; 128];
        // SAFETY: reading into a valid buffer.
        let n = unsafe { libc::read(fds[0], out.as_mut_ptr().cast(), out.len()) };
        let text = String::from_utf8_lossy(&out[..n.max(0) as usize]).to_string();
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), BLOCKED_SYSCALL_EXIT);
        let want = format!(
            "husk-vmm: seccomp blocked syscall {} on the console thread (tid {pid})",
            libc::SYS_openat
        );
        assert_eq!(text.trim(), want);
    }

    #[test]
    fn vcpu_state_ioctl_numbers_match_the_structs() {
        // _IOR(KVMIO, nr, T): read direction, T's size, type 0xAE.
        fn ior<T>(nr: u64) -> u64 {
            (2 << 30) | ((std::mem::size_of::<T>() as u64) << 16) | (0xae << 8) | nr
        }
        assert_eq!(KVM_GET_REGS, ior::<kvm_bindings::kvm_regs>(0x81));
        assert_eq!(KVM_GET_SREGS, ior::<kvm_bindings::kvm_sregs>(0x83));
        assert_eq!(
            KVM_GET_VCPU_EVENTS,
            ior::<kvm_bindings::kvm_vcpu_events>(0x9f)
        );
    }

    #[test]
    fn every_filter_compiles() {
        for k in [
            ThreadKind::Vcpu,
            ThreadKind::EventLoop,
            ThreadKind::Console,
            ThreadKind::Main,
        ] {
            assert!(!filter(k).unwrap().is_empty());
        }
    }

    #[test]
    fn event_loop_may_set_tap_offloads_only() {
        // In a child: under the event loop's filter, TUNSETOFFLOAD returns (ENOTTY on a
        // pipe), another tun ioctl (TUNSETIFF) is trapped.
        for (request, allowed) in [(TUNSETOFFLOAD, true), (0x4004_54ca, false)] {
            let mut fds = [0; 2];
            // SAFETY: creating a pipe into a valid array.
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            // SAFETY: fork in a test; the child only makes raw syscalls and exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                if apply(ThreadKind::EventLoop).is_err() {
                    // SAFETY: exiting the forked child.
                    unsafe { libc::_exit(10) };
                }
                // SAFETY: an ioctl with an integer argument on our own pipe fd.
                unsafe { libc::ioctl(fds[0], request as libc::c_ulong, 0 as libc::c_ulong) };
                // SAFETY: exiting the forked child.
                unsafe { libc::_exit(0) };
            }
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            // SAFETY: closing our pipe.
            unsafe {
                libc::close(fds[0]);
                libc::close(fds[1]);
            }
            if allowed {
                assert!(libc::WIFEXITED(status), "status {status:#x}");
                assert_eq!(libc::WEXITSTATUS(status), 0);
            } else {
                assert!(libc::WIFSIGNALED(status), "status {status:#x}");
                assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
            }
        }
    }

    #[test]
    fn filter_blocks_what_it_does_not_list() {
        // In a child process: the console filter allows write but not openat.
        // SAFETY: fork in a test; the child only makes raw syscalls and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            if apply(ThreadKind::Console).is_err() {
                // SAFETY: exiting the forked child.
                unsafe { libc::_exit(10) };
            }
            // SAFETY: plain syscall with a static path; it must be killed here.
            unsafe { libc::open(c"/".as_ptr(), libc::O_RDONLY) };
            // SAFETY: exiting the forked child.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        // No handler installed in this child: SIGSYS's default action ends it.
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}
