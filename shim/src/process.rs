//! Process lifecycle: a state machine checked before every operation.
//!
//! ```text
//! Created --start--> Running <--pause/resume--> Paused
//!    |                  |                          |
//!    +------exit--------+----------exit------------+--> Stopped --delete--> (gone)
//! ```

use std::time::SystemTime;

use containerd_shim_protos::api::Status as ProtoStatus;
use tokio::sync::watch;

use crate::agent::ProcessRef;
use crate::error::{Result, ShimError};

/// Where a process is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped {
        exit_status: u32,
        exited_at: SystemTime,
    },
}

/// The operations whose legality depends on the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Start,
    Kill,
    Pause,
    Resume,
    Exec,
    ResizePty,
    Update,
    Inspect,
    Delete,
}

impl Op {
    fn verb(self) -> &'static str {
        match self {
            Op::Start => "start",
            Op::Kill => "kill",
            Op::Pause => "pause",
            Op::Resume => "resume",
            Op::Exec => "exec in",
            Op::ResizePty => "resize the pty of",
            Op::Update => "update",
            Op::Inspect => "inspect",
            Op::Delete => "delete",
        }
    }
}

impl Status {
    pub fn name(&self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped { .. } => "stopped",
        }
    }

    pub fn is_stopped(&self) -> bool {
        matches!(self, Status::Stopped { .. })
    }

    pub fn to_proto(&self) -> ProtoStatus {
        match self {
            Status::Created => ProtoStatus::CREATED,
            Status::Running => ProtoStatus::RUNNING,
            Status::Paused => ProtoStatus::PAUSED,
            Status::Stopped { .. } => ProtoStatus::STOPPED,
        }
    }

    /// Whether `op` is allowed now.
    pub fn allows(&self, op: Op) -> bool {
        use Status::*;
        match op {
            Op::Start => matches!(self, Created),
            Op::Kill | Op::ResizePty | Op::Update | Op::Inspect => {
                matches!(self, Created | Running | Paused)
            }
            Op::Pause | Op::Exec => matches!(self, Running),
            Op::Resume => matches!(self, Paused),
            Op::Delete => matches!(self, Created | Stopped { .. }),
        }
    }

    /// `Ok` when `op` is allowed, else the error containerd should see. A kill of a
    /// finished process is NotFound, as runc's shim answers (ctr and CRI ignore it).
    pub fn check(&self, who: &ProcessRef, op: Op) -> Result<()> {
        if self.allows(op) {
            return Ok(());
        }
        if op == Op::Kill && self.is_stopped() {
            return Err(ShimError::NotFound(format!(
                "{who} (process already finished)"
            )));
        }
        Err(ShimError::InvalidState {
            what: who.to_string(),
            state: self.name(),
            op: op.verb(),
        })
    }
}

/// One process's status, shared between the service and the task that waits for it.
#[derive(Debug)]
pub struct StatusCell {
    tx: watch::Sender<Status>,
}

impl Default for StatusCell {
    fn default() -> Self {
        StatusCell {
            tx: watch::Sender::new(Status::Created),
        }
    }
}

impl StatusCell {
    pub fn get(&self) -> Status {
        self.tx.borrow().clone()
    }

    /// Moves to `to` unless the process has stopped meanwhile (an exit always wins).
    pub fn set(&self, to: Status) {
        self.tx.send_if_modified(|s| {
            if s.is_stopped() {
                return false;
            }
            *s = to;
            true
        });
    }

    /// Records the exit; the first exit wins. Returns whether this call recorded it.
    pub fn exit(&self, exit_status: u32) -> bool {
        self.tx.send_if_modified(|s| {
            if s.is_stopped() {
                return false;
            }
            *s = Status::Stopped {
                exit_status,
                exited_at: SystemTime::now(),
            };
            true
        })
    }

    /// Waits until the process has stopped; returns its exit status and time.
    pub async fn wait(&self) -> (u32, SystemTime) {
        let mut rx = self.tx.subscribe();
        let stopped = rx.wait_for(Status::is_stopped).await.map(|s| s.clone());
        match stopped {
            Ok(Status::Stopped {
                exit_status,
                exited_at,
            }) => (exit_status, exited_at),
            // The sender lives in `self`, so the channel cannot close while we wait.
            _ => (255, SystemTime::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        let who = ProcessRef::init("c1");
        let stopped = Status::Stopped {
            exit_status: 0,
            exited_at: SystemTime::now(),
        };
        let table: [(&Status, &[Op]); 4] = [
            (
                &Status::Created,
                &[
                    Op::Start,
                    Op::Kill,
                    Op::ResizePty,
                    Op::Update,
                    Op::Inspect,
                    Op::Delete,
                ],
            ),
            (
                &Status::Running,
                &[
                    Op::Kill,
                    Op::Pause,
                    Op::Exec,
                    Op::ResizePty,
                    Op::Update,
                    Op::Inspect,
                ],
            ),
            (
                &Status::Paused,
                &[Op::Kill, Op::Resume, Op::ResizePty, Op::Update, Op::Inspect],
            ),
            (&stopped, &[Op::Delete]),
        ];
        let all = [
            Op::Start,
            Op::Kill,
            Op::Pause,
            Op::Resume,
            Op::Exec,
            Op::ResizePty,
            Op::Update,
            Op::Inspect,
            Op::Delete,
        ];
        for (status, allowed) in table {
            for op in all {
                assert_eq!(
                    status.check(&who, op).is_ok(),
                    allowed.contains(&op),
                    "{status:?} {op:?}"
                );
            }
        }
        let e = Status::Running.check(&who, Op::Delete).unwrap_err();
        assert_eq!(e.to_string(), "cannot delete container c1: it is running");
        let e = stopped.check(&who, Op::Kill).unwrap_err();
        assert!(matches!(e, ShimError::NotFound(_)));
    }

    #[tokio::test]
    async fn first_exit_wins_and_wakes_waiters() {
        let c = std::sync::Arc::new(StatusCell::default());
        c.set(Status::Running);
        let c2 = c.clone();
        let waiter = tokio::spawn(async move { c2.wait().await.0 });
        assert!(c.exit(137));
        assert!(!c.exit(0));
        c.set(Status::Running);
        assert_eq!(c.get().name(), "stopped");
        assert_eq!(waiter.await.unwrap(), 137);
        assert_eq!(c.wait().await.0, 137);
    }
}
