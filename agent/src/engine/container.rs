//! The container lifecycle, runc's way: `create` clones the init process into its
//! namespaces and leaves it blocked on `exec.fifo`; `start` opens the fifo; `state`,
//! `kill`, `delete` work from the saved state.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::caps::CapSets;
use super::cgroups::{self, CgroupManager, CgroupV2};
use super::process::{self, InitConfig};
use super::rootfs::RootfsPlan;
use super::state::{self, State, Status};
use super::{devices, hooks, seccomp, spec, EngineError};

/// The state handed to hooks on stdin (the runtime spec's state object).
pub fn hook_state(sp: &Spec, id: &str, status: Status, pid: i32, bundle: &Path) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "ociVersion": sp.version(),
        "id": id,
        "status": status,
        "pid": pid,
        "bundle": bundle,
        "annotations": sp.annotations().clone().unwrap_or_default(),
    }))
    .unwrap_or_default()
}

fn hook_list(
    sp: &Spec,
    pick: impl Fn(&oci_spec::runtime::Hooks) -> Option<Vec<oci_spec::runtime::Hook>>,
) -> Vec<oci_spec::runtime::Hook> {
    sp.hooks().as_ref().and_then(pick).unwrap_or_default()
}

/// Options of `create` (runc's flags).
#[derive(Debug, Clone, Default)]
pub struct CreateOpts {
    /// State root directory (runc `--root`).
    pub root: PathBuf,
    /// Container id.
    pub id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Where to write the init pid.
    pub pid_file: Option<PathBuf>,
    /// Unix socket to send the pty master to.
    pub console_socket: Option<PathBuf>,
    /// Extra fds passed through (3..3+n).
    pub preserve_fds: i32,
    /// chroot instead of pivot_root.
    pub no_pivot: bool,
}

fn ns_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Time => CloneFlags::empty(),
    }
}

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |e| EngineError::Io(format!("{what}: {e}"))
}

/// The state directory of a container.
pub fn container_dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

/// A created container, as `create` leaves it.
#[derive(Debug)]
pub struct Created {
    /// The saved state.
    pub state: State,
    /// The state directory.
    pub dir: PathBuf,
}

/// Creates the container: validates the bundle, clones init into its namespaces, sets up
/// cgroups and id maps, waits until init is ready to exec. On failure nothing is left.
pub fn create(o: &CreateOpts) -> Result<Created, EngineError> {
    spec::validate_id(&o.id)?;
    let bundle = std::fs::canonicalize(&o.bundle).map_err(io_err("bundle"))?;
    let sp = spec::load(&bundle)?;
    let rootfs = std::fs::canonicalize(spec::rootfs(&sp, &bundle)?).map_err(io_err("rootfs"))?;
    std::fs::create_dir_all(&o.root).map_err(io_err("state root"))?;
    let dir = container_dir(&o.root, &o.id);
    match std::fs::create_dir(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(EngineError::Exists(o.id.clone()))
        }
        r => r.map_err(io_err("state dir"))?,
    }
    let res = create_in(o, &sp, &bundle, &rootfs, &dir);
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    res
}

fn create_in(
    o: &CreateOpts,
    sp: &Spec,
    bundle: &Path,
    rootfs: &Path,
    dir: &Path,
) -> Result<Created, EngineError> {
    let fifo = dir.join("exec.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o622))
        .map_err(|e| EngineError::Io(format!("mkfifo: {e}")))?;
    // mkfifo honours the umask; a user-namespaced root must be able to open it for writing.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o622))
        .map_err(io_err("chmod exec.fifo"))?;
    let dirfd = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| EngineError::Io(format!("open {}: {e}", dir.display())))?;
    let cfg = build_init(o, sp, rootfs, Some(dirfd))?;
    let (pid, cg) = spawn(sp, &o.id, bundle, cfg)?;
    let st = State {
        oci_version: sp.version().clone(),
        id: o.id.clone(),
        pid: pid.as_raw(),
        status: Status::Created,
        bundle: bundle.to_path_buf(),
        rootfs: rootfs.to_path_buf(),
        created: state::rfc3339(std::time::SystemTime::now()),
        owner: String::new(),
        annotations: sp.annotations().clone().unwrap_or_default(),
        init_start_time: state::proc_start_time(pid.as_raw()),
        cgroup: cg.map(|c| c.dir),
    };
    state::save(dir, &st)?;
    if let Some(p) = &o.pid_file {
        std::fs::write(p, pid.as_raw().to_string()).map_err(io_err("pid file"))?;
    }
    Ok(Created {
        state: st,
        dir: dir.to_path_buf(),
    })
}

/// Turns the spec into the init process's configuration.
pub fn build_init(
    o: &CreateOpts,
    sp: &Spec,
    rootfs: &Path,
    state_dir: Option<std::os::fd::OwnedFd>,
) -> Result<InitConfig, EngineError> {
    let linux = sp.linux().clone().unwrap_or_default();
    let proc_ = sp.process().clone().unwrap_or_default();
    let ns = linux.namespaces().clone().unwrap_or_default();
    let new_userns = ns
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none());
    let mut plan = RootfsPlan::from_spec(sp, rootfs.to_path_buf(), new_userns)?;
    plan.no_pivot = o.no_pivot;
    let user = proc_.user();
    let seccomp = match linux.seccomp() {
        Some(s) if seccomp::applies(s) => {
            Some((seccomp::compile(s)?, s.flags().clone().unwrap_or_default()))
        }
        _ => None,
    };
    let console = match (&o.console_socket, proc_.terminal().unwrap_or(false)) {
        (Some(p), true) => Some(UnixStream::connect(p).map_err(io_err("console socket"))?),
        (None, true) => return Err(EngineError::Usage("terminal needs --console-socket".into())),
        _ => None,
    };
    Ok(InitConfig {
        rootfs: plan,
        hostname: sp.hostname().clone().filter(|h| !h.is_empty()),
        domainname: sp.domainname().clone().filter(|h| !h.is_empty()),
        join: ns
            .iter()
            .filter(|n| n.typ() != LinuxNamespaceType::Pid)
            .filter_map(|n| n.path().clone().map(|p| (ns_flag(n.typ()), p)))
            .collect(),
        new_userns,
        new_cgroupns: ns
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Cgroup && n.path().is_none()),
        new_netns: ns
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Network && n.path().is_none()),
        sysctl: linux
            .sysctl()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        rlimits: proc_.rlimits().clone().unwrap_or_default(),
        args: proc_.args().clone().unwrap_or_default(),
        env: proc_.env().clone().unwrap_or_default(),
        cwd: proc_.cwd().clone(),
        uid: user.uid(),
        gid: user.gid(),
        groups: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask().unwrap_or(0o022),
        caps: CapSets::from_spec(proc_.capabilities().as_ref())?,
        no_new_privs: proc_.no_new_privileges().unwrap_or(false),
        seccomp,
        state_dir,
        preserve_fds: o.preserve_fds,
        create_container_hooks: hook_list(sp, |h| h.create_container().clone()),
        start_container_hooks: hook_list(sp, |h| h.start_container().clone()),
        hook_state: hook_state(sp, &o.id, Status::Created, 0, &o.bundle),
        console,
    })
}

fn write_id_maps(sp: &Spec, pid: Pid) -> Result<(), EngineError> {
    let linux = sp.linux().clone().unwrap_or_default();
    let fmt = |m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        m.iter()
            .flatten()
            .map(|x| format!("{} {} {}\n", x.container_id(), x.host_id(), x.size()))
            .collect::<String>()
    };
    for (file, maps) in [
        ("uid_map", fmt(linux.uid_mappings())),
        ("gid_map", fmt(linux.gid_mappings())),
    ] {
        let p = format!("/proc/{pid}/{file}");
        std::fs::write(&p, maps).map_err(|e| EngineError::Io(format!("{p}: {e}")))?;
    }
    Ok(())
}

/// Clones the init process and brings it to "ready to exec". Returns its pid and cgroup.
pub fn spawn(
    sp: &Spec,
    id: &str,
    bundle: &Path,
    cfg: InitConfig,
) -> Result<(Pid, Option<CgroupV2>), EngineError> {
    let linux = sp.linux().clone().unwrap_or_default();
    let ns = linux.namespaces().clone().unwrap_or_default();
    let mut flags = CloneFlags::empty();
    for n in &ns {
        match n.path() {
            // The cgroup namespace is made by init after it joined its cgroup, so that
            // the namespace's root is the container's cgroup (as runc does).
            None if n.typ() == LinuxNamespaceType::Cgroup => {}
            None => flags |= ns_flag(n.typ()),
            Some(p) if n.typ() == LinuxNamespaceType::Pid => {
                // Joining a pid namespace applies to children: join it here, before clone.
                let f = std::fs::File::open(p).map_err(io_err("pid namespace"))?;
                nix::sched::setns(&f, CloneFlags::CLONE_NEWPID)
                    .map_err(|e| EngineError::Io(format!("setns {}: {e}", p.display())))?;
            }
            Some(_) => {}
        }
    }
    let resources = linux.resources().clone().filter(|r| {
        r.memory().is_some()
            || r.cpu().is_some()
            || r.pids().is_some()
            || r.block_io().is_some()
            || r.unified().as_ref().is_some_and(|u| !u.is_empty())
    });
    let cg = if cgroups::v2_available() {
        Some(CgroupV2 {
            dir: cgroups::dir_for(linux.cgroups_path().as_deref(), id),
        })
    } else if resources.is_some() {
        return Err(cgroups::CgroupError::NoV2.into());
    } else {
        None
    };
    let (mut parent, child) = UnixStream::pair().map_err(io_err("socketpair"))?;
    let mut stack = vec![0u8; 1 << 20];
    let mut cfg = Some(cfg);
    let mut child = Some(child);
    let cb = Box::new(move || -> isize {
        match (cfg.take(), child.take()) {
            (Some(c), Some(s)) => process::run_init(c, s),
            _ => 1,
        }
    });
    // SAFETY: the CLI is single-threaded when it clones (the agent server runs it as a
    // separate process), so the child may allocate; the child never returns into the
    // parent's frames: run_init execs or _exits.
    let pid = unsafe { nix::sched::clone(cb, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(|e| EngineError::Io(format!("clone: {e}")))?;
    let fail = |e: EngineError| {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
        e
    };
    let prepare = || -> Result<(), EngineError> {
        if flags.contains(CloneFlags::CLONE_NEWUSER) {
            write_id_maps(sp, pid)?;
        }
        if let Some(cg) = &cg {
            cg.apply(pid.as_raw())?;
            if let Some(r) = &resources {
                cg.set(r)?;
            }
            // The device cgroup (an eBPF program on v2), as runc: the spec's rules, then
            // the devices every container may use.
            let spec_rules = linux
                .resources()
                .as_ref()
                .and_then(|r| r.devices().clone())
                .unwrap_or_default();
            let mut rules = devices::rules(&spec_rules)?;
            rules.extend(devices::always_allowed());
            devices::apply(&cg.dir, &rules)?;
        }
        if let Some(adj) = sp.process().as_ref().and_then(|p| p.oom_score_adj()) {
            let p = format!("/proc/{pid}/oom_score_adj");
            std::fs::write(&p, adj.to_string())
                .map_err(|e| EngineError::Io(format!("{p}: {e}")))?;
        }
        // createRuntime (and the older prestart) hooks: namespaces exist, the rootfs is
        // not yet set up, init waits.
        let state = hook_state(sp, id, Status::Creating, pid.as_raw(), bundle);
        let mut list = hook_list(sp, |h| h.prestart().clone());
        list.extend(hook_list(sp, |h| h.create_runtime().clone()));
        hooks::run(&list, &state, &hooks::WaitPid)?;
        Ok(())
    };
    if let Err(e) = prepare() {
        if let Some(cg) = &cg {
            let _ = fail(EngineError::Io(String::new()));
            let _ = cg.destroy();
        }
        return Err(fail(e));
    }
    parent
        .write_all(b"G")
        .map_err(|e| fail(io_err("sync")(e)))?;
    let mut msg = Vec::new();
    let mut b = [0u8; 1];
    let n = parent.read(&mut b).map_err(|e| fail(io_err("sync")(e)))?;
    if n == 1 && b[0] == b'R' {
        return Ok((pid, cg));
    }
    let _ = parent.read_to_end(&mut msg);
    let text = String::from_utf8_lossy(&msg).to_string();
    let e = fail(EngineError::Init(if n == 0 {
        "init process died before it was ready".into()
    } else {
        text
    }));
    if let Some(cg) = &cg {
        let _ = cg.destroy();
    }
    Err(e)
}

/// Loads a container's state and refreshes its status from the kernel.
pub fn load(root: &Path, id: &str) -> Result<(State, PathBuf), EngineError> {
    spec::validate_id(id)?;
    let dir = container_dir(root, id);
    if !dir.exists() {
        return Err(EngineError::NotFound(id.to_string()));
    }
    let mut st = state::load(&dir)?;
    st.status = refresh(&st, &dir);
    Ok((st, dir))
}

fn refresh(st: &State, dir: &Path) -> Status {
    let alive = st.pid > 0
        && st.init_start_time.is_some()
        && state::proc_start_time(st.pid) == st.init_start_time;
    if !alive {
        return Status::Stopped;
    }
    if dir.join("exec.fifo").exists() {
        return Status::Created;
    }
    let frozen = st
        .cgroup
        .as_ref()
        .and_then(|c| std::fs::read_to_string(c.join("cgroup.freeze")).ok())
        .is_some_and(|s| s.trim() == "1");
    if frozen {
        Status::Paused
    } else {
        Status::Running
    }
}

/// Releases a created container's init to exec the user process.
pub fn start(root: &Path, id: &str) -> Result<State, EngineError> {
    start_with(root, id, &hooks::WaitPid)
}

/// `start`, with poststart hooks waited for through `w`.
pub fn start_with(root: &Path, id: &str, w: &dyn hooks::Waiter) -> Result<State, EngineError> {
    let (mut st, dir) = load(root, id)?;
    if st.status != Status::Created {
        return Err(EngineError::WrongState {
            id: id.into(),
            status: st.status,
            op: "start",
        });
    }
    let fifo = dir.join("exec.fifo");
    let released = release_init(&fifo, &st);
    let _ = std::fs::remove_file(&fifo);
    released?;
    st.status = Status::Running;
    state::save(&dir, &st)?;
    if let Ok(sp) = spec::load(&st.bundle) {
        let list = hook_list(&sp, |h| h.poststart().clone());
        let state = hook_state(&sp, id, Status::Running, st.pid, &st.bundle);
        if let Err(e) = hooks::run(&list, &state, w) {
            eprintln!("husk-agent: poststart: {e}");
        }
    }
    Ok(st)
}

/// Opens the read end of `exec.fifo` without blocking and waits for init's byte, giving
/// up if init dies first (so `start` never hangs on a dead container).
fn release_init(fifo: &Path, st: &State) -> Result<(), EngineError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
        .map_err(io_err("exec.fifo"))?;
    loop {
        let mut b = [0u8; 1];
        match f.read(&mut b) {
            Ok(1) => return Ok(()),
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
                return Err(io_err("exec.fifo")(e))
            }
            _ => {}
        }
        if state::proc_start_time(st.pid) != st.init_start_time {
            return Err(EngineError::Init("init exited before start".into()));
        }
        let mut pfd = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&f),
            nix::poll::PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(20u8));
    }
}

/// Freezes (pause) or thaws (resume) a running container through its cgroup.
pub fn pause(root: &Path, id: &str, frozen: bool) -> Result<(), EngineError> {
    let (st, _) = load(root, id)?;
    let want = if frozen {
        Status::Running
    } else {
        Status::Paused
    };
    if st.status != want {
        return Err(EngineError::WrongState {
            id: id.into(),
            status: st.status,
            op: if frozen { "pause" } else { "resume" },
        });
    }
    let dir = st.cgroup.ok_or(cgroups::CgroupError::NoV2)?;
    CgroupV2 { dir }.freeze(frozen)?;
    Ok(())
}

/// Sends a signal to the init process.
pub fn kill(root: &Path, id: &str, sig: Signal, all: bool) -> Result<(), EngineError> {
    let (st, _) = load(root, id)?;
    if st.status == Status::Stopped {
        return Err(EngineError::WrongState {
            id: id.into(),
            status: st.status,
            op: "kill",
        });
    }
    if all {
        if let Some(c) = &st.cgroup {
            let cg = CgroupV2 { dir: c.clone() };
            for p in cg.pids().unwrap_or_default() {
                let _ = nix::sys::signal::kill(Pid::from_raw(p), sig);
            }
        }
    }
    nix::sys::signal::kill(Pid::from_raw(st.pid), sig)
        .map_err(|e| EngineError::Io(format!("kill {}: {e}", st.pid)))
}

/// Removes a stopped container (or kills it first with `force`).
pub fn delete(root: &Path, id: &str, force: bool) -> Result<(), EngineError> {
    delete_with(root, id, force, &hooks::WaitPid)
}

/// `delete`, with poststop hooks waited for through `w`.
pub fn delete_with(
    root: &Path,
    id: &str,
    force: bool,
    w: &dyn hooks::Waiter,
) -> Result<(), EngineError> {
    let (st, dir) = load(root, id)?;
    if st.status != Status::Stopped {
        if !force && st.status != Status::Created {
            return Err(EngineError::WrongState {
                id: id.into(),
                status: st.status,
                op: "delete",
            });
        }
        let _ = nix::sys::signal::kill(Pid::from_raw(st.pid), Signal::SIGKILL);
        for _ in 0..200 {
            if state::proc_start_time(st.pid) != st.init_start_time {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    if let Some(c) = &st.cgroup {
        let cg = CgroupV2 { dir: c.clone() };
        for _ in 0..100 {
            if cg.destroy().is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    std::fs::remove_dir_all(&dir).map_err(io_err("remove state"))?;
    if let Ok(sp) = spec::load(&st.bundle) {
        let list = hook_list(&sp, |h| h.poststop().clone());
        let state = hook_state(&sp, id, Status::Stopped, 0, &st.bundle);
        if let Err(e) = hooks::run(&list, &state, w) {
            eprintln!("husk-agent: poststop: {e}");
        }
    }
    Ok(())
}

/// create + start + wait, returning the exit code (128+signal when killed), then delete.
pub fn run(o: &CreateOpts) -> Result<i32, EngineError> {
    let c = create(o)?;
    let pid = Pid::from_raw(c.state.pid);
    if let Err(e) = start(&o.root, &o.id) {
        let _ = delete(&o.root, &o.id, true);
        return Err(e);
    }
    let code = wait(pid)?;
    delete(&o.root, &o.id, true)?;
    Ok(code)
}

/// Waits for a child; returns its exit code, or 128 + the signal that killed it.
pub fn wait(pid: Pid) -> Result<i32, EngineError> {
    loop {
        match nix::sys::wait::waitpid(pid, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => return Ok(c),
            Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(EngineError::Io(format!("wait: {e}"))),
        }
    }
}
