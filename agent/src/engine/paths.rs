//! Path resolution inside a container rootfs that never leaves it: every lookup goes
//! through `openat2(RESOLVE_IN_ROOT)`, so a symlink planted in the image (`/dev -> /`,
//! `../../etc`) resolves against the rootfs, not the host (runc CVE-2021-30465 class).

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use super::syscall::{own_fd, Create, SysError};

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

fn openat2(dirfd: i32, path: &Path, flags: i32, resolve: u64) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
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
            // SAFETY: openat2 returned a new descriptor that nothing else owns.
            return Ok(unsafe { own_fd(fd as i32) });
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) && e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

const RESOLVE: u64 = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;

/// Opens `dest` (a container path) inside `root` as an `O_PATH` fd, creating missing
/// directories (and the final file for [`Create::File`]) on the way, each step resolved
/// inside the root.
pub fn open_in_root(root: &Path, dest: &Path, create: Create) -> Result<OwnedFd, SysError> {
    let rootfd = nix::fcntl::open(
        root,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| SysError::new("open", root, e.into()))?;
    let rel = clean(dest);
    let comps: Vec<_> = rel.components().collect();
    let mut cur = PathBuf::new();
    let mut fd = openat2(rootfd.as_raw_fd(), Path::new("."), libc::O_PATH, RESOLVE)
        .map_err(|e| SysError::new("openat2", root, e))?;
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
                .map_err(|e| SysError::new("openat2", root.join(&parent), e))?;
                let name = CString::new(c.as_os_str().as_encoded_bytes()).map_err(|_| {
                    SysError::new("path", &cur, std::io::ErrorKind::InvalidInput.into())
                })?;
                let rc = if last && create == Create::File {
                    // SAFETY: valid dirfd and NUL-terminated name; the new fd is closed below.
                    let f = unsafe {
                        libc::openat(
                            pfd.as_raw_fd(),
                            name.as_ptr(),
                            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                            0o644,
                        )
                    };
                    if f >= 0 {
                        // SAFETY: `f` was just opened and is owned here only.
                        drop(unsafe { own_fd(f) });
                        0
                    } else {
                        -1
                    }
                } else {
                    // SAFETY: valid dirfd and NUL-terminated name.
                    unsafe { libc::mkdirat(pfd.as_raw_fd(), name.as_ptr(), 0o755) }
                };
                if rc != 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(SysError::new("create", root.join(&cur), e));
                    }
                }
                fd = openat2(rootfd.as_raw_fd(), &cur, libc::O_PATH, RESOLVE)
                    .map_err(|e| SysError::new("openat2", root.join(&cur), e))?;
            }
            Err(e) => return Err(SysError::new("openat2", root.join(&cur), e)),
        }
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("husk-paths-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
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
        let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert_eq!(real, root.join("newdir"));
        // `up` dangles inside the root (its /tmp is missing): refused, never the host's /tmp.
        assert!(open_in_root(&root, Path::new("/up/file"), Create::File).is_err());
        std::fs::create_dir(root.join("tmp")).unwrap();
        let fd = open_in_root(&root, Path::new("/up/file"), Create::File).unwrap();
        let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert_eq!(real, root.join("tmp/file"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
