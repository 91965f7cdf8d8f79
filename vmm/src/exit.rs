//! Why the VM ended, and the process exit code for each reason.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

/// Why the VM stopped. The first reason reported wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest asked for a reset (`reboot=k`: i8042 pulse) without having panicked.
    GuestReset,
    /// The guest halted or powered off (seen on its console: no ACPI to tell us otherwise).
    GuestHalt,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN). `state` is that vCPU's registers at the
    /// exit (see `Vcpu::fault_state`), so a rare fault can be diagnosed from one log.
    TripleFault { vcpu: u8, state: String },
    /// The guest kernel panicked (seen on the console) and then reset.
    GuestPanic,
    /// SIGTERM or SIGINT asked the vmm to stop.
    Stopped { signal: i32 },
    /// The vmm itself failed while the VM ran.
    InternalError(String),
    /// Template mode: the guest agent said it serves; the VM is to be snapshotted.
    SnapshotRequested,
    /// Template mode: the snapshot was written to this directory.
    Snapshotted(std::path::PathBuf),
}

impl ExitReason {
    /// Process exit code: 0 guest reset or halt, 1 internal error, 3 triple fault,
    /// 4 guest panic, 5 stopped by a signal (2 is left to usage errors).
    pub fn code(&self) -> i32 {
        match self {
            ExitReason::GuestReset | ExitReason::GuestHalt | ExitReason::Snapshotted(_) => 0,
            ExitReason::InternalError(_) | ExitReason::SnapshotRequested => 1,
            ExitReason::TripleFault { .. } => 3,
            ExitReason::GuestPanic => 4,
            ExitReason::Stopped { .. } => 5,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::GuestReset => write!(f, "guest reset"),
            ExitReason::GuestHalt => write!(f, "guest halted"),
            ExitReason::TripleFault { vcpu, state } => {
                write!(f, "triple fault on vCPU {vcpu}: {state}")
            }
            ExitReason::GuestPanic => write!(f, "guest kernel panic"),
            ExitReason::Stopped { signal } => write!(f, "stopped by signal {signal}"),
            ExitReason::InternalError(e) => write!(f, "internal error: {e}"),
            ExitReason::SnapshotRequested => write!(f, "snapshot requested"),
            ExitReason::Snapshotted(dir) => write!(f, "snapshot written to {}", dir.display()),
        }
    }
}

/// Where threads report the end of the VM. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ExitNotifier {
    tx: Arc<Mutex<Sender<ExitReason>>>,
    panicked: Arc<AtomicBool>,
}

impl ExitNotifier {
    pub fn new(tx: Sender<ExitReason>) -> Self {
        ExitNotifier {
            tx: Arc::new(Mutex::new(tx)),
            panicked: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn send(&self, reason: ExitReason) {
        if let Ok(tx) = self.tx.lock() {
            // The receiver is gone only once the VM is already stopping.
            let _ = tx.send(reason);
        }
    }

    /// Records that the console showed a kernel panic: a later reset is then a panic.
    pub fn mark_panicked(&self) {
        self.panicked.store(true, Ordering::SeqCst);
    }

    /// A guest-requested reset, turned into a panic if the console saw one.
    pub fn reset(&self) {
        if self.panicked.load(Ordering::SeqCst) {
            self.send(ExitReason::GuestPanic)
        } else {
            self.send(ExitReason::GuestReset)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct() {
        let all = [
            ExitReason::GuestReset,
            ExitReason::InternalError(String::new()),
            ExitReason::TripleFault {
                vcpu: 0,
                state: String::new(),
            },
            ExitReason::GuestPanic,
            ExitReason::Stopped { signal: 15 },
        ];
        let mut codes: Vec<_> = all.iter().map(|r| r.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        assert_eq!(ExitReason::GuestHalt.code(), 0);
    }

    #[test]
    fn reset_after_panic_is_panic() {
        let (tx, rx) = std::sync::mpsc::channel();
        let n = ExitNotifier::new(tx);
        n.reset();
        n.mark_panicked();
        n.reset();
        assert_eq!(rx.recv().unwrap(), ExitReason::GuestReset);
        assert_eq!(rx.recv().unwrap(), ExitReason::GuestPanic);
    }
}
