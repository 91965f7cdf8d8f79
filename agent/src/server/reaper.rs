//! One thread reaps every child (the agent is PID 1 in the guest, a subreaper on a host)
//! and records exit statuses; callers wait for a pid through it, so no other code calls
//! waitpid and no status is lost to a race.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Exit statuses by pid, filled by the reaper thread.
#[derive(Debug, Default)]
pub struct Reaper {
    exited: Mutex<HashMap<i32, u32>>,
    cv: Condvar,
}

/// containerd's convention: the exit code, or 128 + the signal that killed the process.
pub fn exit_status(ws: WaitStatus) -> Option<(i32, u32)> {
    match ws {
        WaitStatus::Exited(p, c) => Some((p.as_raw(), c as u32)),
        WaitStatus::Signaled(p, s, _) => Some((p.as_raw(), 128 + s as u32)),
        _ => None,
    }
}

impl Reaper {
    /// Starts the reaping thread.
    pub fn start() -> Arc<Self> {
        let r = Arc::new(Self::default());
        let r2 = r.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || r2.run())
            .map(|_| ())
            .unwrap_or_else(|e| eprintln!("husk-agent: cannot start reaper: {e}"));
        r
    }

    fn run(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::__WALL)) {
                Ok(ws) => {
                    if let Some((pid, status)) = exit_status(ws) {
                        self.record(pid, status);
                    }
                }
                Err(nix::errno::Errno::ECHILD) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(_) => {}
            }
        }
    }

    /// Records an exit (used by the thread, and by tests).
    pub fn record(&self, pid: i32, status: u32) {
        if let Ok(mut m) = self.exited.lock() {
            m.insert(pid, status);
            self.cv.notify_all();
        }
    }

    /// Blocks until `pid` has exited; returns its status (the record is kept, so several
    /// waiters see the same status).
    pub fn wait(&self, pid: i32) -> u32 {
        let Ok(mut m) = self.exited.lock() else {
            return 255;
        };
        loop {
            if let Some(s) = m.get(&pid) {
                return *s;
            }
            m = match self.cv.wait(m) {
                Ok(m) => m,
                Err(_) => return 255,
            };
        }
    }

    /// The status of `pid` if it has exited.
    pub fn try_status(&self, pid: i32) -> Option<u32> {
        self.exited.lock().ok()?.get(&pid).copied()
    }

    /// Forgets a pid (after its container is removed).
    pub fn forget(&self, pid: i32) {
        if let Ok(mut m) = self.exited.lock() {
            m.remove(&pid);
        }
    }
}

impl crate::engine::hooks::Waiter for Reaper {
    fn try_wait(&self, pid: u32) -> Option<i32> {
        let s = self.try_status(pid as i32)?;
        self.forget(pid as i32);
        Some(s as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_see_recorded_status() {
        let r = Arc::new(Reaper::default());
        let r2 = r.clone();
        let t = std::thread::spawn(move || r2.wait(42));
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(r.try_status(42), None);
        r.record(42, 137);
        assert_eq!(t.join().unwrap(), 137);
        assert_eq!(r.wait(42), 137);
        r.forget(42);
        assert_eq!(r.try_status(42), None);
    }

    #[test]
    fn signals_map_to_128_plus() {
        let p = Pid::from_raw(9);
        assert_eq!(
            exit_status(WaitStatus::Signaled(
                p,
                nix::sys::signal::Signal::SIGKILL,
                false
            )),
            Some((9, 137))
        );
        assert_eq!(exit_status(WaitStatus::Exited(p, 3)), Some((9, 3)));
    }
}
