//! The container's saved state (one JSON file per container under the root dir) and
//! runc's `state` output.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Lifecycle of a container, as the OCI runtime spec names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being created.
    Creating,
    /// Created, init waiting for `start`.
    Created,
    /// The user process runs.
    Running,
    /// Frozen.
    Paused,
    /// The init process has exited.
    Stopped,
}

/// What is saved for a container (and printed by `state`, runc's field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// OCI version of the spec.
    pub oci_version: String,
    /// Container id.
    pub id: String,
    /// Host pid of the init process (0 when stopped).
    pub pid: i32,
    /// Status.
    pub status: Status,
    /// Bundle path.
    pub bundle: PathBuf,
    /// Rootfs path.
    pub rootfs: PathBuf,
    /// Creation time, RFC 3339.
    pub created: String,
    /// Owner (always empty, as runc prints for root).
    pub owner: String,
    /// Annotations from the spec.
    #[serde(default, skip_serializing_if = "std::collections::HashMap::is_empty")]
    pub annotations: std::collections::HashMap<String, String>,
    /// Start time of the init process (field 22 of /proc/pid/stat), against pid reuse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_start_time: Option<u64>,
    /// The cgroup directory, if one was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
}

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file operation failed.
    #[error("state {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The saved JSON is unreadable.
    #[error("state {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The state file of a container dir.
pub fn file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

/// Saves the state atomically (write then rename).
pub fn save(dir: &Path, s: &State) -> Result<(), StateError> {
    let tmp = dir.join("state.json.tmp");
    let data = serde_json::to_vec(s).map_err(|e| StateError::Corrupt {
        path: tmp.clone(),
        reason: e.to_string(),
    })?;
    std::fs::write(&tmp, data).map_err(|e| StateError::Io {
        path: tmp.clone(),
        source: e,
    })?;
    std::fs::rename(&tmp, file(dir)).map_err(|e| StateError::Io {
        path: file(dir),
        source: e,
    })
}

/// Loads the saved state.
pub fn load(dir: &Path) -> Result<State, StateError> {
    let p = file(dir);
    let data = std::fs::read(&p).map_err(|e| StateError::Io {
        path: p.clone(),
        source: e,
    })?;
    serde_json::from_slice(&data).map_err(|e| StateError::Corrupt {
        path: p,
        reason: e.to_string(),
    })
}

/// The start time of a process, or None if it is gone or a zombie.
pub fn proc_start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the comm, which may contain spaces and parentheses.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    if f.first() == Some(&"Z") || f.first() == Some(&"X") {
        return None;
    }
    f.get(19)?.parse().ok()
}

/// RFC 3339 UTC timestamp with nanoseconds, like Go's time.Time JSON.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_are_rfc3339() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn state_json_has_runc_fields() {
        let s = State {
            oci_version: "1.0.2".into(),
            id: "c".into(),
            pid: 7,
            status: Status::Created,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: "x".into(),
            owner: String::new(),
            annotations: Default::default(),
            init_start_time: None,
            cgroup: None,
        };
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["ociVersion"], "1.0.2");
        assert_eq!(v["status"], "created");
        assert_eq!(v["pid"], 7);
        assert_eq!(v["rootfs"], "/b/rootfs");
    }

    #[test]
    fn own_process_has_a_start_time() {
        assert!(proc_start_time(std::process::id() as i32).is_some());
        assert!(proc_start_time(i32::MAX).is_none());
    }
}
