//! `exec`: a new process inside a running container: its namespaces joined from
//! `/proc/<init>/ns/*`, its cgroup, and the container's seccomp profile, with the user,
//! capabilities, env and cwd of the given OCI process.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Process};

use super::cgroups::{CgroupManager, CgroupV2};
use super::container::{self, build_init, CreateOpts};
use super::process::{self, InitConfig};
use super::state::Status;
use super::{spec, EngineError};

/// The `/proc/<pid>/ns` name and clone flag of a namespace type, in join order (user
/// first: it grants the capabilities the other joins need).
pub const JOIN_ORDER: &[(LinuxNamespaceType, &str, CloneFlags)] = &[
    (LinuxNamespaceType::User, "user", CloneFlags::CLONE_NEWUSER),
    (LinuxNamespaceType::Ipc, "ipc", CloneFlags::CLONE_NEWIPC),
    (LinuxNamespaceType::Uts, "uts", CloneFlags::CLONE_NEWUTS),
    (LinuxNamespaceType::Network, "net", CloneFlags::CLONE_NEWNET),
    (
        LinuxNamespaceType::Cgroup,
        "cgroup",
        CloneFlags::CLONE_NEWCGROUP,
    ),
    (LinuxNamespaceType::Mount, "mnt", CloneFlags::CLONE_NEWNS),
];

/// Options of `exec`.
#[derive(Debug, Clone, Default)]
pub struct ExecOpts {
    /// State root.
    pub root: PathBuf,
    /// Container id.
    pub id: String,
    /// The process to run.
    pub process: Process,
    /// Where to write its pid.
    pub pid_file: Option<PathBuf>,
    /// Console socket for a terminal.
    pub console_socket: Option<PathBuf>,
}

/// Starts the process; returns its host pid. The caller reaps it.
pub fn exec(o: &ExecOpts) -> Result<Pid, EngineError> {
    let (st, _) = container::load(&o.root, &o.id)?;
    if st.status != Status::Running && st.status != Status::Created {
        return Err(EngineError::WrongState {
            id: o.id.clone(),
            status: st.status,
            op: "exec",
        });
    }
    let mut sp = spec::load(&st.bundle)?;
    if o.process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(EngineError::Usage("process.args is empty".into()));
    }
    sp.set_process(Some(o.process.clone()));
    let copts = CreateOpts {
        root: o.root.clone(),
        id: o.id.clone(),
        bundle: st.bundle.clone(),
        console_socket: o.console_socket.clone(),
        ..Default::default()
    };
    let mut cfg = build_init(&copts, &sp, &st.rootfs, None)?;
    let kinds: Vec<LinuxNamespaceType> = sp
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
        .iter()
        .map(|n| n.typ())
        .collect();
    cfg.join = JOIN_ORDER
        .iter()
        .filter(|(t, _, _)| kinds.contains(t))
        .map(|(_, name, flag)| (*flag, ns_path(st.pid, name)))
        .collect();
    cfg.new_userns = false;
    cfg.new_cgroupns = false;
    if kinds.contains(&LinuxNamespaceType::Pid) {
        let f = std::fs::File::open(ns_path(st.pid, "pid"))
            .map_err(|e| EngineError::Io(format!("pid namespace of {}: {e}", st.pid)))?;
        nix::sched::setns(&f, CloneFlags::CLONE_NEWPID)
            .map_err(|e| EngineError::Io(format!("setns pid: {e}")))?;
    }
    let (mut parent, child) = UnixStream::pair().map_err(|e| EngineError::Io(e.to_string()))?;
    let mut stack = vec![0u8; 1 << 20];
    let mut cfg = Some(cfg);
    let mut child = Some(child);
    let cb = Box::new(move || -> isize {
        match (cfg.take(), child.take()) {
            (Some(c), Some(s)) => run_exec(c, s),
            _ => 1,
        }
    });
    // SAFETY: called from the single-threaded CLI process; the child execs or _exits.
    let pid =
        unsafe { nix::sched::clone(cb, &mut stack, CloneFlags::empty(), Some(libc::SIGCHLD)) }
            .map_err(|e| EngineError::Io(format!("clone: {e}")))?;
    if let Some(dir) = &st.cgroup {
        let _ = CgroupV2 { dir: dir.clone() }.apply(pid.as_raw());
    }
    let res = parent
        .write_all(b"G")
        .map_err(|e| EngineError::Io(format!("sync: {e}")))
        .and_then(|_| {
            // The socket closes on a successful exec (CLOEXEC); an error arrives as text.
            let mut msg = String::new();
            let _ = parent.read_to_string(&mut msg);
            match msg.strip_prefix('E') {
                Some(m) => Err(EngineError::Init(m.to_string())),
                None => Ok(()),
            }
        });
    if let Err(e) = res {
        let _ = nix::sys::wait::waitpid(pid, None);
        return Err(e);
    }
    if let Some(p) = &o.pid_file {
        std::fs::write(p, pid.as_raw().to_string())
            .map_err(|e| EngineError::Io(format!("pid file: {e}")))?;
    }
    Ok(pid)
}

fn ns_path(pid: i32, name: &str) -> PathBuf {
    Path::new("/proc")
        .join(pid.to_string())
        .join("ns")
        .join(name)
}

/// The exec child: wait for the parent, join namespaces, drop privileges, exec.
fn run_exec(cfg: InitConfig, mut sync: UnixStream) -> ! {
    let mut go = [0u8; 1];
    let r = sync
        .read_exact(&mut go)
        .map_err(|e| format!("waiting for parent: {e}"))
        .and_then(|_| process::join_and_exec(cfg).map_err(|e| e.to_string()));
    if let Err(e) = r {
        let _ = sync.write_all(format!("E{e}").as_bytes());
    }
    // SAFETY: _exit ends the forked child without the parent's atexit state.
    unsafe { libc::_exit(127) }
}
