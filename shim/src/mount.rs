//! The real [`RootfsShare`]: bind mounts into the pod's `mounts/` directory, exported
//! read-only (with slave propagation) as `shared/`. Mount calls go through [`MountOps`]
//! so the sequence is unit-tested without root.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::error::{Result, ShimError};
use crate::share::{rewrite_spec, RootfsMount, RootfsShare};
use crate::spec::{BundleSpec, SpecMount};

/// The kernel calls sharing needs.
pub trait MountOps: Send + Sync {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: &str,
    ) -> std::io::Result<()>;
    /// Binds the tree at `source` (with the mounts below it) onto `target`; with
    /// `read_only`, the whole tree is read-only before it appears at `target`, so every
    /// copy that propagation makes of it (the pod's `shared/` side, which virtiofsd
    /// exports) is read-only too. `target` itself is not followed if it is a symlink.
    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> std::io::Result<()>;
    /// Lazy, no-follow unmount.
    fn umount(&self, target: &Path) -> std::io::Result<()>;
    /// Creates `path` and the directories between `base` (which must exist) and it;
    /// fails if one of them is there already as anything but a real directory (a
    /// symlink is never followed).
    fn mkdir(&self, base: &Path, path: &Path) -> std::io::Result<()>;
    /// Creates an empty file to bind a file onto (never through a symlink).
    fn touch(&self, path: &Path) -> std::io::Result<()>;
    /// Whether `path` is a directory, following symlinks (a bind source).
    fn is_dir(&self, path: &Path) -> bool;
    /// Makes the mount point `dest` (a container path: a file with `file`, else a
    /// directory, with its parents) inside the rootfs at `root`, resolved inside it (an
    /// image's symlinks never lead out); one that is there is left as it is.
    fn make_mount_point(&self, root: &Path, dest: &Path, file: bool) -> std::io::Result<()>;
    /// Whether `path` is a directory itself, not a symlink to one.
    fn is_real_dir(&self, path: &Path) -> bool;
    /// Removes an empty directory or a file; never recursive, so data below a mount that
    /// failed to go away is never deleted.
    fn remove(&self, path: &Path) -> std::io::Result<()>;
}

/// The host's mount(2).
pub struct HostMounts;

fn cpath(p: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

fn not_a_real_dir(p: &Path) -> std::io::Error {
    std::io::Error::other(format!(
        "{} is there already and is not a directory the shim made (a symlink?)",
        p.display()
    ))
}

/// `open_tree(2)` with `OPEN_TREE_CLONE | AT_RECURSIVE`: a detached copy of the tree at
/// `source` (an rbind that is not attached anywhere yet).
fn open_tree_clone(source: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let src = cpath(source)?;
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as u32;
    // SAFETY: `src` is a NUL-terminated path that outlives the call; open_tree only reads
    // it and returns a new file descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, src.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// `mount_setattr(2)`: makes every mount of the detached tree `tree` read-only.
fn set_tree_read_only(tree: &std::os::fd::OwnedFd) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as u32;
    // SAFETY: the path is an empty NUL-terminated string, `attr` is a valid mount_attr
    // whose size is passed with it; both outlive the call, which only reads them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `move_mount(2)`: attaches the detached tree `tree` at `target` (not following a
/// symlink there: that needs `MOVE_MOUNT_T_SYMLINKS`, which is not passed).
fn move_tree(tree: &std::os::fd::OwnedFd, target: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let dst = cpath(target)?;
    // SAFETY: both paths are NUL-terminated strings that outlive the call, which only
    // reads them; `tree` is an open descriptor.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl MountOps for HostMounts {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: &str,
    ) -> std::io::Result<()> {
        let fstype = (!fstype.is_empty()).then_some(fstype);
        let data = (!data.is_empty()).then_some(data);
        nix::mount::mount(Some(source), target, fstype, flags, data).map_err(std::io::Error::from)
    }
    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> std::io::Result<()> {
        // A bind then a remount would make only the shim's side read-only: the bind
        // propagates to shared/ at once, read-write, and a remount does not propagate.
        // The detached tree is made read-only (every mount in it) before it is attached.
        let tree = match open_tree_clone(source) {
            Ok(t) => t,
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) && !read_only => {
                return self.mount(
                    &source.display().to_string(),
                    target,
                    "",
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    "",
                );
            }
            Err(e) => return Err(e),
        };
        if read_only {
            set_tree_read_only(&tree).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("making the bind read-only (mount_setattr, Linux 5.12): {e}"),
                )
            })?;
        }
        move_tree(&tree, target)
    }
    fn umount(&self, target: &Path) -> std::io::Result<()> {
        nix::mount::umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)
            .map_err(std::io::Error::from)
    }
    fn mkdir(&self, base: &Path, path: &Path) -> std::io::Result<()> {
        let rel = path
            .strip_prefix(base)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut at = base.to_path_buf();
        for c in rel.components() {
            at.push(c);
            match std::fs::create_dir(&at) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            if !self.is_real_dir(&at) {
                return Err(not_a_real_dir(&at));
            }
        }
        Ok(())
    }
    fn touch(&self, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map(drop)
    }
    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
    fn make_mount_point(&self, root: &Path, dest: &Path, file: bool) -> std::io::Result<()> {
        let kind = if file {
            husk_inroot::Create::File
        } else {
            husk_inroot::Create::Dir
        };
        husk_inroot::open_in_root(root, dest, kind)
            .map(drop)
            .map_err(|e| std::io::Error::new(e.source.kind(), e.to_string()))
    }
    fn is_real_dir(&self, path: &Path) -> bool {
        std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir(path),
            Ok(_) => std::fs::remove_file(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Sharing through mounts.
pub struct MountShare<M: MountOps> {
    ops: M,
}

impl<M: MountOps> MountShare<M> {
    pub fn new(ops: M) -> Self {
        MountShare { ops }
    }

    fn err(what: String) -> impl FnOnce(std::io::Error) -> ShimError {
        move |e| ShimError::io(what, e)
    }

    /// A rootfs shared read-only is read-only to the agent too, so the mount points it
    /// needs are made here first, in the host's rootfs, as runc makes them before it
    /// remounts the root read-only (containerd's CRI runs every sandbox that way, and
    /// mounts /etc/resolv.conf, /etc/hostname, /dev/shm into it). Destinations below
    /// another mount's are left out: the agent makes those in that mount (a /dev tmpfs).
    /// /dev is always made: the agent links /dev/fd and friends there.
    fn make_mount_points(&self, root: &Path, mounts: &[SpecMount]) -> Result<()> {
        let dests: Vec<PathBuf> = mounts
            .iter()
            .map(|m| husk_inroot::clean(Path::new(&m.destination)))
            .collect();
        let mut points = vec![(PathBuf::from("dev"), false)];
        for (m, dest) in mounts.iter().zip(&dests) {
            let below_another = dests.iter().any(|d| dest != d && dest.starts_with(d));
            if dest.as_os_str().is_empty() || below_another || points.iter().any(|(p, _)| p == dest)
            {
                continue;
            }
            let file = m.is_bind() && !self.ops.is_dir(Path::new(&m.source));
            points.push((dest.clone(), file));
        }
        for (dest, file) in points {
            self.ops
                .make_mount_point(root, &dest, file)
                .map_err(Self::err(format!(
                    "making the mount point /{} in the read-only rootfs {}",
                    dest.display(),
                    root.display()
                )))?;
        }
        Ok(())
    }

    fn bind(&self, src: &Path, dst: &Path, read_only: bool) -> Result<()> {
        self.ops
            .bind(src, dst, read_only)
            .map_err(Self::err(format!(
                "bind {} on {}{}",
                src.display(),
                dst.display(),
                if read_only { " (read-only)" } else { "" }
            )))
    }

    /// Mounts containerd's rootfs mounts (the snapshotter's overlay) on `<bundle>/rootfs`.
    /// Without mounts (`ctr run --rootfs DIR`) the spec's root directory is used as is.
    fn mount_rootfs(
        &self,
        bundle: &Path,
        rootfs: &[RootfsMount],
        root: PathBuf,
    ) -> Result<PathBuf> {
        if rootfs.is_empty() {
            return Ok(root);
        }
        let target = bundle.join("rootfs");
        for m in rootfs {
            let (mut flags, mut data) = (MsFlags::empty(), Vec::new());
            for o in &m.options {
                match o.as_str() {
                    "ro" => flags |= MsFlags::MS_RDONLY,
                    "rw" => {}
                    "bind" => flags |= MsFlags::MS_BIND,
                    "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
                    "nosuid" => flags |= MsFlags::MS_NOSUID,
                    "nodev" => flags |= MsFlags::MS_NODEV,
                    "noexec" => flags |= MsFlags::MS_NOEXEC,
                    other => data.push(other),
                }
            }
            self.ops
                .mount(&m.source, &target, &m.kind, flags, &data.join(","))
                .map_err(Self::err(format!(
                    "mounting the {} rootfs on {}",
                    m.kind,
                    target.display()
                )))?;
        }
        Ok(target)
    }
}

fn is_index(name: &str) -> bool {
    !name.is_empty() && name.len() <= 6 && name.bytes().all(|b| b.is_ascii_digit())
}

/// The rootfs mounts husk can share with virtio-fs: containerd's overlay or bind mounts
/// of directories. Anything else (a block device's filesystem, a type or source left
/// empty) is refused before anything is mounted.
pub fn check_rootfs_mounts(rootfs: &[RootfsMount]) -> Result<()> {
    for m in rootfs {
        let ok = match m.kind.as_str() {
            "overlay" => !m.source.is_empty(),
            "bind" | "rbind" => Path::new(&m.source).is_absolute(),
            _ => false,
        };
        if !ok {
            return Err(ShimError::InvalidArgument(format!(
                "rootfs mount {:?} of {:?}: husk shares a container's rootfs as a directory \
                 (overlay or bind), never a block device or another filesystem",
                m.kind, m.source
            )));
        }
    }
    Ok(())
}

fn container_dir(pod_dir: &Path, id: &str) -> PathBuf {
    pod_dir.join("mounts").join(id)
}

impl<M: MountOps> RootfsShare for MountShare<M> {
    fn prepare_pod(&self, pod_dir: &Path) -> Result<PathBuf> {
        let (mounts, shared) = (pod_dir.join("mounts"), pod_dir.join("shared"));
        for d in [&mounts, &shared] {
            self.ops
                .mkdir(pod_dir, d)
                .map_err(Self::err(format!("creating {}", d.display())))?;
        }
        let m = mounts.display().to_string();
        let steps: [(&str, &Path, MsFlags); 4] = [
            // mounts/ becomes a mount of its own, in a peer group of its own ...
            (&m, &mounts, MsFlags::MS_BIND),
            ("", &mounts, MsFlags::MS_SHARED),
            // ... shared/ receives what is mounted below it, never sends back ...
            (&m, &shared, MsFlags::MS_BIND),
            ("", &shared, MsFlags::MS_SLAVE),
        ];
        for (src, dst, flags) in steps {
            self.ops
                .mount(src, dst, "", flags, "")
                .map_err(Self::err(format!("preparing {}", dst.display())))?;
        }
        // ... and is read-only at the top: the guest cannot create or replace entries.
        self.ops
            .mount(
                "",
                &shared,
                "",
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                "",
            )
            .map_err(Self::err(format!(
                "remounting {} read-only",
                shared.display()
            )))?;
        Ok(shared)
    }

    fn share(
        &self,
        pod_dir: &Path,
        id: &str,
        bundle: &Path,
        rootfs: &[RootfsMount],
        spec: &mut BundleSpec,
    ) -> Result<()> {
        let root = spec.root_path(bundle);
        let mounts = spec.mounts();
        let binds = rewrite_spec(id, spec)?;
        let dir = container_dir(pod_dir, id);
        let root_dst = dir.join("rootfs");
        check_rootfs_mounts(rootfs)?;
        self.ops
            .mkdir(pod_dir, &root_dst)
            .map_err(Self::err(format!("creating {}", root_dst.display())))?;
        let root_src = self.mount_rootfs(bundle, rootfs, root)?;
        if !self.ops.is_dir(&root_src) {
            return Err(ShimError::InvalidArgument(format!(
                "the rootfs {} is not a directory (husk shares a rootfs as a directory, \
                 never as a block device)",
                root_src.display()
            )));
        }
        if spec.root_readonly() {
            self.make_mount_points(&root_src, &mounts)?;
        }
        self.bind(&root_src, &root_dst, spec.root_readonly())?;
        for (i, src, ro) in binds {
            let dst = dir.join("mounts").join(i.to_string());
            let made = if self.ops.is_dir(&src) {
                self.ops.mkdir(pod_dir, &dst)
            } else {
                self.ops
                    .mkdir(pod_dir, &dir.join("mounts"))
                    .and_then(|_| self.ops.touch(&dst))
            };
            made.map_err(Self::err(format!("creating {}", dst.display())))?;
            self.bind(&src, &dst, ro)?;
        }
        Ok(())
    }

    fn unshare(&self, pod_dir: &Path, id: &str, bundle: &Path) -> Result<()> {
        let dir = container_dir(pod_dir, id);
        let mounts = dir.join("mounts");
        // Only the shim's own directories are walked: if one of them is not a real
        // directory (a symlink to elsewhere), nothing below it is unmounted or removed.
        let walked = [
            pod_dir.to_path_buf(),
            pod_dir.join("mounts"),
            dir.clone(),
            mounts.clone(),
        ];
        let ours = walked.iter().all(|d| self.ops.is_real_dir(d));
        // Worth a warning only when one is there as something else (a planted link): a
        // container without binds has no mounts/, and a pod whose VM ended is gone already.
        let planted = walked
            .iter()
            .any(|d| std::fs::symlink_metadata(d).is_ok_and(|m| !m.is_dir()));
        if ours {
            if let Ok(entries) = std::fs::read_dir(&mounts) {
                for e in entries.flatten() {
                    // the shim names them by the mount's index in the spec
                    if e.file_name().to_str().is_some_and(is_index) {
                        let _ = self.ops.umount(&e.path());
                        let _ = self.ops.remove(&e.path());
                    }
                }
            }
        } else if planted {
            log::warn!(
                "unsharing {id}: {} is not the directory the shim made; leaving what is below it",
                mounts.display()
            );
        }
        let _ = self.ops.remove(&mounts);
        let _ = self.ops.umount(&dir.join("rootfs"));
        let _ = self.ops.remove(&dir.join("rootfs"));
        let _ = self.ops.remove(&dir);
        // containerd's rootfs mounts (a no-op error when the rootfs was a plain directory)
        let _ = self.ops.umount(&bundle.join("rootfs"));
        Ok(())
    }

    fn cleanup_pod(&self, pod_dir: &Path) -> Result<()> {
        for d in ["shared", "mounts", crate::ram::RAM_DIR] {
            let p = pod_dir.join(d);
            let _ = self.ops.umount(&p);
            let _ = self.ops.remove(&p);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Rec {
        log: Mutex<Vec<String>>,
        fail_on: Option<&'static str>,
    }

    impl Rec {
        fn push(&self, s: String) -> std::io::Result<()> {
            let fail = self.fail_on.is_some_and(|f| s.contains(f));
            self.log.lock().unwrap().push(s);
            if fail {
                return Err(std::io::Error::from_raw_os_error(libc::EPERM));
            }
            Ok(())
        }
    }

    impl MountOps for &Rec {
        fn mount(&self, s: &str, t: &Path, ty: &str, f: MsFlags, d: &str) -> std::io::Result<()> {
            let f = format!("{f:?}").replace("MsFlags(0x0)", "empty");
            let f = f.trim_start_matches("MsFlags(").trim_end_matches(')');
            self.push(format!("mount {s} {} {ty} {f} {d}", t.display()))
        }
        fn bind(&self, s: &Path, t: &Path, ro: bool) -> std::io::Result<()> {
            let how = if ro { "ro" } else { "rw" };
            self.push(format!("bind {} {} {how}", s.display(), t.display()))
        }
        fn umount(&self, t: &Path) -> std::io::Result<()> {
            self.push(format!("umount {}", t.display()))
        }
        fn mkdir(&self, _base: &Path, p: &Path) -> std::io::Result<()> {
            self.push(format!("mkdir {}", p.display()))
        }
        fn touch(&self, p: &Path) -> std::io::Result<()> {
            self.push(format!("touch {}", p.display()))
        }
        fn make_mount_point(&self, root: &Path, dest: &Path, file: bool) -> std::io::Result<()> {
            let kind = if file { "file" } else { "dir" };
            self.push(format!(
                "mount point {} {} {kind}",
                root.display(),
                dest.display()
            ))
        }
        fn is_dir(&self, p: &Path) -> bool {
            p.extension().is_none()
        }
        fn is_real_dir(&self, p: &Path) -> bool {
            p.extension().is_none()
        }
        fn remove(&self, p: &Path) -> std::io::Result<()> {
            self.push(format!("remove {}", p.display()))
        }
    }

    #[test]
    fn pod_share_is_read_only_slave_of_mounts() {
        let rec = Rec::default();
        let s = MountShare::new(&rec);
        assert_eq!(
            s.prepare_pod(Path::new("/run/husk/p")).unwrap(),
            PathBuf::from("/run/husk/p/shared")
        );
        let log = rec.log.lock().unwrap();
        assert_eq!(
            *log,
            [
                "mkdir /run/husk/p/mounts",
                "mkdir /run/husk/p/shared",
                "mount /run/husk/p/mounts /run/husk/p/mounts  MS_BIND ",
                "mount  /run/husk/p/mounts  MS_SHARED ",
                "mount /run/husk/p/mounts /run/husk/p/shared  MS_BIND ",
                "mount  /run/husk/p/shared  MS_SLAVE ",
                "mount  /run/husk/p/shared  MS_RDONLY | MS_REMOUNT | MS_BIND ",
            ]
        );
    }

    #[test]
    fn container_rootfs_and_binds() {
        let rec = Rec::default();
        let s = MountShare::new(&rec);
        let mut spec = BundleSpec::from_slice(
            br#"{"root":{"path":"rootfs","readonly":true},"mounts":[
                {"destination":"/data","type":"bind","source":"/srv/data","options":["rbind","ro"]},
                {"destination":"/etc/hosts","type":"bind","source":"/var/x/hosts.txt","options":["rbind"]}]}"#,
            "/b/config.json".into(),
        )
        .unwrap();
        let overlay = RootfsMount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "index=off".into(),
                "workdir=/w".into(),
                "upperdir=/u".into(),
                "lowerdir=/l".into(),
            ],
        };
        s.share(
            Path::new("/p"),
            "c1",
            Path::new("/b"),
            &[overlay],
            &mut spec,
        )
        .unwrap();
        let log = rec.log.lock().unwrap().clone();
        assert_eq!(
            log,
            [
                "mkdir /p/mounts/c1/rootfs",
                "mount overlay /b/rootfs overlay empty index=off,workdir=/w,upperdir=/u,lowerdir=/l",
                "mount point /b/rootfs dev dir",
                "mount point /b/rootfs data dir",
                "mount point /b/rootfs etc/hosts file",
                "bind /b/rootfs /p/mounts/c1/rootfs ro",
                "mkdir /p/mounts/c1/mounts/0",
                "bind /srv/data /p/mounts/c1/mounts/0 ro",
                "mkdir /p/mounts/c1/mounts",
                "touch /p/mounts/c1/mounts/1",
                "bind /var/x/hosts.txt /p/mounts/c1/mounts/1 rw",
            ]
        );
        assert_eq!(
            spec.raw()["mounts"][0]["source"],
            "/run/husk/shared/c1/mounts/0"
        );
        s.unshare(Path::new("/p"), "c1", Path::new("/b")).unwrap();
        s.cleanup_pod(Path::new("/p")).unwrap();
        let log = rec.log.lock().unwrap();
        assert!(log.ends_with(&[
            "umount /p/shared".to_string(),
            "remove /p/shared".into(),
            "umount /p/mounts".into(),
            "remove /p/mounts".into(),
            "umount /p/ram".into(),
            "remove /p/ram".into()
        ]));
        assert!(log.contains(&"umount /b/rootfs".to_string()));
    }

    #[test]
    fn ctr_run_rootfs_dir_is_bound_as_is() {
        let rec = Rec::default();
        let s = MountShare::new(&rec);
        let mut spec =
            BundleSpec::from_slice(br#"{"root":{"path":"/srv/root"}}"#, "/b/config.json".into())
                .unwrap();
        s.share(Path::new("/p"), "c1", Path::new("/b"), &[], &mut spec)
            .unwrap();
        let log = rec.log.lock().unwrap();
        assert_eq!(
            *log,
            [
                "mkdir /p/mounts/c1/rootfs",
                "bind /srv/root /p/mounts/c1/rootfs rw",
            ]
        );
    }

    #[test]
    fn a_failed_mount_is_an_error_naming_the_path() {
        let rec = Rec {
            fail_on: Some("bind /srv"),
            ..Default::default()
        };
        let s = MountShare::new(&rec);
        let mut spec = BundleSpec::from_slice(
            br#"{"mounts":[{"destination":"/d","type":"bind","source":"/srv/d"}]}"#,
            "/b/config.json".into(),
        )
        .unwrap();
        let e = s
            .share(Path::new("/p"), "c1", Path::new("/b"), &[], &mut spec)
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("bind /srv/d on /p/mounts/c1/mounts/0:"),
            "{e}"
        );
    }
}
