//! The container's init process, from clone to execve: namespaces joined, rootfs,
//! hostname, sysctls, rlimits, then (after `start`) user, capabilities, no_new_privs,
//! seccomp, fd hygiene, cwd check, exec.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{PosixRlimit, PosixRlimitType};

use super::caps::{self, CapSets};
use super::rootfs::{self, RootfsPlan};
use super::seccomp::{self, SockFilter};
use super::syscall::LinuxSyscall;

/// Everything the init process needs, computed by the parent before clone.
#[derive(Debug)]
pub struct InitConfig {
    /// Rootfs plan.
    pub rootfs: RootfsPlan,
    /// Whether a new mount namespace exists (always, per validation).
    pub hostname: Option<String>,
    /// Domain name.
    pub domainname: Option<String>,
    /// Namespaces to join by path (not pid, which the parent joins).
    pub join: Vec<(CloneFlags, PathBuf)>,
    /// A new user namespace is created.
    pub new_userns: bool,
    /// A new cgroup namespace is created (after the cgroup is joined).
    pub new_cgroupns: bool,
    /// A new network namespace is created: init brings its loopback up, as runc does.
    pub new_netns: bool,
    /// sysctls.
    pub sysctl: Vec<(String, String)>,
    /// rlimits.
    pub rlimits: Vec<PosixRlimit>,
    /// The process: args, env, cwd.
    pub args: Vec<String>,
    /// Environment.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// uid, gid, supplementary groups, umask.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// umask.
    pub umask: u32,
    /// Capabilities.
    pub caps: CapSets,
    /// no_new_privs.
    pub no_new_privs: bool,
    /// Compiled seccomp program and flags.
    pub seccomp: Option<(
        Vec<SockFilter>,
        Vec<oci_spec::runtime::LinuxSeccompFilterFlag>,
    )>,
    /// Directory fd of the state dir (holds `exec.fifo`); `None` to exec at once.
    pub state_dir: Option<OwnedFd>,
    /// Fds 3..3+n passed on purpose.
    pub preserve_fds: i32,
    /// createContainer hooks (run in the container's namespaces after pivot_root).
    pub create_container_hooks: Vec<oci_spec::runtime::Hook>,
    /// startContainer hooks (run in the container just before the user process).
    pub start_container_hooks: Vec<oci_spec::runtime::Hook>,
    /// The state JSON for in-container hooks.
    pub hook_state: Vec<u8>,
    /// Terminal: the console socket to send the pty master to.
    pub console: Option<UnixStream>,
}

/// A failure inside the init process, reported to the parent as text.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {msg}")]
pub struct InitError {
    /// The step that failed.
    pub step: &'static str,
    /// Why.
    pub msg: String,
}

fn fail<E: std::fmt::Display>(step: &'static str) -> impl FnOnce(E) -> InitError {
    move |e| InitError {
        step,
        msg: e.to_string(),
    }
}

/// Maps an OCI rlimit type to the kernel resource.
pub fn rlimit_resource(t: PosixRlimitType) -> u32 {
    use PosixRlimitType as R;
    match t {
        R::RlimitCpu => libc::RLIMIT_CPU,
        R::RlimitFsize => libc::RLIMIT_FSIZE,
        R::RlimitData => libc::RLIMIT_DATA,
        R::RlimitStack => libc::RLIMIT_STACK,
        R::RlimitCore => libc::RLIMIT_CORE,
        R::RlimitRss => libc::RLIMIT_RSS,
        R::RlimitNproc => libc::RLIMIT_NPROC,
        R::RlimitNofile => libc::RLIMIT_NOFILE,
        R::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        R::RlimitAs => libc::RLIMIT_AS,
        R::RlimitLocks => libc::RLIMIT_LOCKS,
        R::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        R::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        R::RlimitNice => libc::RLIMIT_NICE,
        R::RlimitRtprio => libc::RLIMIT_RTPRIO,
        R::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// The value of `HOME` when the spec has none: the user's entry in the container's
/// /etc/passwd, else `/`.
pub fn home_for(passwd: &str, uid: u32) -> String {
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 6 && f[2].parse() == Ok(uid)).then(|| f[5].to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".into())
}

/// Resolves `argv0` against `PATH` from the container environment.
pub fn find_exec(argv0: &str, env: &[String]) -> PathBuf {
    if argv0.contains('/') {
        return argv0.into();
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(argv0);
        if let Ok(c) = CString::new(p.as_os_str().as_encoded_bytes()) {
            // SAFETY: `c` is a valid C string for the duration of the call.
            if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 && p.is_file() {
                return p;
            }
        }
    }
    argv0.into()
}

/// Runs in the cloned child. Never returns: it execs or exits.
pub fn run_init(cfg: InitConfig, mut sync: UnixStream) -> ! {
    let code = match init_until_ready(&cfg, &mut sync) {
        Err(e) => {
            let _ = sync.write_all(format!("E{e}").as_bytes());
            1
        }
        Ok(()) => {
            let _ = sync.write_all(b"R");
            drop(sync);
            let e = exec_after_start(cfg);
            let _ = writeln!(std::io::stderr(), "husk-agent: container init: {e}");
            127
        }
    };
    // SAFETY: _exit ends this (forked) process without running the parent's atexit state.
    unsafe { libc::_exit(code) }
}

fn init_until_ready(cfg: &InitConfig, sync: &mut UnixStream) -> Result<(), InitError> {
    set_non_dumpable()?;
    let mut go = [0u8; 1];
    sync.read_exact(&mut go)
        .map_err(fail("waiting for parent"))?;
    if cfg.new_userns {
        // Become root of the new user namespace once the maps are written.
        let _ = nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0));
        let _ = nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0));
    }
    for (flag, path) in &cfg.join {
        let f = std::fs::File::open(path).map_err(fail("open namespace"))?;
        nix::sched::setns(&f, *flag).map_err(|e| InitError {
            step: "setns",
            msg: format!("{}: {e}", path.display()),
        })?;
    }
    if cfg.new_cgroupns {
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP).map_err(fail("unshare cgroup"))?;
    }
    if cfg.new_netns {
        super::loopback::up().map_err(fail("loopback up"))?;
    }
    nix::unistd::setsid().map_err(fail("setsid"))?;
    // Device nodes and mount points get exactly the modes the spec asks for.
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { libc::umask(0) };
    rootfs::setup(&LinuxSyscall, &cfg.rootfs).map_err(fail("rootfs"))?;
    // The pty comes from the container's own devpts instance, as with runc.
    if let Some(sock) = &cfg.console {
        setup_console(sock)?;
    }
    if let Some(h) = &cfg.hostname {
        nix::unistd::sethostname(h).map_err(fail("sethostname"))?;
    }
    if let Some(d) = &cfg.domainname {
        // SAFETY: pointer and length describe `d`'s bytes.
        let rc = unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) };
        if rc != 0 {
            return Err(fail("setdomainname")(std::io::Error::last_os_error()));
        }
    }
    for (k, v) in &cfg.sysctl {
        let p = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        write_procfs(&p, v).map_err(|e| InitError {
            step: "sysctl",
            msg: format!("{}: {e}", p.display()),
        })?;
    }
    rootfs::finish(&LinuxSyscall, &cfg.rootfs).map_err(fail("rootfs"))?;
    super::hooks::run(
        &cfg.create_container_hooks,
        &cfg.hook_state,
        &super::hooks::WaitPid,
    )
    .map_err(fail("createContainer hook"))?;
    // Like runc, a missing executable fails create, not start.
    let prog = find_exec(&cfg.args[0], &cfg.env);
    if !prog.is_file() {
        return Err(InitError {
            step: "exec",
            msg: format!("{}: executable file not found", cfg.args[0]),
        });
    }
    apply_rlimits(&cfg.rlimits)?;
    Ok(())
}

/// Writes a procfs knob, refusing any file that is not on procfs: the path is inside the
/// container's root, whose image may put a regular file (no proc mount) or a symlink
/// there, and a write meant for the kernel must never land in the image (runc
/// CVE-2025-52881 class). The last component is not followed.
pub fn write_procfs(path: &Path, value: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let fs = nix::sys::statfs::fstatfs(&f)?;
    if fs.filesystem_type() != nix::sys::statfs::PROC_SUPER_MAGIC {
        return Err(std::io::Error::other("not on procfs"));
    }
    f.write_all(value.as_bytes())
}

fn apply_rlimits(rlimits: &[PosixRlimit]) -> Result<(), InitError> {
    for r in rlimits {
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: `lim` is a valid rlimit for the duration of the call.
        let rc = unsafe { libc::setrlimit(rlimit_resource(r.typ()) as _, &lim) };
        if rc != 0 {
            return Err(InitError {
                step: "setrlimit",
                msg: format!("{:?}: {}", r.typ(), std::io::Error::last_os_error()),
            });
        }
    }
    Ok(())
}

fn setup_console(sock: &UnixStream) -> Result<(), InitError> {
    let pty = nix::pty::openpty(None, None).map_err(fail("openpty"))?;
    let fds = [pty.master.as_raw_fd()];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    let name = b"/dev/ptmx";
    let iov = [std::io::IoSlice::new(name)];
    nix::sys::socket::sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &cmsg,
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map_err(fail("send console"))?;
    drop(pty.master);
    let s = pty.slave.as_raw_fd();
    for fd in 0..3 {
        // SAFETY: dup2 onto the stdio slots, which this process owns.
        if unsafe { libc::dup2(s, fd) } < 0 {
            return Err(fail("dup2 console")(std::io::Error::last_os_error()));
        }
    }
    // SAFETY: TIOCSCTTY takes an int argument; `s` is the open slave.
    if unsafe { libc::ioctl(s, libc::TIOCSCTTY, 0) } != 0 {
        return Err(fail("TIOCSCTTY")(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// For `exec`: joins the container's namespaces, then drops privileges and execs.
/// Returns only on failure.
pub fn join_and_exec(mut cfg: InitConfig) -> Result<(), InitError> {
    set_non_dumpable()?;
    for (flag, path) in &cfg.join {
        let f = std::fs::File::open(path).map_err(fail("open namespace"))?;
        nix::sched::setns(&f, *flag).map_err(|e| InitError {
            step: "setns",
            msg: format!("{}: {e}", path.display()),
        })?;
    }
    nix::unistd::setsid().map_err(fail("setsid"))?;
    if let Some(sock) = &cfg.console {
        setup_console(sock)?;
    }
    apply_rlimits(&cfg.rlimits)?;
    cfg.state_dir = None;
    Err(exec_after_start(cfg))
}

/// Waits on `exec.fifo` (released by `start`), then drops privileges and execs.
fn exec_after_start(mut cfg: InitConfig) -> InitError {
    if let Some(dir) = &cfg.state_dir {
        let name = c"exec.fifo";
        // SAFETY: valid dirfd and C string; blocks until `start` opens the read end.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return fail("open exec.fifo")(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned here.
        let mut f = std::fs::File::from(unsafe { super::syscall::own_fd(fd) });
        if let Err(e) = f.write_all(b"0") {
            return fail("write exec.fifo")(e);
        }
    }
    drop(cfg.state_dir.take());
    if let Err(e) = super::hooks::run(
        &cfg.start_container_hooks,
        &cfg.hook_state,
        &super::hooks::WaitPid,
    ) {
        return fail("startContainer hook")(e);
    }
    match finalize(&cfg.args, &cfg) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

fn finalize(args: &[String], cfg: &InitConfig) -> Result<Never, InitError> {
    let load = |p: &(Vec<SockFilter>, Vec<_>)| seccomp::load(&p.0, &p.1).map_err(fail("seccomp"));
    if !cfg.no_new_privs {
        // Without no_new_privs, loading needs CAP_SYS_ADMIN: load while still root.
        if let Some(p) = &cfg.seccomp {
            load(p)?;
        }
    }
    caps::drop_bounding(&cfg.caps).map_err(fail("capabilities"))?;
    caps::keep_caps(true).map_err(fail("capabilities"))?;
    let groups: Vec<Gid> = cfg.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    // setgroups is denied in a user namespace whose setgroups file says so; runc only
    // fails there when groups were asked for.
    if let Err(e) = nix::unistd::setgroups(&groups) {
        if !groups.is_empty() || !cfg.new_userns {
            return Err(fail("setgroups")(e));
        }
    }
    let g = Gid::from_raw(cfg.gid);
    nix::unistd::setresgid(g, g, g).map_err(fail("setgid"))?;
    let u = Uid::from_raw(cfg.uid);
    nix::unistd::setresuid(u, u, u).map_err(fail("setuid"))?;
    caps::keep_caps(false).map_err(fail("capabilities"))?;
    caps::apply(&cfg.caps).map_err(fail("capabilities"))?;
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { libc::umask(cfg.umask as libc::mode_t) };
    nix::unistd::chdir(&cfg.cwd).map_err(|e| InitError {
        step: "chdir",
        msg: format!("{}: {e}", cfg.cwd.display()),
    })?;
    // The cwd must be inside the container (runc CVE-2024-21626: a leaked fd as cwd).
    let real = nix::unistd::getcwd().map_err(fail("getcwd"))?;
    if !real.starts_with("/") || real != cfg.cwd.components().collect::<PathBuf>() {
        return Err(InitError {
            step: "cwd",
            msg: format!("{} resolved to {}", cfg.cwd.display(), real.display()),
        });
    }
    if cfg.no_new_privs {
        // SAFETY: integer-only prctl.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1u64, 0u64, 0u64, 0u64) } != 0 {
            return Err(fail("no_new_privs")(std::io::Error::last_os_error()));
        }
        if let Some(p) = &cfg.seccomp {
            load(p)?;
        }
    }
    close_fds(3 + cfg.preserve_fds);
    let env = with_home(&cfg.env, cfg.uid);
    let prog = find_exec(&args[0], &env);
    let cstr = |s: &str| CString::new(s).map_err(fail("argument with NUL"));
    let path = CString::new(prog.as_os_str().as_encoded_bytes()).map_err(fail("path"))?;
    let argv: Vec<CString> = args.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
    let envp: Vec<CString> = env.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
    let e = nix::unistd::execve(&path, &argv, &envp).unwrap_err();
    Err(InitError {
        step: "exec",
        msg: format!("{}: {e}", args[0]),
    })
}

/// Until execve, this process is a copy of the agent: non-dumpable, so processes of the
/// container cannot open its `/proc/<pid>/exe` (the agent binary; runc CVE-2019-5736)
/// or its memory. execve of the container's program resets it.
fn set_non_dumpable() -> Result<(), InitError> {
    // SAFETY: integer-only prctl.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0u64, 0u64, 0u64, 0u64) } != 0 {
        return Err(fail("non-dumpable")(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Marks every fd from `from` up close-on-exec, so only stdio (and fds passed on
/// purpose) reach the container (runc CVE-2016-9962 / CVE-2024-21626 class).
pub fn close_fds(from: i32) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags; no fd is freed.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, from as u32, u32::MAX, 4u32) };
    if rc != 0 {
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            let fds: Vec<i32> = dir
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|fd| *fd >= from)
                .collect();
            for fd in fds {
                // SAFETY: setting FD_CLOEXEC on a possibly-closed fd is harmless.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
    }
}

/// Adds `HOME` from the container's /etc/passwd (read after masking, as runc does) when
/// the spec has none.
pub fn with_home(env: &[String], uid: u32) -> Vec<String> {
    let mut env = env.to_vec();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        env.push(format!("HOME={}", home_for(&passwd, uid)));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procfs_writes_refuse_other_files() {
        let d = std::env::temp_dir().join(format!("husk-procfs-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("domainname");
        std::fs::write(&f, "image\n").unwrap();
        let e = write_procfs(&f, "evil").unwrap_err();
        assert!(e.to_string().contains("not on procfs"), "{e}");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "image\n");
        // A symlink to a procfs file is not followed either.
        std::os::unix::fs::symlink("/proc/self/oom_score_adj", d.join("link")).unwrap();
        assert!(write_procfs(&d.join("link"), "0").is_err());
        // The real thing is written (this process's own knob, to its current value).
        let cur = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap();
        write_procfs(Path::new("/proc/self/oom_score_adj"), cur.trim()).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn home_comes_from_passwd() {
        let pw = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/false\n";
        assert_eq!(home_for(pw, 0), "/root");
        assert_eq!(home_for(pw, 65534), "/nonexistent");
        assert_eq!(home_for(pw, 1000), "/");
    }

    #[test]
    fn exec_lookup_uses_container_path() {
        assert_eq!(find_exec("/bin/x", &[]), PathBuf::from("/bin/x"));
        assert_eq!(
            find_exec("sh", &["PATH=/bin:/usr/bin".into()]),
            PathBuf::from("/bin/sh")
        );
    }
}
