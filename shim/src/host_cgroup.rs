//! The pod's cgroup on the host: the shim, and the vmm and virtiofsd it starts, run in the
//! cgroup containerd gives the sandbox (`linux.cgroupsPath` of its spec), as Kata's
//! `sandbox_cgroup_only`. The kubelet then accounts and limits what the pod really costs
//! the node (guest RAM, the vmm, virtiofsd, the shim), not a pause process that does not
//! exist here.
//!
//! cgroup v2 only. The shim moves itself into the cgroup before it starts the pod's
//! processes, which inherit it; when the pod ends it moves back to where it was and removes
//! the cgroup. Both cgroup drivers' path forms are understood: cgroupfs (`/kubepods/pod1/id`,
//! a path below the cgroup root) and systemd (`kubepods-pod1.slice:cri-containerd:id`, a
//! slice and a scope). With the systemd driver husk creates the slice and scope directories
//! itself, as runc does when it cannot reach systemd over D-Bus; the scope is not a systemd
//! unit.

use std::path::{Component, Path, PathBuf};

use crate::error::{Result, ShimError};

/// Where the unified hierarchy is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The controllers enabled on the way down, so the pod's cgroup has memory, CPU and pid
/// accounting (each only if the parent offers it).
const CONTROLLERS: &[&str] = &["cpu", "memory", "pids", "io"];

fn invalid(path: &str, why: &str) -> ShimError {
    ShimError::InvalidArgument(format!("cgroupsPath {path:?}: {why}"))
}

/// Whether a string is a safe single directory name (no `/`, not `.`/`..`, not empty).
fn is_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

/// The directory below the cgroup root that `cgroups_path` names: a path in the cgroupfs
/// form, or `slice:prefix:name` in the systemd form (`a-b.slice` lives in
/// `a.slice/a-b.slice`, the unit is `prefix-name.scope`). Anything that would climb out of
/// the root (`..`) is refused.
pub fn resolve(cgroups_path: &str) -> Result<PathBuf> {
    if cgroups_path.is_empty() {
        return Err(invalid(cgroups_path, "empty"));
    }
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    if parts.len() == 3 && !cgroups_path.starts_with('/') {
        return systemd_path(cgroups_path, parts[0], parts[1], parts[2]);
    }
    if parts.len() != 1 {
        return Err(invalid(
            cgroups_path,
            "neither a path nor the systemd form slice:prefix:name",
        ));
    }
    let mut out = PathBuf::new();
    for c in Path::new(cgroups_path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(invalid(cgroups_path, "`..` climbs out of the cgroup root"))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(invalid(cgroups_path, "names the root cgroup"));
    }
    Ok(out)
}

fn systemd_path(whole: &str, slice: &str, prefix: &str, name: &str) -> Result<PathBuf> {
    if !is_name(name) || (!prefix.is_empty() && !is_name(prefix)) {
        return Err(invalid(whole, "bad unit name"));
    }
    let mut out = PathBuf::new();
    if !slice.is_empty() && slice != "-.slice" {
        let Some(stem) = slice.strip_suffix(".slice") else {
            return Err(invalid(whole, "the slice must end in .slice"));
        };
        if !is_name(slice) || stem.is_empty() || stem.starts_with('-') || stem.ends_with('-') {
            return Err(invalid(whole, "bad slice name"));
        }
        // a-b-c.slice is in a.slice/a-b.slice/a-b-c.slice.
        let mut acc = String::new();
        for piece in stem.split('-') {
            if piece.is_empty() {
                return Err(invalid(whole, "bad slice name"));
            }
            if !acc.is_empty() {
                acc.push('-');
            }
            acc.push_str(piece);
            out.push(format!("{acc}.slice"));
        }
    }
    let unit = if name.ends_with(".slice") {
        name.to_string()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    out.push(unit);
    Ok(out)
}

/// The cgroup (below the root) that process `pid` is in, from `/proc/PID/cgroup`'s
/// `0::/path` line.
fn current_of(proc_cgroup: &str) -> Option<PathBuf> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| PathBuf::from(p.trim_start_matches('/')))
}

/// Whether `root` is a cgroup v2 mount.
pub fn is_cgroup2(root: &Path) -> bool {
    nix::sys::statfs::statfs(root)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> ShimError {
    move |e| ShimError::io(what, e)
}

/// The pod's cgroup, joined by this process. [`HostCgroup::leave`] undoes it.
#[derive(Debug)]
pub struct HostCgroup {
    root: PathBuf,
    /// The pod's cgroup, below `root`.
    rel: PathBuf,
    /// Where this process was before, below `root`.
    previous: PathBuf,
    /// The directories this made (deepest last), removed on leave.
    made: Vec<PathBuf>,
}

impl HostCgroup {
    /// Creates the cgroup `cgroups_path` names below `root` (with its parents, enabling
    /// [`CONTROLLERS`] on the way down where offered) and moves this process into it.
    pub fn join(root: &Path, cgroups_path: &str) -> Result<HostCgroup> {
        let rel = resolve(cgroups_path)?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(io_err("reading /proc/self/cgroup".into()))?;
        let previous = current_of(&own).ok_or_else(|| {
            ShimError::InvalidArgument("the shim is not in a cgroup v2 hierarchy".into())
        })?;
        let mut made = Vec::new();
        let mut at = root.to_path_buf();
        for c in rel.components() {
            // The parent hands its controllers down (only to a cgroup without processes
            // of its own, which every level but the root and the pod's cgroup is).
            enable_controllers(&at);
            at.push(c);
            match std::fs::create_dir(&at) {
                Ok(()) => made.push(at.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    remove_dirs(&made);
                    return Err(ShimError::io(format!("creating {}", at.display()), e));
                }
            }
        }
        let cg = HostCgroup {
            root: root.to_path_buf(),
            rel,
            previous,
            made,
        };
        if let Err(e) = write_pid(&cg.dir(), std::process::id()) {
            remove_dirs(&cg.made);
            return Err(e);
        }
        Ok(cg)
    }

    /// The pod's cgroup directory.
    pub fn dir(&self) -> PathBuf {
        self.root.join(&self.rel)
    }

    /// Moves this process back to where it was and removes the directories `join` made
    /// (the pod's cgroup once its last process is gone: the vmm and virtiofsd have exited
    /// by then). A cgroup that still holds processes stays, and that is logged.
    pub fn leave(&self) {
        let back = self.root.join(&self.previous);
        if let Err(e) = write_pid(&back, std::process::id()) {
            log::warn!(
                "host cgroup: moving the shim back to {}: {e}",
                back.display()
            );
            return;
        }
        remove_dirs(&self.made);
    }
}

/// After a shim that died (`delete`): removes the pod's cgroup that `cgroups_path` names,
/// once its processes (killed by then) are gone. Its parents stay: other pods may use them.
pub fn remove_leftover(root: &Path, cgroups_path: &str) {
    if let Ok(rel) = resolve(cgroups_path) {
        remove_dirs(&[root.join(rel)]);
    }
}

/// Removes the cgroup directories `dirs` (listed parent first), deepest first. A
/// cgroup's last process may still be exiting: a few short tries while it is busy.
fn remove_dirs(dirs: &[PathBuf]) {
    for d in dirs.iter().rev() {
        let mut tries = 0;
        loop {
            match std::fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 20 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => {
                    log::warn!("host cgroup: removing {}: {e}", d.display());
                    return;
                }
            }
        }
    }
}

/// Writes `+c` to `dir`'s `cgroup.subtree_control` for each of [`CONTROLLERS`] that `dir`
/// offers and has not enabled yet. Best effort: a controller the host does not delegate is
/// left out, and what the pod's cgroup lacks shows in its files.
fn enable_controllers(dir: &Path) {
    let offered = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for c in CONTROLLERS {
        let has = |s: &str| s.split_whitespace().any(|w| w == *c);
        if has(&offered) && !has(&enabled) {
            if let Err(e) = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}")) {
                log::debug!("host cgroup: enabling {c} in {}: {e}", dir.display());
            }
        }
    }
}

fn write_pid(dir: &Path, pid: u32) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, pid.to_string())
        .map_err(io_err(format!("moving pid {pid} into {}", procs.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_paths_stay_below_the_root() {
        assert_eq!(
            resolve("/kubepods/burstable/pod1/abc").unwrap(),
            PathBuf::from("kubepods/burstable/pod1/abc")
        );
        assert_eq!(resolve("default/c1").unwrap(), PathBuf::from("default/c1"));
        for bad in ["", "/", "/a/../../etc", "../x", "a:b"] {
            assert!(resolve(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn systemd_paths_expand_slices_and_name_the_scope() {
        assert_eq!(
            resolve("kubepods-besteffort-pod12.slice:cri-containerd:abc").unwrap(),
            PathBuf::from(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/cri-containerd-abc.scope"
            )
        );
        assert_eq!(
            resolve("system.slice:husk:p1").unwrap(),
            PathBuf::from("system.slice/husk-p1.scope")
        );
        assert_eq!(resolve(":husk:p1").unwrap(), PathBuf::from("husk-p1.scope"));
        for bad in [
            "kubepods--x.slice:p:n",
            "kubepods.slice:p:..",
            "kubepods:p:n",
            "a.slice:p/q:n",
            "a.slice:p:n/m",
        ] {
            assert!(resolve(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_current_cgroup_is_read_from_the_unified_line() {
        assert_eq!(
            current_of("12:memory:/x\n0::/user.slice/session-1.scope\n"),
            Some(PathBuf::from("user.slice/session-1.scope"))
        );
        assert_eq!(current_of("0::/\n"), Some(PathBuf::new()));
        assert_eq!(current_of("5:cpu:/a\n"), None);
    }

    #[test]
    fn join_makes_the_path_and_moves_this_process_into_it() {
        let root = std::env::temp_dir().join(format!("husk-cg-join-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("cgroup.controllers"), "memory pids\n").unwrap();
        let cg = HostCgroup::join(&root, "/kubepods/pod1/sandbox").unwrap();
        assert_eq!(cg.dir(), root.join("kubepods/pod1/sandbox"));
        assert_eq!(
            std::fs::read_to_string(cg.dir().join("cgroup.procs")).unwrap(),
            std::process::id().to_string()
        );
        assert_eq!(cg.made.len(), 3);
        // The root handed its controllers down.
        assert_eq!(
            std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "+pids"
        );
        // A path out of the root makes nothing.
        assert!(HostCgroup::join(&root, "/kubepods/../../x").is_err());
        assert!(!root.parent().unwrap().join("x").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn controllers_are_enabled_only_where_offered_and_missing() {
        let d = std::env::temp_dir().join(format!("husk-cg-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        std::fs::write(d.join("cgroup.subtree_control"), "cpu\n").unwrap();
        enable_controllers(&d);
        // A plain file keeps only the last write: the last controller that was missing.
        assert_eq!(
            std::fs::read_to_string(d.join("cgroup.subtree_control")).unwrap(),
            "+pids"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
