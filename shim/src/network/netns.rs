//! Running code inside a network namespace.
//!
//! `setns(CLONE_NEWNET)` changes the calling thread only, so the work runs on a thread of
//! its own that ends with it: the shim's own threads never leave the host namespace.
//! Netlink sockets and taps made on that thread belong to the pod's namespace.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

use super::NetError;

/// Whether `path` names the network namespace the shim itself runs in (the host's): the
/// spec's namespace path is the client's choice, and wiring the host's own interfaces to
/// a VM would take the host's network away (catalogue case 21).
pub fn is_own(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(path),
        std::fs::metadata("/proc/thread-self/ns/net"),
    ) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Opens a network namespace file (`/var/run/netns/...`, `/proc/<pid>/ns/net`).
pub fn open(path: &Path) -> Result<File, NetError> {
    File::open(path).map_err(|e| NetError::Netns {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// Runs `f` on a new thread that has joined the network namespace at `path`.
pub fn run_in<T, F>(path: &Path, f: F) -> Result<T, NetError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetError> + Send + 'static,
{
    let ns = open(path)?;
    let owned = path.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("husk-netns".into())
        .spawn(move || {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| NetError::Netns {
                path: owned,
                msg: format!("setns: {e}"),
            })?;
            f()
        })
        .map_err(|e| NetError::Netns {
            path: path.to_path_buf(),
            msg: format!("spawning a thread: {e}"),
        })?;
    thread.join().unwrap_or_else(|_| {
        Err(NetError::Netns {
            path: path.to_path_buf(),
            msg: "the namespace thread panicked".into(),
        })
    })
}

/// Runs the async `f` (netlink requests) on a current-thread runtime inside the namespace.
pub fn block_in<T, F, Fut>(path: &Path, f: F) -> Result<T, NetError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, NetError>>,
{
    run_in(path, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| NetError::Netlink {
                what: "runtime".into(),
                msg: e.to_string(),
            })?;
        rt.block_on(f())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_namespace_is_an_error_naming_it() {
        let e = run_in(Path::new("/nonexistent/netns"), || Ok(())).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/netns"), "{e}");
    }

    #[test]
    fn own_namespace_runs_the_work_on_another_thread() {
        let me = std::thread::current().id();
        let other = run_in(Path::new("/proc/self/ns/net"), move || {
            Ok(std::thread::current().id() != me)
        });
        // Joining one's own namespace needs CAP_SYS_ADMIN: as non-root the error is fine.
        match other {
            Ok(v) => assert!(v),
            Err(e) => assert!(e.to_string().contains("setns"), "{e}"),
        }
    }
}
