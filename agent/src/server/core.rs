//! The agent's operations as plain functions over validated requests; the ttrpc layer in
//! `mod.rs` only converts messages and errors. Containers are created by running this
//! binary's `oci create` in a child process (a fresh single-threaded process is the only
//! safe place to clone a container init from); everything else runs in-process.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};

use husk_protocol::agent::Stdio as StdioFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::reaper::Reaper;
use super::stdio::{ChildEnds, ProcessIo};
use crate::engine::cgroups::{CgroupManager, CgroupV2};
use crate::engine::{container, spec, EngineError};

/// Errors of agent operations; `mod.rs` maps each kind to one ttrpc code.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The request is malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No such container or process.
    #[error("{0} not found")]
    NotFound(String),
    /// The id is taken.
    #[error("{0} already exists")]
    Exists(String),
    /// The operation does not fit the current state.
    #[error("{0}")]
    State(String),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// An I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CoreError {
    let what = what.into();
    move |source| CoreError::Io { what, source }
}

/// Drops container `id`'s pid namespace handle, if a member ever made one (best effort:
/// the mount goes lazily, and a member still running keeps the namespace alive).
fn drop_pid_namespace_handle(id: &str) {
    let path = husk_protocol::shared_pid_ns_path(id);
    if std::path::Path::new(&path).exists() {
        let _ = nix::mount::umount2(path.as_str(), nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&path);
    }
}

/// Whether two nsfs files (a handle, a `/proc/<pid>/ns/*` link) name the same namespace.
fn same_namespace(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Where the agent keeps things and how it runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Root of bundles and engine state.
    pub root: PathBuf,
    /// This binary (for `oci create`).
    pub exe: PathBuf,
    /// Running as the guest's PID 1 (sandbox settings touch the machine).
    pub guest: bool,
}

/// Lifecycle of a container as the agent tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Init waits for start.
    Created,
    /// Started.
    Running,
}

/// A process started by exec.
#[derive(Debug)]
pub struct ExecProcess {
    /// Guest pid.
    pub pid: i32,
    /// Its streams.
    pub io: ProcessIo,
}

/// A live container.
#[derive(Debug)]
pub struct Container {
    /// Id.
    pub id: String,
    /// Init pid.
    pub pid: i32,
    /// cgroup, when cgroup v2 is available.
    pub cgroup: Option<CgroupV2>,
    /// Lifecycle.
    pub state: Mutex<Lifecycle>,
    /// Init's streams.
    pub io: ProcessIo,
    /// Exec processes by exec id.
    pub execs: Mutex<HashMap<String, Arc<ExecProcess>>>,
    /// OOM kills already reported.
    pub oom_seen: Mutex<u64>,
}

/// The agent's state.
#[derive(Debug)]
pub struct AgentCore {
    opts: Options,
    /// The reaper all waits go through.
    pub reaper: Arc<Reaper>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    oom: Mutex<VecDeque<String>>,
    oom_cv: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checks a container or exec id (runc's id rule).
pub fn check_id(what: &str, id: &str) -> Result<(), CoreError> {
    spec::validate_id(id).map_err(|_| CoreError::Invalid(format!("{what} {id:?}")))
}

impl AgentCore {
    /// A new agent with no containers.
    pub fn new(opts: Options, reaper: Arc<Reaper>) -> Self {
        Self {
            opts,
            reaper,
            containers: Mutex::new(HashMap::new()),
            oom: Mutex::new(VecDeque::new()),
            oom_cv: Condvar::new(),
        }
    }

    fn state_root(&self) -> PathBuf {
        self.opts.root.join("state")
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.opts.root.join("bundles").join(id)
    }

    /// The container with this id.
    pub fn get(&self, id: &str) -> Result<Arc<Container>, CoreError> {
        check_id("container id", id)?;
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| CoreError::NotFound(format!("container {id}")))
    }

    /// Creates a container from a spec (JSON) with the given streams.
    pub fn create_container(
        &self,
        id: &str,
        spec_json: &[u8],
        stdio: &StdioFlags,
    ) -> Result<(), CoreError> {
        check_id("container id", id)?;
        if spec_json.len() > husk_protocol::MAX_REQUEST_BYTES {
            return Err(CoreError::Invalid("spec too large".into()));
        }
        let text = std::str::from_utf8(spec_json)
            .map_err(|_| CoreError::Invalid("spec is not UTF-8".into()))?;
        let sp = spec::parse(text).map_err(|e| CoreError::Invalid(e.to_string()))?;
        let root_abs = sp.root().as_ref().is_some_and(|r| r.path().is_absolute());
        if !root_abs {
            return Err(CoreError::Invalid("spec root.path must be absolute".into()));
        }
        if lock(&self.containers).contains_key(id) {
            return Err(CoreError::Exists(format!("container {id}")));
        }
        self.share_pid_namespace(&sp)?;
        let bundle = self.bundle(id);
        let _ = std::fs::remove_dir_all(&bundle);
        std::fs::create_dir_all(&bundle).map_err(io("bundle dir"))?;
        let res = self.spawn_container(id, &bundle, spec_json, stdio);
        if res.is_err() {
            let _ = std::fs::remove_dir_all(&bundle);
        }
        let c = res?;
        lock(&self.containers).insert(id.to_string(), Arc::new(c));
        Ok(())
    }

    fn spawn_container(
        &self,
        id: &str,
        bundle: &Path,
        spec_json: &[u8],
        stdio: &StdioFlags,
    ) -> Result<Container, CoreError> {
        std::fs::write(bundle.join("config.json"), spec_json).map_err(io("config.json"))?;
        let (io_, ends) = if stdio.terminal {
            (ProcessIo::default(), ChildEnds::default())
        } else {
            ProcessIo::pipes(stdio).map_err(io("pipes"))?
        };
        let console = bundle.join("console.sock");
        let listener = if stdio.terminal {
            Some(std::os::unix::net::UnixListener::bind(&console).map_err(io("console socket"))?)
        } else {
            None
        };
        let log = bundle.join("create.log");
        let pid_file = bundle.join("pid");
        let mut cmd = Command::new(&self.opts.exe);
        cmd.arg("oci")
            .arg("--root")
            .arg(self.state_root())
            .arg("--log")
            .arg(&log)
            .arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pid_file);
        if stdio.terminal {
            cmd.arg("--console-socket").arg(&console);
        }
        cmd.arg(id);
        let to = |f: Option<OwnedFd>| f.map(Stdio::from).unwrap_or_else(Stdio::null);
        cmd.stdin(to(ends.stdin))
            .stdout(to(ends.stdout))
            .stderr(to(ends.stderr));
        let child = cmd.spawn().map_err(io("spawning oci create"))?;
        drop(cmd);
        let status = self.reaper.wait(child.id() as i32);
        self.reaper.forget(child.id() as i32);
        if status != 0 {
            let msg = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(CoreError::State(format!(
                "creating container {id}: {}",
                msg.trim()
            )));
        }
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .map_err(io("pid file"))?
            .trim()
            .parse()
            .map_err(|_| CoreError::State("bad pid file".into()))?;
        let io_ = match listener {
            Some(l) => ProcessIo::terminal(receive_master(&l)?).map_err(io("pty"))?,
            None => io_,
        };
        let (st, _) = container::load(&self.state_root(), id)?;
        Ok(Container {
            id: id.to_string(),
            pid,
            cgroup: st.cgroup.map(|dir| CgroupV2 { dir }),
            state: Mutex::new(Lifecycle::Created),
            io: io_,
            execs: Mutex::new(HashMap::new()),
            oom_seen: Mutex::new(0),
        })
    }

    /// Starts a created container; returns the init pid.
    pub fn start_container(&self, id: &str) -> Result<u32, CoreError> {
        let c = self.get(id)?;
        let mut st = lock(&c.state);
        if *st != Lifecycle::Created {
            return Err(CoreError::State(format!(
                "container {id} is already started"
            )));
        }
        container::start_with(&self.state_root(), id, self.reaper.as_ref())?;
        *st = Lifecycle::Running;
        Ok(c.pid as u32)
    }

    fn process_pid(&self, c: &Container, exec_id: &str) -> Result<i32, CoreError> {
        if exec_id.is_empty() {
            return Ok(c.pid);
        }
        check_id("exec id", exec_id)?;
        lock(&c.execs)
            .get(exec_id)
            .map(|e| e.pid)
            .ok_or_else(|| CoreError::NotFound(format!("exec {exec_id} in {}", c.id)))
    }

    /// Runs `f` on the streams of a process.
    pub fn with_io<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&ProcessIo) -> T,
    ) -> Result<T, CoreError> {
        let c = self.get(id)?;
        if exec_id.is_empty() {
            return Ok(f(&c.io));
        }
        check_id("exec id", exec_id)?;
        let e = lock(&c.execs)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| CoreError::NotFound(format!("exec {exec_id} in {id}")))?;
        Ok(f(&e.io))
    }

    /// Blocks until the process exits; returns its status.
    pub fn wait_process(&self, id: &str, exec_id: &str) -> Result<u32, CoreError> {
        let c = self.get(id)?;
        let pid = self.process_pid(&c, exec_id)?;
        Ok(self.reaper.wait(pid))
    }

    /// Sends a signal to a process (or every process of the container).
    pub fn signal_process(
        &self,
        id: &str,
        exec_id: &str,
        sig: u32,
        all: bool,
    ) -> Result<(), CoreError> {
        let c = self.get(id)?;
        let s = i32::try_from(sig)
            .ok()
            .and_then(|n| Signal::try_from(n).ok())
            .ok_or_else(|| CoreError::Invalid(format!("signal {sig}")))?;
        let pid = self.process_pid(&c, exec_id)?;
        if self.reaper.try_status(pid).is_some() {
            return Err(CoreError::State(format!("process {pid} has exited")));
        }
        if all && exec_id.is_empty() {
            if let Some(cg) = &c.cgroup {
                for p in cg.pids().unwrap_or_default() {
                    let _ = nix::sys::signal::kill(Pid::from_raw(p), s);
                }
            }
        }
        nix::sys::signal::kill(Pid::from_raw(pid), s)
            .map_err(|e| CoreError::State(format!("kill {pid}: {e}")))
    }

    /// Removes a container: kills what is left, deletes engine state and the bundle.
    pub fn remove_container(&self, id: &str) -> Result<(), CoreError> {
        let c = self.get(id)?;
        if *lock(&c.state) == Lifecycle::Running && self.reaper.try_status(c.pid).is_none() {
            return Err(CoreError::State(format!("container {id} is running")));
        }
        // A kill that happened since the last poll is reported before the cgroup goes.
        self.check_oom(&c);
        container::delete_with(&self.state_root(), id, true, self.reaper.as_ref())?;
        drop_pid_namespace_handle(id);
        let _ = std::fs::remove_dir_all(self.bundle(id));
        lock(&self.containers).remove(id);
        self.reaper.forget(c.pid);
        for e in lock(&c.execs).values() {
            self.reaper.forget(e.pid);
        }
        Ok(())
    }

    /// A spec that joins the pid namespace under [`husk_protocol::SHARED_PID_NS_DIR`] of
    /// another container of the pod (the shim's rewrite of `shareProcessNamespace`): makes
    /// that handle, a bind mount of the container's `/proc/<init>/ns/pid`, if it is not
    /// there yet. The handle holds the namespace itself, so a recycled pid can never make
    /// a later member join some other process's namespace. Any other pid path is the
    /// engine's to open as it is. Two creates never race to make the same handle: the shim
    /// sends a pod's creates one at a time.
    fn share_pid_namespace(&self, sp: &oci_spec::runtime::Spec) -> Result<(), CoreError> {
        use oci_spec::runtime::LinuxNamespaceType;
        let path = sp
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .and_then(|ns| ns.iter().find(|n| n.typ() == LinuxNamespaceType::Pid))
            .and_then(|n| n.path().clone());
        let Some(path) = path else {
            return Ok(());
        };
        let Ok(rest) = path.strip_prefix(husk_protocol::SHARED_PID_NS_DIR) else {
            return Ok(());
        };
        let owner = rest.to_str().unwrap_or_default();
        check_id("pid namespace owner", owner)?;
        let c = self.get(owner)?;
        if self.reaper.try_status(c.pid).is_some() {
            return Err(CoreError::State(format!(
                "container {owner} has exited: its pid namespace cannot be joined"
            )));
        }
        let src = format!("/proc/{}/ns/pid", c.pid);
        if path.exists() {
            if same_namespace(&path, Path::new(&src)) {
                return Ok(());
            }
            // A handle an earlier agent, or an earlier container of this id, left: it holds
            // some other namespace (joining a dead one fails clone with ENOMEM).
            drop_pid_namespace_handle(owner);
        }
        std::fs::create_dir_all(husk_protocol::SHARED_PID_NS_DIR).map_err(io("pidns dir"))?;
        std::fs::write(&path, b"").map_err(io("pidns handle"))?;
        nix::mount::mount(
            Some(src.as_str()),
            &path,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| {
            let _ = std::fs::remove_file(&path);
            CoreError::Io {
                what: format!("bind {src}"),
                source: e.into(),
            }
        })
    }

    /// The container's cgroup, or an error saying there is none.
    pub fn cgroup(&self, id: &str) -> Result<CgroupV2, CoreError> {
        self.get(id)?
            .cgroup
            .clone()
            .ok_or_else(|| CoreError::State(format!("container {id} has no cgroup v2")))
    }

    /// Applies an OCI `linux.resources` object.
    pub fn update_container(&self, id: &str, json: &[u8]) -> Result<(), CoreError> {
        let r: oci_spec::runtime::LinuxResources = serde_json::from_slice(json)
            .map_err(|e| CoreError::Invalid(format!("resources: {e}")))?;
        let cg = self.cgroup(id)?;
        cg.set(&r).map_err(EngineError::from)?;
        Ok(())
    }

    /// Guest pids of the container's processes.
    pub fn list_processes(&self, id: &str) -> Result<Vec<u32>, CoreError> {
        let c = self.get(id)?;
        Ok(match &c.cgroup {
            Some(cg) => cg.pids().map_err(EngineError::from)?,
            None => vec![c.pid],
        }
        .into_iter()
        .map(|p| p as u32)
        .collect())
    }

    /// Checks every container's OOM counter; queues an event per new kill.
    pub fn poll_oom(&self) {
        let cs: Vec<Arc<Container>> = lock(&self.containers).values().cloned().collect();
        for c in cs {
            self.check_oom(&c);
        }
    }

    fn check_oom(&self, c: &Container) {
        let Some(cg) = &c.cgroup else { return };
        let n = cg.oom_kills();
        let mut seen = lock(&c.oom_seen);
        if n > *seen {
            *seen = n;
            lock(&self.oom).push_back(c.id.clone());
            self.oom_cv.notify_all();
        }
    }

    /// Blocks until a container is OOM-killed; returns its id.
    pub fn next_oom(&self) -> String {
        let mut q = lock(&self.oom);
        loop {
            if let Some(id) = q.pop_front() {
                return id;
            }
            q = self.oom_cv.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Registers an exec'd process (see `exec.rs`).
    pub fn add_exec(&self, id: &str, exec_id: &str, e: ExecProcess) -> Result<(), CoreError> {
        let c = self.get(id)?;
        let mut m = lock(&c.execs);
        if m.contains_key(exec_id) {
            return Err(CoreError::Exists(format!("exec {exec_id} in {id}")));
        }
        m.insert(exec_id.to_string(), Arc::new(e));
        Ok(())
    }

    /// The options the agent runs with.
    pub fn options(&self) -> &Options {
        &self.opts
    }
}

/// Receives the pty master the container init sends over the console socket.
pub(crate) fn receive_master(
    l: &std::os::unix::net::UnixListener,
) -> Result<std::fs::File, CoreError> {
    use std::os::fd::{AsRawFd, FromRawFd};
    l.set_nonblocking(true).map_err(io("console socket"))?;
    let (s, _) = l.accept().map_err(io("console accept"))?;
    s.set_nonblocking(false).map_err(io("console socket"))?;
    let mut buf = [0u8; 64];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        s.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::empty(),
    )
    .map_err(|e| CoreError::State(format!("console recvmsg: {e}")))?;
    for c in msg
        .cmsgs()
        .map_err(|e| CoreError::State(format!("console cmsg: {e}")))?
    {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: SCM_RIGHTS delivered a new descriptor that this process now owns.
                return Ok(unsafe { std::fs::File::from_raw_fd(*fd) });
            }
        }
    }
    let _ = (&mut &s).read(&mut buf);
    Err(CoreError::State("console socket sent no pty".into()))
}
