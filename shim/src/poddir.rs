//! The pod's directory in `state_dir`, made and emptied so that nothing already there can
//! redirect the shim (CVE-2026-1386's class: a pre-created symlink or hardlink at a path
//! the launcher writes to).
//!
//! - The pod directory and the directories the shim makes in it are created by the shim
//!   or, when they are there already (a shim that died), accepted only as real
//!   directories owned by the shim's user: never a symlink to elsewhere.
//! - Every file the shim writes there (vm.json, logs, pid files) is unlinked first and
//!   created anew with `O_CREAT | O_EXCL | O_NOFOLLOW`: a symlink or a hardlink planted at
//!   its name is removed, never written through.
//! - Removal is never recursive and never follows a symlink.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// What is wrong with a path the shim wanted to use.
#[derive(Debug, thiserror::Error)]
pub enum PodDirError {
    #[error("{path}: {err}")]
    Io {
        path: String,
        #[source]
        err: std::io::Error,
    },
    #[error("{path} is not a directory the shim made ({what}): refusing to use it")]
    NotOurs { path: String, what: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PodDirError + '_ {
    move |err| PodDirError::Io {
        path: path.display().to_string(),
        err,
    }
}

/// Creates directory `dir` (mode 0700; its parent must exist), or accepts it when it is
/// already a real directory owned by the shim's user.
pub fn ensure_dir(dir: &Path) -> Result<(), PodDirError> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(dir)(e)),
    }
    check_dir(dir)
}

/// `Ok` when `dir` is a real directory (not a symlink) owned by the shim's user.
pub fn check_dir(dir: &Path) -> Result<(), PodDirError> {
    let m = std::fs::symlink_metadata(dir).map_err(io(dir))?;
    let not_ours = |what: String| PodDirError::NotOurs {
        path: dir.display().to_string(),
        what,
    };
    if m.file_type().is_symlink() {
        let to = std::fs::read_link(dir)
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        return Err(not_ours(format!("a symlink to {to}")));
    }
    if !m.is_dir() {
        return Err(not_ours("not a directory".into()));
    }
    let me = nix::unistd::Uid::effective().as_raw();
    if m.uid() != me {
        return Err(not_ours(format!("owned by uid {}", m.uid())));
    }
    Ok(())
}

/// Creates `path` anew for writing: whatever is at the name (a file, a symlink, a
/// hardlink to another file) is unlinked first, and the new file is opened with
/// `O_EXCL | O_NOFOLLOW`, so nothing planted there is written through.
pub fn fresh_file(path: &Path) -> Result<File, PodDirError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io(path)(e)),
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io(path))
}

/// Writes `data` to a [`fresh_file`] at `path`.
pub fn write_fresh(path: &Path, data: &[u8]) -> Result<(), PodDirError> {
    use std::io::Write;
    fresh_file(path)?.write_all(data).map_err(io(path))
}

/// Unlinks `path` when it is a file, a socket or a symlink (never what a symlink points
/// to); a missing path is fine.
pub fn remove_entry(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.is_dir() => {
            let _ = std::fs::remove_file(path);
        }
        _ => {}
    }
}

/// Removes the pod directory: its files, sockets and symlinks (unlinked, not followed),
/// then the directory itself if it is empty. Never recursive, so a directory still there
/// (a mount that did not go away) keeps what is below it. A `dir` that is a symlink is
/// only unlinked.
pub fn remove(dir: &Path) {
    if check_dir(dir).is_err() {
        remove_entry(dir);
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            remove_entry(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn case_33_a_planted_symlink_or_hardlink_is_replaced_never_written_through() {
        let d = TempDir::new("poddir");
        let victim = d.path().join("shadow");
        std::fs::write(&victim, "root:secret\n").unwrap();
        let pod = d.path().join("pod");
        ensure_dir(&pod).unwrap();
        std::os::unix::fs::symlink(&victim, pod.join("vm.json")).unwrap();
        std::fs::hard_link(&victim, pod.join("vmm.log")).unwrap();
        write_fresh(&pod.join("vm.json"), b"{}").unwrap();
        write_fresh(&pod.join("vmm.log"), b"log").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root:secret\n");
        assert_eq!(std::fs::read_to_string(pod.join("vm.json")).unwrap(), "{}");
        let m = std::fs::symlink_metadata(pod.join("vm.json")).unwrap();
        assert!(m.is_file() && m.nlink() == 1);
    }

    #[test]
    fn case_33_a_pod_dir_that_is_a_symlink_is_refused_and_only_unlinked() {
        let d = TempDir::new("poddir");
        let elsewhere = d.path().join("etc");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("passwd"), "x").unwrap();
        let pod = d.path().join("pod");
        std::os::unix::fs::symlink(&elsewhere, &pod).unwrap();
        let e = ensure_dir(&pod).unwrap_err().to_string();
        assert!(e.contains("a symlink to"), "{e}");
        let file = d.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(ensure_dir(&file).is_err());
        remove(&pod);
        assert!(std::fs::symlink_metadata(&pod).is_err(), "the link goes");
        assert!(elsewhere.join("passwd").exists(), "what it points to stays");
    }

    #[test]
    fn remove_is_not_recursive() {
        let d = TempDir::new("poddir");
        let pod = d.path().join("pod");
        ensure_dir(&pod).unwrap();
        std::fs::write(pod.join("vm.json"), "{}").unwrap();
        std::fs::create_dir(pod.join("mounts")).unwrap();
        std::fs::write(pod.join("mounts/data"), "keep").unwrap();
        remove(&pod);
        assert!(!pod.join("vm.json").exists());
        assert!(pod.join("mounts/data").exists());
        std::fs::remove_file(pod.join("mounts/data")).unwrap();
        remove(&pod);
        assert!(pod.join("mounts").exists(), "a directory inside is left");
        std::fs::remove_dir(pod.join("mounts")).unwrap();
        remove(&pod);
        assert!(!pod.exists());
    }
}
