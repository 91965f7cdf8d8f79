//! The VM configuration: read from a JSON or TOML file, then overridden by flags, then
//! validated. The live VM is built from a validated [`VmConfig`] in one step.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::arch::mptable;
use crate::memory::MIN_MEM_SIZE;

/// Kernel command line used when none is configured.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off nomodule";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("parsing {path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("config file {0} must end in .json or .toml")]
    UnknownFormat(PathBuf),
    #[error("no kernel configured")]
    NoKernel,
    #[error("vcpus must be 1..={max}, got {got}")]
    Vcpus { got: u8, max: u8 },
    #[error("memory must be at least {min} MiB, got {got} MiB")]
    Memory { got: u64, min: u64 },
    #[error("invalid {what} {value:?}: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("rate limiter of {device}, {bucket} bucket {got}: {why}")]
    RateLimiter {
        device: String,
        bucket: &'static str,
        got: String,
        why: &'static str,
    },
}

/// The longest refill time a token bucket may have: one day. Longer is a typo, not a
/// limit (and would overflow the nanosecond arithmetic long before u64 ms do).
pub const MAX_REFILL_TIME_MS: u64 = 86_400_000;

/// One token bucket of a rate limiter (see `rate_limiter`): it holds at most `size`
/// tokens (bytes or requests), refills from empty to full in `refill_time_ms`, and starts
/// with `one_time_burst` extra tokens that are spent first and never come back. All zeros
/// is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    pub size: u64,
    pub refill_time_ms: u64,
    #[serde(default)]
    pub one_time_burst: u64,
}

impl TokenBucketConfig {
    /// No limit: every field is zero.
    pub fn is_unlimited(&self) -> bool {
        self.size == 0 && self.refill_time_ms == 0 && self.one_time_burst == 0
    }

    /// Why this bucket makes no sense, if it does not.
    fn check(&self) -> Result<(), &'static str> {
        if self.is_unlimited() {
            return Ok(());
        }
        if self.size == 0 {
            return Err(
                "size is 0 but refill_time_ms or one_time_burst is not: give a size, \
                        or all zeros for no limit",
            );
        }
        if self.refill_time_ms == 0 {
            return Err(
                "refill_time_ms is 0: a bucket refills over some time (all zeros for \
                        no limit)",
            );
        }
        if self.refill_time_ms > MAX_REFILL_TIME_MS {
            return Err("refill_time_ms is above one day (86400000)");
        }
        Ok(())
    }
}

/// A device's rate limiter: a bandwidth bucket (tokens are bytes) and an operations
/// bucket (tokens are requests or frames); a bucket left out does not limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    #[serde(default)]
    pub bandwidth: Option<TokenBucketConfig>,
    #[serde(default)]
    pub ops: Option<TokenBucketConfig>,
}

impl RateLimiterConfig {
    /// Whether neither bucket limits anything.
    pub fn is_unlimited(&self) -> bool {
        [self.bandwidth, self.ops]
            .iter()
            .all(|b| b.is_none_or(|b| b.is_unlimited()))
    }

    /// Checks both buckets; `device` names the device in the error.
    pub fn validate(&self, device: &str) -> Result<(), ConfigError> {
        for (bucket, b) in [("bandwidth", self.bandwidth), ("ops", self.ops)] {
            let Some(b) = b else { continue };
            b.check().map_err(|why| ConfigError::RateLimiter {
                device: device.to_string(),
                bucket,
                got: format!(
                    "{{size: {}, refill_time_ms: {}, one_time_burst: {}}}",
                    b.size, b.refill_time_ms, b.one_time_burst
                ),
                why,
            })?;
        }
        Ok(())
    }
}

/// Where the serial console goes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SerialOutput {
    #[default]
    Stdout,
    None,
    File(PathBuf),
}

impl SerialOutput {
    /// `stdout`, `none`, or a file path.
    pub fn parse(s: &str) -> SerialOutput {
        match s {
            "stdout" | "-" => SerialOutput::Stdout,
            "none" | "off" => SerialOutput::None,
            path => SerialOutput::File(PathBuf::from(path)),
        }
    }
}

/// Disk image formats. Configured, never probed from the image's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    #[default]
    Raw,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub format: ImageFormat,
    /// Serial number the guest sees (VIRTIO_BLK_T_GET_ID), at most 20 bytes.
    #[serde(default)]
    pub id: Option<String>,
    /// Limits the guest's requests: bytes read or written, and requests.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    pub guest_cid: u32,
    /// Host Unix socket: the host connects here; guest-initiated connections go to
    /// `<socket>_<port>`.
    pub socket: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The tap's name (unused when `detached`).
    #[serde(default)]
    pub tap: String,
    #[serde(default)]
    pub mac: Option<String>,
    /// No backend: what the guest sends is dropped and nothing arrives. For template VMs
    /// (`snapshot_to`), whose NIC a restored pod's VM connects to its own tap.
    #[serde(default)]
    pub detached: bool,
    /// Limits what the guest receives (frames from the tap), in bytes and frames.
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Limits what the guest sends (frames to the tap), in bytes and frames.
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    pub tag: String,
    pub socket: PathBuf,
}

fn default_vcpus() -> u8 {
    1
}
fn default_mem() -> u64 {
    256
}
fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_mem")]
    pub mem_mib: u64,
    #[serde(default)]
    pub serial: SerialOutput,
    #[serde(default)]
    pub drives: Vec<DriveConfig>,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    #[serde(default)]
    pub net: Vec<NetConfig>,
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    /// A virtio-balloon device through which the guest reports its free pages, which the
    /// vmm then gives back to the host.
    #[serde(default)]
    pub free_page_reporting: bool,
    /// Directory for the guest RAM file (a tmpfs mounted `huge=within_size`, or hugetlbfs);
    /// without it guest RAM is a memfd. See `memory`.
    #[serde(default)]
    pub mem_dir: Option<PathBuf>,
    /// Run even on a PVM or emulation-only /dev/kvm.
    #[serde(default)]
    pub force: bool,
    /// Per-thread seccomp filters (on unless turned off for debugging).
    #[serde(default = "default_seccomp")]
    pub seccomp: bool,
    /// Template mode: boot, and when the guest agent says it serves, write a snapshot of
    /// the VM into this directory and exit (see `snapshot`). Needs a vsock device.
    #[serde(default)]
    pub snapshot_to: Option<PathBuf>,
    /// Start from the snapshot in this directory instead of booting: the same devices,
    /// vCPUs and memory size as its template, the kernel is not loaded again.
    #[serde(default)]
    pub restore_from: Option<PathBuf>,
}

fn default_seccomp() -> bool {
    true
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: None,
            initrd: None,
            cmdline: default_cmdline(),
            vcpus: default_vcpus(),
            mem_mib: default_mem(),
            serial: SerialOutput::default(),
            drives: Vec::new(),
            vsock: None,
            net: Vec::new(),
            fs: Vec::new(),
            free_page_reporting: false,
            mem_dir: None,
            force: false,
            seccomp: true,
            snapshot_to: None,
            restore_from: None,
        }
    }
}

impl VmConfig {
    /// Reads a config file; the format follows the extension.
    pub fn from_file(path: &Path) -> Result<VmConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            path: path.into(),
            err,
        })?;
        let parse = |msg: String| ConfigError::Parse {
            path: path.into(),
            msg,
        };
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => serde_json::from_str(&text).map_err(|e| parse(e.to_string())),
            Some("toml") => toml::from_str(&text).map_err(|e| parse(e.to_string())),
            _ => Err(ConfigError::UnknownFormat(path.into())),
        }
    }

    /// Checks everything that can be checked before touching KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kernel.is_none() {
            return Err(ConfigError::NoKernel);
        }
        if self.vcpus == 0 || self.vcpus > mptable::MAX_VCPUS {
            return Err(ConfigError::Vcpus {
                got: self.vcpus,
                max: mptable::MAX_VCPUS,
            });
        }
        let min = MIN_MEM_SIZE >> 20;
        if self.mem_mib < min || self.mem_mib > (1 << 20) {
            return Err(ConfigError::Memory {
                got: self.mem_mib,
                min,
            });
        }
        for d in &self.drives {
            if d.id.as_ref().is_some_and(|id| id.len() > 20) {
                return Err(ConfigError::Invalid {
                    what: "drive id",
                    value: d.id.clone().unwrap_or_default(),
                    why: "longer than 20 bytes",
                });
            }
            if let Some(r) = &d.rate_limiter {
                r.validate(&format!("drive {}", d.path.display()))?;
            }
        }
        if self.snapshot_to.is_some() && self.restore_from.is_some() {
            return Err(ConfigError::Invalid {
                what: "snapshot_to",
                value: String::new(),
                why: "a VM restored from a snapshot cannot make one (restore_from is set)",
            });
        }
        if self.snapshot_to.is_some() && self.vsock.is_none() {
            return Err(ConfigError::Invalid {
                what: "snapshot_to",
                value: String::new(),
                why: "the snapshot is triggered over vsock: configure a vsock device",
            });
        }
        for n in &self.net {
            for (dir, r) in [("rx", &n.rx_rate_limiter), ("tx", &n.tx_rate_limiter)] {
                if let Some(r) = r {
                    r.validate(&format!("net {} {dir}", n.tap))?;
                }
            }
            if n.detached && self.snapshot_to.is_none() {
                return Err(ConfigError::Invalid {
                    what: "net",
                    value: n.tap.clone(),
                    why: "a detached NIC is for template VMs (snapshot_to) only",
                });
            }
            if !n.detached && n.tap.is_empty() {
                return Err(ConfigError::Invalid {
                    what: "net",
                    value: String::new(),
                    why: "a NIC needs a tap (or detached, in a template VM)",
                });
            }
        }
        if let Some(v) = &self.vsock {
            if v.guest_cid < 3 {
                return Err(ConfigError::Invalid {
                    what: "vsock guest_cid",
                    value: v.guest_cid.to_string(),
                    why: "0, 1 and 2 are reserved",
                });
            }
        }
        Ok(())
    }
}

/// Parses `key=value,key=value` (and bare `flag` words) as used by the drive, vsock, net
/// and fs flags.
pub fn parse_kv(s: &str) -> Vec<(&str, &str)> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect()
}

fn bool_value(what: &'static str, v: &str) -> Result<bool, ConfigError> {
    match v {
        "" | "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        _ => Err(ConfigError::Invalid {
            what,
            value: v.into(),
            why: "expected on/off",
        }),
    }
}

fn unknown(what: &'static str, key: &str) -> ConfigError {
    ConfigError::Invalid {
        what,
        value: key.into(),
        why: "unknown key",
    }
}

impl DriveConfig {
    /// `path=IMG[,ro][,format=raw][,id=SERIAL]` or just `IMG[,ro]`.
    pub fn parse(s: &str) -> Result<DriveConfig, ConfigError> {
        let mut d = DriveConfig {
            path: PathBuf::new(),
            read_only: false,
            format: ImageFormat::Raw,
            id: None,
            rate_limiter: None,
        };
        for (i, (k, v)) in parse_kv(s).into_iter().enumerate() {
            match (k, v) {
                ("path", p) => d.path = p.into(),
                ("ro" | "readonly" | "read_only", v) => d.read_only = bool_value("ro", v)?,
                ("format", "raw") => d.format = ImageFormat::Raw,
                ("format", f) => {
                    return Err(ConfigError::Invalid {
                        what: "drive format",
                        value: f.into(),
                        why: "only raw is supported",
                    })
                }
                ("id", id) => d.id = Some(id.into()),
                (p, "") if i == 0 => d.path = p.into(),
                (k, _) => return Err(unknown("drive option", k)),
            }
        }
        if d.path.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                what: "drive",
                value: s.into(),
                why: "no path",
            });
        }
        Ok(d)
    }
}

impl VsockConfig {
    /// `cid=N,socket=PATH`.
    pub fn parse(s: &str) -> Result<VsockConfig, ConfigError> {
        let (mut cid, mut socket) = (None, None);
        for (k, v) in parse_kv(s) {
            match k {
                "cid" | "guest_cid" => {
                    cid = Some(v.parse::<u32>().map_err(|_| ConfigError::Invalid {
                        what: "vsock cid",
                        value: v.into(),
                        why: "not a number",
                    })?)
                }
                "socket" | "uds" | "path" => socket = Some(PathBuf::from(v)),
                k => return Err(unknown("vsock option", k)),
            }
        }
        match (cid, socket) {
            (Some(guest_cid), Some(socket)) => Ok(VsockConfig { guest_cid, socket }),
            _ => Err(ConfigError::Invalid {
                what: "vsock",
                value: s.into(),
                why: "needs cid=N,socket=PATH",
            }),
        }
    }
}

impl NetConfig {
    /// `tap=NAME[,mac=MAC]`.
    pub fn parse(s: &str) -> Result<NetConfig, ConfigError> {
        let mut n = NetConfig {
            tap: String::new(),
            mac: None,
            detached: false,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        for (i, (k, v)) in parse_kv(s).into_iter().enumerate() {
            match (k, v) {
                ("tap", t) => n.tap = t.into(),
                ("mac", m) => n.mac = Some(m.into()),
                (t, "") if i == 0 => n.tap = t.into(),
                (k, _) => return Err(unknown("net option", k)),
            }
        }
        Ok(n)
    }
}

impl FsConfig {
    /// `tag=TAG,socket=PATH`.
    pub fn parse(s: &str) -> Result<FsConfig, ConfigError> {
        let (mut tag, mut socket) = (None, None);
        for (k, v) in parse_kv(s) {
            match k {
                "tag" => tag = Some(v.to_string()),
                "socket" => socket = Some(PathBuf::from(v)),
                k => return Err(unknown("fs option", k)),
            }
        }
        match (tag, socket) {
            (Some(tag), Some(socket)) => Ok(FsConfig { tag, socket }),
            _ => Err(ConfigError::Invalid {
                what: "fs",
                value: s.into(),
                why: "needs tag=TAG,socket=PATH",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_toml_files() {
        let dir = std::env::temp_dir().join(format!("husk-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let j = dir.join("vm.json");
        std::fs::write(
            &j,
            r#"{"kernel":"/k","vcpus":2,"mem_mib":128,"serial":{"file":"/tmp/c"},
               "drives":[{"path":"/d","read_only":true}],"vsock":{"guest_cid":3,"socket":"/s"}}"#,
        )
        .unwrap();
        let c = VmConfig::from_file(&j).unwrap();
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.serial, SerialOutput::File("/tmp/c".into()));
        assert!(c.drives[0].read_only);
        assert_eq!(c.cmdline, DEFAULT_CMDLINE);
        c.validate().unwrap();
        let t = dir.join("vm.toml");
        std::fs::write(
            &t,
            "kernel = \"/k\"\nmem_mib = 64\n[[drives]]\npath = \"/d\"\n",
        )
        .unwrap();
        let c = VmConfig::from_file(&t).unwrap();
        assert_eq!(c.mem_mib, 64);
        std::fs::write(&t, "kernel = \"/k\"\nbogus = 1\n").unwrap();
        assert!(matches!(
            VmConfig::from_file(&t),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            VmConfig::from_file(&dir.join("vm.yaml")),
            Err(ConfigError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn validation() {
        let mut c = VmConfig::default();
        assert!(matches!(c.validate(), Err(ConfigError::NoKernel)));
        c.kernel = Some("/k".into());
        c.validate().unwrap();
        c.vcpus = 0;
        assert!(c.validate().is_err());
        c.vcpus = 33;
        assert!(c.validate().is_err());
        c.vcpus = 2;
        c.mem_mib = 8;
        assert!(c.validate().is_err());
    }

    #[test]
    fn snapshot_and_restore_validation() {
        let mut c = VmConfig {
            kernel: Some("/k".into()),
            snapshot_to: Some("/t".into()),
            ..VmConfig::default()
        };
        // The trigger comes over vsock.
        assert!(c.validate().is_err());
        c.vsock = Some(VsockConfig {
            guest_cid: 3,
            socket: "/v".into(),
        });
        c.validate().unwrap();
        c.restore_from = Some("/t".into());
        assert!(c.validate().is_err());
        c.snapshot_to = None;
        c.validate().unwrap();
        c.net.push(NetConfig {
            tap: String::new(),
            mac: None,
            detached: true,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        });
        // A detached NIC only in a template VM; a restored VM's NIC needs its tap.
        assert!(c.validate().is_err());
        c.net[0].tap = "tap0".into();
        c.net[0].detached = false;
        c.validate().unwrap();
        c.restore_from = None;
        c.snapshot_to = Some("/t".into());
        c.net[0].detached = true;
        c.validate().unwrap();
        c.net[0].tap = String::new();
        c.validate().unwrap();
        c.net[0].detached = false;
        assert!(c.validate().is_err());
    }

    fn with_drive_limiter(json: &str) -> Result<VmConfig, ConfigError> {
        let text = format!(r#"{{"kernel":"/k","drives":[{{"path":"/d","rate_limiter":{json}}}]}}"#);
        let c: VmConfig = serde_json::from_str(&text).map_err(|e| ConfigError::Parse {
            path: "vm.json".into(),
            msg: e.to_string(),
        })?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn net_rate_limiters_in_the_form_the_shim_writes() {
        // shim/src/vmm.rs `net_entry` with net_rate_limit_mbit = 100.
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel": "/k", "net": [{"tap": "t", "mac": "02:00:00:00:00:01",
                "rx_rate_limiter": {"bandwidth": {"size": 1250000, "refill_time_ms": 100}},
                "tx_rate_limiter": {"bandwidth": {"size": 1250000, "refill_time_ms": 100}}}]}"#,
        )
        .unwrap();
        c.validate().unwrap();
        let tx = c.net[0].tx_rate_limiter.unwrap().bandwidth.unwrap();
        assert_eq!((tx.size, tx.refill_time_ms), (1_250_000, 100));
    }

    #[test]
    fn rate_limiter_config() {
        let c = with_drive_limiter(
            r#"{"bandwidth":{"size":4194304,"refill_time_ms":1000,"one_time_burst":1048576},
                "ops":{"size":100,"refill_time_ms":1000}}"#,
        )
        .unwrap();
        let r = c.drives[0].rate_limiter.unwrap();
        assert_eq!(
            r.bandwidth,
            Some(TokenBucketConfig {
                size: 4 << 20,
                refill_time_ms: 1000,
                one_time_burst: 1 << 20
            })
        );
        assert_eq!(r.ops.unwrap().one_time_burst, 0);
        assert!(!r.is_unlimited());
        // Absent, empty or all zeros: no limit.
        let c = with_drive_limiter("{}").unwrap();
        assert!(c.drives[0].rate_limiter.unwrap().is_unlimited());
        let c = with_drive_limiter(r#"{"ops":{"size":0,"refill_time_ms":0}}"#).unwrap();
        assert!(c.drives[0].rate_limiter.unwrap().is_unlimited());
        let c: VmConfig = serde_json::from_str(r#"{"drives":[{"path":"/d"}]}"#).unwrap();
        assert_eq!(c.drives[0].rate_limiter, None);
        // TOML too.
        let c: VmConfig = toml::from_str(
            "kernel = \"/k\"\n[[net]]\ntap = \"t\"\n[net.tx_rate_limiter.bandwidth]\n\
             size = 1000\nrefill_time_ms = 10\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.net[0].tx_rate_limiter.unwrap().bandwidth.unwrap().size,
            1000
        );
        assert_eq!(c.net[0].rx_rate_limiter, None);
    }

    #[test]
    fn rate_limiter_nonsense_is_a_config_error() {
        // Parse errors: a missing field, an unknown one, a negative or fractional number.
        for bad in [
            r#"{"bandwidth":{"size":1}}"#,
            r#"{"bandwidth":{"refill_time_ms":1}}"#,
            r#"{"bandwidth":{"size":1,"refill_time_ms":1,"burst":1}}"#,
            r#"{"bw":{"size":1,"refill_time_ms":1}}"#,
            r#"{"ops":{"size":-1,"refill_time_ms":1}}"#,
            r#"{"ops":{"size":1.5,"refill_time_ms":1}}"#,
            r#"{"ops":{"size":"10","refill_time_ms":1}}"#,
            r#"{"ops":{"size":18446744073709551616,"refill_time_ms":1}}"#,
            "4",
            r#""fast""#,
        ] {
            assert!(
                matches!(with_drive_limiter(bad), Err(ConfigError::Parse { .. })),
                "{bad}"
            );
        }
        // Validation errors: half a bucket, or a refill time that is a typo.
        for (bad, why) in [
            (
                r#"{"bandwidth":{"size":1000,"refill_time_ms":0}}"#,
                "refill_time_ms is 0",
            ),
            (r#"{"ops":{"size":0,"refill_time_ms":100}}"#, "size is 0"),
            (
                r#"{"ops":{"size":0,"refill_time_ms":0,"one_time_burst":5}}"#,
                "size is 0",
            ),
            (
                r#"{"ops":{"size":1,"refill_time_ms":86400001}}"#,
                "above one day",
            ),
            (
                r#"{"ops":{"size":1,"refill_time_ms":18446744073709551615}}"#,
                "above one day",
            ),
        ] {
            let e = with_drive_limiter(bad).unwrap_err();
            let text = e.to_string();
            assert!(
                matches!(e, ConfigError::RateLimiter { .. }),
                "{bad}: {text}"
            );
            assert!(text.contains(why), "{bad}: {text}");
            assert!(text.starts_with("rate limiter of drive /d, "), "{text}");
        }
        // The largest values that make sense are taken.
        with_drive_limiter(&format!(
            r#"{{"bandwidth":{{"size":{},"refill_time_ms":{MAX_REFILL_TIME_MS},"one_time_burst":{}}}}}"#,
            u64::MAX,
            u64::MAX
        ))
        .unwrap();
        // A NIC's limiters are checked too, and named by direction.
        let mut c = VmConfig {
            kernel: Some("/k".into()),
            ..VmConfig::default()
        };
        let mut n = NetConfig::parse("tap0").unwrap();
        n.rx_rate_limiter = Some(RateLimiterConfig {
            bandwidth: None,
            ops: Some(TokenBucketConfig {
                size: 0,
                refill_time_ms: 5,
                one_time_burst: 0,
            }),
        });
        c.net.push(n);
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("rate limiter of net tap0 rx, ops bucket"),
            "{e}"
        );
    }

    #[test]
    fn flag_syntax() {
        let d = DriveConfig::parse("/img,ro").unwrap();
        assert_eq!((d.path.to_str().unwrap(), d.read_only), ("/img", true));
        let d = DriveConfig::parse("path=/img,ro=off,id=disk0").unwrap();
        assert!(!d.read_only);
        assert_eq!(d.id.as_deref(), Some("disk0"));
        assert!(DriveConfig::parse("path=/i,format=qcow2").is_err());
        assert!(DriveConfig::parse("ro").is_err());
        let v = VsockConfig::parse("cid=3,socket=/tmp/v.sock").unwrap();
        assert_eq!(v.guest_cid, 3);
        assert!(VsockConfig::parse("cid=x,socket=/s").is_err());
        assert_eq!(NetConfig::parse("tap0").unwrap().tap, "tap0");
        assert!(FsConfig::parse("tag=share").is_err());
        assert_eq!(SerialOutput::parse("none"), SerialOutput::None);
    }
}
