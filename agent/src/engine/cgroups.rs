//! cgroup v2: the spec's resources written as interface files, OOM kills counted from
//! `memory.events`, freeze for pause/resume. The manager works on any directory, so the
//! conversions are tested on a temp dir without root.

use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

/// Errors of the cgroup manager.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A file operation on the cgroup tree failed.
    #[error("cgroup {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The host has no pure cgroup v2 tree and resources were asked for.
    #[error("cgroup v2 is not mounted alone at /sys/fs/cgroup; cannot apply resources")]
    NoV2,
    /// A value that cannot be expressed in cgroup v2.
    #[error("cgroup resource {what}: invalid value {value}")]
    Invalid {
        /// The resource.
        what: &'static str,
        /// The value.
        value: i64,
    },
}

/// Counters read back from a cgroup.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CgroupStats {
    /// memory.current.
    pub memory_current: u64,
    /// memory.max (u64::MAX for "max").
    pub memory_limit: u64,
    /// usage_usec from cpu.stat.
    pub cpu_usage_usec: u64,
    /// pids.current.
    pub pids_current: u64,
    /// oom_kill from memory.events.
    pub oom_kills: u64,
}

/// What the engine needs from a cgroup implementation.
pub trait CgroupManager {
    /// Creates the cgroup and moves `pid` into it.
    fn apply(&self, pid: i32) -> Result<(), CgroupError>;
    /// Writes the resources.
    fn set(&self, r: &LinuxResources) -> Result<(), CgroupError>;
    /// Freezes (true) or thaws the cgroup.
    fn freeze(&self, frozen: bool) -> Result<(), CgroupError>;
    /// Reads the counters.
    fn stats(&self) -> Result<CgroupStats, CgroupError>;
    /// The pids in the cgroup.
    fn pids(&self) -> Result<Vec<i32>, CgroupError>;
    /// Removes the cgroup (it must be empty).
    fn destroy(&self) -> Result<(), CgroupError>;
}

/// A cgroup v2 directory.
#[derive(Debug, Clone)]
pub struct CgroupV2 {
    /// The cgroup's directory.
    pub dir: PathBuf,
}

/// The cgroup v2 mount point used on hosts and in the guest.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Whether `/sys/fs/cgroup` is a pure cgroup v2 mount (not the hybrid layout).
pub fn v2_available() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

/// The cgroup directory for a spec's cgroupsPath (runc: relative paths go below the
/// root too), defaulting to `husk/<id>`.
pub fn dir_for(cgroups_path: Option<&Path>, id: &str) -> PathBuf {
    let rel = match cgroups_path {
        Some(p) if !p.as_os_str().is_empty() => super::paths::clean(p),
        _ => PathBuf::from("husk").join(id),
    };
    Path::new(CGROUP_ROOT).join(rel)
}

/// runc's conversion of cgroup v1 cpu.shares [2, 262144] to cgroup v2 cpu.weight [1, 10000].
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

/// runc's conversion of blkio weight [10, 1000] to io.weight [1, 10000].
pub fn blkio_weight_to_io(w: u16) -> u64 {
    if w == 0 {
        return 0;
    }
    1 + ((w.clamp(10, 1000) as u64 - 10) * 9999) / 990
}

fn limit(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

/// The (file, value) pairs a resource spec becomes, in write order.
pub fn resource_files(r: &LinuxResources) -> Result<Vec<(&'static str, String)>, CgroupError> {
    let mut out = Vec::new();
    if let Some(m) = r.memory() {
        if let Some(l) = m.limit() {
            out.push(("memory.max", limit(l)));
        }
        if let Some(res) = m.reservation() {
            out.push(("memory.low", limit(res)));
        }
        if let Some(s) = m.swap() {
            // OCI swap is memory+swap; v2 swap.max is swap alone.
            let v = match (s, m.limit()) {
                (s, _) if s < 0 => "max".to_string(),
                (s, Some(l)) if l >= 0 => {
                    if s < l {
                        return Err(CgroupError::Invalid {
                            what: "memory.swap (below memory limit)",
                            value: s,
                        });
                    }
                    (s - l).to_string()
                }
                (s, _) => s.to_string(),
            };
            out.push(("memory.swap.max", v));
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(s) = c.shares() {
            if s != 0 {
                out.push(("cpu.weight", shares_to_weight(s).to_string()));
            }
        }
        if c.quota().is_some() || c.period().is_some() {
            let period = c.period().unwrap_or(100_000);
            let q = match c.quota() {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".into(),
            };
            out.push(("cpu.max", format!("{q} {period}")));
        }
        if let Some(cpus) = c.cpus() {
            out.push(("cpuset.cpus", cpus.clone()));
        }
        if let Some(mems) = c.mems() {
            out.push(("cpuset.mems", mems.clone()));
        }
    }
    if let Some(p) = r.pids() {
        out.push(("pids.max", limit(p.limit())));
    }
    if let Some(b) = r.block_io() {
        if let Some(w) = b.weight() {
            if w != 0 {
                out.push(("io.weight", format!("default {}", blkio_weight_to_io(w))));
            }
        }
        let mut add = |list: &Option<Vec<oci_spec::runtime::LinuxThrottleDevice>>, key: &str| {
            for d in list.iter().flatten() {
                out.push((
                    "io.max",
                    format!("{}:{} {key}={}", d.major(), d.minor(), d.rate()),
                ));
            }
        };
        add(b.throttle_read_bps_device(), "rbps");
        add(b.throttle_write_bps_device(), "wbps");
        add(b.throttle_read_iops_device(), "riops");
        add(b.throttle_write_iops_device(), "wiops");
    }
    for (k, v) in r.unified().iter().flatten() {
        if let Some(k) = UNIFIED_KEYS.iter().find(|x| **x == k.as_str()) {
            out.push((k, v.clone()));
        }
    }
    Ok(out)
}

/// The `unified` keys accepted (interface files of the controllers husk enables).
const UNIFIED_KEYS: &[&str] = &[
    "memory.max",
    "memory.high",
    "memory.low",
    "memory.min",
    "memory.swap.max",
    "memory.oom.group",
    "cpu.weight",
    "cpu.max",
    "cpu.idle",
    "cpuset.cpus",
    "cpuset.mems",
    "pids.max",
    "io.max",
    "io.weight",
];

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl CgroupV2 {
    fn write(&self, file: &str, v: &str) -> Result<(), CgroupError> {
        let p = self.dir.join(file);
        std::fs::write(&p, v).map_err(io_err(&p))
    }
    fn read(&self, file: &str) -> Result<String, CgroupError> {
        let p = self.dir.join(file);
        std::fs::read_to_string(&p).map_err(io_err(&p))
    }
    fn read_u64(&self, file: &str) -> u64 {
        self.read(file)
            .ok()
            .and_then(|s| {
                let s = s.trim();
                if s == "max" {
                    Some(u64::MAX)
                } else {
                    s.parse().ok()
                }
            })
            .unwrap_or(0)
    }
    /// A key of a flat-keyed file (`memory.events`, `cpu.stat`).
    pub fn keyed(&self, file: &str, key: &str) -> u64 {
        self.read(file)
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse().ok()).flatten()
                })
            })
            .unwrap_or(0)
    }
    /// OOM kills so far (`memory.events` oom_kill).
    pub fn oom_kills(&self) -> u64 {
        self.keyed("memory.events", "oom_kill")
    }
}

impl CgroupV2 {
    /// Creates the directory; below the cgroup root, every new level first gets all its
    /// parent's controllers enabled, so the leaf has the interface files resources need.
    fn create(&self) -> Result<(), CgroupError> {
        let Ok(rel) = self.dir.strip_prefix(CGROUP_ROOT) else {
            return std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir));
        };
        let mut cur = PathBuf::from(CGROUP_ROOT);
        for c in rel.components() {
            // Best effort: a parent with processes cannot delegate (no internal processes).
            let _ = enable_all_controllers(&cur);
            cur.push(c);
            match std::fs::create_dir(&cur) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(CgroupError::Io {
                        path: cur,
                        source: e,
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl CgroupManager for CgroupV2 {
    fn apply(&self, pid: i32) -> Result<(), CgroupError> {
        self.create()?;
        self.write("cgroup.procs", &pid.to_string())
    }

    fn set(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        for (f, v) in resource_files(r)? {
            self.write(f, &v)?;
        }
        Ok(())
    }

    fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        self.write("cgroup.freeze", if frozen { "1" } else { "0" })
    }

    fn stats(&self) -> Result<CgroupStats, CgroupError> {
        Ok(CgroupStats {
            memory_current: self.read_u64("memory.current"),
            memory_limit: self.read_u64("memory.max"),
            cpu_usage_usec: self.keyed("cpu.stat", "usage_usec"),
            pids_current: self.read_u64("pids.current"),
            oom_kills: self.oom_kills(),
        })
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        Ok(self
            .read("cgroup.procs")?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    fn destroy(&self) -> Result<(), CgroupError> {
        match std::fs::remove_dir(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CgroupError::Io {
                path: self.dir.clone(),
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

/// Enables every available controller for the children of `dir` (guest init).
pub fn enable_all_controllers(dir: &Path) -> Result<(), CgroupError> {
    let p = dir.join("cgroup.controllers");
    let ctrls = std::fs::read_to_string(&p).map_err(io_err(&p))?;
    let line: Vec<String> = ctrls.split_whitespace().map(|c| format!("+{c}")).collect();
    let p = dir.join("cgroup.subtree_control");
    std::fs::write(&p, line.join(" ")).map_err(io_err(&p))
}

#[cfg(test)]
#[path = "cgroups_tests.rs"]
mod tests;
