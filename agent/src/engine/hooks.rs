//! OCI hooks: each runs with the container state on stdin, its own args and env, and an
//! optional timeout; a failing hook fails the operation (except poststart/poststop, which
//! only warn, as the runtime spec says).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

/// Errors of a hook.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The hook could not be started.
    #[error("hook {path}: {source}")]
    Spawn {
        /// The hook's path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The hook exited with a failure.
    #[error("hook {path} exited with status {status}")]
    Failed {
        /// The hook's path.
        path: String,
        /// Exit status (128 + signal when killed).
        status: i32,
    },
    /// The hook ran past its timeout and was killed.
    #[error("hook {path} timed out after {secs} s")]
    Timeout {
        /// The hook's path.
        path: String,
        /// The timeout.
        secs: i64,
    },
}

/// How the caller learns that a child exited: `waitpid` in the CLI, the reaper in the
/// agent server (where only the reaper may call waitpid).
pub trait Waiter {
    /// The exit status of `pid` if it has exited (without blocking).
    fn try_wait(&self, pid: u32) -> Option<i32>;
}

/// Waits with `waitpid(pid, WNOHANG)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct WaitPid;

impl Waiter for WaitPid {
    fn try_wait(&self, pid: u32) -> Option<i32> {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        match waitpid(
            nix::unistd::Pid::from_raw(pid as i32),
            Some(WaitPidFlag::WNOHANG),
        ) {
            Ok(WaitStatus::Exited(_, c)) => Some(c),
            Ok(WaitStatus::Signaled(_, s, _)) => Some(128 + s as i32),
            Ok(_) => None,
            Err(_) => Some(-1),
        }
    }
}

/// Runs the hooks in order with `state_json` on stdin; stops at the first failure.
pub fn run(hooks: &[Hook], state_json: &[u8], w: &dyn Waiter) -> Result<(), HookError> {
    for h in hooks {
        run_one(h, state_json, w)?;
    }
    Ok(())
}

fn run_one(h: &Hook, state_json: &[u8], w: &dyn Waiter) -> Result<(), HookError> {
    let path = h.path().display().to_string();
    let mut cmd = Command::new(h.path());
    if let Some(args) = h.args() {
        if let Some((first, rest)) = args.split_first() {
            cmd.arg0(first).args(rest);
        }
    }
    cmd.env_clear();
    for e in h.env().iter().flatten() {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|source| HookError::Spawn {
            path: path.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine.
        let _ = stdin.write_all(state_json);
    }
    let deadline = h
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| (t, Instant::now() + Duration::from_secs(t as u64)));
    loop {
        if let Some(status) = w.try_wait(child.id()) {
            return if status == 0 {
                Ok(())
            } else {
                Err(HookError::Failed { path, status })
            };
        }
        if let Some((secs, d)) = deadline {
            if Instant::now() >= d {
                let _ = child.kill();
                while w.try_wait(child.id()).is_none() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return Err(HookError::Timeout { path, secs });
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(json: &str) -> Hook {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn hooks_get_state_args_env_and_exit_status() {
        let dir = std::env::temp_dir().join(format!("husk-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let h = hook(&format!(
            r#"{{"path":"/bin/sh","args":["sh","-c","cat > {}; echo $0 $X >> {}"],"env":["X=y"]}}"#,
            out.display(),
            out.display()
        ));
        run(&[h], br#"{"id":"c1"}"#, &WaitPid).unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "{\"id\":\"c1\"}sh y\n"
        );
        let bad = hook(r#"{"path":"/bin/sh","args":["sh","-c","exit 3"]}"#);
        assert!(matches!(
            run(&[bad], b"{}", &WaitPid),
            Err(HookError::Failed { status: 3, .. })
        ));
        let slow = hook(r#"{"path":"/bin/sh","args":["sh","-c","sleep 5"],"timeout":1}"#);
        assert!(matches!(
            run(&[slow], b"{}", &WaitPid),
            Err(HookError::Timeout { .. })
        ));
        let missing = hook(r#"{"path":"/nonexistent/hook"}"#);
        assert!(matches!(
            run(&[missing], b"{}", &WaitPid),
            Err(HookError::Spawn { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
