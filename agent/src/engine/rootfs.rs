//! The container's file system view: rootfs bind, OCI mounts, default devices and
//! symlinks, pivot_root, masked and read-only paths. Pure logic over [`Syscall`].

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use oci_spec::runtime::{LinuxDeviceType, Mount, Spec};

use super::syscall::{Create, SysError, Syscall};

/// Errors of the rootfs setup.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A kernel call failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// A mount option the engine does not know.
    #[error("mount {dest}: unsupported option {option:?}")]
    Option {
        /// The mount destination.
        dest: String,
        /// The option.
        option: String,
    },
    /// A bad rootfs propagation value.
    #[error("unknown rootfsPropagation {0:?}")]
    Propagation(String),
    /// A masked path's stand-in is not the device it claims to be.
    #[error("{0} is not the null device; refusing to mask with it")]
    NotNullDevice(PathBuf),
}

/// Parsed mount options: flags for `mount(2)`, propagation flags applied afterwards,
/// and the leftover data string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for the mount call.
    pub flags: MsFlags,
    /// Propagation changes (each applied with its own call).
    pub propagation: Vec<MsFlags>,
    /// Filesystem-specific data.
    pub data: String,
}

/// Parses OCI mount options the way runc does.
pub fn parse_options(dest: &str, opts: &[String]) -> Result<MountOptions, RootfsError> {
    let mut m = MountOptions {
        flags: MsFlags::empty(),
        propagation: Vec::new(),
        data: String::new(),
    };
    let mut data = Vec::new();
    for o in opts {
        let (clear, set) = match o.as_str() {
            "defaults" => (false, MsFlags::empty()),
            "ro" => (false, MsFlags::MS_RDONLY),
            "rw" => (true, MsFlags::MS_RDONLY),
            "suid" => (true, MsFlags::MS_NOSUID),
            "nosuid" => (false, MsFlags::MS_NOSUID),
            "dev" => (true, MsFlags::MS_NODEV),
            "nodev" => (false, MsFlags::MS_NODEV),
            "exec" => (true, MsFlags::MS_NOEXEC),
            "noexec" => (false, MsFlags::MS_NOEXEC),
            "sync" => (false, MsFlags::MS_SYNCHRONOUS),
            "async" => (true, MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (false, MsFlags::MS_DIRSYNC),
            "remount" => (false, MsFlags::MS_REMOUNT),
            "mand" => (false, MsFlags::MS_MANDLOCK),
            "nomand" => (true, MsFlags::MS_MANDLOCK),
            "atime" => (true, MsFlags::MS_NOATIME),
            "noatime" => (false, MsFlags::MS_NOATIME),
            "diratime" => (true, MsFlags::MS_NODIRATIME),
            "nodiratime" => (false, MsFlags::MS_NODIRATIME),
            "bind" => (false, MsFlags::MS_BIND),
            "rbind" => (false, MsFlags::MS_BIND | MsFlags::MS_REC),
            "relatime" => (false, MsFlags::MS_RELATIME),
            "norelatime" => (true, MsFlags::MS_RELATIME),
            "strictatime" => (false, MsFlags::MS_STRICTATIME),
            "nostrictatime" => (true, MsFlags::MS_STRICTATIME),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                m.propagation.push(propagation_flags(o)?);
                continue;
            }
            "tmpcopyup" => continue,
            "idmap" | "ridmap" => {
                return Err(RootfsError::Option {
                    dest: dest.to_string(),
                    option: o.clone(),
                })
            }
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        if clear {
            m.flags.remove(set);
        } else {
            m.flags.insert(set);
        }
    }
    m.data = data.join(",");
    Ok(m)
}

fn propagation_flags(p: &str) -> Result<MsFlags, RootfsError> {
    Ok(match p {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        other => return Err(RootfsError::Propagation(other.to_string())),
    })
}

/// A device node to create: path, char?, major, minor, mode, uid, gid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Container path.
    pub path: PathBuf,
    /// Character (true) or block device.
    pub is_char: bool,
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// The devices every container gets (runc's list).
pub fn default_devices() -> Vec<DeviceNode> {
    [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
    .into_iter()
    .map(|(p, ma, mi)| DeviceNode {
        path: p.into(),
        is_char: true,
        major: ma,
        minor: mi,
        mode: 0o666,
        uid: 0,
        gid: 0,
    })
    .collect()
}

/// What the rootfs setup needs from the spec, in one place.
#[derive(Debug, Clone)]
pub struct RootfsPlan {
    /// Absolute host path of the rootfs.
    pub root: PathBuf,
    /// Root read-only.
    pub readonly: bool,
    /// Propagation for `/` before anything is mounted.
    pub propagation: MsFlags,
    /// OCI mounts, in order.
    pub mounts: Vec<Mount>,
    /// Devices: defaults plus the spec's.
    pub devices: Vec<DeviceNode>,
    /// Devices are bind-mounted from the host instead of created (user namespaces).
    pub bind_devices: bool,
    /// Use chroot instead of pivot_root.
    pub no_pivot: bool,
    /// Masked paths.
    pub masked: Vec<String>,
    /// Read-only paths.
    pub readonly_paths: Vec<String>,
}

impl Default for RootfsPlan {
    fn default() -> Self {
        Self {
            root: PathBuf::new(),
            readonly: false,
            propagation: MsFlags::MS_SLAVE | MsFlags::MS_REC,
            mounts: Vec::new(),
            devices: Vec::new(),
            bind_devices: false,
            no_pivot: false,
            masked: Vec::new(),
            readonly_paths: Vec::new(),
        }
    }
}

impl RootfsPlan {
    /// Builds the plan from a spec whose root path is already absolute.
    pub fn from_spec(spec: &Spec, root: PathBuf, in_userns: bool) -> Result<Self, RootfsError> {
        let linux = spec.linux().clone().unwrap_or_default();
        let propagation = match linux.rootfs_propagation().as_deref() {
            None | Some("") => MsFlags::MS_SLAVE | MsFlags::MS_REC,
            Some(p) => propagation_flags(p)?,
        };
        let mut devices = default_devices();
        for d in linux.devices().clone().unwrap_or_default() {
            if devices.iter().any(|x| &x.path == d.path()) {
                devices.retain(|x| &x.path != d.path());
            }
            devices.push(DeviceNode {
                path: d.path().clone(),
                is_char: !matches!(d.typ(), LinuxDeviceType::B),
                major: d.major() as u64,
                minor: d.minor() as u64,
                mode: d.file_mode().unwrap_or(0o666),
                uid: d.uid().unwrap_or(0),
                gid: d.gid().unwrap_or(0),
            });
        }
        Ok(Self {
            root,
            readonly: spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false),
            propagation,
            mounts: spec.mounts().clone().unwrap_or_default(),
            devices,
            bind_devices: in_userns,
            no_pivot: false,
            masked: linux.masked_paths().clone().unwrap_or_default(),
            readonly_paths: linux.readonly_paths().clone().unwrap_or_default(),
        })
    }
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
}

fn mount_one(sys: &dyn Syscall, plan: &RootfsPlan, m: &Mount) -> Result<(), RootfsError> {
    let dest = m.destination().display().to_string();
    let opts = parse_options(&dest, m.options().as_deref().unwrap_or(&[]))?;
    let bind = is_bind(m);
    let source = m.source().clone();
    let create = match (&source, bind) {
        (Some(s), true) if !sys.probe(s).unwrap_or(true) => Create::File,
        _ => Create::Dir,
    };
    let mut target = sys.resolve_in_root(&plan.root, m.destination(), create)?;
    let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
    if bind {
        let flags = opts.flags & (MsFlags::MS_BIND | MsFlags::MS_REC) | MsFlags::MS_BIND;
        sys.mount(source.as_deref(), &target.path, None, flags, None)?;
        // The fd names the directory under the new mount: resolve again to reach it.
        target = sys.resolve_in_root(&plan.root, m.destination(), create)?;
        let rest = opts.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !rest.is_empty() {
            sys.mount(
                None,
                &target.path,
                None,
                rest | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
                None,
            )?;
        }
    } else {
        let fstype = match m.typ().as_deref() {
            Some("cgroup") | Some("cgroup2") => "cgroup2",
            Some(t) => t,
            None => "none",
        };
        let src = source.unwrap_or_else(|| PathBuf::from(fstype));
        sys.mount(Some(&src), &target.path, Some(fstype), opts.flags, data)?;
        if !opts.propagation.is_empty() {
            target = sys.resolve_in_root(&plan.root, m.destination(), create)?;
        }
    }
    for p in &opts.propagation {
        sys.mount(None, &target.path, None, *p, None)?;
    }
    Ok(())
}

fn create_devices(sys: &dyn Syscall, plan: &RootfsPlan) -> Result<(), RootfsError> {
    for d in &plan.devices {
        if plan.bind_devices {
            let target = sys.resolve_in_root(&plan.root, &d.path, Create::File)?;
            sys.mount(Some(&d.path), &target.path, None, MsFlags::MS_BIND, None)?;
        } else {
            let parent = d.path.parent().unwrap_or(Path::new("/"));
            let dir = sys.resolve_in_root(&plan.root, parent, Create::Dir)?;
            let name = d.path.file_name().unwrap_or_default();
            let rdev = nix::sys::stat::makedev(d.major, d.minor);
            sys.mknod(&dir.path.join(name), d.is_char, d.mode, rdev, d.uid, d.gid)?;
        }
    }
    Ok(())
}

fn create_symlinks(sys: &dyn Syscall, plan: &RootfsPlan) -> Result<(), RootfsError> {
    let dev = sys.resolve_in_root(&plan.root, Path::new("/dev"), Create::Dir)?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if sys.probe(Path::new("/proc/kcore")).is_some() {
        links.push(("/proc/kcore", "core"));
    }
    for (target, name) in links {
        sys.symlink(Path::new(target), &dev.path.join(name))?;
    }
    let has_devpts = plan
        .mounts
        .iter()
        .any(|m| m.destination() == Path::new("/dev/pts") && m.typ().as_deref() == Some("devpts"));
    if has_devpts {
        // /dev/ptmx must be the devpts instance of this container.
        let ptmx = dev.path.join("ptmx");
        let _ = std::fs::remove_file(&ptmx);
        sys.symlink(Path::new("pts/ptmx"), &ptmx)?;
    }
    Ok(())
}

/// Sets up the rootfs and switches into it: everything before pivot_root is resolved
/// inside `plan.root`. [`finish`] follows once sysctls and the hostname are set.
pub fn setup(sys: &dyn Syscall, plan: &RootfsPlan) -> Result<(), RootfsError> {
    sys.mount(None, Path::new("/"), None, plan.propagation, None)?;
    // The rootfs must be a mount point for pivot_root.
    sys.mount(
        Some(&plan.root),
        &plan.root,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    for m in &plan.mounts {
        mount_one(sys, plan, m)?;
    }
    create_devices(sys, plan)?;
    create_symlinks(sys, plan)?;
    if plan.no_pivot {
        sys.chroot(&plan.root)?;
    } else {
        sys.pivot_root(&plan.root)?;
    }
    Ok(())
}

/// Steps after the root switch (runc's order): read-only paths, masked paths, read-only root.
pub fn finish(sys: &dyn Syscall, plan: &RootfsPlan) -> Result<(), RootfsError> {
    for p in &plan.readonly_paths {
        let path = Path::new(p);
        if sys.probe(path).is_none() {
            continue;
        }
        sys.mount(
            Some(path),
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        sys.remount_readonly(path)?;
    }
    let null = Path::new("/dev/null");
    for p in &plan.masked {
        let path = Path::new(p);
        match sys.probe(path) {
            None => continue,
            Some(true) => sys.mount(
                Some(Path::new("tmpfs")),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None,
            )?,
            Some(false) => {
                let dev = sys.dev_info(null);
                if dev
                    != Some(super::syscall::DevInfo {
                        is_char: true,
                        rdev: nix::sys::stat::makedev(1, 3),
                    })
                {
                    return Err(RootfsError::NotNullDevice(null.to_path_buf()));
                }
                sys.mount(Some(null), path, None, MsFlags::MS_BIND, None)?
            }
        }
    }
    if plan.readonly {
        sys.remount_readonly(Path::new("/"))?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "rootfs_tests.rs"]
mod tests;
