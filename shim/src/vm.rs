//! The pod's VM as the shim sees it: something that is launched, runs, can be stopped,
//! and ends. [`VmLauncher`] is the seam between the task service and husk-vmm
//! ([`crate::vmm`] is the real one; tests use a fake).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use crate::agent::AgentClient;
use crate::error::Result;
use crate::pod::VmSize;

/// What the pod's VM needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRequest {
    pub pod_id: String,
    pub size: VmSize,
    /// Per-pod directory for sockets, the VM config and logs.
    pub pod_dir: PathBuf,
    /// Directory shared into the guest with virtio-fs (containers' rootfs and volumes).
    pub shared_dir: PathBuf,
    /// The pod's network namespace on the host (None: the pod has loopback only).
    pub netns: Option<PathBuf>,
}

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmExit {
    pub description: String,
    /// The vmm's exit status, when it exited (rather than being killed).
    pub code: Option<i32>,
}

/// A running VM (the vmm process and its helpers).
#[async_trait]
pub trait VmProcess: Send + Sync {
    /// Host pid of the vmm: what containerd sees as the pid of every task in the pod.
    fn pid(&self) -> u32;
    /// Resolves when the VM has ended (any number of callers).
    async fn exited(&self) -> VmExit;
    /// Stops the VM (and its helpers) and waits until it has ended.
    async fn stop(&self);
}

/// A booted VM whose agent answers.
pub struct RunningVm {
    pub process: Arc<dyn VmProcess>,
    pub agent: Arc<dyn AgentClient>,
}

impl std::fmt::Debug for RunningVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningVm")
            .field("pid", &self.process.pid())
            .finish()
    }
}

/// Boots a pod's VM. A launch that fails part-way leaves no process behind.
#[async_trait]
pub trait VmLauncher: Send + Sync {
    async fn launch(&self, req: &VmRequest) -> Result<RunningVm>;
}
