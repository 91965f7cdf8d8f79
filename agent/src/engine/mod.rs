//! The container engine: OCI runtime spec 1.x on Linux, the parts runc implements.
//!
//! One file per concern; kernel edges behind [`syscall::Syscall`] and
//! [`cgroups::CgroupManager`] so the logic is unit-tested without root.

pub mod caps;
pub mod cgroups;
pub mod container;
pub mod devices;
pub mod exec;
pub mod hooks;
pub mod loopback;
pub mod paths;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod state;
pub mod syscall;
mod syscall_table;

/// Wraps a raw fd returned by a successful syscall.
///
/// # Safety
/// `fd` must be a freshly opened descriptor owned by nobody else.
pub unsafe fn syscall_own_fd(fd: i32) -> std::os::fd::OwnedFd {
    // SAFETY: forwarded from the caller's guarantee.
    unsafe { syscall::own_fd(fd) }
}

/// Errors of engine operations, each carrying what failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The bundle's spec was refused.
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    /// Rootfs plan error.
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    /// Capability error.
    #[error(transparent)]
    Caps(#[from] caps::CapsError),
    /// Seccomp error.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// cgroup error.
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    /// The device cgroup program failed.
    #[error(transparent)]
    Devices(#[from] devices::DevicesError),
    /// A hook failed.
    #[error(transparent)]
    Hook(#[from] hooks::HookError),
    /// State store error.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// A file or process operation failed.
    #[error("{0}")]
    Io(String),
    /// The init process reported a failure.
    #[error("container init: {0}")]
    Init(String),
    /// A container with this id exists.
    #[error("container {0} already exists")]
    Exists(String),
    /// No such container.
    #[error("container {0} does not exist")]
    NotFound(String),
    /// The operation does not apply in the container's state.
    #[error("container {id} is {status:?}: cannot {op}")]
    WrongState {
        /// Container id.
        id: String,
        /// Its status.
        status: state::Status,
        /// The refused operation.
        op: &'static str,
    },
    /// Bad usage.
    #[error("{0}")]
    Usage(String),
}

/// Parses a signal given as a name (`KILL`, `SIGKILL`) or a number, as runc accepts it.
pub fn parse_signal(s: &str) -> Option<nix::sys::signal::Signal> {
    use std::str::FromStr;
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).ok();
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    nix::sys::signal::Signal::from_str(&name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn signals_parse_like_runc() {
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("KILL"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("sigterm"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("NOPE"), None);
        assert_eq!(parse_signal("999"), None);
    }
}
