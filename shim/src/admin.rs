//! The node admin's view of husk pods (`husk ps`, `husk metrics`): every pod directory in
//! the state dir, with its VM's process as `/proc` shows it and what the shim recorded in
//! `status` (see `pod_status`). Read-only: nothing here signals or changes a pod.
//!
//! `husk metrics` prints the Prometheus text format (as Kata's kata-monitor serves): to be
//! scraped through node-exporter's textfile collector or any exporter that reads a file.

use std::path::{Path, PathBuf};

use crate::pod_status::PodStatus;
use crate::vmm::{VIRTIOFSD_PID_FILE, VMM_PID_FILE};

/// One pod as found on the node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodInfo {
    pub id: String,
    /// The vmm's pid while it runs.
    pub vmm_pid: Option<u32>,
    pub vcpus: Option<u64>,
    pub mem_mib: Option<u64>,
    pub uptime_s: Option<f64>,
    /// PSS of the vmm (guest RAM included) and of virtiofsd, bytes.
    pub pss_bytes: u64,
    /// Guest RAM the host holds (the vmm's shared resident pages), bytes.
    pub guest_resident_bytes: u64,
    /// CPU time of the vCPU threads and of the whole vmm, seconds.
    pub vcpu_seconds: f64,
    pub vmm_cpu_seconds: f64,
    /// The vmm's file and socket I/O (/proc/PID/io rchar and wchar: disk, vsock, tap).
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
    pub status: PodStatus,
}

/// `/proc` as the admin view reads it; a fake in tests.
pub trait ProcView {
    fn read(&self, path: &Path) -> Option<String>;
    fn tasks(&self, pid: u32) -> Vec<u32>;
    fn clock_ticks(&self) -> u64;
}

/// The real `/proc`.
pub struct Proc;

impl ProcView for Proc {
    fn read(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }
    fn tasks(&self, pid: u32) -> Vec<u32> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
    fn clock_ticks(&self) -> u64 {
        // SAFETY: sysconf has no preconditions.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        u64::try_from(t).ok().filter(|t| *t > 0).unwrap_or(100)
    }
}

/// Fields of a `stat` line after the command name (field 3 onwards).
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rfind(')')
        .map(|i| stat[i + 1..].split_whitespace().collect())
        .unwrap_or_default()
}

fn field(fields: &[&str], n: usize) -> u64 {
    fields.get(n - 3).and_then(|f| f.parse().ok()).unwrap_or(0)
}

fn kv_kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .map_or(0, |k: u64| k * 1024)
}

fn kv(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn pss(p: &dyn ProcView, pid: u32) -> u64 {
    p.read(Path::new(&format!("/proc/{pid}/smaps_rollup")))
        .map_or(0, |t| kv_kib(&t, "Pss"))
}

/// The pod in `dir` (named by its directory).
pub fn pod_info(p: &dyn ProcView, dir: &Path, vmm_pid: Option<u32>, vfsd: &[u32]) -> PodInfo {
    let id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let vm: serde_json::Value = p
        .read(&dir.join("vm.json"))
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let mut info = PodInfo {
        id,
        vmm_pid,
        vcpus: vm.get("vcpus").and_then(|v| v.as_u64()),
        mem_mib: vm.get("mem_mib").and_then(|v| v.as_u64()),
        status: PodStatus::parse(
            &p.read(&dir.join(crate::pod_status::STATUS_FILE))
                .unwrap_or_default(),
        ),
        ..PodInfo::default()
    };
    let hz = p.clock_ticks() as f64;
    if let Some(pid) = vmm_pid {
        let stat = p
            .read(Path::new(&format!("/proc/{pid}/stat")))
            .unwrap_or_default();
        let f = stat_fields(&stat);
        let uptime = p
            .read(Path::new("/proc/uptime"))
            .and_then(|u| u.split_whitespace().next()?.parse::<f64>().ok());
        if let (Some(up), false) = (uptime, f.is_empty()) {
            info.uptime_s = Some((up - field(&f, 22) as f64 / hz).max(0.0));
        }
        info.vmm_cpu_seconds = (field(&f, 14) + field(&f, 15)) as f64 / hz;
        for t in p.tasks(pid) {
            let comm = p
                .read(Path::new(&format!("/proc/{pid}/task/{t}/comm")))
                .unwrap_or_default();
            if comm.starts_with("vcpu") {
                let ts = p
                    .read(Path::new(&format!("/proc/{pid}/task/{t}/stat")))
                    .unwrap_or_default();
                let tf = stat_fields(&ts);
                info.vcpu_seconds += (field(&tf, 14) + field(&tf, 15)) as f64 / hz;
            }
        }
        let status = p
            .read(Path::new(&format!("/proc/{pid}/status")))
            .unwrap_or_default();
        info.guest_resident_bytes = kv_kib(&status, "RssShmem");
        let io = p
            .read(Path::new(&format!("/proc/{pid}/io")))
            .unwrap_or_default();
        info.io_read_bytes = kv(&io, "rchar");
        info.io_write_bytes = kv(&io, "wchar");
        info.pss_bytes = pss(p, pid);
    }
    info.pss_bytes += vfsd.iter().map(|&v| pss(p, v)).sum::<u64>();
    info
}

/// Every pod directory in `state_dir` (templates and other dot-directories are not pods).
pub fn list_pods(state_dir: &Path) -> Vec<PodInfo> {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.'))
        })
        .filter(|p| p.join("vm.json").exists() || p.join(VMM_PID_FILE).exists())
        .collect();
    dirs.sort();
    dirs.iter()
        .map(|d| {
            let vmm = crate::pidfile::live_recorded(&d.join(VMM_PID_FILE));
            let mut vfsd: Vec<u32> = Vec::new();
            if let Some(v) = crate::pidfile::live_recorded(&d.join(VIRTIOFSD_PID_FILE)) {
                vfsd.push(v);
                vfsd.extend(children(v));
            }
            pod_info(&Proc, d, vmm, &vfsd)
        })
        .collect()
}

/// The children of `pid` (virtiofsd's sandboxed server runs as one).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|t| {
            t.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn mib(b: u64) -> f64 {
    b as f64 / 1_048_576.0
}

/// `husk ps`: a line per pod.
pub fn render_ps(pods: &[PodInfo]) -> String {
    let mut out = format!(
        "{:<20} {:>8} {:>5} {:>8} {:>9} {:>9} {:>9} {:>9}  {}\n",
        "POD", "VMM", "VCPUS", "MEM_MIB", "PSS_MIB", "GUEST_MIB", "UPTIME_S", "START_MS", "STATE"
    );
    for p in pods {
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let state = match (p.vmm_pid, p.status.health_failures) {
            (None, _) => "stopped".to_string(),
            (Some(_), 0) => "running".to_string(),
            (Some(_), n) => format!("running, {n} failed health check(s)"),
        };
        let how = if p.status.restored { " (restored)" } else { "" };
        out.push_str(&format!(
            "{:<20} {:>8} {:>5} {:>8} {:>9.1} {:>9.1} {:>9} {:>9}  {state}{how}\n",
            p.id.chars().take(20).collect::<String>(),
            opt(p.vmm_pid.map(u64::from)),
            opt(p.vcpus),
            opt(p.mem_mib),
            mib(p.pss_bytes),
            mib(p.guest_resident_bytes),
            p.uptime_s.map_or("-".to_string(), |u| format!("{u:.0}")),
            opt(p.status.start_ms),
        ));
    }
    out
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `husk metrics`: the Prometheus text exposition format, one family per figure.
pub fn render_metrics(pods: &[PodInfo]) -> String {
    type Getter = fn(&PodInfo) -> Option<f64>;
    let families: &[(&str, &str, &str, Getter)] = &[
        ("husk_pod_up", "gauge", "1 while the pod's vmm runs", |p| {
            Some(if p.vmm_pid.is_some() { 1.0 } else { 0.0 })
        }),
        (
            "husk_pod_start_seconds",
            "gauge",
            "from the vmm's launch to the agent's first answer",
            |p| p.status.start_ms.map(|m| m as f64 / 1000.0),
        ),
        (
            "husk_pod_restored",
            "gauge",
            "1 if the VM was restored from a template",
            |p| Some(if p.status.restored { 1.0 } else { 0.0 }),
        ),
        (
            "husk_pod_uptime_seconds",
            "gauge",
            "since the vmm started",
            |p| p.uptime_s,
        ),
        ("husk_pod_vcpus", "gauge", "the VM's vCPUs", |p| {
            p.vcpus.map(|v| v as f64)
        }),
        (
            "husk_pod_memory_size_bytes",
            "gauge",
            "the VM's RAM size",
            |p| p.mem_mib.map(|m| (m * 1_048_576) as f64),
        ),
        (
            "husk_pod_guest_memory_resident_bytes",
            "gauge",
            "guest RAM the host holds (touched, not given back)",
            |p| p.vmm_pid.map(|_| p.guest_resident_bytes as f64),
        ),
        (
            "husk_pod_host_pss_bytes",
            "gauge",
            "PSS of the vmm (guest RAM included) and virtiofsd",
            |p| Some(p.pss_bytes as f64),
        ),
        (
            "husk_pod_vcpu_seconds_total",
            "counter",
            "CPU time of the vCPU threads",
            |p| p.vmm_pid.map(|_| p.vcpu_seconds),
        ),
        (
            "husk_pod_vmm_cpu_seconds_total",
            "counter",
            "CPU time of the whole vmm",
            |p| p.vmm_pid.map(|_| p.vmm_cpu_seconds),
        ),
        (
            "husk_pod_io_read_bytes_total",
            "counter",
            "bytes the vmm read (disk, vsock, tap)",
            |p| p.vmm_pid.map(|_| p.io_read_bytes as f64),
        ),
        (
            "husk_pod_io_write_bytes_total",
            "counter",
            "bytes the vmm wrote (disk, vsock, tap)",
            |p| p.vmm_pid.map(|_| p.io_write_bytes as f64),
        ),
        (
            "husk_pod_agent_health_checks_total",
            "counter",
            "health checks of the agent",
            |p| Some(p.status.health_checks as f64),
        ),
        (
            "husk_pod_agent_healthy",
            "gauge",
            "1 if the agent's last health check passed",
            |p| {
                p.vmm_pid.map(|_| {
                    if p.status.health_failures == 0 {
                        1.0
                    } else {
                        0.0
                    }
                })
            },
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, get) in families {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for p in pods {
            if let Some(v) = get(p) {
                out.push_str(&format!("{name}{{pod=\"{}\"}} {v}\n", label(&p.id)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct FakeProc(HashMap<String, String>, Vec<u32>);

    impl ProcView for FakeProc {
        fn read(&self, path: &Path) -> Option<String> {
            self.0.get(path.to_str()?).cloned()
        }
        fn tasks(&self, _pid: u32) -> Vec<u32> {
            self.1.clone()
        }
        fn clock_ticks(&self) -> u64 {
            100
        }
    }

    fn stat(utime: u64, stime: u64, start: u64) -> String {
        // pid (comm with ) and spaces) state, then fields 4.. : utime is 14, stime 15, starttime 22.
        let mut f: Vec<String> = (4..=30).map(|_| "0".to_string()).collect();
        f[14 - 4] = utime.to_string();
        f[15 - 4] = stime.to_string();
        f[22 - 4] = start.to_string();
        format!("42 (husk-vmm) x) S {}", f.join(" "))
    }

    fn fake() -> FakeProc {
        let m: HashMap<String, String> = [
            (
                "/pods/p1/vm.json",
                r#"{"vcpus": 2, "mem_mib": 320}"#.to_string(),
            ),
            (
                "/pods/p1/status",
                "start_ms 412\nrestored 1\nhealth_checks 3\nhealth_failures 0\n".into(),
            ),
            ("/proc/uptime", "1000.00 5.0\n".into()),
            ("/proc/42/stat", stat(150, 50, 90_000)),
            ("/proc/42/task/43/comm", "vcpu0\n".into()),
            ("/proc/42/task/43/stat", stat(100, 20, 90_000)),
            ("/proc/42/task/44/comm", "events\n".into()),
            ("/proc/42/task/44/stat", stat(30, 30, 90_000)),
            (
                "/proc/42/status",
                "Name:\thusk-vmm\nRssShmem:\t  20480 kB\n".into(),
            ),
            ("/proc/42/io", "rchar: 1000\nwchar: 2000\n".into()),
            (
                "/proc/42/smaps_rollup",
                "Rss: 1 kB\nPss:   10240 kB\n".into(),
            ),
            ("/proc/50/smaps_rollup", "Pss: 2048 kB\n".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        FakeProc(m, vec![42, 43, 44])
    }

    #[test]
    fn pod_figures_come_from_proc_and_the_status_file() {
        let p = pod_info(&fake(), Path::new("/pods/p1"), Some(42), &[50]);
        assert_eq!(p.id, "p1");
        assert_eq!((p.vcpus, p.mem_mib), (Some(2), Some(320)));
        assert_eq!(p.uptime_s, Some(100.0));
        assert_eq!(p.vmm_cpu_seconds, 2.0);
        assert_eq!(p.vcpu_seconds, 1.2);
        assert_eq!(p.guest_resident_bytes, 20 * 1_048_576);
        assert_eq!(p.pss_bytes, 12 * 1_048_576);
        assert_eq!((p.io_read_bytes, p.io_write_bytes), (1000, 2000));
        assert_eq!(p.status.start_ms, Some(412));
        let ps = render_ps(std::slice::from_ref(&p));
        assert!(
            ps.lines().nth(1).unwrap().contains("running (restored)"),
            "{ps}"
        );
        let m = render_metrics(&[p]);
        assert!(
            m.contains("husk_pod_start_seconds{pod=\"p1\"} 0.412\n"),
            "{m}"
        );
        assert!(
            m.contains("husk_pod_vcpu_seconds_total{pod=\"p1\"} 1.2\n"),
            "{m}"
        );
        assert!(
            m.contains("# TYPE husk_pod_io_read_bytes_total counter\n"),
            "{m}"
        );
    }

    #[test]
    fn a_stopped_pod_is_listed_without_process_figures() {
        let p = pod_info(&fake(), Path::new("/pods/p1"), None, &[]);
        assert_eq!(p.uptime_s, None);
        let m = render_metrics(std::slice::from_ref(&p));
        assert!(m.contains("husk_pod_up{pod=\"p1\"} 0\n"));
        assert!(!m.contains("husk_pod_vcpu_seconds_total{"));
        assert!(render_ps(&[p]).contains("stopped"));
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
