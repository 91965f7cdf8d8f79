//! Pid files for the processes a pod runs (vmm, virtiofsd), so `shim delete` can kill
//! them after the shim itself was killed. A pid is recorded with its start time, and only
//! a process with both is killed: a recycled pid is left alone.

use std::path::Path;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The start time (clock ticks since boot) of `pid`, from `/proc/<pid>/stat`.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields after the name start at field 3; starttime is field 22.
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Writes `<pid> <start time>` to `path`.
pub fn record(path: &Path, pid: u32) -> std::io::Result<()> {
    let st = start_time(pid).unwrap_or(0);
    crate::poddir::write_fresh(path, format!("{pid} {st}\n").as_bytes())
        .map_err(std::io::Error::other)
}

/// The pid recorded in `path` if that process still runs (same pid and start time; never
/// pid 0 or 1).
pub fn live_recorded(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut it = text.split_whitespace().map(|w| w.parse::<u64>().ok());
    let (Some(Some(pid)), Some(Some(st))) = (it.next(), it.next()) else {
        return None;
    };
    let pid = u32::try_from(pid).ok()?;
    (pid > 1 && start_time(pid) == Some(st)).then_some(pid)
}

/// Kills the process recorded in `path` with SIGKILL if it is still the same process.
/// Returns whether a process was killed.
pub fn kill_recorded(path: &Path) -> bool {
    let Some(pid) = live_recorded(path).and_then(|p| i32::try_from(p).ok()) else {
        return false;
    };
    kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn records_and_kills_only_the_same_process() {
        let d = TempDir::new("pid");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let f = d.path().join("sleep.pid");
        record(&f, child.id()).unwrap();
        // a wrong start time: not the same process, not killed
        let text = std::fs::read_to_string(&f).unwrap();
        let pid = text.split_whitespace().next().unwrap();
        std::fs::write(d.path().join("other.pid"), format!("{pid} 1\n")).unwrap();
        assert!(!kill_recorded(&d.path().join("other.pid")));
        assert!(!kill_recorded(&d.path().join("missing.pid")));
        std::fs::write(d.path().join("junk.pid"), "1 x").unwrap();
        assert!(!kill_recorded(&d.path().join("junk.pid")));
        assert!(kill_recorded(&f));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(9));
        assert!(start_time(std::process::id()).is_some());
    }
}
