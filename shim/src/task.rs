//! containerd's task service (shim API v2/v3) as a thin adapter over [`PodService`]:
//! requests in, protobuf out, errors through [`ShimError`]'s one mapping to ttrpc codes.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim_protos::api::{self, Empty};
use containerd_shim_protos::cgroups_v2::metrics::{
    CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::{self, r#async::TtrpcContext};

use crate::agent::ContainerStats;
use crate::error::ShimError;
use crate::events::{timestamp, StdioPaths};
use crate::process::Status;
use crate::service::{CreateRequest, PodService};
use crate::share::RootfsMount;

/// The type URL containerd registers for cgroup v2 metrics.
pub const METRICS_V2_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// The task service containerd talks to.
#[derive(Clone)]
pub struct TaskService {
    pod: Arc<PodService>,
}

impl TaskService {
    pub fn new(pod: Arc<PodService>) -> Self {
        TaskService { pod }
    }
}

type TtrpcResult<T> = ttrpc::Result<T>;

/// Logs a request's duration at debug level when dropped: where a pod's time goes.
struct Timed {
    what: &'static str,
    id: String,
    started: std::time::Instant,
}

impl Timed {
    fn new(what: &'static str, id: &str) -> Timed {
        Timed {
            what,
            id: id.into(),
            started: std::time::Instant::now(),
        }
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        log::debug!(
            "{} {}: {} ms",
            self.what,
            self.id,
            self.started.elapsed().as_millis()
        );
    }
}

fn stdio(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> StdioPaths {
    StdioPaths {
        stdin: stdin.into(),
        stdout: stdout.into(),
        stderr: stderr.into(),
        terminal,
    }
}

/// containerd's stats for a container, from the agent's cgroup v2 figures.
pub fn metrics_any(s: &ContainerStats) -> Result<Any, ShimError> {
    let m = Metrics {
        cpu: Some(CPUStat {
            usage_usec: s.cpu_usage_usec,
            user_usec: s.cpu_user_usec,
            system_usec: s.cpu_system_usec,
            ..Default::default()
        })
        .into(),
        memory: Some(MemoryStat {
            usage: s.memory_usage,
            usage_limit: s.memory_limit,
            ..Default::default()
        })
        .into(),
        pids: Some(PidsStat {
            current: s.pids_current,
            limit: s.pids_limit,
            ..Default::default()
        })
        .into(),
        memory_events: Some(MemoryEvents {
            oom_kill: s.oom_kills,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    let value = m
        .write_to_bytes()
        .map_err(|e| ShimError::InvalidArgument(format!("encoding metrics: {e}")))?;
    Ok(Any {
        type_url: METRICS_V2_TYPE_URL.into(),
        value,
        ..Default::default()
    })
}

#[async_trait]
impl Task for TaskService {
    async fn state(
        &self,
        _: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let s = self.pod.state(&req.id, &req.exec_id).await?;
        let mut resp = api::StateResponse {
            id: s.id,
            exec_id: s.exec_id,
            bundle: s.bundle,
            pid: s.pid,
            status: s.status.to_proto().into(),
            stdin: s.stdio.stdin,
            stdout: s.stdio.stdout,
            stderr: s.stdio.stderr,
            terminal: s.stdio.terminal,
            ..Default::default()
        };
        if let Status::Stopped {
            exit_status,
            exited_at,
        } = s.status
        {
            resp.exit_status = exit_status;
            resp.exited_at = Some(timestamp(exited_at)).into();
        }
        Ok(resp)
    }

    async fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let _t = Timed::new("create", &req.id);
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented("restore from a checkpoint").into());
        }
        let rootfs = req
            .rootfs
            .iter()
            .map(|m| RootfsMount {
                kind: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let pid = self
            .pod
            .create(CreateRequest {
                id: req.id.clone(),
                bundle: PathBuf::from(&req.bundle),
                rootfs,
                stdio: stdio(&req.stdin, &req.stdout, &req.stderr, req.terminal),
            })
            .await?;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let _t = Timed::new("start", &req.id);
        let pid = self.pod.start(&req.id, &req.exec_id).await?;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let _t = Timed::new("delete", &req.id);
        let (pid, exit_status, exited_at) = self.pod.delete(&req.id, &req.exec_id).await?;
        Ok(api::DeleteResponse {
            pid,
            exit_status,
            exited_at: Some(timestamp(exited_at)).into(),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let pids = self.pod.pids(&req.id).await?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| api::ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<Empty> {
        self.pod.pause(&req.id).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<Empty> {
        self.pod.resume(&req.id).await?;
        Ok(Empty::new())
    }

    async fn checkpoint(
        &self,
        _: &TtrpcContext,
        _: api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        Err(ShimError::Unimplemented("checkpoint").into())
    }

    async fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        let _t = Timed::new("kill", &req.id);
        self.pod
            .kill(&req.id, &req.exec_id, req.signal, req.all)
            .await?;
        Ok(Empty::new())
    }

    async fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        if spec.is_empty() {
            return Err(ShimError::InvalidArgument("exec without a process spec".into()).into());
        }
        let io = stdio(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        self.pod.exec(&req.id, &req.exec_id, io, spec).await?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<Empty> {
        self.pod
            .resize_pty(&req.id, &req.exec_id, req.width, req.height)
            .await?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        self.pod.close_io(&req.id, &req.exec_id, req.stdin).await?;
        Ok(Empty::new())
    }

    async fn update(&self, _: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        let resources = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        self.pod.update(&req.id, &resources).await?;
        Ok(Empty::new())
    }

    async fn wait(
        &self,
        _: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let _t = Timed::new("wait", &req.id);
        let (exit_status, exited_at) = self.pod.wait(&req.id, &req.exec_id).await?;
        Ok(api::WaitResponse {
            exit_status,
            exited_at: Some(timestamp(exited_at)).into(),
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let s = self.pod.stats(&req.id).await?;
        Ok(api::StatsResponse {
            stats: Some(metrics_any(&s)?).into(),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let (shim_pid, task_pid) = self.pod.connect(&req.id).await?;
        Ok(api::ConnectResponse {
            shim_pid,
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, _: api::ShutdownRequest) -> TtrpcResult<Empty> {
        let _t = Timed::new("shutdown", "");
        self.pod.shutdown().await;
        Ok(Empty::new())
    }
}
