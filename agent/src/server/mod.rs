//! The agent API server: ttrpc over vsock in the guest, over a Unix socket on a host.
//! The [`Service`] methods are thin adapters: check the request, call [`core::AgentCore`],
//! map the error to a ttrpc code in one place ([`status`]).

pub mod core;
pub mod entropy;
pub mod reaper;
pub mod sandbox;
pub mod stdio;

use std::path::Path;
use std::sync::Arc;

use husk_protocol::agent::*;
use husk_protocol::agent_ttrpc::{self, Agent};
use ttrpc::{Code, TtrpcContext};

use self::core::{AgentCore, CoreError, Options};
use self::reaper::Reaper;

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address is not `unix://` or `vsock://`.
    #[error("bad listen address {0:?}")]
    Address(String),
    /// ttrpc failed to bind or start.
    #[error("ttrpc on {addr}: {source}")]
    Ttrpc {
        /// The address.
        addr: String,
        /// The error.
        #[source]
        source: ttrpc::Error,
    },
    /// Setup failed.
    #[error("{0}")]
    Setup(String),
}

/// The one mapping from agent errors to ttrpc codes.
pub fn status(e: CoreError) -> ttrpc::Error {
    let code = match &e {
        CoreError::Invalid(_) => Code::INVALID_ARGUMENT,
        CoreError::NotFound(_) => Code::NOT_FOUND,
        CoreError::Exists(_) => Code::ALREADY_EXISTS,
        CoreError::State(_) => Code::FAILED_PRECONDITION,
        CoreError::Engine(crate::engine::EngineError::Spec(_)) => Code::INVALID_ARGUMENT,
        CoreError::Engine(crate::engine::EngineError::NotFound(_)) => Code::NOT_FOUND,
        CoreError::Engine(crate::engine::EngineError::WrongState { .. }) => {
            Code::FAILED_PRECONDITION
        }
        CoreError::Engine(_) | CoreError::Io { .. } => Code::INTERNAL,
    };
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
}

type R<T> = ttrpc::Result<T>;

/// The ttrpc service.
#[derive(Debug)]
pub struct Service {
    core: Arc<AgentCore>,
}

impl Service {
    /// Wraps the agent state.
    pub fn new(core: Arc<AgentCore>) -> Self {
        Self { core }
    }
}

fn empty(r: Result<(), CoreError>) -> R<Empty> {
    r.map(|_| Empty::new()).map_err(status)
}

fn pid(p: u32) -> PidResponse {
    let mut r = PidResponse::new();
    r.pid = p;
    r
}

impl Agent for Service {
    fn check(&self, _: &TtrpcContext, _: Empty) -> R<CheckResponse> {
        let mut r = CheckResponse::new();
        r.serving = true;
        r.agent_version = env!("CARGO_PKG_VERSION").into();
        Ok(r)
    }

    fn get_guest_details(&self, _: &TtrpcContext, _: Empty) -> R<GuestDetailsResponse> {
        Ok(sandbox::guest_details())
    }

    fn create_sandbox(&self, _: &TtrpcContext, req: CreateSandboxRequest) -> R<Empty> {
        empty(sandbox::create_sandbox(self.core.options(), &req))
    }

    fn configure_network(&self, _: &TtrpcContext, req: ConfigureNetworkRequest) -> R<Empty> {
        empty(sandbox::configure_network(self.core.options(), &req))
    }

    fn create_container(&self, _: &TtrpcContext, req: CreateContainerRequest) -> R<Empty> {
        let stdio = req.stdio.clone().unwrap_or_default();
        empty(
            self.core
                .create_container(&req.container_id, &req.spec_json, &stdio),
        )
    }

    fn start_container(&self, _: &TtrpcContext, req: ContainerRequest) -> R<PidResponse> {
        self.core
            .start_container(&req.container_id)
            .map(pid)
            .map_err(status)
    }

    fn remove_container(&self, _: &TtrpcContext, req: ContainerRequest) -> R<Empty> {
        empty(self.core.remove_container(&req.container_id))
    }

    fn exec_process(&self, _: &TtrpcContext, req: ExecProcessRequest) -> R<PidResponse> {
        let stdio = req.stdio.clone().unwrap_or_default();
        sandbox::exec_process(
            &self.core,
            &req.container_id,
            &req.exec_id,
            &req.process_json,
            &stdio,
        )
        .map(pid)
        .map_err(status)
    }

    fn signal_process(&self, _: &TtrpcContext, req: SignalProcessRequest) -> R<Empty> {
        empty(
            self.core
                .signal_process(&req.container_id, &req.exec_id, req.signal, req.all),
        )
    }

    fn wait_process(&self, _: &TtrpcContext, req: ProcessRequest) -> R<WaitProcessResponse> {
        let s = self
            .core
            .wait_process(&req.container_id, &req.exec_id)
            .map_err(status)?;
        let mut r = WaitProcessResponse::new();
        r.status = s;
        Ok(r)
    }

    fn write_stdin(&self, _: &TtrpcContext, req: WriteStdinRequest) -> R<Empty> {
        if req.data.len() > husk_protocol::MAX_REQUEST_BYTES {
            return Err(status(CoreError::Invalid("stdin chunk too large".into())));
        }
        let r = self
            .core
            .with_io(&req.container_id, &req.exec_id, |io| {
                io.write_stdin(&req.data)
            })
            .and_then(|r| {
                r.map_err(|e| CoreError::Io {
                    what: "stdin".into(),
                    source: e,
                })
            });
        empty(r)
    }

    fn close_stdin(&self, _: &TtrpcContext, req: ProcessRequest) -> R<Empty> {
        empty(
            self.core
                .with_io(&req.container_id, &req.exec_id, |io| io.close_stdin()),
        )
    }

    fn read_output(&self, _: &TtrpcContext, req: ReadOutputRequest) -> R<ReadOutputResponse> {
        let max = req.max_len.clamp(1, husk_protocol::MAX_READ_CHUNK) as usize;
        let err = req.stream.enum_value() == Ok(OutputStream::STDERR);
        let data = self
            .core
            .with_io(&req.container_id, &req.exec_id, |io| io.read(err, max))
            .and_then(|r| {
                r.map_err(|e| CoreError::Io {
                    what: "output".into(),
                    source: e,
                })
            })
            .map_err(status)?;
        let mut r = ReadOutputResponse::new();
        r.eof = data.is_empty();
        r.data = data;
        Ok(r)
    }

    fn resize_tty(&self, _: &TtrpcContext, req: ResizeTtyRequest) -> R<Empty> {
        let (w, h) = match (u16::try_from(req.width), u16::try_from(req.height)) {
            (Ok(w), Ok(h)) => (w, h),
            _ => return Err(status(CoreError::Invalid("terminal size".into()))),
        };
        let r = self
            .core
            .with_io(&req.container_id, &req.exec_id, |io| io.resize(w, h))
            .and_then(|r| {
                r.map_err(|e| CoreError::Io {
                    what: "resize".into(),
                    source: e,
                })
            });
        empty(r)
    }

    fn update_container(&self, _: &TtrpcContext, req: UpdateContainerRequest) -> R<Empty> {
        empty(
            self.core
                .update_container(&req.container_id, &req.resources_json),
        )
    }

    fn stats_container(&self, _: &TtrpcContext, req: ContainerRequest) -> R<StatsResponse> {
        let cg = self.core.cgroup(&req.container_id).map_err(status)?;
        Ok(sandbox::stats(&cg))
    }

    fn pause_container(&self, _: &TtrpcContext, req: ContainerRequest) -> R<Empty> {
        empty(sandbox::freeze(&self.core, &req.container_id, true))
    }

    fn resume_container(&self, _: &TtrpcContext, req: ContainerRequest) -> R<Empty> {
        empty(sandbox::freeze(&self.core, &req.container_id, false))
    }

    fn list_processes(&self, _: &TtrpcContext, req: ContainerRequest) -> R<ListProcessesResponse> {
        let pids = self
            .core
            .list_processes(&req.container_id)
            .map_err(status)?;
        let mut r = ListProcessesResponse::new();
        r.pids = pids;
        Ok(r)
    }

    fn get_oom_event(&self, _: &TtrpcContext, _: Empty) -> R<OomEvent> {
        let mut r = OomEvent::new();
        r.container_id = self.core.next_oom();
        Ok(r)
    }
}

/// Serves the agent API at `address` (`unix:///path` or `vsock://-1:1024`) with state
/// under `root`, until the process ends.
pub fn serve(address: &str, root: &Path) -> Result<(), ServerError> {
    if !address.starts_with("unix://") && !address.starts_with("vsock://") {
        return Err(ServerError::Address(address.into()));
    }
    let guest = std::process::id() == 1;
    return_large_buffers();
    // SAFETY: integer-only prctl: orphaned container processes are reparented to us.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1u64, 0u64, 0u64, 0u64) };
    std::fs::create_dir_all(root)
        .map_err(|e| ServerError::Setup(format!("{}: {e}", root.display())))?;
    if let Some(p) = address.strip_prefix("unix://") {
        let _ = std::fs::remove_file(p);
    }
    let exe = std::fs::read_link("/proc/self/exe")
        .map_err(|e| ServerError::Setup(format!("/proc/self/exe: {e}")))?;
    let core = Arc::new(AgentCore::new(
        Options {
            root: root.to_path_buf(),
            exe,
            guest,
        },
        Reaper::start(),
    ));
    let oom = core.clone();
    std::thread::Builder::new()
        .name("oom".into())
        .spawn(move || loop {
            oom.poll_oom();
            std::thread::sleep(std::time::Duration::from_millis(100));
        })
        .map_err(|e| ServerError::Setup(format!("oom thread: {e}")))?;
    let service = agent_ttrpc::create_agent(Arc::new(Service::new(core)));
    let err = |source| ServerError::Ttrpc {
        addr: address.into(),
        source,
    };
    let mut server = ttrpc::Server::new()
        .bind(address)
        .map_err(err)?
        .set_thread_count_max(64)
        .register_service(service);
    server.start().map_err(err)?;
    if address.starts_with("vsock://") {
        notify_ready();
    }
    loop {
        std::thread::park();
    }
}

/// Request buffers (a frame of up to 4 MiB, the decoded message, a spec's copies) come
/// from fresh mappings that go back to the kernel when freed. By default glibc raises its
/// mmap threshold to the largest block freed so far, after which such buffers are carved
/// from each ttrpc thread's arena and kept there: a few large requests left the agent at
/// 80 MiB of RSS, in a guest whose RAM is the pod's (catalogue case 17).
fn return_large_buffers() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tuning; called before the server threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

/// Tells the host the agent serves: a connection to the host's
/// [`husk_protocol::AGENT_READY_PORT`], closed at once. The shim then connects right away
/// instead of polling, and each poll of a guest still booting costs it an interrupt and a
/// reset. Best effort: nobody listening there is no error (the host polls then).
fn notify_ready() {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};
    use std::os::fd::AsRawFd;
    /// VMADDR_CID_HOST: the host, seen from a guest.
    const HOST_CID: u32 = 2;
    if let Ok(fd) = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) {
        let addr = VsockAddr::new(HOST_CID, husk_protocol::AGENT_READY_PORT);
        let _ = connect(fd.as_raw_fd(), &addr);
    }
}
