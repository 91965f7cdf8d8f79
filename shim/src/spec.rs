//! The bundle's OCI spec (`config.json`), kept as JSON so that fields husk does not know
//! reach the agent unchanged; typed accessors for the few fields the shim reads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Result, ShimError};

/// The largest spec the shim reads: it goes to the agent in one ttrpc message, which
/// is at most 4 MiB.
pub const MAX_SPEC_BYTES: u64 = 3 << 20;

/// A bundle's spec.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleSpec {
    path: PathBuf,
    raw: Value,
}

/// One entry of the spec's `mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecMount {
    pub destination: String,
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

impl SpecMount {
    /// A bind mount of a host path (the kind that must be shared into the VM).
    pub fn is_bind(&self) -> bool {
        self.kind == "bind" || self.options.iter().any(|o| o == "bind" || o == "rbind")
    }

    pub fn is_read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

impl BundleSpec {
    /// Reads `<bundle>/config.json` (at most [`MAX_SPEC_BYTES`]).
    pub fn load(bundle: &Path) -> Result<BundleSpec> {
        use std::io::Read;
        let path = bundle.join("config.json");
        let err = |msg: String| ShimError::Spec {
            path: path.clone(),
            msg,
        };
        let mut text = Vec::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_SPEC_BYTES + 1).read_to_end(&mut text))
            .map_err(|e| err(e.to_string()))?;
        if text.len() as u64 > MAX_SPEC_BYTES {
            return Err(err(format!(
                "larger than {MAX_SPEC_BYTES} bytes (the agent's messages are at most 4 MiB)"
            )));
        }
        BundleSpec::from_slice(&text, path)
    }

    /// Parses spec text; `path` only names the source in errors.
    pub fn from_slice(text: &[u8], path: PathBuf) -> Result<BundleSpec> {
        let raw: Value = serde_json::from_slice(text).map_err(|e| ShimError::Spec {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        if !raw.is_object() {
            return Err(ShimError::Spec {
                path,
                msg: "not a JSON object".into(),
            });
        }
        // The shim points `root.path` at the guest's copy of the rootfs; a `root` it could
        // not rewrite would reach the agent as the client wrote it.
        if raw.get("root").is_some_and(|r| !r.is_object()) {
            return Err(ShimError::Spec {
                path,
                msg: "root is not a JSON object".into(),
            });
        }
        Ok(BundleSpec { path, raw })
    }

    pub fn raw(&self) -> &Value {
        &self.raw
    }

    /// The spec as JSON bytes, as the agent receives it.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing a Value that came from JSON cannot fail.
        serde_json::to_vec(&self.raw).unwrap_or_default()
    }

    pub fn annotations(&self) -> HashMap<String, String> {
        self.raw
            .get("annotations")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn resources(&self) -> Option<&Value> {
        self.raw.get("linux")?.get("resources")
    }

    /// `linux.resources.cpu.{quota,period}` when both are positive.
    pub fn cpu_quota_period(&self) -> Option<(u64, u64)> {
        let cpu = self.resources()?.get("cpu")?;
        let quota = cpu.get("quota")?.as_i64()?;
        let period = cpu.get("period")?.as_u64()?;
        (quota > 0 && period > 0).then_some((quota as u64, period))
    }

    /// `linux.resources.memory.limit` when positive, bytes.
    pub fn memory_limit(&self) -> Option<u64> {
        let limit = self.resources()?.get("memory")?.get("limit")?.as_i64()?;
        (limit > 0).then_some(limit as u64)
    }

    pub fn terminal(&self) -> bool {
        self.raw
            .get("process")
            .and_then(|p| p.get("terminal"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// `root.path`, resolved against the bundle when relative (default `rootfs`).
    pub fn root_path(&self, bundle: &Path) -> PathBuf {
        let p = self
            .raw
            .get("root")
            .and_then(|r| r.get("path"))
            .and_then(Value::as_str)
            .unwrap_or("rootfs");
        bundle.join(p)
    }

    pub fn root_readonly(&self) -> bool {
        self.raw
            .get("root")
            .and_then(|r| r.get("readonly"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// `linux.cgroupsPath`, when set.
    pub fn cgroups_path(&self) -> Option<&str> {
        self.raw
            .get("linux")
            .and_then(|l| l.get("cgroupsPath"))
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
    }

    /// The spec's `hostname`, when set.
    pub fn hostname(&self) -> Option<&str> {
        self.raw
            .get("hostname")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty())
    }

    pub fn mounts(&self) -> Vec<SpecMount> {
        let Some(list) = self.raw.get("mounts").and_then(Value::as_array) else {
            return Vec::new();
        };
        let s = |m: &Value, k: &str| m.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        list.iter()
            .map(|m| SpecMount {
                destination: s(m, "destination"),
                kind: s(m, "type"),
                source: s(m, "source"),
                options: m
                    .get("options")
                    .and_then(Value::as_array)
                    .map(|o| {
                        o.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Points `root.path` at `guest_root` (the rootfs as the guest sees it).
    pub fn set_root_path(&mut self, guest_root: &str) {
        if let Some(obj) = self.raw.as_object_mut() {
            let root = obj
                .entry("root")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(root) = root.as_object_mut() {
                root.insert("path".into(), Value::String(guest_root.into()));
            }
        }
    }

    /// `linux.namespaces`, for rewriting (None when the spec has none).
    pub fn namespaces_mut(&mut self) -> Option<&mut Vec<Value>> {
        self.raw
            .get_mut("linux")?
            .get_mut("namespaces")?
            .as_array_mut()
    }

    /// Removes `hostname`.
    pub fn clear_hostname(&mut self) {
        if let Some(o) = self.raw.as_object_mut() {
            o.remove("hostname");
        }
    }

    /// Replaces the source of the mount at `index` (a host path) with its guest path.
    pub fn set_mount_source(&mut self, index: usize, guest_source: &str) -> Result<()> {
        let m = self
            .raw
            .get_mut("mounts")
            .and_then(|l| l.get_mut(index))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ShimError::Spec {
                path: self.path.clone(),
                msg: format!("no mount at index {index}"),
            })?;
        m.insert("source".into(), Value::String(guest_source.into()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec(json: &str) -> BundleSpec {
        BundleSpec::from_slice(json.as_bytes(), "/b/config.json".into()).unwrap()
    }

    #[test]
    fn accessors() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","process":{"terminal":true},"root":{"path":"rootfs","readonly":true},
                "annotations":{"a":"b","n":1},
                "linux":{"resources":{"cpu":{"quota":150000,"period":100000},"memory":{"limit":536870912}}},
                "mounts":[{"destination":"/proc","type":"proc","source":"proc"},
                          {"destination":"/data","type":"bind","source":"/srv/d","options":["rbind","ro"]}],
                "x-unknown":{"kept":true}}"#,
        );
        assert!(s.terminal());
        assert_eq!(s.hostname(), None);
        assert_eq!(spec(r#"{"hostname":"web-1"}"#).hostname(), Some("web-1"));
        assert!(s.root_readonly());
        assert_eq!(s.root_path(Path::new("/b")), PathBuf::from("/b/rootfs"));
        let abs = spec(r#"{"root":{"path":"/srv/root"}}"#);
        assert_eq!(abs.root_path(Path::new("/b")), PathBuf::from("/srv/root"));
        assert_eq!(s.annotations().get("a").map(String::as_str), Some("b"));
        assert_eq!(s.annotations().len(), 1);
        assert_eq!(s.cpu_quota_period(), Some((150000, 100000)));
        assert_eq!(s.memory_limit(), Some(512 << 20));
        let m = s.mounts();
        assert!(!m[0].is_bind());
        assert!(m[1].is_bind() && m[1].is_read_only());
        let mut s = s;
        s.set_root_path("/run/husk/shared/c1/rootfs");
        s.set_mount_source(1, "/run/husk/shared/c1/mounts/1")
            .unwrap();
        assert!(s.set_mount_source(7, "/x").is_err());
        let back: Value = serde_json::from_slice(&s.to_bytes()).unwrap();
        assert_eq!(back["root"]["path"], "/run/husk/shared/c1/rootfs");
        assert_eq!(back["mounts"][1]["source"], "/run/husk/shared/c1/mounts/1");
        assert_eq!(back["x-unknown"]["kept"], true);
    }

    /// Found by the shim_spec fuzz target: `"root": ""` parsed, and rewrite_spec left it
    /// as it was (set_root_path only writes into an object), so the guest path never
    /// replaced it.
    #[test]
    fn root_must_be_an_object() {
        for bad in [r#"{"root":""}"#, r#"{"root":[]}"#, r#"{"root":null}"#] {
            let e = BundleSpec::from_slice(bad.as_bytes(), "/b/config.json".into()).expect_err(bad);
            assert!(e.to_string().contains("root is not a JSON object"), "{e}");
        }
        let mut s = spec(r#"{"root":{"path":"rootfs"}}"#);
        s.set_root_path("/g");
        assert_eq!(s.raw()["root"]["path"], "/g");
        let mut s = spec("{}");
        s.set_root_path("/g");
        assert_eq!(s.raw()["root"]["path"], "/g");
    }

    #[test]
    fn no_limits() {
        let s = spec(
            r#"{"linux":{"resources":{"cpu":{"quota":-1,"period":100000},"memory":{"limit":0}}}}"#,
        );
        assert_eq!(s.cpu_quota_period(), None);
        assert_eq!(s.memory_limit(), None);
        assert!(!s.terminal());
        assert!(s.mounts().is_empty());
    }

    #[test]
    fn bad_specs() {
        assert!(BundleSpec::from_slice(b"[1]", "/b/config.json".into()).is_err());
        let e = BundleSpec::from_slice(b"{", "/b/config.json".into()).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("reading bundle spec /b/config.json:"));
        assert!(BundleSpec::load(Path::new("/nonexistent-bundle")).is_err());
    }
}
