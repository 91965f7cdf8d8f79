//! `/etc/husk/config.toml`: where the kernel, rootfs and helpers are, and VM defaults.
//! Every key has a default, so a missing file means "all defaults"; a malformed file is
//! an error that names the file and the key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the config is read from unless `HUSK_CONFIG` names another file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/husk/config.toml";
/// The environment variable that overrides [`DEFAULT_CONFIG_PATH`].
pub const CONFIG_ENV: &str = "HUSK_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {err}")]
    Read {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("parsing {path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("{path}: {key} {why}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        why: String,
    },
}

/// How the guest caches the virtio-fs share (virtiofsd's `--cache`), as Kata's
/// `virtio_fs_cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FsCache {
    /// Every lookup, attribute and read goes to the host: what the host changes shows at
    /// once, and every path walk in the guest costs a round trip per component.
    Never,
    /// Names and attributes cached, file data not.
    Metadata,
    /// Names and attributes cached for a second, file data until the file is opened again
    /// (close-to-open): changes on the host show within a second, as with NFS.
    #[default]
    Auto,
    /// Everything cached for as long as the guest likes: only for shares the host never
    /// changes while the pod runs.
    Always,
}

impl FsCache {
    pub fn as_str(self) -> &'static str {
        match self {
            FsCache::Never => "never",
            FsCache::Metadata => "metadata",
            FsCache::Auto => "auto",
            FsCache::Always => "always",
        }
    }
}

/// Log levels the shim accepts (containerd's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// The shim's configuration. Field names are the TOML keys.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Guest kernel (ELF vmlinux or bzImage).
    pub kernel: PathBuf,
    /// Guest initramfs whose `/init` is husk-agent.
    pub rootfs: PathBuf,
    /// The husk-vmm binary.
    pub vmm: PathBuf,
    /// The virtiofsd binary (one per pod shares the containers' rootfs and volumes).
    pub virtiofsd: PathBuf,
    /// vCPUs of a pod whose spec sets no CPU quota.
    pub default_vcpus: u32,
    /// Largest VM the shim will ask for, whatever the limits say.
    pub max_vcpus: u32,
    /// Guest memory of a pod whose spec sets no memory limit, MiB.
    pub default_memory_mib: u64,
    /// Added to a pod's memory limit for the guest kernel and agent, MiB.
    pub memory_overhead_mib: u64,
    /// Extra kernel command-line words.
    pub kernel_params: String,
    /// The guest reports the memory it frees (virtio-balloon free page reporting) and the
    /// vmm gives it back to the host, so a pod's footprint shrinks after boot and after
    /// its workload frees memory.
    pub free_page_reporting: bool,
    /// Back guest RAM with transparent huge pages: a `huge=within_size` tmpfs per pod holds the
    /// guest RAM file (see `ram`). Boots faster; the guest's touched memory rounds up to
    /// 2 MiB pieces.
    pub huge_pages: bool,
    /// The guest's caching of the shared rootfs and volumes. `never` makes a container's
    /// create several times slower (each path component of each mount is a round trip to
    /// virtiofsd); `auto` is Kata's choice too.
    pub virtio_fs_cache: FsCache,
    /// The shim's log level (containerd's `-debug` still raises it to debug).
    pub log_level: LogLevel,
    /// Keep the guest console in `<state dir>/console.log` instead of discarding it.
    pub debug_console: bool,
    /// How long a VM may take to boot until its agent answers, seconds.
    pub boot_timeout_secs: u64,
    /// Where per-pod state lives (sockets, shared directory, state file).
    pub state_dir: PathBuf,
    /// Restore pods from a snapshot of a booted VM instead of booting each one; the first
    /// pod of a given VM shape makes the template (see `template`).
    pub vm_template: bool,
    /// Where templates live, one directory per VM shape holding its snapshot (guest RAM
    /// included: keep it on a tmpfs, as /run is).
    pub template_dir: PathBuf,
    /// Most templates kept (each holds some 30 MiB of guest RAM); making one more removes
    /// the least recently used.
    pub max_templates: u32,
    /// Seconds between health checks of a running pod's agent (its Check call, as Kata
    /// runtime-rs's health check); 0 turns them off. An agent that crashed, hangs, or
    /// whose guest is wedged while the vmm lives is found this way.
    pub health_check_interval_secs: u64,
    /// How long one health check may take, seconds (a hung agent is a failed check).
    pub health_check_timeout_secs: u64,
    /// Failed or timed-out checks in a row after which the shim declares the VM dead: it
    /// stops the vmm, every process of the pod gets its TaskExit (status 255), and the
    /// pod is cleaned up as when the vmm dies. A dead agent is noticed within about
    /// `health_check_failures * (interval + timeout)`.
    pub health_check_failures: u32,
    /// Run the shim, vmm and virtiofsd of a pod in the cgroup containerd gives its
    /// sandbox (`linux.cgroupsPath`, cgroup v2), as Kata's `sandbox_cgroup_only`: the
    /// kubelet's pod limits then cover guest RAM and every husk process (see
    /// `host_cgroup`). On a host without cgroup v2 they stay in the shim's cgroup.
    pub host_cgroups: bool,
    /// Each pod NIC's bandwidth, each way, in Mbit/s: the vmm's token buckets (Firecracker's
    /// model, refilled every 100 ms), so one pod cannot take a node's network. 0 (the
    /// default) is unlimited.
    pub net_rate_limit_mbit: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kernel: "/usr/local/share/husk/vmlinux".into(),
            rootfs: "/usr/local/share/husk/rootfs.cpio".into(),
            vmm: "/usr/local/bin/husk-vmm".into(),
            virtiofsd: "/usr/local/libexec/virtiofsd".into(),
            default_vcpus: 1,
            max_vcpus: 8,
            default_memory_mib: 256,
            memory_overhead_mib: 64,
            kernel_params: String::new(),
            free_page_reporting: true,
            huge_pages: true,
            virtio_fs_cache: FsCache::Auto,
            log_level: LogLevel::Info,
            debug_console: false,
            boot_timeout_secs: 30,
            state_dir: "/run/husk".into(),
            vm_template: true,
            template_dir: "/run/husk/.templates".into(),
            max_templates: 8,
            health_check_interval_secs: 10,
            health_check_timeout_secs: 5,
            health_check_failures: 3,
            host_cgroups: true,
            net_rate_limit_mbit: 0,
        }
    }
}

impl Config {
    /// Parses TOML text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            msg: e.message().to_string(),
        })?;
        c.validate(path)?;
        Ok(c)
    }

    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(err) => Err(ConfigError::Read {
                path: path.into(),
                err,
            }),
        }
    }

    /// Reads the file `HUSK_CONFIG` names, or `/etc/husk/config.toml`.
    pub fn load_default() -> Result<Config, ConfigError> {
        let path = std::env::var_os(CONFIG_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| DEFAULT_CONFIG_PATH.into());
        Config::load(&path)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, why: &str| ConfigError::Invalid {
            path: path.into(),
            key,
            why: why.into(),
        };
        if self.default_vcpus == 0 {
            return Err(invalid("default_vcpus", "must be at least 1"));
        }
        if self.max_vcpus < self.default_vcpus {
            return Err(invalid("max_vcpus", "must be at least default_vcpus"));
        }
        if self.default_memory_mib < 64 {
            return Err(invalid("default_memory_mib", "must be at least 64"));
        }
        if self.boot_timeout_secs == 0 {
            return Err(invalid("boot_timeout_secs", "must be at least 1"));
        }
        if self.health_check_timeout_secs == 0 {
            return Err(invalid("health_check_timeout_secs", "must be at least 1"));
        }
        if self.health_check_failures == 0 {
            return Err(invalid("health_check_failures", "must be at least 1"));
        }
        if self.max_templates == 0 {
            return Err(invalid(
                "max_templates",
                "must be at least 1 (vm_template = false turns templates off)",
            ));
        }
        for (key, p) in [
            ("kernel", &self.kernel),
            ("rootfs", &self.rootfs),
            ("vmm", &self.vmm),
            ("virtiofsd", &self.virtiofsd),
            ("state_dir", &self.state_dir),
            ("template_dir", &self.template_dir),
        ] {
            if !p.is_absolute() {
                return Err(invalid(key, "must be an absolute path"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("/etc/husk/config.toml"))
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        let c = Config::default();
        assert!(c.vm_template);
        assert_eq!(c.template_dir, PathBuf::from("/run/husk/.templates"));
        assert_eq!(c.max_templates, 8);
    }

    #[test]
    fn every_key() {
        let c = parse(
            r#"
            kernel = "/k"
            rootfs = "/r.cpio"
            vmm = "/bin/vmm"
            virtiofsd = "/bin/vfsd"
            default_vcpus = 2
            max_vcpus = 4
            default_memory_mib = 512
            memory_overhead_mib = 32
            kernel_params = "quiet"
            log_level = "debug"
            debug_console = true
            huge_pages = false
            virtio_fs_cache = "never"
            boot_timeout_secs = 5
            state_dir = "/tmp/husk"
            vm_template = false
            template_dir = "/tmp/husk-templates"
            health_check_interval_secs = 0
            health_check_timeout_secs = 2
            health_check_failures = 5
            "#,
        )
        .unwrap();
        assert_eq!(c.kernel, PathBuf::from("/k"));
        assert_eq!(c.vmm, PathBuf::from("/bin/vmm"));
        assert_eq!(c.default_vcpus, 2);
        assert_eq!(c.default_memory_mib, 512);
        assert_eq!(c.log_level, LogLevel::Debug);
        assert!(c.debug_console);
        assert!(!c.huge_pages);
        assert_eq!(c.virtio_fs_cache, FsCache::Never);
        assert_eq!(c.state_dir, PathBuf::from("/tmp/husk"));
        assert!(!c.vm_template);
        assert_eq!(c.template_dir, PathBuf::from("/tmp/husk-templates"));
        assert_eq!(
            (
                c.health_check_interval_secs,
                c.health_check_timeout_secs,
                c.health_check_failures
            ),
            (0, 2, 5)
        );
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let c = parse("default_memory_mib = 1024\n").unwrap();
        assert_eq!(c.default_memory_mib, 1024);
        assert_eq!(c.kernel, Config::default().kernel);
    }

    #[test]
    fn malformed_files_are_clear_errors() {
        let e = parse("kernel = ").unwrap_err().to_string();
        assert!(e.starts_with("parsing /etc/husk/config.toml:"), "{e}");
        let e = parse("kernal = \"/k\"").unwrap_err().to_string();
        assert!(e.contains("unknown field `kernal`"), "{e}");
        let e = parse("default_vcpus = \"two\"").unwrap_err().to_string();
        assert!(e.contains("invalid type"), "{e}");
        let e = parse("log_level = \"loud\"").unwrap_err().to_string();
        assert!(e.contains("unknown variant"), "{e}");
        let e = parse("virtio_fs_cache = \"sometimes\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant"), "{e}");
        let e = parse("default_vcpus = 0").unwrap_err().to_string();
        assert_eq!(e, "/etc/husk/config.toml: default_vcpus must be at least 1");
        let e = parse("kernel = \"vmlinux\"").unwrap_err().to_string();
        assert!(e.contains("kernel must be an absolute path"), "{e}");
        let e = parse("health_check_failures = 0").unwrap_err().to_string();
        assert!(
            e.contains("health_check_failures must be at least 1"),
            "{e}"
        );
        let e = parse("health_check_timeout_secs = 0")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("health_check_timeout_secs must be at least 1"),
            "{e}"
        );
        let e = parse("max_templates = 0").unwrap_err().to_string();
        assert!(e.contains("max_templates must be at least 1"), "{e}");
        let e = parse("template_dir = \"t\"").unwrap_err().to_string();
        assert!(e.contains("template_dir must be an absolute path"), "{e}");
    }

    #[test]
    fn missing_file_is_defaults_and_unreadable_is_error() {
        let c = Config::load(Path::new("/nonexistent/husk/config.toml")).unwrap();
        assert_eq!(c, Config::default());
        let e = Config::load(Path::new("/proc/self/mem")).unwrap_err();
        assert!(matches!(
            e,
            ConfigError::Read { .. } | ConfigError::Parse { .. }
        ));
    }
}
