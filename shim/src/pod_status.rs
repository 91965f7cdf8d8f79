//! What the shim knows of its pod that `/proc` does not say, kept in `<pod dir>/status` for
//! `husk ps` and `husk metrics` (see `admin`): how long the VM took to answer, whether it
//! was restored from a template, and the agent's health checks. One `key value` per line,
//! rewritten whole (never through a planted link: `poddir::write_fresh`).

use std::path::Path;

/// The file's name in the pod directory.
pub const STATUS_FILE: &str = "status";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodStatus {
    /// From the vmm's launch to the agent's first answer, ms.
    pub start_ms: Option<u64>,
    /// Restored from a VM template (else cold-booted).
    pub restored: bool,
    /// Health checks done, and the failures in a row at the last one.
    pub health_checks: u64,
    pub health_failures: u32,
}

impl PodStatus {
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some(ms) = self.start_ms {
            s.push_str(&format!("start_ms {ms}\n"));
        }
        s.push_str(&format!("restored {}\n", u8::from(self.restored)));
        s.push_str(&format!("health_checks {}\n", self.health_checks));
        s.push_str(&format!("health_failures {}\n", self.health_failures));
        s
    }

    /// Reads what it knows; unknown keys and bad values are skipped (a newer or damaged
    /// file never stops `husk ps`).
    pub fn parse(text: &str) -> PodStatus {
        let mut st = PodStatus::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once(' ') else {
                continue;
            };
            let v = v.trim();
            match k {
                "start_ms" => st.start_ms = v.parse().ok(),
                "restored" => st.restored = v == "1",
                "health_checks" => st.health_checks = v.parse().unwrap_or(0),
                "health_failures" => st.health_failures = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        st
    }

    pub fn load(pod_dir: &Path) -> PodStatus {
        std::fs::read_to_string(pod_dir.join(STATUS_FILE))
            .map(|t| PodStatus::parse(&t))
            .unwrap_or_default()
    }
}

/// Changes the pod's status file with `f`. Best effort: a status that cannot be written is
/// logged, never a failure of the pod.
pub fn update(pod_dir: &Path, f: impl FnOnce(&mut PodStatus)) {
    let mut st = PodStatus::load(pod_dir);
    f(&mut st);
    if let Err(e) = crate::poddir::write_fresh(&pod_dir.join(STATUS_FILE), st.render().as_bytes()) {
        log::debug!("pod status: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_skips_what_it_does_not_know() {
        let st = PodStatus {
            start_ms: Some(412),
            restored: true,
            health_checks: 7,
            health_failures: 1,
        };
        assert_eq!(PodStatus::parse(&st.render()), st);
        let odd = PodStatus::parse("start_ms x\nnew_key 3\nrestored 1\nnoise\n");
        assert_eq!(odd.start_ms, None);
        assert!(odd.restored);
    }
}
