//! Loading and validating an OCI bundle's config.json before anything is created.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// A spec refused before any kernel object exists.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// config.json could not be read or parsed.
    #[error("loading {path}: {reason}")]
    Load {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A field is missing or has an invalid value.
    #[error("invalid spec: {0}")]
    Invalid(String),
}

fn invalid(s: impl Into<String>) -> SpecError {
    SpecError::Invalid(s.into())
}

/// A container id: runc's rule (`^[\w+-\.]+$`), and never `.` or `..`.
pub fn validate_id(id: &str) -> Result<(), SpecError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("container id {id:?}")))
    }
}

/// Reads `<bundle>/config.json`.
pub fn load(bundle: &Path) -> Result<Spec, SpecError> {
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| SpecError::Load {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    parse(&text).map_err(|e| match e {
        SpecError::Load { reason, .. } => SpecError::Load { path, reason },
        other => other,
    })
}

/// Parses and validates a config.json text.
pub fn parse(text: &str) -> Result<Spec, SpecError> {
    let spec: Spec = serde_json::from_str(text).map_err(|e| SpecError::Load {
        path: PathBuf::from("config.json"),
        reason: e.to_string(),
    })?;
    validate(&spec)?;
    Ok(spec)
}

/// The rootfs path of a spec, made absolute against the bundle.
pub fn rootfs(spec: &Spec, bundle: &Path) -> Result<PathBuf, SpecError> {
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("root is missing"))?;
    let p = root.path();
    Ok(if p.is_absolute() {
        p.clone()
    } else {
        bundle.join(p)
    })
}

/// Checks what the engine relies on: process with args and an absolute cwd, namespaces
/// unique and of known kinds, user-namespace mappings present when (and only when) a new
/// user namespace is made, mount destinations absolute, hostname only with a UTS namespace.
pub fn validate(spec: &Spec) -> Result<(), SpecError> {
    let version = spec.version();
    if !version.starts_with("1.") {
        return Err(invalid(format!("ociVersion {version:?} is not 1.x")));
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("process is missing"))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(invalid("process.args is empty"));
    }
    if !process.cwd().is_absolute() {
        return Err(invalid(format!(
            "process.cwd {} is not absolute",
            process.cwd().display()
        )));
    }
    // (uid_t)-1 is the kernel's "leave unchanged": setresuid(-1, -1, -1) would keep the
    // container's process root.
    let user = process.user();
    let ids = [("uid", user.uid()), ("gid", user.gid())]
        .into_iter()
        .chain(
            user.additional_gids()
                .iter()
                .flatten()
                .map(|g| ("additionalGids", *g)),
        );
    for (what, id) in ids {
        if id == u32::MAX {
            return Err(invalid(format!("process.user.{what} {id} is not an id")));
        }
    }
    for e in process.env().iter().flatten() {
        if !e.contains('=') || e.starts_with('=') || e.contains('\0') {
            return Err(invalid(format!("process.env entry {e:?}")));
        }
    }
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| invalid("linux is missing"))?;
    let ns = linux.namespaces().clone().unwrap_or_default();
    let mut seen = Vec::new();
    for n in &ns {
        if seen.contains(&n.typ()) {
            return Err(invalid(format!("namespace {:?} listed twice", n.typ())));
        }
        seen.push(n.typ());
        if matches!(n.typ(), LinuxNamespaceType::Time) {
            return Err(invalid("time namespaces are not supported"));
        }
        if let Some(p) = n.path() {
            if !p.is_absolute() {
                return Err(invalid(format!("namespace path {}", p.display())));
            }
        }
    }
    let has = |t: LinuxNamespaceType| ns.iter().any(|n| n.typ() == t);
    if !has(LinuxNamespaceType::Mount) {
        return Err(invalid("a mount namespace is required"));
    }
    let new_user = ns
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none());
    let maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        && linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    if new_user && !maps {
        return Err(invalid(
            "a new user namespace needs uidMappings and gidMappings",
        ));
    }
    if !new_user && maps {
        return Err(invalid("uid/gid mappings without a new user namespace"));
    }
    if spec.hostname().as_ref().is_some_and(|h| !h.is_empty()) && !has(LinuxNamespaceType::Uts) {
        return Err(invalid("hostname set without a UTS namespace"));
    }
    for m in spec.mounts().iter().flatten() {
        if !m.destination().is_absolute() {
            return Err(invalid(format!(
                "mount destination {} is not absolute",
                m.destination().display()
            )));
        }
    }
    for k in linux.sysctl().iter().flatten().map(|(k, _)| k) {
        if k.contains('/') || k.contains("..") || k.is_empty() {
            return Err(invalid(format!("sysctl {k:?}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
      "process":{"cwd":"/","args":["sh"],"env":["PATH=/bin"],"user":{"uid":0,"gid":0}},
      "hostname":"h","linux":{"namespaces":[{"type":"mount"},{"type":"uts"},{"type":"pid"}]}}"#;

    #[test]
    fn accepts_a_minimal_spec() {
        let s = parse(GOOD).unwrap();
        assert_eq!(
            rootfs(&s, Path::new("/b")).unwrap(),
            PathBuf::from("/b/rootfs")
        );
    }

    #[test]
    fn refuses_bad_fields() {
        let cases = [
            (r#""cwd":"/""#, r#""cwd":"rel""#),
            (r#""args":["sh"]"#, r#""args":[]"#),
            (r#"{"type":"uts"},"#, ""),
            (r#"{"type":"pid"}"#, r#"{"type":"pid"},{"type":"pid"}"#),
            (r#"{"type":"mount"},"#, ""),
            (r#""PATH=/bin""#, r#""=x""#),
            (r#"{"type":"pid"}"#, r#"{"type":"user"}"#),
            (r#""1.0.2""#, r#""0.9""#),
            (r#""uid":0"#, r#""uid":4294967295"#),
            (r#""gid":0"#, r#""gid":4294967295"#),
            (r#""gid":0"#, r#""gid":0,"additionalGids":[4294967295]"#),
        ];
        for (from, to) in cases {
            let bad = GOOD.replacen(from, to, 1);
            assert!(parse(&bad).is_err(), "accepted {bad}");
        }
        assert!(parse("{").is_err());
    }

    #[test]
    fn ids_follow_runc() {
        assert!(validate_id("abc-1.2_x+y").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "x\0"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }
}
