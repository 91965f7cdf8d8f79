//! The shim binary's three lives (shim v2 protocol): `start` (spawn the pod's server, or
//! find the one already serving the pod, and print its address), the server itself, and
//! `delete` (clean up after a shim that died).
//!
//! The task service is registered under both `containerd.task.v2.Task` (containerd 1.6
//! and 1.7) and `containerd.task.v3.Task` (2.x): the messages are the same. `start`
//! answers with a plain address, which every containerd since 1.4 accepts.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Flags, StartOpts};
use containerd_shim_protos::shim_async::{create_task, Client, Task};
use containerd_shim_protos::ttrpc::r#async::{transport::Listener, Server, Service};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};

use std::time::SystemTime;

use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::Message;

use crate::config::Config;
use crate::events::{timestamp, ContainerdEvents};
use crate::mount::{HostMounts, MountOps, MountShare};
use crate::pidfile;
use crate::pod::PodRole;
use crate::service::{Deps, PodService};
use crate::share::RootfsShare;
use crate::spec::BundleSpec;
use crate::task::TaskService;
use crate::vmm::{HuskVmm, VIRTIOFSD_PID_FILE, VMM_PID_FILE};

pub const TASK_V2: &str = "containerd.task.v2.Task";
pub const TASK_V3: &str = "containerd.task.v3.Task";

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{0}")]
    Shim(#[from] containerd_shim::Error),
    #[error(transparent)]
    Task(#[from] crate::error::ShimError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{context}: {err}")]
    Io {
        context: String,
        #[source]
        err: std::io::Error,
    },
    #[error("ttrpc server: {0}")]
    Ttrpc(#[from] containerd_shim_protos::ttrpc::Error),
    #[error("{0} is not set")]
    Env(&'static str),
    #[error("{0}")]
    Usage(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BootError {
    let context = context.into();
    move |err| BootError::Io { context, err }
}

/// The task service under both API names.
pub fn task_services(task: Arc<dyn Task + Send + Sync>) -> HashMap<String, Service> {
    let mut services = create_task(task.clone());
    if let Some(v3) = create_task(task).remove(TASK_V3) {
        services.insert(TASK_V2.to_string(), v3);
    }
    services
}

/// The bundle directory: `-bundle`, else the working directory containerd gave us.
fn bundle_dir(flags: &Flags) -> Result<PathBuf, BootError> {
    if !flags.bundle.is_empty() {
        return Ok(PathBuf::from(&flags.bundle));
    }
    std::env::current_dir().map_err(io("working directory"))
}

/// `start`: prints the address of the shim that serves this container's pod.
pub async fn start(flags: &Flags) -> Result<String, BootError> {
    let bundle = bundle_dir(flags)?;
    let spec = BundleSpec::load(&bundle)?;
    let grouping = PodRole::of(&flags.id, &spec).pod_id().to_string();
    let opts = StartOpts {
        id: flags.id.clone(),
        publish_binary: flags.publish_binary.clone(),
        address: flags.address.clone(),
        ttrpc_address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        namespace: flags.namespace.clone(),
        debug: flags.debug,
        ..Default::default()
    };
    let address = containerd_shim::spawn(opts, &grouping, Vec::new()).await?;
    std::fs::write(bundle.join("address"), &address).map_err(io("writing the address file"))?;
    Ok(address)
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Binds the pod's socket. `None` when a live shim already serves it (this container
/// joins that shim's pod).
async fn bind(address: &str) -> Result<Option<UnixListener>, BootError> {
    let path = socket_path(address);
    if let Some(dir) = Path::new(path).parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    match UnixListener::bind(path) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if Client::connect(address).await.is_ok() {
                return Ok(None);
            }
            std::fs::remove_file(path).map_err(io(format!("removing stale {path}")))?;
            Ok(Some(
                UnixListener::bind(path).map_err(io(format!("binding {path}")))?,
            ))
        }
        Err(e) => Err(io(format!("binding {path}"))(e)),
    }
}

/// Tells `start` (which reads our stdout until EOF) that the server is up.
fn signal_started() {
    let _ = std::io::stdout().flush();
    // Point stdout at stderr (/dev/null from `start`), closing the pipe.
    let _ = nix::unistd::dup2_stdout(std::io::stderr());
}

/// The real seams: husk-vmm, mounts, containerd's event service.
pub fn host_deps(cfg: &Config, publisher: RemotePublisher, namespace: &str) -> Deps {
    Deps {
        launcher: Arc::new(HuskVmm::new(
            cfg.clone(),
            Arc::new(crate::agent_client::TtrpcConnector),
        )),
        events: Arc::new(ContainerdEvents::new(publisher, namespace)),
        share: Arc::new(MountShare::new(HostMounts)),
    }
}

/// Allocations from 1 MiB up are mapped, not taken from the heap: ttrpc allocates a
/// frame's buffer at the length its header declares (up to 4 MiB) before the bytes
/// arrive, and a mapped buffer costs memory only as they do. With glibc's default, the
/// threshold rises to the largest block freed so far, after which each such buffer is
/// zeroed on the heap: 300 connections that each declared a 4 MiB frame and sent
/// nothing more cost 1.2 GiB (catalogue case 41).
pub fn bound_frame_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a malloc tunable; it is called before the server runs
    // and is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// The server: serves the pod until Shutdown (or SIGTERM), then stops its VM.
pub async fn serve(flags: &Flags) -> Result<(), BootError> {
    bound_frame_memory();
    let cfg = Config::load_default()?;
    // Without containerd's log FIFO (run by hand) the shim logs nowhere; carry on.
    let _ = containerd_shim::logger::init(
        flags.debug,
        cfg.log_level.as_str(),
        &flags.namespace,
        &flags.id,
    );
    let Some(listener) = bind(&flags.socket).await? else {
        log::info!("pod already served at {}", flags.socket);
        signal_started();
        return Ok(());
    };
    let ttrpc_address =
        std::env::var("TTRPC_ADDRESS").map_err(|_| BootError::Env("TTRPC_ADDRESS"))?;
    let publisher = RemotePublisher::new(&ttrpc_address).await?;
    let deps = host_deps(&cfg, publisher, &flags.namespace);
    let pod = PodService::new(cfg, deps);
    let task: Arc<dyn Task + Send + Sync> = Arc::new(TaskService::new(pod.clone()));
    let mut server = Server::new()
        .add_listener(Listener::from(listener))
        .register_service(task_services(task));
    server.start().await?;
    signal_started();
    log::info!("husk shim serving {}", flags.socket);
    let mut term = signal(SignalKind::terminate()).map_err(io("SIGTERM handler"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(io("SIGINT handler"))?;
    tokio::select! {
        _ = pod.wait_exit() => {}
        _ = term.recv() => pod.force_stop("SIGTERM").await,
        _ = int.recv() => pod.force_stop("SIGINT").await,
    }
    // containerd still holds its connection: do not wait for it to go.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), server.shutdown()).await;
    let _ = std::fs::remove_file(socket_path(&flags.socket));
    Ok(())
}

/// `delete`: cleans up after a shim that is gone (killed with -9, or crashed): kills the
/// pod's vmm and virtiofsd if this container booted it, undoes the mounts, and answers
/// containerd with the exit of a killed process.
pub fn delete(flags: &Flags) -> Result<DeleteResponse, BootError> {
    delete_with(flags, &Config::load_default()?)
}

/// [`delete`] with a given config.
pub fn delete_with(flags: &Flags, cfg: &Config) -> Result<DeleteResponse, BootError> {
    let bundle = bundle_dir(flags)?;
    let share = MountShare::new(HostMounts);
    match BundleSpec::load(&bundle) {
        Ok(mut spec) => {
            // A pod id that is not an identifier names no pod directory of ours.
            let role = PodRole::checked(&flags.id, &spec)?;
            let pod_dir = cfg.state_dir.join(role.pod_id());
            share.unshare(&pod_dir, &flags.id, &bundle)?;
            if let Err(e) = crate::poddir::check_dir(&pod_dir) {
                // Not the directory a shim made (a symlink to elsewhere, or gone): none
                // of its pid files, mounts or files are ours to act on.
                log::warn!("pod {}: {e}", role.pod_id());
                crate::poddir::remove(&pod_dir);
            } else if role.boots_vm() {
                for f in [VMM_PID_FILE, VIRTIOFSD_PID_FILE] {
                    pidfile::kill_recorded(&pod_dir.join(f));
                }
                share.cleanup_pod(&pod_dir)?;
                crate::poddir::remove(&pod_dir);
                let root = std::path::Path::new(crate::host_cgroup::CGROUP_ROOT);
                if let Some(path) = spec.cgroups_path().filter(|_| cfg.host_cgroups) {
                    if crate::host_cgroup::is_cgroup2(root) {
                        crate::host_cgroup::remove_leftover(root, path);
                    }
                }
                // The tap and redirects of the pod's network namespace (CNI tears down the
                // namespace later, but until then they would stay).
                let ns = crate::network::namespaces::rewrite_for_guest(&role, &mut spec);
                if let Some(netns) = ns.host_netns.filter(|p| p.exists()) {
                    if let Err(e) = crate::network::detach_leftover(&netns) {
                        log::warn!("pod {}: {e}", role.pod_id());
                    }
                }
            }
        }
        Err(_) => {
            let _ = HostMounts.umount(&bundle.join("rootfs"));
        }
    }
    Ok(DeleteResponse {
        pid: 0,
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: Some(timestamp(SystemTime::now())).into(),
        ..Default::default()
    })
}

/// The whole binary: parses containerd's flags and runs the action.
pub async fn run() -> Result<(), BootError> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let flags = containerd_shim::parse(args.get(1..).unwrap_or_default())?;
    if flags.version {
        println!("containerd-shim-husk-v2 {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let mut out = std::io::stdout();
    match flags.action.as_str() {
        "start" => {
            let address = start(&flags).await?;
            out.write_all(address.as_bytes()).map_err(io("stdout"))?;
            out.flush().map_err(io("stdout"))?;
            Ok(())
        }
        "delete" => {
            let resp = delete(&flags)?;
            let bytes = resp
                .write_to_bytes()
                .map_err(|e| BootError::Shim(containerd_shim::Error::Protobuf(e)))?;
            out.write_all(&bytes).map_err(io("stdout"))?;
            out.flush().map_err(io("stdout"))?;
            Ok(())
        }
        _ => {
            if flags.socket.is_empty() {
                return Err(BootError::Usage("-socket is required to serve".into()));
            }
            serve(&flags).await
        }
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
