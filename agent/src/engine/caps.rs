//! Capabilities: names to numbers, and the five sets applied with capset/prctl.

use oci_spec::runtime::{Capability, LinuxCapabilities};

/// Capability names in kernel number order (`CAP_CHOWN` = 0).
const NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Errors applying capabilities.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// A capability this engine does not know.
    #[error("unknown capability {0}")]
    Unknown(String),
    /// A kernel call failed.
    #[error("{op} {cap}: {source}")]
    Sys {
        /// The call.
        op: &'static str,
        /// The capability (or set) involved.
        cap: String,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
}

/// The number of a capability given by its `CAP_` name.
pub fn number(name: &str) -> Option<u32> {
    NAMES.iter().position(|n| *n == name).map(|p| p as u32)
}

fn cap_name(c: &Capability) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A capability set as a 64-bit mask.
fn mask(set: &Option<oci_spec::runtime::Capabilities>) -> Result<u64, CapsError> {
    let mut m = 0u64;
    for c in set.iter().flatten() {
        let n = cap_name(c);
        let bit = number(&n).ok_or(CapsError::Unknown(n))?;
        m |= 1 << bit;
    }
    Ok(m)
}

/// The five sets as masks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CapSets {
    /// Bounding set.
    pub bounding: u64,
    /// Effective set.
    pub effective: u64,
    /// Permitted set.
    pub permitted: u64,
    /// Inheritable set.
    pub inheritable: u64,
    /// Ambient set.
    pub ambient: u64,
}

impl CapSets {
    /// Masks from the spec (missing sets are empty, as in runc).
    pub fn from_spec(c: Option<&LinuxCapabilities>) -> Result<Self, CapsError> {
        let Some(c) = c else {
            return Ok(Self::default());
        };
        Ok(Self {
            bounding: mask(c.bounding())?,
            effective: mask(c.effective())?,
            permitted: mask(c.permitted())?,
            inheritable: mask(c.inheritable())?,
            ambient: mask(c.ambient())?,
        })
    }
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

fn prctl(op: i32, a: u64, b: u64) -> Result<(), std::io::Error> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let rc = unsafe { libc::prctl(op, a, b, 0u64, 0u64) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Drops every capability not in the bounding set. Needs CAP_SETPCAP: call before
/// changing user.
pub fn drop_bounding(sets: &CapSets) -> Result<(), CapsError> {
    for cap in 0..=last_cap() {
        if cap < 64 && sets.bounding & (1 << cap) == 0 {
            prctl(libc::PR_CAPBSET_DROP, cap as u64, 0).map_err(|e| CapsError::Sys {
                op: "capbset_drop",
                cap: NAMES.get(cap as usize).unwrap_or(&"?").to_string(),
                source: e,
            })?;
        }
    }
    Ok(())
}

/// Keeps permitted capabilities across the setuid that follows.
pub fn keep_caps(on: bool) -> Result<(), CapsError> {
    prctl(libc::PR_SET_KEEPCAPS, on as u64, 0).map_err(|e| CapsError::Sys {
        op: "keepcaps",
        cap: String::new(),
        source: e,
    })
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Sets effective, permitted and inheritable, then raises the ambient set.
pub fn apply(sets: &CapSets) -> Result<(), CapsError> {
    let mut hdr = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let lo = |m: u64| m as u32;
    let hi = |m: u64| (m >> 32) as u32;
    let data = [
        CapData {
            effective: lo(sets.effective),
            permitted: lo(sets.permitted),
            inheritable: lo(sets.inheritable),
        },
        CapData {
            effective: hi(sets.effective),
            permitted: hi(sets.permitted),
            inheritable: hi(sets.inheritable),
        },
    ];
    // SAFETY: header and the two data structs have the v3 layout the kernel expects.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if rc != 0 {
        return Err(CapsError::Sys {
            op: "capset",
            cap: format!("{sets:x?}"),
            source: std::io::Error::last_os_error(),
        });
    }
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as u64,
        0,
    )
    .map_err(|e| CapsError::Sys {
        op: "ambient_clear",
        cap: String::new(),
        source: e,
    })?;
    for cap in 0..64u32 {
        if sets.ambient & (1 << cap) != 0 {
            // Like runc: an ambient capability the kernel refuses is skipped.
            let _ = prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as u64,
                cap as u64,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_have_kernel_numbers() {
        assert_eq!(number("CAP_CHOWN"), Some(0));
        assert_eq!(number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(number("CAP_NOPE"), None);
    }

    #[test]
    fn spec_sets_become_masks() {
        let c: LinuxCapabilities = serde_json::from_str(
            r#"{"bounding":["CAP_KILL","CAP_NET_BIND_SERVICE"],"effective":["CAP_KILL"],
                "permitted":["CAP_KILL"],"ambient":["CAP_KILL"]}"#,
        )
        .unwrap();
        let s = CapSets::from_spec(Some(&c)).unwrap();
        assert_eq!(s.bounding, (1 << 5) | (1 << 10));
        assert_eq!(s.effective, 1 << 5);
        assert_eq!(s.inheritable, 0);
        assert_eq!(s.ambient, 1 << 5);
    }
}
