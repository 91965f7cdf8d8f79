//! What the shim needs from husk-agent, as a trait: the real client speaks ttrpc over the
//! VM's vsock ([`crate::vsock`]); tests use an in-memory fake. The calls follow the agent
//! API of issue 4 (create sandbox/container, exec, signal, wait, streams, ...).

use async_trait::async_trait;
use containerd_shim_protos::ttrpc::Code;

/// An agent call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// The agent cannot be reached (connection closed, VM gone).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The agent answered with an error status.
    #[error("{message}")]
    Status { code: Code, message: String },
}

impl AgentError {
    pub fn code(&self) -> Code {
        match self {
            AgentError::Unavailable(_) => Code::UNAVAILABLE,
            AgentError::Status { code, .. } => *code,
        }
    }
}

pub type AgentResult<T> = std::result::Result<T, AgentError>;

/// Which output stream of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// A process as the agent knows it: container id plus exec id ("" for the container's
/// init process).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessRef {
    pub container_id: String,
    pub exec_id: String,
}

impl ProcessRef {
    pub fn init(container_id: &str) -> Self {
        ProcessRef {
            container_id: container_id.into(),
            exec_id: String::new(),
        }
    }
    pub fn exec(container_id: &str, exec_id: &str) -> Self {
        ProcessRef {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
        }
    }
}

impl std::fmt::Display for ProcessRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.exec_id.is_empty() {
            write!(f, "container {}", self.container_id)
        } else {
            write!(
                f,
                "exec {} in container {}",
                self.exec_id, self.container_id
            )
        }
    }
}

/// The pod-wide settings the agent applies once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SandboxRequest {
    pub pod_id: String,
    pub hostname: String,
    /// Name servers for the guest's /etc/resolv.conf (IP addresses).
    pub dns: Vec<String>,
    /// virtio-fs tag under which the pod's shared directory is exported.
    pub shared_fs_tag: String,
}

/// Which standard streams a process has (the agent only plumbs those).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StdioFlags {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub terminal: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRequest {
    pub container_id: String,
    /// The OCI spec (JSON) with root and bind-mount sources rewritten to guest paths.
    pub spec_json: Vec<u8>,
    pub stdio: StdioFlags,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub process: ProcessRef,
    /// The OCI `process` object (JSON) containerd sent.
    pub process_json: Vec<u8>,
    pub stdio: StdioFlags,
}

/// A container's resource usage, as cgroup v2 reports it inside the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContainerStats {
    pub cpu_usage_usec: u64,
    pub cpu_user_usec: u64,
    pub cpu_system_usec: u64,
    pub memory_usage: u64,
    pub memory_limit: u64,
    pub pids_current: u64,
    pub pids_limit: u64,
    pub oom_kills: u64,
}

/// The agent API the shim uses. Every call may fail with [`AgentError::Unavailable`] when
/// the VM is gone.
#[async_trait]
pub trait AgentClient: Send + Sync {
    /// Answers when the agent is up.
    async fn health_check(&self) -> AgentResult<()>;
    async fn create_sandbox(&self, req: SandboxRequest) -> AgentResult<()>;
    /// Gives the guest's interface the pod's (MAC, MTU, addresses, routes) and writes the
    /// pod's /etc/hosts and /etc/resolv.conf (`dns`: nameserver addresses).
    async fn configure_network(
        &self,
        iface: &crate::network::Interface,
        dns: &[String],
    ) -> AgentResult<()>;
    async fn create_container(&self, req: ContainerRequest) -> AgentResult<()>;
    /// Starts the init process; returns its pid in the guest.
    async fn start_container(&self, container_id: &str) -> AgentResult<u32>;
    /// Starts an exec process; returns its pid in the guest.
    async fn exec_process(&self, req: ExecRequest) -> AgentResult<u32>;
    async fn signal_process(&self, p: &ProcessRef, signal: u32, all: bool) -> AgentResult<()>;
    /// Blocks until the process exits; returns its wait status as containerd reports it
    /// (exit code, or 128 + signal).
    async fn wait_process(&self, p: &ProcessRef) -> AgentResult<u32>;
    async fn write_stdin(&self, p: &ProcessRef, data: &[u8]) -> AgentResult<()>;
    async fn close_stdin(&self, p: &ProcessRef) -> AgentResult<()>;
    /// The next chunk of output; `None` at the end of the stream.
    async fn read_output(&self, p: &ProcessRef, s: OutputStream) -> AgentResult<Option<Vec<u8>>>;
    async fn resize_tty(&self, p: &ProcessRef, width: u32, height: u32) -> AgentResult<()>;
    async fn pause_container(&self, container_id: &str) -> AgentResult<()>;
    async fn resume_container(&self, container_id: &str) -> AgentResult<()>;
    /// Applies an OCI `linux.resources` object (JSON).
    async fn update_container(&self, container_id: &str, resources_json: &[u8]) -> AgentResult<()>;
    async fn stats_container(&self, container_id: &str) -> AgentResult<ContainerStats>;
    /// Guest pids of the container's processes.
    async fn list_processes(&self, container_id: &str) -> AgentResult<Vec<u32>>;
    async fn remove_container(&self, container_id: &str) -> AgentResult<()>;
    /// Blocks until a container is OOM-killed; returns its id.
    async fn next_oom_event(&self) -> AgentResult<String>;
}
