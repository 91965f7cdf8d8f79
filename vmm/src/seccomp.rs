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
const FIONBIO: u64 = 0x5421;

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
            rules.insert(libc::SYS_ioctl, vec![ioctl_rule(kind, KVM_RUN)?]);
        }
        ThreadKind::EventLoop => {
            rules.insert(libc::SYS_ioctl, vec![ioctl_rule(kind, FIONBIO)?]);
        }
        ThreadKind::Console | ThreadKind::Main => {}
    }
    let f = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build(kind, e.to_string()))?;
    f.try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Build(kind, e.to_string()))
}

/// Installs the filter for `kind` on the calling thread.
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    let prog = filter(kind)?;
    seccompiler::apply_filter(&prog).map_err(|e| SeccompError::Install(kind, e))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}
