//! The real [`VmLauncher`]: one virtiofsd and one husk-vmm process per pod, then the
//! agent over the vmm's vsock socket. A launch that fails part-way kills and reaps what it
//! started.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::agent::{AgentClient, AgentResult};
use crate::config::{Config, FsCache};
use crate::error::{Result, ShimError};
use crate::vm::{RunningVm, VmExit, VmLauncher, VmProcess, VmRequest};
use crate::vsock;

/// The virtio-fs tag of the pod's shared directory.
pub const SHARED_FS_TAG: &str = "husk-shared";
/// The guest's vsock context id (one VM per vmm, so it is always the first free one).
pub const GUEST_CID: u32 = 3;
/// Kernel command line before the config's extra words.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off nomodule";
/// Free page reporting in blocks of 128 KiB (order 5). The guest kernel's default is its
/// pageblock order, 4 MiB in our config (no hugetlbfs, no THP), and a booted guest's free
/// memory is too fragmented for that. Measured on an idle agent VM in the nested test
/// host (guest memory the vmm still held 15 s after boot): no reporting 31.8 MiB, order 9
/// 29.8 MiB, order 5 28.2 MiB, order 3 28.0 MiB with more reports; guest RAM is in 4 KiB
/// host pages (a memfd), so small blocks split nothing on the host.
pub const PAGE_REPORTING_PARAM: &str = "page_reporting.page_reporting_order=5";
/// Pid files in the pod directory, for `shim delete` after the shim was killed.
pub const VMM_PID_FILE: &str = "vmm.pid";
pub const VIRTIOFSD_PID_FILE: &str = "virtiofsd.pid";
/// husk-vmm's exit status when a vCPU triple-faulted.
pub const VMM_EXIT_TRIPLE_FAULT: i32 = 3;
/// Boots a pod gets when its guest triple-faults, or its virtiofsd ends, before the agent
/// answers. Both were seen in the nested test host while it had two vCPUs (a TCG bug with
/// emulated SVM; see ARCHITECTURE.md), not since it has one; on AMD, KVM resets the vCPU
/// after the shutdown, so the vmm cannot show where a guest was. Nothing of the pod ran
/// yet, so a second boot is safe and the warning keeps the event visible.
pub const BOOT_ATTEMPTS: u32 = 2;
/// How long a stopped vmm gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Turns a connected vsock stream into an agent client (ttrpc over the stream).
#[async_trait]
pub trait AgentConnector: Send + Sync {
    async fn connect(&self, stream: UnixStream) -> AgentResult<Arc<dyn AgentClient>>;
}

/// File names inside a pod's directory.
pub fn vsock_socket(pod_dir: &Path) -> PathBuf {
    pod_dir.join("vsock.sock")
}
/// Where the agent's "serving" signal arrives: husk-vmm forwards the guest's connection to
/// host port [`husk_protocol::AGENT_READY_PORT`] to `<vsock socket>_<port>`.
pub fn ready_socket(pod_dir: &Path) -> PathBuf {
    let mut p = vsock_socket(pod_dir).into_os_string();
    p.push(format!("_{}", husk_protocol::AGENT_READY_PORT));
    p.into()
}
/// How often the shim tries the agent before the agent said it serves (an agent that
/// never says so is still found, only later). After the signal: at once.
pub const POLL_BEFORE_READY: Duration = Duration::from_millis(250);
fn virtiofsd_socket(pod_dir: &Path) -> PathBuf {
    pod_dir.join("virtiofsd.sock")
}

/// The husk-vmm launcher.
pub struct HuskVmm {
    cfg: Config,
    connector: Arc<dyn AgentConnector>,
    poll_before_ready: Duration,
}

impl HuskVmm {
    pub fn new(cfg: Config, connector: Arc<dyn AgentConnector>) -> Self {
        HuskVmm {
            cfg,
            connector,
            poll_before_ready: POLL_BEFORE_READY,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    #[cfg(test)]
    pub(crate) fn config_mut(&mut self) -> &mut Config {
        &mut self.cfg
    }

    /// The pod's vm.json as far as its template needs it: a pod with a network namespace
    /// gets one NIC (its tap and MAC are known only once the network is attached, and are
    /// the pod's, not the template's).
    pub fn template_shape(&self, req: &VmRequest) -> serde_json::Value {
        let mut vm = self.vm_config(req);
        if req.netns.is_some() {
            vm["net"] = json!([{ "tap": "" }]);
        }
        vm
    }

    /// husk-vmm's config file for this pod (its `VmConfig`, JSON).
    pub fn vm_config(&self, req: &VmRequest) -> serde_json::Value {
        let mut cmdline = BASE_CMDLINE.to_string();
        if !self.cfg.debug_console {
            // Nobody keeps the console: neither the kernel nor the agent writes to it
            // (each console byte is two VM exits).
            cmdline.push_str(" quiet HUSK_AGENT_QUIET=1");
        }
        if self.cfg.free_page_reporting {
            cmdline.push(' ');
            cmdline.push_str(PAGE_REPORTING_PARAM);
        }
        if !self.cfg.kernel_params.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(&self.cfg.kernel_params);
        }
        let serial = if self.cfg.debug_console {
            json!({ "file": req.pod_dir.join("console.log") })
        } else {
            json!("none")
        };
        json!({
            "kernel": self.cfg.kernel,
            "initrd": self.cfg.rootfs,
            "cmdline": cmdline,
            "vcpus": req.size.vcpus.min(u8::MAX as u32),
            "mem_mib": req.size.memory_mib,
            "serial": serial,
            "vsock": { "guest_cid": GUEST_CID, "socket": vsock_socket(&req.pod_dir) },
            "fs": [{ "tag": SHARED_FS_TAG, "socket": virtiofsd_socket(&req.pod_dir) }],
            "free_page_reporting": self.cfg.free_page_reporting,
        })
    }

    /// Connects to the agent once it serves: right after its signal on `ready`, or by
    /// polling every [`POLL_BEFORE_READY`] without one.
    async fn boot(
        &self,
        req: &VmRequest,
        vm: &Arc<ChildVm>,
        mut ready: Option<UnixListener>,
    ) -> Result<Arc<dyn AgentClient>> {
        let deadline = Instant::now() + Duration::from_secs(self.cfg.boot_timeout_secs);
        let socket = vsock_socket(&req.pod_dir);
        let log = req.pod_dir.join("vmm.log");
        loop {
            if let Some(exit) = vm.has_exited() {
                return Err(ShimError::VmStart(format!(
                    "husk-vmm {}; its log ends: {}",
                    exit.description,
                    log_tail(&log)
                )));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ShimError::VmStart(format!(
                    "the agent did not answer within {} s; vmm log ends: {}",
                    self.cfg.boot_timeout_secs,
                    log_tail(&log)
                )));
            }
            if let Some(l) = &ready {
                match tokio::time::timeout(self.poll_before_ready.min(left), l.accept()).await {
                    Ok(Ok(_)) => {
                        log::debug!("pod {}: the agent says it serves", req.pod_id);
                        ready = None;
                    }
                    Ok(Err(e)) => {
                        log::debug!("pod {}: ready socket: {e}; polling", req.pod_id);
                        ready = None;
                    }
                    Err(_) => {}
                }
            }
            if let Ok(stream) = vsock::connect(&socket, husk_protocol::AGENT_VSOCK_PORT, left).await
            {
                let agent = self.connector.connect(stream).await?;
                agent.health_check().await?;
                return Ok(agent);
            }
            if ready.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[async_trait]
impl VmLauncher for HuskVmm {
    async fn launch(&self, req: &VmRequest) -> Result<RunningVm> {
        let started = Instant::now();
        let mut attempt = 1;
        // Restore from a template when there is one (made now by the first pod of its
        // shape), else boot.
        let mut template = if crate::template::applies(&self.cfg, req) {
            crate::template::ensure(&self.cfg, &self.template_shape(req)).await
        } else {
            None
        };
        let (vm, net, agent) = loop {
            let net = match &req.netns {
                Some(ns) => Some(attach_network(ns).await?),
                None => None,
            };
            let restore_from = template.as_ref().map(|t| t.dir.as_path());
            let (vm, ready) = match self.start_vm(req, net.clone(), restore_from).await {
                Ok(started) => started,
                Err(e) => {
                    if let Some(n) = net {
                        detach_network(n).await;
                    }
                    return Err(e);
                }
            };
            // From here on the vm's watcher detaches the network when the vmm has ended.
            let booted = self.boot(req, &vm, ready).await;
            let _ = std::fs::remove_file(ready_socket(&req.pod_dir));
            match booted {
                Ok(agent) => break (vm, net, agent),
                Err(e) => {
                    vm.stop().await;
                    // A template a VM cannot be restored from may be stale or corrupt:
                    // it goes, and the pod boots instead (nothing of it ran yet).
                    if let Some(t) = template.take() {
                        log::warn!(
                            "pod {}: the VM restored from template {} failed ({e}); \
                             removing the template and booting the VM instead",
                            req.pod_id,
                            t.key
                        );
                        crate::template::discard(&self.cfg, &t, &e.to_string());
                        continue;
                    }
                    let triple_fault = vm
                        .has_exited()
                        .is_some_and(|x| x.code == Some(VMM_EXIT_TRIPLE_FAULT));
                    if (triple_fault || vm.ended_by_helper()) && attempt < BOOT_ATTEMPTS {
                        log::warn!(
                            "pod {}: the VM ended while booting ({e}); booting it again",
                            req.pod_id
                        );
                        attempt += 1;
                        continue;
                    }
                    return Err(e);
                }
            }
        };
        let how = match &template {
            Some(t) => format!("restored from template {}", t.key),
            None => format!("cold-booted, boot attempt {attempt}"),
        };
        let start_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        log::info!(
            "pod {}: the agent answered {start_ms} ms after the launch ({how})",
            req.pod_id
        );
        crate::pod_status::update(&req.pod_dir, |s| {
            s.start_ms = Some(start_ms);
            s.restored = template.is_some();
        });
        if let Some(n) = &net {
            let dns =
                host_nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
            if let Err(e) = agent.configure_network(&n.interface, &dns).await {
                vm.stop().await;
                return Err(ShimError::VmStart(format!(
                    "configuring the guest's network: {e}"
                )));
            }
            log::info!(
                "pod {}: {} ({}, mtu {}, {}) attached to the vm through {}",
                req.pod_id,
                n.interface.name,
                n.interface.mac_string(),
                n.interface.mtu,
                n.interface
                    .addresses
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                n.tap
            );
        }
        Ok(RunningVm { process: vm, agent })
    }
}

impl HuskVmm {
    /// Starts virtiofsd and the vmm (inside the pod's network namespace when it has one).
    /// Also returns the listener for the agent's ready signal, when it could be bound.
    async fn start_vm(
        &self,
        req: &VmRequest,
        net: Option<crate::network::PodNetwork>,
        restore_from: Option<&Path>,
    ) -> Result<(Arc<ChildVm>, Option<UnixListener>)> {
        let dir = &req.pod_dir;
        if let Some(state_dir) = dir.parent() {
            std::fs::create_dir_all(state_dir)
                .map_err(|e| ShimError::io(state_dir.display().to_string(), e))?;
        }
        // A real directory of the shim's, never a symlink planted to elsewhere; what is
        // at the names of its sockets and files is unlinked, never followed.
        crate::poddir::ensure_dir(dir)?;
        let fs_sock = virtiofsd_socket(dir);
        for name in [
            fs_sock.clone(),
            vsock_socket(dir),
            ready_socket(dir),
            dir.join("console.log"),
        ] {
            crate::poddir::remove_entry(&name);
        }
        // Bound before the vmm starts, so the agent's signal cannot come too early. A
        // restored guest sent its signal before the template's snapshot: its agent
        // already serves, and the shim polls it at once.
        let ready = match restore_from {
            Some(_) => None,
            None => match UnixListener::bind(ready_socket(dir)) {
                Ok(l) => Some(l),
                Err(e) => {
                    log::debug!("pod {}: no ready socket ({e}); polling", req.pod_id);
                    None
                }
            },
        };
        let virtiofsd = spawn_logged(
            &self.cfg.virtiofsd,
            &virtiofsd_args(&fs_sock, &req.shared_dir, self.cfg.virtio_fs_cache),
            &dir.join("virtiofsd.log"),
            None,
        )?;
        record_pid(&dir.join(VIRTIOFSD_PID_FILE), &virtiofsd);
        let helper = Helper::new(virtiofsd, dir.join("virtiofsd.log"));
        // virtiofsd must listen before the vmm connects to it.
        let spawned = Instant::now();
        let deadline = spawned + Duration::from_secs(self.cfg.boot_timeout_secs);
        while !fs_sock.exists() {
            if Instant::now() > deadline || helper.has_exited().await {
                helper.stop().await;
                return Err(ShimError::VmStart(format!(
                    "virtiofsd did not create {}; its log ends: {}",
                    fs_sock.display(),
                    log_tail(&dir.join("virtiofsd.log"))
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        log::debug!(
            "pod {}: virtiofsd listening after {} ms",
            req.pod_id,
            spawned.elapsed().as_millis()
        );
        let config_path = dir.join("vm.json");
        let mut config = self.vm_config(req);
        if self.cfg.huge_pages {
            if let Some(d) = crate::ram::prepare(dir) {
                config["mem_dir"] = json!(d);
            }
        }
        if let Some(n) = &net {
            config["net"] = json!([net_entry(
                &n.tap,
                &n.interface.mac_string(),
                self.cfg.net_rate_limit_mbit
            )]);
        }
        if let Some(t) = restore_from {
            config["restore_from"] = json!(t);
        }
        let config = config.to_string();
        if let Err(e) = crate::poddir::write_fresh(&config_path, config.as_bytes()) {
            helper.stop().await;
            return Err(e.into());
        }
        let args = [
            "run".to_string(),
            "--config".into(),
            config_path.display().to_string(),
        ];
        // The vmm runs inside the pod's network namespace: the tap exists by name only
        // there (TUNSETIFF looks the name up in the caller's namespace), and a process
        // that parses guest-controlled data then sees none of the host's interfaces. Its
        // unix sockets (vsock, virtio-fs) are filesystem paths, which a network
        // namespace does not change.
        let netns = net.as_ref().map(|n| n.netns.clone());
        let child = match spawn_logged(&self.cfg.vmm, &args, &dir.join("vmm.log"), netns.as_deref())
        {
            Ok(c) => c,
            Err(e) => {
                helper.stop().await;
                return Err(e);
            }
        };
        record_pid(&dir.join(VMM_PID_FILE), &child);
        Ok((ChildVm::watch(child, vec![helper], net), ready))
    }
}

async fn attach_network(netns: &Path) -> Result<crate::network::PodNetwork> {
    let ns = netns.to_path_buf();
    tokio::task::spawn_blocking(move || crate::network::attach(&ns))
        .await
        .map_err(|e| ShimError::VmStart(format!("pod network: {e}")))?
        .map_err(|e| ShimError::VmStart(format!("pod network: {e}")))
}

/// Removes the tap and the redirects; a failure is logged (the namespace goes with the pod).
async fn detach_network(net: crate::network::PodNetwork) {
    let r = tokio::task::spawn_blocking(move || crate::network::detach(&net)).await;
    match r {
        Ok(Ok(())) => log::info!("pod network detached"),
        Ok(Err(e)) => log::warn!("detaching the pod network: {e}"),
        Err(e) => log::warn!("detaching the pod network: {e}"),
    }
}

/// The nameservers of a resolv.conf, loopback ones left out (they would mean the guest).
pub fn host_nameservers(resolv_conf: &str) -> Vec<String> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|v| v.trim().parse::<std::net::IpAddr>().ok())
        .filter(|ip| !ip.is_loopback())
        .map(|ip| ip.to_string())
        .take(3)
        .collect()
}

fn record_pid(path: &Path, child: &Child) {
    if let Some(pid) = child.id() {
        if let Err(e) = crate::pidfile::record(path, pid) {
            log::warn!("writing {}: {e}", path.display());
        }
    }
}

/// Spawns `program` with stdout and stderr in `log` (killed when dropped), inside the
/// network namespace `netns` when given.
pub(crate) fn spawn_logged(
    program: &Path,
    args: &[String],
    log: &Path,
    netns: Option<&Path>,
) -> Result<Child> {
    let out = crate::poddir::fresh_file(log)?;
    let err = out
        .try_clone()
        .map_err(|e| ShimError::io(log.display().to_string(), e))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    // Kept open until after the spawn: the child joins it between fork and exec.
    let ns_file = match netns {
        Some(p) => {
            Some(crate::network::netns::open(p).map_err(|e| ShimError::VmStart(e.to_string()))?)
        }
        None => None,
    };
    if let Some(f) = &ns_file {
        let fd = f.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only calls
        // setns(2), a plain system call that is async-signal-safe; `fd` stays open in
        // the child (the parent holds `ns_file` until spawn returns; it is CLOEXEC so
        // the vmm does not inherit it).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd
        .spawn()
        .map_err(|e| ShimError::VmStart(format!("spawning {}: {e}", program.display())));
    drop(ns_file);
    child
}

/// virtiofsd's arguments: serve `shared_dir` on `socket`.
pub(crate) fn virtiofsd_args(socket: &Path, shared_dir: &Path, cache: FsCache) -> Vec<String> {
    vec![
        format!("--socket-path={}", socket.display()),
        format!("--shared-dir={}", shared_dir.display()),
        format!("--cache={}", cache.as_str()),
        "--sandbox=namespace".into(),
        "--announce-submounts".into(),
    ]
}

/// The last line of a log file, for error messages.
pub(crate) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(empty)");
    line.chars().take(300).collect()
}

/// A helper process (virtiofsd) that lives as long as the VM, reaped by its own task.
struct Helper {
    /// None while it runs; then how it ended.
    exit: watch::Receiver<Option<String>>,
    kill: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    log: PathBuf,
}

impl Helper {
    fn new(mut child: Child, log: PathBuf) -> Arc<Helper> {
        let (tx, rx) = watch::channel(None);
        let (ktx, krx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let status = tokio::select! {
                s = child.wait() => s,
                // Asked to stop, or the Helper is gone.
                _ = krx => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            let how = match status {
                Ok(s) => describe(s),
                Err(e) => format!("could not be waited for: {e}"),
            };
            let _ = tx.send(Some(how));
        });
        Arc::new(Helper {
            exit: rx,
            kill: std::sync::Mutex::new(Some(ktx)),
            log,
        })
    }
    async fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }
    async fn exited(&self) {
        let mut rx = self.exit.clone();
        let _ = rx.wait_for(Option::is_some).await;
    }
    /// How it ended and the last line of its log, once it has ended.
    fn end_report(&self) -> String {
        let how = self.exit.borrow().clone().unwrap_or_else(|| "ended".into());
        format!("{how}; its log ends: {}", log_tail(&self.log))
    }
    async fn stop(&self) {
        let k = self.kill.lock().ok().and_then(|mut k| k.take());
        if let Some(k) = k {
            let _ = k.send(());
        }
        self.exited().await;
    }
}

/// The vmm child process, reaped by a task that publishes its end.
pub struct ChildVm {
    pid: u32,
    exit: watch::Receiver<Option<VmExit>>,
    /// Set when a helper's end ended the VM: what ended and how.
    cause: Arc<std::sync::Mutex<Option<String>>>,
    helpers: Vec<Arc<Helper>>,
    /// Set once `stop` began: a helper ending then is expected, not a failure.
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl ChildVm {
    fn watch(
        mut child: Child,
        helpers: Vec<Arc<Helper>>,
        net: Option<crate::network::PodNetwork>,
    ) -> Arc<ChildVm> {
        let pid = child.id().unwrap_or(0);
        let (tx, rx) = watch::channel(None);
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Why a helper ended the VM, for the VM's own exit description.
        let cause = Arc::new(std::sync::Mutex::new(None::<String>));
        // Without its virtiofsd the VM is useless: a helper's end ends the VM.
        for h in &helpers {
            let (h, rx, stopping, cause) = (h.clone(), rx.clone(), stopping.clone(), cause.clone());
            tokio::spawn(async move {
                h.exited().await;
                let expected = stopping.load(std::sync::atomic::Ordering::SeqCst);
                if !expected && rx.borrow().is_none() {
                    if let Ok(pid) = i32::try_from(pid) {
                        let report = format!("virtiofsd {}", h.end_report());
                        log::warn!("{report}: stopping the vm");
                        if let Ok(mut c) = cause.lock() {
                            *c = Some(report);
                        }
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
            });
        }
        let vm_cause = cause.clone();
        tokio::spawn(async move {
            let (mut description, code) = match child.wait().await {
                Ok(s) => (describe_vmm(s), s.code()),
                Err(e) => (format!("could not be waited for: {e}"), None),
            };
            if let Some(c) = vm_cause.lock().ok().and_then(|c| c.clone()) {
                description = format!("{description} after {c}");
            }
            // The tap is free once the vmm is gone: teardown before the end is published.
            if let Some(n) = net {
                detach_network(n).await;
            }
            let _ = tx.send(Some(VmExit { description, code }));
        });
        Arc::new(ChildVm {
            pid,
            exit: rx,
            cause,
            helpers,
            stopping,
        })
    }

    fn has_exited(&self) -> Option<VmExit> {
        self.exit.borrow().clone()
    }

    /// Whether a helper (virtiofsd) ending is what ended the VM.
    fn ended_by_helper(&self) -> bool {
        self.cause.lock().map(|c| c.is_some()).unwrap_or(false)
    }
}

/// How husk-vmm ended, with what its exit status means (vmm/src/exit.rs): a guest that
/// panicked, reset or halted (its init, the agent, exited), or triple-faulted is told
/// apart from a vmm that failed or was killed.
pub(crate) fn describe_vmm(s: std::process::ExitStatus) -> String {
    let meaning = match s.code() {
        Some(0) => "the guest reset or halted: its init, the agent, exited or rebooted it",
        Some(1) => "a vmm error",
        Some(VMM_EXIT_TRIPLE_FAULT) => "the guest triple-faulted",
        Some(4) => "guest kernel panic",
        Some(5) => "the vmm was stopped by a signal",
        _ => return describe(s),
    };
    format!("{} ({meaning})", describe(s))
}

pub(crate) fn describe(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "ended".into(),
    }
}

#[async_trait]
impl VmProcess for ChildVm {
    fn pid(&self) -> u32 {
        self.pid
    }

    async fn exited(&self) -> VmExit {
        let mut rx = self.exit.clone();
        let seen = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        };
        seen.unwrap_or_else(|| VmExit {
            description: "ended (watcher gone)".into(),
            code: None,
        })
    }

    async fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if self.has_exited().is_none() {
            if let Ok(pid) = i32::try_from(self.pid) {
                // The watcher has not reaped the child yet, so the pid is still ours.
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                if tokio::time::timeout(STOP_GRACE, self.exited())
                    .await
                    .is_err()
                    && self.has_exited().is_none()
                {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            self.exited().await;
        }
        for h in &self.helpers {
            h.stop().await;
        }
    }
}

/// The vm.json entry of the pod's NIC; with `mbit` > 0 each direction is held to that
/// many Mbit/s by the vmm's token buckets (refilled every 100 ms, a 100 ms burst).
pub fn net_entry(tap: &str, mac: &str, mbit: u64) -> serde_json::Value {
    let mut e = json!({ "tap": tap, "mac": mac });
    if mbit > 0 {
        let bucket = json!({ "bandwidth": {
            "size": mbit.saturating_mul(1_000_000 / 8 / 10),
            "refill_time_ms": 100,
        }});
        e["rx_rate_limiter"] = bucket.clone();
        e["tx_rate_limiter"] = bucket;
    }
    e
}

#[cfg(test)]
#[path = "vmm_tests.rs"]
mod tests;
