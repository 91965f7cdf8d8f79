//! `husk-vmm check`: what this host can do for husk, one line per item, with what to do
//! about each. The facts are gathered through [`HostProbe`] so the verdicts are unit-tested
//! without touching the real host.

use std::fmt;
use std::path::Path;

/// How usable an item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub item: &'static str,
    pub text: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:<12} {}", self.level, self.item, self.text)
    }
}

/// What kind of KVM this host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// VMX or SVM in the CPU and kvm_intel/kvm_amd: husk runs at full speed.
    Hardware,
    /// `kvm_pvm`: a software KVM that only runs PVM-enlightened guests at speed.
    Pvm,
    /// `/dev/kvm` answers but the CPU has no virtualization extensions.
    EmulationOnly,
    /// No usable `/dev/kvm`.
    Absent,
}

/// Facts about the host; the real implementation reads /proc, /sys and /dev.
pub trait HostProbe {
    fn exists(&self, path: &str) -> bool;
    fn read(&self, path: &str) -> Option<String>;
    /// Opens /dev/kvm and creates (then drops) a VM; `Err` carries the reason.
    fn kvm_create_vm(&self) -> Result<(), String>;
}

/// Decides which kind of KVM the probe describes.
pub fn kvm_kind(p: &dyn HostProbe) -> KvmKind {
    if !p.exists("/dev/kvm") {
        return KvmKind::Absent;
    }
    if p.exists("/sys/module/kvm_pvm") {
        return KvmKind::Pvm;
    }
    let flags = p.read("/proc/cpuinfo").unwrap_or_default();
    let hw = flags
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    let module = p.exists("/sys/module/kvm_intel") || p.exists("/sys/module/kvm_amd");
    if hw && module {
        KvmKind::Hardware
    } else {
        KvmKind::EmulationOnly
    }
}

/// Runs every check.
pub fn run(p: &dyn HostProbe) -> Vec<Finding> {
    let mut out = Vec::new();
    let kind = kvm_kind(p);
    let vm = if kind == KvmKind::Absent {
        Err("no /dev/kvm".to_string())
    } else {
        p.kvm_create_vm()
    };
    out.push(match (kind, &vm) {
        (KvmKind::Hardware, Ok(())) => Finding {
            level: Level::Ok,
            item: "kvm",
            text: "hardware KVM (VMX/SVM), KVM_CREATE_VM works; husk VMs run here directly".into(),
        },
        (KvmKind::Hardware, Err(e)) => Finding {
            level: Level::Fail,
            item: "kvm",
            text: format!("hardware KVM present but KVM_CREATE_VM failed ({e}); check permissions on /dev/kvm"),
        },
        (KvmKind::Pvm, _) => Finding {
            level: Level::Fail,
            item: "kvm",
            text: "PVM (kvm_pvm): software KVM that runs only PVM guest kernels at speed; husk's guest would be emulated ~5000x slower. Use the nested test host: make nested CMD='...'".into(),
        },
        (KvmKind::EmulationOnly, _) => Finding {
            level: Level::Fail,
            item: "kvm",
            text: "/dev/kvm without VMX/SVM in the CPU: emulation only; use a host with hardware virtualization or the nested test host (make nested)".into(),
        },
        (KvmKind::Absent, _) => Finding {
            level: Level::Fail,
            item: "kvm",
            text: "no /dev/kvm; load kvm_intel or kvm_amd, or use the nested test host (make nested)".into(),
        },
    });
    if kind == KvmKind::Hardware {
        let nested = [
            "/sys/module/kvm_amd/parameters/nested",
            "/sys/module/kvm_intel/parameters/nested",
        ]
        .iter()
        .find_map(|f| p.read(f))
        .map(|s| s.trim().to_string());
        if let Some(n) = nested {
            let on = n == "1" || n == "Y";
            out.push(Finding {
                level: Level::Ok,
                item: "nested",
                text: format!(
                    "nested virtualization {}",
                    if on {
                        "enabled"
                    } else {
                        "disabled (not needed by husk)"
                    }
                ),
            });
        }
    }
    out.push(if p.exists("/dev/vhost-vsock") {
        Finding {
            level: Level::Ok,
            item: "vhost-vsock",
            text:
                "/dev/vhost-vsock present (husk's vmm does vsock in userspace and does not need it)"
                    .into(),
        }
    } else {
        Finding {
            level: Level::Ok,
            item: "vhost-vsock",
            text:
                "no /dev/vhost-vsock; not needed: husk's vmm serves vsock over a host Unix socket"
                    .into(),
        }
    });
    out.push(if p.exists("/dev/net/tun") {
        Finding {
            level: Level::Ok,
            item: "tun",
            text: "/dev/net/tun present: pods can get virtio-net on a tap".into(),
        }
    } else {
        Finding {
            level: Level::Warn,
            item: "tun",
            text: "no /dev/net/tun: pods get loopback only; run 'modprobe tun'".into(),
        }
    });
    let controllers = p.read("/sys/fs/cgroup/cgroup.controllers");
    let hybrid = p.exists("/sys/fs/cgroup/unified");
    out.push(match (controllers, hybrid) {
        (Some(c), false) => Finding {
            level: Level::Ok,
            item: "cgroup-v2",
            text: format!("unified cgroup v2 with controllers: {}", c.trim()),
        },
        (_, true) => Finding {
            level: Level::Warn,
            item: "cgroup-v2",
            text: "hybrid cgroup v1/v2 layout: pod resource accounting on the host is limited; boot with systemd.unified_cgroup_hierarchy=1 (the nested test host mounts cgroup2 alone)".into(),
        },
        (None, false) => Finding {
            level: Level::Warn,
            item: "cgroup-v2",
            text: "no cgroup v2 at /sys/fs/cgroup; mount -t cgroup2 none /sys/fs/cgroup".into(),
        },
    });
    out
}

/// The real host.
#[derive(Debug, Default)]
pub struct RealHost;

impl HostProbe for RealHost {
    fn exists(&self, path: &str) -> bool {
        Path::new(path).exists()
    }

    fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }

    fn kvm_create_vm(&self) -> Result<(), String> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
        const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
        let kvm = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map_err(|e| format!("open /dev/kvm: {e}"))?;
        // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an integer.
        let v = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION, 0) };
        if v != 12 {
            return Err(format!("KVM API version {v}, want 12"));
        }
        // SAFETY: KVM_CREATE_VM takes the machine type (0) by value and returns a new fd or -1.
        let fd = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0) };
        if fd < 0 {
            return Err(format!(
                "KVM_CREATE_VM: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: fd was just returned by KVM_CREATE_VM and is owned by nobody else.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Fake {
        files: HashMap<&'static str, &'static str>,
        vm: Result<(), String>,
    }

    impl HostProbe for Fake {
        fn exists(&self, path: &str) -> bool {
            self.files.contains_key(path)
        }
        fn read(&self, path: &str) -> Option<String> {
            self.files.get(path).map(|s| s.to_string())
        }
        fn kvm_create_vm(&self) -> Result<(), String> {
            self.vm.clone()
        }
    }

    fn fake(files: &[(&'static str, &'static str)]) -> Fake {
        Fake {
            files: files.iter().cloned().collect(),
            vm: Ok(()),
        }
    }

    #[test]
    fn pvm_host_is_named_and_points_to_nested_host() {
        let f = fake(&[
            ("/dev/kvm", ""),
            ("/sys/module/kvm_pvm", ""),
            ("/proc/cpuinfo", "flags\t: fpu sse2"),
            ("/sys/fs/cgroup/unified", ""),
        ]);
        assert_eq!(kvm_kind(&f), KvmKind::Pvm);
        let r = run(&f);
        assert_eq!(r[0].level, Level::Fail);
        assert!(r[0].text.contains("PVM"));
        assert!(r[0].text.contains("make nested"));
        assert!(r
            .iter()
            .any(|l| l.item == "cgroup-v2" && l.text.contains("hybrid")));
    }

    #[test]
    fn hardware_kvm_with_svm() {
        let f = fake(&[
            ("/dev/kvm", ""),
            ("/sys/module/kvm_amd", ""),
            ("/sys/module/kvm_amd/parameters/nested", "1\n"),
            ("/proc/cpuinfo", "flags\t: fpu svm npt"),
            ("/sys/fs/cgroup/cgroup.controllers", "cpu memory pids\n"),
            ("/dev/net/tun", ""),
        ]);
        assert_eq!(kvm_kind(&f), KvmKind::Hardware);
        let r = run(&f);
        assert!(r.iter().all(|l| l.level == Level::Ok), "{r:?}");
    }

    #[test]
    fn hardware_kvm_that_refuses_vm_creation_fails() {
        let mut f = fake(&[
            ("/dev/kvm", ""),
            ("/sys/module/kvm_intel", ""),
            ("/proc/cpuinfo", "flags : vmx"),
        ]);
        f.vm = Err("permission denied".into());
        assert_eq!(run(&f)[0].level, Level::Fail);
    }

    #[test]
    fn no_virtualization_flags_means_emulation_only() {
        let f = fake(&[("/dev/kvm", ""), ("/proc/cpuinfo", "flags : fpu")]);
        assert_eq!(kvm_kind(&f), KvmKind::EmulationOnly);
        assert_eq!(kvm_kind(&fake(&[])), KvmKind::Absent);
    }

    #[test]
    fn missing_tun_warns() {
        let r = run(&fake(&[]));
        assert!(r.iter().any(|l| l.item == "tun" && l.level == Level::Warn));
    }
}
