//! Pod-wide operations and the small ones that read the machine: sandbox settings, guest
//! details, stats, freeze, exec.

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use husk_protocol::agent::{
    ConfigureNetworkRequest, CreateSandboxRequest, GuestDetailsResponse, StatsResponse,
    Stdio as StdioFlags,
};

use super::core::{check_id, AgentCore, CoreError, ExecProcess, Options};
use super::stdio::ProcessIo;
use crate::engine::cgroups::{CgroupManager, CgroupV2};
use crate::engine::EngineError;

/// Where the pod's shared directory is mounted in the guest.
pub const SHARED_DIR: &str = "/run/husk/shared";

fn valid_hostname(h: &str) -> bool {
    h.len() <= 64
        && h.split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

/// Checks and applies the pod settings. On a host (tests) only the checks run: the
/// agent must not rename or re-time the machine it runs on.
pub fn create_sandbox(o: &Options, r: &CreateSandboxRequest) -> Result<(), CoreError> {
    if !r.pod_id.is_empty() {
        check_id("pod id", &r.pod_id)?;
    }
    if !r.hostname.is_empty() && !valid_hostname(&r.hostname) {
        return Err(CoreError::Invalid(format!("hostname {:?}", r.hostname)));
    }
    for d in &r.dns {
        if d.parse::<std::net::IpAddr>().is_err() {
            return Err(CoreError::Invalid(format!("dns server {d:?}")));
        }
    }
    if !r.shared_fs_tag.is_empty() && !r.shared_fs_tag.chars().all(|c| c.is_ascii_graphic()) {
        return Err(CoreError::Invalid("shared fs tag".into()));
    }
    super::entropy::check(&r.entropy).map_err(|e| CoreError::Invalid(e.to_string()))?;
    if !o.guest {
        return Ok(());
    }
    let state = |what: &str, e: String| CoreError::State(format!("{what}: {e}"));
    if !r.hostname.is_empty() {
        nix::unistd::sethostname(&r.hostname).map_err(|e| state("sethostname", e.to_string()))?;
    }
    if r.time_unix_nanos > 0 {
        let ts = nix::sys::time::TimeSpec::new(
            r.time_unix_nanos / 1_000_000_000,
            r.time_unix_nanos % 1_000_000_000,
        );
        nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
            .map_err(|e| state("clock_settime", e.to_string()))?;
    }
    // After a restore from a template the RNG is the template's: reseed it before any
    // container runs.
    super::entropy::add_and_reseed(&r.entropy).map_err(|e| CoreError::State(e.to_string()))?;
    if !r.dns.is_empty() {
        let text: String = r.dns.iter().map(|d| format!("nameserver {d}\n")).collect();
        crate::net::files::write_no_follow(std::path::Path::new("/etc/resolv.conf"), &text)
            .map_err(|e| state("resolv.conf", e.to_string()))?;
    }
    if !r.shared_fs_tag.is_empty() {
        std::fs::create_dir_all(SHARED_DIR).map_err(|e| state(SHARED_DIR, e.to_string()))?;
        nix::mount::mount(
            Some(r.shared_fs_tag.as_str()),
            SHARED_DIR,
            Some("virtiofs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| state("mount shared fs", e.to_string()))?;
    }
    Ok(())
}

/// Validates the pod's network and, in the guest, applies it to the root network
/// namespace (shared by every container of the pod). A malformed request is refused.
pub fn configure_network(o: &Options, r: &ConfigureNetworkRequest) -> Result<(), CoreError> {
    let plan = crate::net::parse(r).map_err(|e| CoreError::Invalid(e.to_string()))?;
    if !o.guest {
        return Ok(());
    }
    crate::net::netlink::apply(
        &plan,
        std::path::Path::new("/sys/class/net"),
        std::path::Path::new("/etc"),
    )
    .map_err(|e| CoreError::State(e.to_string()))
}

/// Kernel version, memory and CPUs of the machine the agent runs on.
pub fn guest_details() -> GuestDetailsResponse {
    let mut r = GuestDetailsResponse::new();
    r.kernel_version = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    r.mem_total_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    r.cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    r.agent_version = env!("CARGO_PKG_VERSION").into();
    r
}

/// cgroup counters as the API reports them.
pub fn stats(cg: &CgroupV2) -> StatsResponse {
    let s = cg.stats().unwrap_or_default();
    let mut r = StatsResponse::new();
    r.cpu_usage_usec = s.cpu_usage_usec;
    r.cpu_user_usec = cg.keyed("cpu.stat", "user_usec");
    r.cpu_system_usec = cg.keyed("cpu.stat", "system_usec");
    r.memory_usage = s.memory_current;
    r.memory_limit = s.memory_limit;
    r.pids_current = s.pids_current;
    r.pids_limit = std::fs::read_to_string(cg.dir.join("pids.max"))
        .ok()
        .map(|v| v.trim().parse().unwrap_or(u64::MAX))
        .unwrap_or(0);
    r.oom_kills = s.oom_kills;
    r
}

/// Pause (true) or resume a container with the cgroup freezer.
pub fn freeze(core: &AgentCore, id: &str, frozen: bool) -> Result<(), CoreError> {
    let cg = core.cgroup(id)?;
    cg.freeze(frozen).map_err(EngineError::from)?;
    Ok(())
}

/// Starts a process in a running container with `oci exec`; returns its guest pid.
pub fn exec_process(
    core: &AgentCore,
    id: &str,
    exec_id: &str,
    process_json: &[u8],
    stdio: &StdioFlags,
) -> Result<u32, CoreError> {
    let c = core.get(id)?;
    check_id("exec id", exec_id)?;
    if process_json.len() > husk_protocol::MAX_REQUEST_BYTES {
        return Err(CoreError::Invalid("process too large".into()));
    }
    let p: oci_spec::runtime::Process = serde_json::from_slice(process_json)
        .map_err(|e| CoreError::Invalid(format!("process: {e}")))?;
    if p.args().as_ref().is_none_or(|a| a.is_empty()) || !p.cwd().is_absolute() {
        return Err(CoreError::Invalid(
            "process needs args and an absolute cwd".into(),
        ));
    }
    if stdio.terminal != p.terminal().unwrap_or(false) {
        return Err(CoreError::Invalid(
            "stdio.terminal and process.terminal disagree".into(),
        ));
    }
    if c.execs
        .lock()
        .map(|m| m.contains_key(exec_id))
        .unwrap_or(true)
    {
        return Err(CoreError::Exists(format!("exec {exec_id} in {id}")));
    }
    let o = core.options();
    let dir = o
        .root
        .join("bundles")
        .join(id)
        .join(format!("exec-{exec_id}"));
    std::fs::create_dir_all(&dir).map_err(|e| CoreError::Io {
        what: "exec dir".into(),
        source: e,
    })?;
    let pjson = dir.join("process.json");
    let pid_file = dir.join("pid");
    let log = dir.join("log");
    std::fs::write(&pjson, process_json).map_err(|e| CoreError::Io {
        what: "process.json".into(),
        source: e,
    })?;
    let (io, ends) = if stdio.terminal {
        (ProcessIo::default(), Default::default())
    } else {
        ProcessIo::pipes(stdio).map_err(|e| CoreError::Io {
            what: "pipes".into(),
            source: e,
        })?
    };
    let console = dir.join("console.sock");
    let listener = if stdio.terminal {
        Some(
            std::os::unix::net::UnixListener::bind(&console).map_err(|e| CoreError::Io {
                what: "console socket".into(),
                source: e,
            })?,
        )
    } else {
        None
    };
    let to = |f: Option<OwnedFd>| f.map(Stdio::from).unwrap_or_else(Stdio::null);
    let mut cmd = Command::new(&o.exe);
    cmd.arg("oci")
        .arg("--root")
        .arg(o.root.join("state"))
        .arg("--log")
        .arg(&log)
        .arg("exec")
        .arg("--detach")
        .arg("--process")
        .arg(&pjson)
        .arg("--pid-file")
        .arg(&pid_file);
    if stdio.terminal {
        cmd.arg("--console-socket").arg(&console);
    }
    let child = cmd
        .arg(id)
        .stdin(to(ends.stdin))
        .stdout(to(ends.stdout))
        .stderr(to(ends.stderr))
        .spawn()
        .map_err(|e| CoreError::Io {
            what: "spawning oci exec".into(),
            source: e,
        })?;
    let status = core.reaper.wait(child.id() as i32);
    core.reaper.forget(child.id() as i32);
    let result = if status != 0 {
        Err(CoreError::State(format!(
            "exec in {id}: {}",
            std::fs::read_to_string(&log).unwrap_or_default().trim()
        )))
    } else {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .ok_or_else(|| CoreError::State("exec wrote no pid".into()))
    };
    let io = match (&result, listener) {
        (Ok(_), Some(l)) => {
            ProcessIo::terminal(super::core::receive_master(&l)?).map_err(|e| CoreError::Io {
                what: "pty".into(),
                source: e,
            })?
        }
        _ => io,
    };
    let _ = std::fs::remove_dir_all(&dir);
    let pid = result?;
    core.add_exec(id, exec_id, ExecProcess { pid, io })?;
    Ok(pid as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Options {
        Options {
            root: "/nonexistent".into(),
            exe: "/bin/false".into(),
            guest: false,
        }
    }

    #[test]
    fn sandbox_requests_are_validated() {
        let mut r = CreateSandboxRequest::new();
        r.hostname = "pod-1.example".into();
        r.dns = vec!["10.0.0.1".into(), "::1".into()];
        assert!(create_sandbox(&host(), &r).is_ok());
        for bad in ["", "a..b", "bad_name", &"x".repeat(70)] {
            let mut r = r.clone();
            r.hostname = bad.into();
            if !bad.is_empty() {
                assert!(create_sandbox(&host(), &r).is_err(), "{bad}");
            }
        }
        let mut r2 = r.clone();
        r2.dns = vec!["not-an-ip".into()];
        assert!(create_sandbox(&host(), &r2).is_err());
        let mut r3 = r.clone();
        r3.pod_id = "../x".into();
        assert!(create_sandbox(&host(), &r3).is_err());
        let mut r4 = r;
        r4.entropy = vec![1; super::super::entropy::MAX_ENTROPY_BYTES];
        assert!(create_sandbox(&host(), &r4).is_ok());
        r4.entropy.push(1);
        let e = create_sandbox(&host(), &r4).unwrap_err();
        assert!(matches!(e, CoreError::Invalid(_)), "{e}");
    }

    #[test]
    fn guest_details_describe_this_machine() {
        let d = guest_details();
        assert!(!d.kernel_version.is_empty());
        assert!(d.mem_total_bytes > 0);
        assert!(d.cpus >= 1);
    }
}
