//! Guest init: what the agent does first when it runs as PID 1.

use std::io::Write;

/// The first line the agent writes on the console. The nested smoke test and the vmm's
/// boot benchmark wait for exactly this prefix.
pub const FIRST_LINE_PREFIX: &str = "husk-agent: started";

/// Formats the agent's first console line.
pub fn first_line(pid: u32) -> String {
    format!(
        "{FIRST_LINE_PREFIX} version={} pid={pid}",
        env!("CARGO_PKG_VERSION")
    )
}

/// PID 1's environment variable that keeps the agent off the console. The kernel puts an
/// unknown command-line parameter with a value (`HUSK_AGENT_QUIET=1`) into init's
/// environment; the shim passes it when nobody keeps the console, because every console
/// byte costs the VM two exits (a status read and a data write on the 8250).
pub const QUIET_ENV: &str = "HUSK_AGENT_QUIET";

/// Whether the value of [`QUIET_ENV`] asks for quiet: exactly `1`.
pub fn quiet(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_some_and(|v| v == "1")
}

/// Writes the first line to `out` and flushes it at once: the host measures boot time by it.
pub fn announce(out: &mut dyn Write, pid: u32) -> std::io::Result<()> {
    writeln!(out, "{}", first_line(pid))?;
    out.flush()
}

/// Errors of the guest init.
#[derive(Debug, thiserror::Error)]
#[error("init {step} {path}: {source}")]
pub struct InitError {
    /// The step.
    pub step: &'static str,
    /// The path involved.
    pub path: String,
    /// The error.
    #[source]
    pub source: std::io::Error,
}

/// The guest's base mounts: (source, target, fstype, flags, data).
pub const BASE_MOUNTS: &[(&str, &str, &str, u64, &str)] = &[
    ("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, ""),
    ("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, ""),
    ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755"),
    (
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    ),
    ("shm", "/dev/shm", "tmpfs", NOSUID_NODEV, "mode=1777"),
    (
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        NOSUID_NODEV_NOEXEC,
        "",
    ),
    ("tmpfs", "/run", "tmpfs", NOSUID_NODEV, "mode=0755"),
];
const NOSUID_NODEV: u64 = libc::MS_NOSUID | libc::MS_NODEV;
const NOSUID_NODEV_NOEXEC: u64 = NOSUID_NODEV | libc::MS_NOEXEC;

/// Mounts the base file systems (an existing mount is left alone).
pub fn mount_base() -> Result<(), InitError> {
    use nix::mount::MsFlags;
    for (src, target, fstype, flags, data) in BASE_MOUNTS {
        let _ = std::fs::create_dir_all(target);
        let data = (!data.is_empty()).then_some(*data);
        match nix::mount::mount(
            Some(*src),
            *target,
            Some(*fstype),
            MsFlags::from_bits_truncate(*flags),
            data,
        ) {
            Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => {
                return Err(InitError {
                    step: "mount",
                    path: target.to_string(),
                    source: e.into(),
                })
            }
        }
    }
    let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    Ok(())
}

/// Brings the guest's loopback interface up.
pub fn loopback_up() -> Result<(), InitError> {
    crate::engine::loopback::up().map_err(|source| InitError {
        step: "loopback",
        path: "lo".into(),
        source,
    })
}

/// pivot_root refuses a caller whose root is the initial ramfs (the root mount has no
/// parent), so containers could not be pivoted. Like switch_root, but without copying:
/// bind the initramfs onto a directory of itself, move that mount over `/` and chroot
/// into it. The new root mount has a parent, and everything in the image stays visible.
pub fn leave_initramfs() -> Result<(), InitError> {
    use nix::mount::MsFlags;
    let err = |step: &'static str| {
        move |e: nix::errno::Errno| InitError {
            step,
            path: "/".into(),
            source: e.into(),
        }
    };
    let dir = "/.husk-root";
    let _ = std::fs::create_dir(dir);
    nix::mount::mount(
        Some("/"),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err("bind root"))?;
    nix::unistd::chdir(dir).map_err(err("chdir"))?;
    nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(err("move root"))?;
    nix::unistd::chroot(".").map_err(err("chroot"))?;
    nix::unistd::chdir("/").map_err(err("chdir"))
}

/// Bind-mounts the agent's own binary read-only over itself, so nothing (not even a
/// root process of a container reaching it through `/proc/<pid>/exe`) can rewrite it.
pub fn protect_binary() -> Result<(), InitError> {
    use nix::mount::MsFlags;
    let exe = std::fs::read_link("/proc/self/exe").map_err(|e| InitError {
        step: "protect binary",
        path: "/proc/self/exe".into(),
        source: e,
    })?;
    let err = |e: nix::errno::Errno| InitError {
        step: "protect binary",
        path: exe.display().to_string(),
        source: e.into(),
    };
    nix::mount::mount(
        Some(&exe),
        &exe,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(err)?;
    nix::mount::mount(
        None::<&str>,
        &exe,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(err)
}

/// PID 1: base mounts, cgroup controllers for children, loopback, then the agent API on
/// vsock. Never returns; a fatal error is printed and the VM is halted. `quiet` leaves out
/// the informational line (errors are always printed).
pub fn run_as_pid1(quiet: bool) -> ! {
    let mut out = std::io::stdout();
    type Step<'a> = (&'a str, &'a dyn Fn() -> Result<(), String>);
    let steps: [Step; 5] = [
        ("leave initramfs", &|| {
            leave_initramfs().map_err(|e| e.to_string())
        }),
        ("mounts", &|| mount_base().map_err(|e| e.to_string())),
        ("cgroups", &|| {
            crate::engine::cgroups::enable_all_controllers(std::path::Path::new(
                crate::engine::cgroups::CGROUP_ROOT,
            ))
            .map_err(|e| e.to_string())
        }),
        ("loopback", &|| loopback_up().map_err(|e| e.to_string())),
        ("protect binary", &|| {
            protect_binary().map_err(|e| e.to_string())
        }),
    ];
    for (name, f) in steps {
        if let Err(e) = f() {
            let _ = writeln!(out, "husk-agent: init {name}: {e}");
        }
    }
    let addr = format!("vsock://-1:{}", husk_protocol::AGENT_VSOCK_PORT);
    if !quiet {
        let _ = writeln!(out, "husk-agent: serving on {addr}");
        let _ = out.flush();
    }
    if let Err(e) = crate::server::serve(&addr, std::path::Path::new("/run/husk-agent")) {
        let _ = writeln!(out, "husk-agent: fatal: {e}; halting");
    }
    // PID 1 must not exit (the kernel would panic): halt the VM with a clear message.
    let _ = out.flush();
    // SAFETY: sync + reboot(POWER_OFF) end the VM; no memory is involved.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_names_version_and_pid() {
        let mut buf = Vec::new();
        announce(&mut buf, 1).unwrap();
        let s = String::from_utf8(buf).unwrap();
        assert!(s.starts_with(FIRST_LINE_PREFIX));
        assert!(s.ends_with("pid=1\n"));
    }

    #[test]
    fn quiet_only_when_asked_with_one() {
        use std::ffi::OsStr;
        assert!(quiet(Some(OsStr::new("1"))));
        assert!(!quiet(None));
        assert!(!quiet(Some(OsStr::new("0"))));
        assert!(!quiet(Some(OsStr::new(""))));
    }
}
