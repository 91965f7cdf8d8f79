//! Task events for containerd, and where they go ([`EventSink`]): containerd's event
//! service in the shim, a recording list in tests.

use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::ttrpc::context::Context;

/// Stdio of a process as containerd named it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The events issue 5 names, with the fields containerd reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Create {
        container_id: String,
        bundle: String,
        pid: u32,
        stdio: StdioPaths,
    },
    Start {
        container_id: String,
        pid: u32,
    },
    /// `id` is the container id for the init process, else the exec id.
    Exit {
        container_id: String,
        id: String,
        pid: u32,
        exit_status: u32,
        exited_at: SystemTime,
    },
    Delete {
        container_id: String,
        pid: u32,
        exit_status: u32,
        exited_at: SystemTime,
    },
    Oom {
        container_id: String,
    },
    ExecAdded {
        container_id: String,
        exec_id: String,
    },
    ExecStarted {
        container_id: String,
        exec_id: String,
        pid: u32,
    },
    Paused {
        container_id: String,
    },
    Resumed {
        container_id: String,
    },
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

impl Event {
    /// containerd's topic and the protobuf message.
    pub fn to_message(&self) -> (&'static str, Box<dyn MessageDyn>) {
        match self.clone() {
            Event::Create {
                container_id,
                bundle,
                pid,
                stdio,
            } => (
                "/tasks/create",
                Box::new(TaskCreate {
                    container_id,
                    bundle,
                    pid,
                    io: Some(TaskIO {
                        stdin: stdio.stdin,
                        stdout: stdio.stdout,
                        stderr: stdio.stderr,
                        terminal: stdio.terminal,
                        ..Default::default()
                    })
                    .into(),
                    ..Default::default()
                }),
            ),
            Event::Start { container_id, pid } => (
                "/tasks/start",
                Box::new(TaskStart {
                    container_id,
                    pid,
                    ..Default::default()
                }),
            ),
            Event::Exit {
                container_id,
                id,
                pid,
                exit_status,
                exited_at,
            } => (
                "/tasks/exit",
                Box::new(TaskExit {
                    container_id,
                    id,
                    pid,
                    exit_status,
                    exited_at: Some(timestamp(exited_at)).into(),
                    ..Default::default()
                }),
            ),
            Event::Delete {
                container_id,
                pid,
                exit_status,
                exited_at,
            } => (
                "/tasks/delete",
                Box::new(TaskDelete {
                    id: container_id.clone(),
                    container_id,
                    pid,
                    exit_status,
                    exited_at: Some(timestamp(exited_at)).into(),
                    ..Default::default()
                }),
            ),
            Event::Oom { container_id } => (
                "/tasks/oom",
                Box::new(TaskOOM {
                    container_id,
                    ..Default::default()
                }),
            ),
            Event::ExecAdded {
                container_id,
                exec_id,
            } => (
                "/tasks/exec-added",
                Box::new(TaskExecAdded {
                    container_id,
                    exec_id,
                    ..Default::default()
                }),
            ),
            Event::ExecStarted {
                container_id,
                exec_id,
                pid,
            } => (
                "/tasks/exec-started",
                Box::new(TaskExecStarted {
                    container_id,
                    exec_id,
                    pid,
                    ..Default::default()
                }),
            ),
            Event::Paused { container_id } => (
                "/tasks/paused",
                Box::new(TaskPaused {
                    container_id,
                    ..Default::default()
                }),
            ),
            Event::Resumed { container_id } => (
                "/tasks/resumed",
                Box::new(TaskResumed {
                    container_id,
                    ..Default::default()
                }),
            ),
        }
    }
}

/// Where events go.
#[async_trait]
pub trait EventSink: Send + Sync {
    async fn publish(&self, event: Event);
}

/// containerd's event service, through the crate's queueing publisher.
pub struct ContainerdEvents {
    publisher: RemotePublisher,
    namespace: String,
}

impl ContainerdEvents {
    pub fn new(publisher: RemotePublisher, namespace: &str) -> Self {
        ContainerdEvents {
            publisher,
            namespace: namespace.into(),
        }
    }
}

#[async_trait]
impl EventSink for ContainerdEvents {
    async fn publish(&self, event: Event) {
        let (topic, msg) = event.to_message();
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, msg)
            .await
        {
            log::warn!("publishing {topic}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_fields() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::new(5, 7);
        let (topic, msg) = Event::Exit {
            container_id: "c".into(),
            id: "e1".into(),
            pid: 9,
            exit_status: 137,
            exited_at: at,
        }
        .to_message();
        assert_eq!(topic, "/tasks/exit");
        let exit = msg.downcast_box::<TaskExit>().ok().unwrap();
        assert_eq!((exit.id.as_str(), exit.exit_status), ("e1", 137));
        assert_eq!(exit.exited_at.seconds, 5);
        assert_eq!(exit.exited_at.nanos, 7);
        for (e, t) in [
            (
                Event::Oom {
                    container_id: "c".into(),
                },
                "/tasks/oom",
            ),
            (
                Event::Paused {
                    container_id: "c".into(),
                },
                "/tasks/paused",
            ),
            (
                Event::Resumed {
                    container_id: "c".into(),
                },
                "/tasks/resumed",
            ),
            (
                Event::ExecAdded {
                    container_id: "c".into(),
                    exec_id: "e".into(),
                },
                "/tasks/exec-added",
            ),
            (
                Event::Start {
                    container_id: "c".into(),
                    pid: 1,
                },
                "/tasks/start",
            ),
        ] {
            assert_eq!(e.to_message().0, t);
        }
    }
}
