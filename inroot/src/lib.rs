//! Path resolution inside a container rootfs that never leaves it: every lookup goes
//! through `openat2(RESOLVE_IN_ROOT)`, so a symlink planted in the image (`/dev -> /`,
//! `../../etc`) resolves against the rootfs, not the host (runc CVE-2021-30465 class).
//!
//! The agent resolves every mount destination with it inside the guest; the shim uses it
//! on the host to make the mount points of a container whose rootfs it shares read-only
//! (the agent cannot create them there), as runc does in the rootfs before it is remounted
//! read-only. One implementation, so both sides agree on what a destination resolves to.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// The kind of object a mount destination must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// A directory (created with its parents if missing).
    Dir,
    /// A regular file (created empty, parents created, if missing).
    File,
}

/// A failed step, with the path it was applied to.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct InRootError {
    /// The operation, e.g. `openat2`.
    pub op: &'static str,
    /// The host path it was applied to.
    pub path: PathBuf,
    /// The kernel's answer.
    #[source]
    pub source: std::io::Error,
}

impl InRootError {
    fn new(op: &'static str, path: PathBuf, source: std::io::Error) -> Self {
        InRootError { op, path, source }
    }
}

/// Normalises a container path to its components below `/` (`..` above the root is dropped,
/// as the kernel does inside a root).
pub fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn cstr(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

fn openat2(dirfd: i32, path: &Path, flags: i32, resolve: u64) -> std::io::Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: open_how is plain data; zeroed is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    loop {
        // SAFETY: `c` and `how` outlive the call; the size is that of `how`.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd,
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            let fd =
                i32::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
            // SAFETY: openat2 returned a new descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) && e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Lookups stay in the root and never take a magic link (`/proc/self/root`).
const RESOLVE: u64 = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;

/// Creates `name` (a file or a directory) in the directory `dir`; one that is there
/// already is left as it is.
fn create_in(dir: &OwnedFd, name: &CString, file: bool) -> std::io::Result<()> {
    let rc = if file {
        // SAFETY: valid dirfd and NUL-terminated name; the new fd is closed below.
        let f = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o644,
            )
        };
        if f >= 0 {
            // SAFETY: `f` was just opened and is owned here only.
            drop(unsafe { OwnedFd::from_raw_fd(f) });
            0
        } else {
            -1
        }
    } else {
        // SAFETY: valid dirfd and NUL-terminated name.
        unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) }
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

/// Opens `dest` (a container path) inside `root` as an `O_PATH` fd, creating missing
/// directories (and the final file for [`Create::File`]) on the way, each step resolved
/// inside the root. A symlink that dangles inside the root is refused, not created through.
pub fn open_in_root(root: &Path, dest: &Path, create: Create) -> Result<OwnedFd, InRootError> {
    let c = cstr(root).map_err(|e| InRootError::new("open", root.into(), e))?;
    // SAFETY: `c` is NUL-terminated and outlives the call.
    let raw = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(InRootError::new(
            "open",
            root.into(),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: open returned a new descriptor that nothing else owns.
    let rootfd = unsafe { OwnedFd::from_raw_fd(raw) };
    let rel = clean(dest);
    let comps: Vec<_> = rel.components().collect();
    let mut cur = PathBuf::new();
    let mut fd = openat2(rootfd.as_raw_fd(), Path::new("."), libc::O_PATH, RESOLVE)
        .map_err(|e| InRootError::new("openat2", root.into(), e))?;
    for (i, c) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let parent = cur.clone();
        cur.push(c);
        match openat2(rootfd.as_raw_fd(), &cur, libc::O_PATH, RESOLVE) {
            Ok(f) => fd = f,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                // Create the missing component inside its (already resolved) parent.
                let pfd = openat2(
                    rootfd.as_raw_fd(),
                    if parent.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        &parent
                    },
                    libc::O_PATH | libc::O_DIRECTORY,
                    RESOLVE,
                )
                .map_err(|e| InRootError::new("openat2", root.join(&parent), e))?;
                let name = cstr(Path::new(c.as_os_str()))
                    .map_err(|e| InRootError::new("path", root.join(&cur), e))?;
                create_in(&pfd, &name, last && create == Create::File)
                    .map_err(|e| InRootError::new("create", root.join(&cur), e))?;
                fd = openat2(rootfd.as_raw_fd(), &cur, libc::O_PATH, RESOLVE)
                    .map_err(|e| InRootError::new("openat2", root.join(&cur), e))?;
            }
            Err(e) => return Err(InRootError::new("openat2", root.join(&cur), e)),
        }
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("husk-inroot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn real(fd: &OwnedFd) -> PathBuf {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap()
    }

    #[test]
    fn clean_drops_dotdot_above_root() {
        assert_eq!(clean(Path::new("/../../etc/./x")), PathBuf::from("etc/x"));
        assert_eq!(clean(Path::new("a/b/../c")), PathBuf::from("a/c"));
    }

    #[test]
    fn symlink_to_host_path_stays_inside_root() {
        let root = tmpdir("escape");
        std::os::unix::fs::symlink("/", root.join("dev")).unwrap();
        std::os::unix::fs::symlink("../../../../tmp", root.join("up")).unwrap();
        let fd = open_in_root(&root, Path::new("/dev/newdir"), Create::Dir).unwrap();
        assert_eq!(real(&fd), root.join("newdir"));
        // `up` dangles inside the root (its /tmp is missing): refused, never the host's /tmp.
        assert!(open_in_root(&root, Path::new("/up/file"), Create::File).is_err());
        std::fs::create_dir(root.join("tmp")).unwrap();
        let fd = open_in_root(&root, Path::new("/up/file"), Create::File).unwrap();
        assert_eq!(real(&fd), root.join("tmp/file"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn makes_files_and_dirs_and_keeps_what_is_there() {
        let root = tmpdir("make");
        std::fs::create_dir(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hosts"), "kept\n").unwrap();
        open_in_root(&root, Path::new("/etc/resolv.conf"), Create::File).unwrap();
        open_in_root(&root, Path::new("/etc/hosts"), Create::File).unwrap();
        open_in_root(&root, Path::new("/dev/shm"), Create::Dir).unwrap();
        assert!(root.join("etc/resolv.conf").is_file());
        assert_eq!(
            std::fs::read_to_string(root.join("etc/hosts")).unwrap(),
            "kept\n"
        );
        assert!(root.join("dev/shm").is_dir());
        // A file where a directory is wanted is an error, not a replacement.
        assert!(open_in_root(&root, Path::new("/etc/hosts/x"), Create::Dir).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
