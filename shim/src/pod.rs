//! Which pod a container belongs to, and how big that pod's VM is.
//!
//! One shim and one VM serve one pod. CRI marks the pod's sandbox (pause) container and
//! its members with annotations; a container without them (`ctr run`) is a pod of one.

use crate::config::Config;
use crate::error::ShimError;
use crate::spec::BundleSpec;

pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// containerd 1.7+ puts the pod's summed limits on the sandbox container.
pub const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
pub const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

/// A container's place in its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodRole {
    /// The CRI sandbox container: its create boots the pod's VM.
    Sandbox { pod_id: String },
    /// A CRI container that joins the VM of sandbox `pod_id`.
    Member { pod_id: String },
    /// A container with no CRI annotations: a one-container pod named after it.
    Single { pod_id: String },
}

impl PodRole {
    /// Classifies container `id` by its spec's annotations.
    pub fn of(id: &str, spec: &BundleSpec) -> PodRole {
        let a = spec.annotations();
        let sandbox = a.get(SANDBOX_ID).filter(|s| !s.is_empty()).cloned();
        match (a.get(CONTAINER_TYPE).map(String::as_str), sandbox) {
            (Some("sandbox"), s) => PodRole::Sandbox {
                pod_id: s.unwrap_or_else(|| id.to_string()),
            },
            (Some("container"), Some(pod_id)) => PodRole::Member { pod_id },
            _ => PodRole::Single {
                pod_id: id.to_string(),
            },
        }
    }

    /// [`PodRole::of`], refused unless the container id and the pod id (the sandbox-id
    /// annotation, which any containerd client can set) are identifiers as containerd
    /// makes them: both name directories in `state_dir`, so `..`, `/` or a leading `-`
    /// must never reach a host path or an argument.
    pub fn checked(id: &str, spec: &BundleSpec) -> Result<PodRole, ShimError> {
        if !valid_id(id) {
            return Err(ShimError::InvalidArgument(format!("container id {id:?}")));
        }
        let role = PodRole::of(id, spec);
        if !valid_id(role.pod_id()) {
            return Err(ShimError::InvalidArgument(format!(
                "pod id {:?} (annotation {SANDBOX_ID})",
                role.pod_id()
            )));
        }
        Ok(role)
    }

    pub fn pod_id(&self) -> &str {
        match self {
            PodRole::Sandbox { pod_id }
            | PodRole::Member { pod_id }
            | PodRole::Single { pod_id } => pod_id,
        }
    }

    /// Whether creating this container boots the pod's VM.
    pub fn boots_vm(&self) -> bool {
        !matches!(self, PodRole::Member { .. })
    }
}

/// An identifier as containerd validates them: 1 to 76 letters, digits, `.`, `_` and `-`,
/// starting with a letter or digit, with no `..`.
pub fn valid_id(id: &str) -> bool {
    (1..=76).contains(&id.len())
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !id.contains("..")
}

/// The VM's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    pub vcpus: u32,
    pub memory_mib: u64,
}

const MIB: u64 = 1 << 20;

/// Sizes the pod's VM so the container sees its limits: vCPUs are the CPU quota over the
/// period rounded up (default when unlimited, at most `max_vcpus`); memory is the limit
/// plus the guest's own overhead (default when unlimited).
pub fn vm_size(spec: &BundleSpec, cfg: &Config) -> VmSize {
    let a = spec.annotations();
    let ann = |k: &str| {
        a.get(k)
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|v| *v > 0)
    };
    let quota_period = match (ann(SANDBOX_CPU_QUOTA), ann(SANDBOX_CPU_PERIOD)) {
        (Some(q), Some(p)) => Some((q as u64, p as u64)),
        _ => spec.cpu_quota_period(),
    };
    let vcpus = match quota_period {
        Some((q, p)) => u32::try_from(q.div_ceil(p))
            .unwrap_or(u32::MAX)
            .clamp(1, cfg.max_vcpus.max(1)),
        None => cfg.default_vcpus,
    };
    let limit = ann(SANDBOX_MEMORY)
        .map(|m| m as u64)
        .or_else(|| spec.memory_limit());
    let memory_mib = match limit {
        Some(bytes) => bytes.div_ceil(MIB).saturating_add(cfg.memory_overhead_mib),
        None => cfg.default_memory_mib,
    };
    VmSize { vcpus, memory_mib }
}

/// The pod's hostname: the spec's, else the host's (a new UTS namespace under runc starts
/// with the host's name, so a container sees the same under husk). Empty if neither is a
/// valid hostname (the guest then keeps its own).
pub fn pod_hostname(spec: &BundleSpec, host: impl FnOnce() -> Option<String>) -> String {
    let name = match spec.hostname() {
        Some(h) => Some(h.to_string()),
        None => host(),
    };
    name.filter(|h| valid_hostname(h)).unwrap_or_default()
}

/// At most 64 bytes (the kernel's limit), letters, digits, '-', '.' and '_'.
fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 64
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// The host's hostname.
pub fn host_hostname() -> Option<String> {
    nix::unistd::gethostname().ok()?.into_string().ok()
}

/// Name servers a resolver reads (glibc's MAXNS).
const MAX_NAMESERVERS: usize = 3;
/// A resolv.conf larger than this is not read.
const MAX_RESOLV_CONF: u64 = 64 * 1024;

/// The `nameserver` addresses of resolv.conf text (valid IP addresses only, at most 3).
pub fn nameservers(resolv_conf: &str) -> Vec<String> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next())?
        })
        .filter(|a| a.parse::<std::net::IpAddr>().is_ok())
        .take(MAX_NAMESERVERS)
        .map(str::to_string)
        .collect()
}

/// The pod's DNS servers: those of the file the spec bind-mounts at /etc/resolv.conf (CRI
/// writes one per sandbox); none when there is no such mount or it cannot be read.
pub fn pod_dns(spec: &BundleSpec) -> Vec<String> {
    use std::io::Read;
    let Some(m) = spec
        .mounts()
        .into_iter()
        .find(|m| m.destination == "/etc/resolv.conf" && m.is_bind())
    else {
        return Vec::new();
    };
    use std::os::unix::fs::OpenOptionsExt;
    let mut text = String::new();
    // The source is the client's: a FIFO or a device there must not block the create.
    let read = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&m.source)
        .and_then(|f| {
            if !f.metadata()?.is_file() {
                return Err(std::io::Error::other("not a regular file"));
            }
            f.take(MAX_RESOLV_CONF).read_to_string(&mut text)
        });
    match read {
        Ok(_) => nameservers(&text),
        Err(e) => {
            log::warn!("reading {}: {e}", m.source);
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> BundleSpec {
        BundleSpec::from_slice(json.as_bytes(), "/b/config.json".into()).unwrap()
    }

    #[test]
    fn roles() {
        let s = spec("{}");
        assert_eq!(
            PodRole::of("c1", &s),
            PodRole::Single {
                pod_id: "c1".into()
            }
        );
        let s = spec(
            r#"{"annotations":{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-id":"p1"}}"#,
        );
        let r = PodRole::of("p1", &s);
        assert_eq!(
            r,
            PodRole::Sandbox {
                pod_id: "p1".into()
            }
        );
        assert!(r.boots_vm());
        let s = spec(
            r#"{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"p1"}}"#,
        );
        let r = PodRole::of("c2", &s);
        assert_eq!(
            r,
            PodRole::Member {
                pod_id: "p1".into()
            }
        );
        assert!(!r.boots_vm());
        assert_eq!(r.pod_id(), "p1");
        // a member without a sandbox id cannot join anything: it is its own pod
        let s = spec(r#"{"annotations":{"io.kubernetes.cri.container-type":"container"}}"#);
        assert_eq!(
            PodRole::of("c3", &s),
            PodRole::Single {
                pod_id: "c3".into()
            }
        );
    }

    #[test]
    fn hostname() {
        let host = || Some("node-a".to_string());
        assert_eq!(
            pod_hostname(&spec(r#"{"hostname":"web-1"}"#), host),
            "web-1"
        );
        assert_eq!(pod_hostname(&spec("{}"), host), "node-a");
        assert_eq!(pod_hostname(&spec("{}"), || None), "");
        assert_eq!(pod_hostname(&spec(r#"{"hostname":"a b"}"#), host), "");
        let long = format!(r#"{{"hostname":"{}"}}"#, "h".repeat(65));
        assert_eq!(pod_hostname(&spec(&long), host), "");
    }

    #[test]
    fn dns() {
        let text = "# generated\nsearch example.com\nnameserver 10.96.0.10\nnameserver  ::1 \n\
                    nameserver not-an-ip\nnameserver\nnameserver 1.1.1.1\nnameserver 8.8.8.8\n";
        assert_eq!(nameservers(text), ["10.96.0.10", "::1", "1.1.1.1"]);
        assert!(nameservers("").is_empty());
        let dir = crate::testutil::TempDir::new("dns");
        let f = dir.path().join("resolv.conf");
        std::fs::write(&f, "nameserver 192.0.2.53\n").unwrap();
        let s = spec(&format!(
            r#"{{"mounts":[{{"destination":"/etc/resolv.conf","type":"bind","source":"{}","options":["rbind","ro"]}}]}}"#,
            f.display()
        ));
        assert_eq!(pod_dns(&s), ["192.0.2.53"]);
        assert!(pod_dns(&spec("{}")).is_empty());
        let missing = spec(
            r#"{"mounts":[{"destination":"/etc/resolv.conf","type":"bind","source":"/nonexistent/r"}]}"#,
        );
        assert!(pod_dns(&missing).is_empty());
    }

    #[test]
    fn case_21_a_resolv_conf_source_that_is_a_fifo_does_not_block() {
        let dir = crate::testutil::TempDir::new("dns");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        for src in [fifo.display().to_string(), "/dev/zero".into()] {
            let s = spec(&format!(
                r#"{{"mounts":[{{"destination":"/etc/resolv.conf","type":"bind","source":"{src}"}}]}}"#
            ));
            assert!(pod_dns(&s).is_empty(), "{src}");
        }
    }

    #[test]
    fn case_21_pod_and_container_ids_that_could_name_other_paths_are_refused() {
        for bad in [
            "../../etc",
            "..",
            "a/b",
            "/abs",
            "-flag",
            "--config=/tmp/x",
            "a b",
            "",
            "p1\n",
            &"x".repeat(77),
        ] {
            assert!(!valid_id(bad), "{bad:?}");
            let s = spec(&format!(
                r#"{{"annotations":{{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-id":{}}}}}"#,
                serde_json::to_string(bad).unwrap()
            ));
            if !bad.is_empty() {
                let e = PodRole::checked("c1", &s).unwrap_err();
                assert_eq!(
                    e.code(),
                    containerd_shim_protos::ttrpc::Code::INVALID_ARGUMENT
                );
            }
            assert!(PodRole::checked(bad, &spec("{}")).is_err(), "{bad:?}");
        }
        for good in ["c1", "p1", "a.b_c-d", &"f".repeat(64)] {
            assert!(valid_id(good), "{good}");
        }
        let s = spec(&cri_sandbox("p1"));
        assert_eq!(PodRole::checked("p1", &s).unwrap().pod_id(), "p1");
    }

    fn cri_sandbox(id: &str) -> String {
        format!(
            r#"{{"annotations":{{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-id":"{id}"}}}}"#
        )
    }

    #[test]
    fn sizing() {
        let cfg = Config::default();
        assert_eq!(
            vm_size(&spec("{}"), &cfg),
            VmSize {
                vcpus: 1,
                memory_mib: 256
            }
        );
        // --cpus 1.5 --memory-limit 512M
        let s = spec(
            r#"{"linux":{"resources":{"cpu":{"quota":150000,"period":100000},"memory":{"limit":536870912}}}}"#,
        );
        assert_eq!(
            vm_size(&s, &cfg),
            VmSize {
                vcpus: 2,
                memory_mib: 512 + 64
            }
        );
        // huge quota is capped; an odd limit rounds up to whole MiB
        let s = spec(
            r#"{"linux":{"resources":{"cpu":{"quota":6400000,"period":100000},"memory":{"limit":1048577}}}}"#,
        );
        assert_eq!(
            vm_size(&s, &cfg),
            VmSize {
                vcpus: 8,
                memory_mib: 2 + 64
            }
        );
        // CRI sandbox annotations win over the pause container's own (empty) limits
        let s = spec(
            r#"{"annotations":{"io.kubernetes.cri.sandbox-cpu-quota":"300000","io.kubernetes.cri.sandbox-cpu-period":"100000","io.kubernetes.cri.sandbox-memory":"268435456"}}"#,
        );
        assert_eq!(
            vm_size(&s, &cfg),
            VmSize {
                vcpus: 3,
                memory_mib: 256 + 64
            }
        );
    }
}
