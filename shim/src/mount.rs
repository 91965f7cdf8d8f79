//! The real [`RootfsShare`]: bind mounts into the pod's `mounts/` directory, exported
//! read-only (with slave propagation) as `shared/`. Mount calls go through [`MountOps`]
//! so the sequence is unit-tested without root.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::error::{Result, ShimError};
use crate::share::{rewrite_spec, RootfsMount, RootfsShare};
use crate::spec::BundleSpec;

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
    /// Lazy, no-follow unmount.
    fn umount(&self, target: &Path) -> std::io::Result<()>;
    fn mkdir(&self, path: &Path) -> std::io::Result<()>;
    /// Creates an empty file to bind a file onto.
    fn touch(&self, path: &Path) -> std::io::Result<()>;
    fn is_dir(&self, path: &Path) -> bool;
    /// Removes an empty directory or a file; never recursive, so data below a mount that
    /// failed to go away is never deleted.
    fn remove(&self, path: &Path) -> std::io::Result<()>;
}

/// The host's mount(2).
pub struct HostMounts;

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
    fn umount(&self, target: &Path) -> std::io::Result<()> {
        nix::mount::umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)
            .map_err(std::io::Error::from)
    }
    fn mkdir(&self, path: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(path)
    }
    fn touch(&self, path: &Path) -> std::io::Result<()> {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map(drop)
    }
    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
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

    fn bind(&self, src: &Path, dst: &Path, read_only: bool) -> Result<()> {
        let s = src.display().to_string();
        self.ops
            .mount(&s, dst, "", MsFlags::MS_BIND | MsFlags::MS_REC, "")
            .map_err(Self::err(format!(
                "bind {} on {}",
                src.display(),
                dst.display()
            )))?;
        if read_only {
            self.ops
                .mount(
                    "",
                    dst,
                    "",
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    "",
                )
                .map_err(Self::err(format!("remount {} read-only", dst.display())))?;
        }
        Ok(())
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

fn container_dir(pod_dir: &Path, id: &str) -> PathBuf {
    pod_dir.join("mounts").join(id)
}

impl<M: MountOps> RootfsShare for MountShare<M> {
    fn prepare_pod(&self, pod_dir: &Path) -> Result<PathBuf> {
        let (mounts, shared) = (pod_dir.join("mounts"), pod_dir.join("shared"));
        for d in [&mounts, &shared] {
            self.ops
                .mkdir(d)
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
        let binds = rewrite_spec(id, spec)?;
        let dir = container_dir(pod_dir, id);
        let root_dst = dir.join("rootfs");
        self.ops
            .mkdir(&root_dst)
            .map_err(Self::err(format!("creating {}", root_dst.display())))?;
        let root_src = self.mount_rootfs(bundle, rootfs, root)?;
        self.bind(&root_src, &root_dst, spec.root_readonly())?;
        for (i, src, ro) in binds {
            let dst = dir.join("mounts").join(i.to_string());
            let made = if self.ops.is_dir(&src) {
                self.ops.mkdir(&dst)
            } else {
                self.ops
                    .mkdir(&dir.join("mounts"))
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
        if let Ok(entries) = std::fs::read_dir(&mounts) {
            for e in entries.flatten() {
                let _ = self.ops.umount(&e.path());
                let _ = self.ops.remove(&e.path());
            }
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
        fn umount(&self, t: &Path) -> std::io::Result<()> {
            self.push(format!("umount {}", t.display()))
        }
        fn mkdir(&self, p: &Path) -> std::io::Result<()> {
            self.push(format!("mkdir {}", p.display()))
        }
        fn touch(&self, p: &Path) -> std::io::Result<()> {
            self.push(format!("touch {}", p.display()))
        }
        fn is_dir(&self, p: &Path) -> bool {
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
                "mount /b/rootfs /p/mounts/c1/rootfs  MS_BIND | MS_REC ",
                "mount  /p/mounts/c1/rootfs  MS_RDONLY | MS_REMOUNT | MS_BIND ",
                "mkdir /p/mounts/c1/mounts/0",
                "mount /srv/data /p/mounts/c1/mounts/0  MS_BIND | MS_REC ",
                "mount  /p/mounts/c1/mounts/0  MS_RDONLY | MS_REMOUNT | MS_BIND ",
                "mkdir /p/mounts/c1/mounts",
                "touch /p/mounts/c1/mounts/1",
                "mount /var/x/hosts.txt /p/mounts/c1/mounts/1  MS_BIND | MS_REC ",
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
                "mount /srv/root /p/mounts/c1/rootfs  MS_BIND | MS_REC ",
            ]
        );
    }

    #[test]
    fn a_failed_mount_is_an_error_naming_the_path() {
        let rec = Rec {
            fail_on: Some("mount /srv"),
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
