//! The kernel edge of the rootfs setup: every call that changes the mount table or the
//! file system goes through [`Syscall`], so the mount plan is unit-tested with
//! [`RecordingSyscall`] without root.

use std::cell::RefCell;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use super::paths;

/// A failed kernel call, with the operation and the path it was applied to.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct SysError {
    /// The operation, e.g. `mount`.
    pub op: &'static str,
    /// The path (or value) it was applied to.
    pub path: String,
    /// The kernel's answer.
    #[source]
    pub source: std::io::Error,
}

impl SysError {
    pub(crate) fn new(op: &'static str, path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Self {
            op,
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// The kind of object a mount destination must be.
pub use husk_inroot::Create;

/// A destination resolved inside the rootfs. The path is valid while the value lives:
/// on a real kernel it is `/proc/self/fd/N` of an `O_PATH` fd that cannot escape the root.
#[derive(Debug)]
pub struct Resolved {
    /// The path to hand to `mount(2)`.
    pub path: PathBuf,
    _fd: Option<OwnedFd>,
}

impl Resolved {
    /// A resolved path with no fd behind it (used by fakes).
    pub fn plain(path: PathBuf) -> Self {
        Self { path, _fd: None }
    }
}

/// What a device node at a path is, as seen by `stat(2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevInfo {
    /// True for a character device.
    pub is_char: bool,
    /// The device number.
    pub rdev: u64,
}

/// The kernel calls the rootfs setup needs.
pub trait Syscall {
    /// `mount(2)`.
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), SysError>;
    /// `umount2(2)`.
    fn umount(&self, target: &Path, flags: MntFlags) -> Result<(), SysError>;
    /// Resolves `dest` inside `root` without leaving it, creating it as `create` says.
    fn resolve_in_root(
        &self,
        root: &Path,
        dest: &Path,
        create: Create,
    ) -> Result<Resolved, SysError>;
    /// `mknod(2)` followed by `chown(2)`.
    fn mknod(
        &self,
        path: &Path,
        is_char: bool,
        mode: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
    ) -> Result<(), SysError>;
    /// `symlink(2)`; an existing link is left alone.
    fn symlink(&self, target: &Path, link: &Path) -> Result<(), SysError>;
    /// Makes `new_root` the root and detaches the old one.
    fn pivot_root(&self, new_root: &Path) -> Result<(), SysError>;
    /// `chroot(2)` + `chdir("/")`, for roots pivot_root cannot take (e.g. an initramfs).
    fn chroot(&self, new_root: &Path) -> Result<(), SysError>;
    /// Whether a path exists (without following a final symlink) and is a directory.
    fn probe(&self, path: &Path) -> Option<bool>;
    /// The device behind a path, if it is a device node.
    fn dev_info(&self, path: &Path) -> Option<DevInfo>;
    /// Remounts the bind mount at `path` read-only, keeping the flags the kernel locked.
    fn remount_readonly(&self, path: &Path) -> Result<(), SysError>;
    /// Writes `data` to an existing file (sysctls, proc knobs).
    fn write_file(&self, path: &Path, data: &str) -> Result<(), SysError>;
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

fn cstr(path: &Path) -> Result<CString, SysError> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        SysError::new(
            "path",
            path,
            std::io::Error::from(std::io::ErrorKind::InvalidInput),
        )
    })
}

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), SysError> {
        nix::mount::mount(source, target, fstype, flags, data)
            .map_err(|e| SysError::new("mount", target, e.into()))
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> Result<(), SysError> {
        nix::mount::umount2(target, flags).map_err(|e| SysError::new("umount", target, e.into()))
    }

    fn resolve_in_root(
        &self,
        root: &Path,
        dest: &Path,
        create: Create,
    ) -> Result<Resolved, SysError> {
        let fd = paths::open_in_root(root, dest, create)?;
        Ok(Resolved {
            path: PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
            _fd: Some(fd),
        })
    }

    fn mknod(
        &self,
        path: &Path,
        is_char: bool,
        mode: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
    ) -> Result<(), SysError> {
        let c = cstr(path)?;
        let kind = if is_char {
            libc::S_IFCHR
        } else {
            libc::S_IFBLK
        };
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        let rc = unsafe { libc::mknod(c.as_ptr(), kind | (mode & 0o7777), rdev) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) {
                return Err(SysError::new("mknod", path, err));
            }
        }
        // SAFETY: as above; lchown does not follow a symlink planted at the path.
        let rc = unsafe { libc::lchown(c.as_ptr(), uid, gid) };
        if rc != 0 {
            return Err(SysError::new(
                "chown",
                path,
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    fn symlink(&self, target: &Path, link: &Path) -> Result<(), SysError> {
        match std::os::unix::fs::symlink(target, link) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                Err(SysError::new("symlink", link, e))
            }
            _ => Ok(()),
        }
    }

    fn pivot_root(&self, new_root: &Path) -> Result<(), SysError> {
        let open_dir = |p: &Path| {
            nix::fcntl::open(
                p,
                nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| SysError::new("open", p, e.into()))
        };
        let old = open_dir(Path::new("/"))?;
        let new = open_dir(new_root)?;
        nix::unistd::fchdir(&new).map_err(|e| SysError::new("fchdir", new_root, e.into()))?;
        // pivot_root(".", ".") stacks the old root on top of the new one; it is then
        // detached from "." below, so no directory for it is needed in the rootfs.
        nix::unistd::pivot_root(".", ".")
            .map_err(|e| SysError::new("pivot_root", new_root, e.into()))?;
        nix::unistd::fchdir(&old).map_err(|e| SysError::new("fchdir", "/", e.into()))?;
        // Keep unmount events of the old root from reaching the host.
        self.mount(
            None,
            Path::new("."),
            None,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None,
        )?;
        self.umount(Path::new("."), MntFlags::MNT_DETACH)?;
        nix::unistd::chdir("/").map_err(|e| SysError::new("chdir", "/", e.into()))
    }

    fn chroot(&self, new_root: &Path) -> Result<(), SysError> {
        nix::unistd::chroot(new_root).map_err(|e| SysError::new("chroot", new_root, e.into()))?;
        nix::unistd::chdir("/").map_err(|e| SysError::new("chdir", "/", e.into()))
    }

    fn probe(&self, path: &Path) -> Option<bool> {
        std::fs::symlink_metadata(path).ok().map(|m| m.is_dir())
    }

    fn dev_info(&self, path: &Path) -> Option<DevInfo> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let m = std::fs::symlink_metadata(path).ok()?;
        let ft = m.file_type();
        (ft.is_char_device() || ft.is_block_device()).then(|| DevInfo {
            is_char: ft.is_char_device(),
            rdev: m.rdev(),
        })
    }

    fn remount_readonly(&self, path: &Path) -> Result<(), SysError> {
        let st = nix::sys::statvfs::statvfs(path)
            .map_err(|e| SysError::new("statvfs", path, e.into()))?;
        let f = st.flags();
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        use nix::sys::statvfs::FsFlags;
        for (fs, ms) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if f.contains(fs) {
                flags |= ms;
            }
        }
        self.mount(None, path, None, flags, None)
    }

    fn write_file(&self, path: &Path, data: &str) -> Result<(), SysError> {
        std::fs::write(path, data).map_err(|e| SysError::new("write", path, e))
    }
}

/// One recorded call of [`RecordingSyscall`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `mount(source, target, fstype, flags, data)`.
    Mount(
        Option<PathBuf>,
        PathBuf,
        Option<String>,
        MsFlags,
        Option<String>,
    ),
    /// `umount2(target)`.
    Umount(PathBuf),
    /// `mknod(path, char?, mode, rdev)`.
    Mknod(PathBuf, bool, u32, u64),
    /// `symlink(target, link)`.
    Symlink(PathBuf, PathBuf),
    /// `pivot_root(new_root)`.
    PivotRoot(PathBuf),
    /// `chroot(new_root)`.
    Chroot(PathBuf),
    /// Read-only remount of a bind mount.
    RemountRo(PathBuf),
    /// File write.
    Write(PathBuf, String),
}

/// A fake kernel that records every call; resolution is a plain join, paths listed in
/// `existing` exist (`true` for directories), and devices in `devices` answer `dev_info`.
#[derive(Debug, Default)]
pub struct RecordingSyscall {
    /// The calls, in order.
    pub calls: RefCell<Vec<Call>>,
    /// Paths that exist: path -> is a directory.
    pub existing: Vec<(PathBuf, bool)>,
    /// Device nodes that exist.
    pub devices: Vec<(PathBuf, DevInfo)>,
}

impl RecordingSyscall {
    /// The recorded calls.
    pub fn take(&self) -> Vec<Call> {
        std::mem::take(&mut self.calls.borrow_mut())
    }
    fn rec(&self, c: Call) -> Result<(), SysError> {
        self.calls.borrow_mut().push(c);
        Ok(())
    }
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), SysError> {
        self.rec(Call::Mount(
            source.map(Path::to_path_buf),
            target.to_path_buf(),
            fstype.map(str::to_string),
            flags,
            data.map(str::to_string),
        ))
    }
    fn umount(&self, target: &Path, _flags: MntFlags) -> Result<(), SysError> {
        self.rec(Call::Umount(target.to_path_buf()))
    }
    fn resolve_in_root(
        &self,
        root: &Path,
        dest: &Path,
        _create: Create,
    ) -> Result<Resolved, SysError> {
        Ok(Resolved::plain(
            root.join(dest.strip_prefix("/").unwrap_or(dest)),
        ))
    }
    fn mknod(
        &self,
        path: &Path,
        is_char: bool,
        mode: u32,
        rdev: u64,
        _uid: u32,
        _gid: u32,
    ) -> Result<(), SysError> {
        self.rec(Call::Mknod(path.to_path_buf(), is_char, mode, rdev))
    }
    fn symlink(&self, target: &Path, link: &Path) -> Result<(), SysError> {
        self.rec(Call::Symlink(target.to_path_buf(), link.to_path_buf()))
    }
    fn pivot_root(&self, new_root: &Path) -> Result<(), SysError> {
        self.rec(Call::PivotRoot(new_root.to_path_buf()))
    }
    fn chroot(&self, new_root: &Path) -> Result<(), SysError> {
        self.rec(Call::Chroot(new_root.to_path_buf()))
    }
    fn probe(&self, path: &Path) -> Option<bool> {
        self.existing
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, d)| *d)
    }
    fn dev_info(&self, path: &Path) -> Option<DevInfo> {
        self.devices
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, d)| *d)
    }
    fn remount_readonly(&self, path: &Path) -> Result<(), SysError> {
        self.rec(Call::RemountRo(path.to_path_buf()))
    }
    fn write_file(&self, path: &Path, data: &str) -> Result<(), SysError> {
        self.rec(Call::Write(path.to_path_buf(), data.to_string()))
    }
}

/// Wraps a raw fd returned by a successful syscall.
///
/// # Safety
/// `fd` must be a freshly opened descriptor owned by nobody else.
pub(crate) unsafe fn own_fd(fd: i32) -> OwnedFd {
    // SAFETY: the caller guarantees `fd` is open and unowned.
    unsafe { OwnedFd::from_raw_fd(fd) }
}
