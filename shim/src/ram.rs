//! Where a pod's guest RAM lives: a tmpfs of the pod's own, mounted `huge=within_size`, in
//! which husk-vmm creates its (unlinked) guest RAM file (its `mem_dir`).
//!
//! Why: every guest page a booting VM touches first costs a nested page fault, and with
//! transparent huge pages on guest RAM there are 512 times fewer of them; in the nested test
//! host that took a third off the time to the agent's first answer. A memfd gets huge pages
//! only where the host's global `shmem_enabled` allows them (Debian's default is `never`); a
//! tmpfs mount has its own `huge=` option, so a pod gets them without the shim changing a
//! host-wide setting. `within_size` (the file is sized to the guest RAM up front, so all of
//! it qualifies) rather than `advise` with MADV_HUGEPAGE: the vmm does not advise a file in
//! a `mem_dir`, so under the host's default THP `defrag` (`madvise`) a huge page is taken
//! when one is free and a fault never waits for compaction (a fragmented host falls back to
//! 4 KiB pages instead of stalling the guest).
//!
//! The mount lives in the pod directory and goes with it (`RootfsShare::cleanup_pod`
//! unmounts [`RAM_DIR`]). Its size is not limited (`size=0`), like a memfd's: the VM's
//! memory is bounded by the VM's size and the pod's cgroup, not by tmpfs.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

/// The pod directory's entry for the guest RAM tmpfs.
pub const RAM_DIR: &str = "ram";

/// Mount options of the guest RAM tmpfs.
pub const RAM_MOUNT_OPTIONS: &str = "huge=within_size,size=0,nr_inodes=16,mode=0700";

/// Mounts `<pod_dir>/ram` (a second boot of the same pod reuses the mount) and returns it.
/// None where it cannot be had (a kernel without THP rejects `huge=`, a shim without
/// CAP_SYS_ADMIN cannot mount): the vmm then puts guest RAM in a memfd, which works the same,
/// only slower to boot.
pub fn prepare(pod_dir: &Path) -> Option<PathBuf> {
    let dir = pod_dir.join(RAM_DIR);
    match mount(pod_dir, &dir) {
        Ok(()) => Some(dir),
        Err(e) => {
            log::info!(
                "guest RAM without huge pages: mounting a tmpfs on {}: {e}",
                dir.display()
            );
            let _ = std::fs::remove_dir(&dir);
            None
        }
    }
}

fn mount(pod_dir: &Path, dir: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        r => r?,
    }
    // Never a symlink the tmpfs would be mounted through.
    crate::poddir::check_dir(dir).map_err(std::io::Error::other)?;
    if is_mount_point(pod_dir, dir)? {
        return Ok(());
    }
    nix::mount::mount(
        Some("husk-guest-ram"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(RAM_MOUNT_OPTIONS),
    )
    .map_err(std::io::Error::from)
}

/// Whether `dir` (a directory directly in `parent`) is a mount point: another device.
fn is_mount_point(parent: &Path, dir: &Path) -> std::io::Result<bool> {
    Ok(std::fs::symlink_metadata(dir)?.dev() != std::fs::symlink_metadata(parent)?.dev())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_not_a_mount_point_and_proc_is() {
        let d = std::env::temp_dir().join(format!("husk-ram-test-{}", std::process::id()));
        std::fs::create_dir_all(d.join("x")).unwrap();
        assert!(!is_mount_point(&d, &d.join("x")).unwrap());
        assert!(is_mount_point(Path::new("/"), Path::new("/proc")).unwrap());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_pod_dir_that_cannot_be_used_gives_none() {
        // Not a directory we can create anything in: the vmm falls back to a memfd.
        assert_eq!(prepare(Path::new("/proc/self/husk-no-such-pod")), None);
    }

    /// The mounts whose mount point is `dir`, as /proc/self/mounts shows them.
    fn mounts_at(dir: &Path) -> Vec<String> {
        let want = dir.display().to_string();
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
            .map(String::from)
            .collect()
    }

    #[test]
    fn mounted_once_with_huge_pages_where_the_shim_may_mount() {
        let pod = std::env::temp_dir().join(format!("husk-ram-pod-{}", std::process::id()));
        std::fs::create_dir_all(&pod).unwrap();
        let first = prepare(&pod);
        if !nix::unistd::Uid::effective().is_root() {
            assert_eq!(first, None);
            std::fs::remove_dir_all(&pod).unwrap();
            return;
        }
        let dir = first.expect("root mounts the guest RAM tmpfs");
        assert_eq!(dir, pod.join(RAM_DIR));
        // A second boot of the pod reuses the mount rather than stacking another.
        assert_eq!(prepare(&pod), Some(dir.clone()));
        let m = mounts_at(&dir);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].starts_with("husk-guest-ram "), "{m:?}");
        let opts = m[0].split_whitespace().nth(3).unwrap().to_string();
        for o in ["huge=within_size", "nosuid", "nodev", "noexec", "mode=700"] {
            assert!(opts.split(',').any(|x| x == o), "{o} missing in {opts}");
        }
        nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH).unwrap();
        std::fs::remove_dir_all(&pod).unwrap();
    }
}
