//! Getting a container's rootfs and bind mounts into the pod's VM.
//!
//! The pod directory holds `mounts/` (where the shim mounts things) and `shared/` (a
//! read-only bind of `mounts/` with slave propagation, which virtiofsd exports). The guest
//! can write into a read-write rootfs below `shared/`, but cannot create, rename or
//! replace anything at the top of it, so no path the host later walks can be a symlink
//! the guest planted; every host path the shim mounts onto is one it created itself.

use std::path::{Path, PathBuf};

use crate::error::{Result, ShimError};
use crate::spec::BundleSpec;

/// Where the agent mounts the pod's virtio-fs share in the guest.
pub const GUEST_SHARED_DIR: &str = "/run/husk/shared";

/// A rootfs mount as containerd hands it over (from the snapshotter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsMount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// The rootfs path of container `id` in the guest.
pub fn guest_rootfs(id: &str) -> String {
    format!("{GUEST_SHARED_DIR}/{id}/rootfs")
}

/// The guest path of the `index`th spec mount of container `id`.
pub fn guest_mount(id: &str, index: usize) -> String {
    format!("{GUEST_SHARED_DIR}/{id}/mounts/{index}")
}

/// The host side of sharing. The real one mounts; tests record.
pub trait RootfsShare: Send + Sync {
    /// Creates the pod's `mounts/` and `shared/` directories; returns `shared/`.
    fn prepare_pod(&self, pod_dir: &Path) -> Result<PathBuf>;
    /// Makes container `id`'s rootfs and bind mounts visible in the guest and rewrites
    /// `spec` to the guest paths.
    fn share(
        &self,
        pod_dir: &Path,
        id: &str,
        bundle: &Path,
        rootfs: &[RootfsMount],
        spec: &mut BundleSpec,
    ) -> Result<()>;
    /// Undoes [`RootfsShare::share`]; idempotent.
    fn unshare(&self, pod_dir: &Path, id: &str, bundle: &Path) -> Result<()>;
    /// Undoes [`RootfsShare::prepare_pod`], and unmounts the pod's guest RAM tmpfs
    /// ([`crate::ram`]); idempotent.
    fn cleanup_pod(&self, pod_dir: &Path) -> Result<()>;
}

/// Rewrites the spec to guest paths: the rootfs, and each bind mount's source. Returns
/// the (index, host source, read-only) of every bind mount that must be shared.
pub fn rewrite_spec(id: &str, spec: &mut BundleSpec) -> Result<Vec<(usize, PathBuf, bool)>> {
    spec.set_root_path(&guest_rootfs(id));
    let mut binds = Vec::new();
    for (i, m) in spec.mounts().iter().enumerate() {
        if !m.is_bind() {
            continue;
        }
        if !Path::new(&m.source).is_absolute() {
            return Err(ShimError::InvalidArgument(format!(
                "bind mount source {:?} is not absolute",
                m.source
            )));
        }
        spec.set_mount_source(i, &guest_mount(id, i))?;
        binds.push((i, PathBuf::from(&m.source), m.is_read_only()));
    }
    Ok(binds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_root_and_binds_only() {
        let mut s = BundleSpec::from_slice(
            br#"{"root":{"path":"rootfs"},"mounts":[
                {"destination":"/proc","type":"proc","source":"proc"},
                {"destination":"/data","type":"bind","source":"/srv/data","options":["rbind","ro"]},
                {"destination":"/etc/hosts","type":"none","source":"/var/lib/x/hosts","options":["bind"]}]}"#,
            "/b/config.json".into(),
        )
        .unwrap();
        let binds = rewrite_spec("c1", &mut s).unwrap();
        assert_eq!(
            binds,
            vec![
                (1, PathBuf::from("/srv/data"), true),
                (2, PathBuf::from("/var/lib/x/hosts"), false)
            ]
        );
        let v = s.raw();
        assert_eq!(v["root"]["path"], "/run/husk/shared/c1/rootfs");
        assert_eq!(v["mounts"][0]["source"], "proc");
        assert_eq!(v["mounts"][1]["source"], "/run/husk/shared/c1/mounts/1");
        let mut bad = BundleSpec::from_slice(
            br#"{"mounts":[{"destination":"/d","type":"bind","source":"rel"}]}"#,
            "/b/config.json".into(),
        )
        .unwrap();
        assert!(rewrite_spec("c1", &mut bad).is_err());
    }
}
