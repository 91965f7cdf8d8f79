//! The pod: its VM, its containers and their processes. The task service
//! ([`crate::task`]) translates containerd's requests into calls on [`PodService`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{watch, Mutex};

use crate::agent::{
    AgentClient, AgentError, ContainerRequest, ContainerStats, ExecRequest, ProcessRef,
    SandboxRequest, StdioFlags,
};
use crate::config::Config;
use crate::error::{Result, ShimError};
use crate::events::{Event, EventSink, StdioPaths};
use crate::io::ProcessIo;
use crate::pod::{host_hostname, pod_dns, pod_hostname, vm_size, PodRole};
use crate::process::{Op, Status, StatusCell};
use crate::share::{RootfsMount, RootfsShare};
use crate::spec::BundleSpec;
use crate::vm::{VmLauncher, VmProcess, VmRequest};
use crate::vmm::SHARED_FS_TAG;

/// Exit status reported for processes that were running when their VM died.
pub const VM_DIED_EXIT_STATUS: u32 = 255;
/// How long an exit waits for the process's output to arrive.
const OUTPUT_DRAIN: Duration = Duration::from_secs(30);

/// The seams the pod is built on.
pub struct Deps {
    pub launcher: Arc<dyn VmLauncher>,
    pub events: Arc<dyn EventSink>,
    pub share: Arc<dyn RootfsShare>,
}

/// containerd's Create, minus protobuf.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: Vec<RootfsMount>,
    pub stdio: StdioPaths,
}

/// What State reports.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessState {
    pub id: String,
    pub exec_id: String,
    pub bundle: String,
    pub pid: u32,
    pub status: Status,
    pub stdio: StdioPaths,
}

struct Proc {
    pref: ProcessRef,
    stdio: StdioPaths,
    status: Arc<StatusCell>,
    io: Arc<Mutex<ProcessIo>>,
    exec_spec: Vec<u8>,
}

impl Proc {
    fn new(pref: ProcessRef, stdio: StdioPaths, exec_spec: Vec<u8>) -> Proc {
        Proc {
            pref,
            stdio,
            status: Arc::new(StatusCell::default()),
            io: Arc::new(Mutex::new(ProcessIo::default())),
            exec_spec,
        }
    }
}

struct Container {
    bundle: PathBuf,
    role: PodRole,
    init: Proc,
    execs: HashMap<String, Proc>,
}

enum VmState {
    NotStarted,
    Running {
        process: Arc<dyn VmProcess>,
        agent: Arc<dyn AgentClient>,
    },
    Dead {
        reason: String,
    },
}

struct PodState {
    pod_id: Option<String>,
    vm: VmState,
    vm_pid: u32,
    containers: HashMap<String, Container>,
}

impl PodState {
    fn container(&self, id: &str) -> Result<&Container> {
        self.containers
            .get(id)
            .ok_or_else(|| ShimError::NotFound(format!("container {id}")))
    }

    fn process(&self, id: &str, exec_id: &str) -> Result<&Proc> {
        let c = self.container(id)?;
        if exec_id.is_empty() {
            return Ok(&c.init);
        }
        c.execs
            .get(exec_id)
            .ok_or_else(|| ShimError::NotFound(format!("exec {exec_id} in container {id}")))
    }

    fn agent(&self) -> Result<Arc<dyn AgentClient>> {
        match &self.vm {
            VmState::Running { agent, .. } => Ok(agent.clone()),
            VmState::NotStarted => Err(ShimError::VmGone("not started".into())),
            VmState::Dead { reason } => Err(ShimError::VmGone(reason.clone())),
        }
    }
}

/// How the agent's health is checked (see [`Config::health_check_interval_secs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Between checks; zero turns the checks off.
    pub interval: std::time::Duration,
    /// How long one check may take.
    pub timeout: std::time::Duration,
    /// Failed or timed-out checks in a row that make the VM dead.
    pub failures: u32,
}

impl HealthPolicy {
    pub fn of(cfg: &Config) -> HealthPolicy {
        HealthPolicy {
            interval: Duration::from_secs(cfg.health_check_interval_secs),
            timeout: Duration::from_secs(cfg.health_check_timeout_secs),
            failures: cfg.health_check_failures.max(1),
        }
    }
}

/// One pod: the shim's whole state.
pub struct PodService {
    cfg: Config,
    deps: Deps,
    health: HealthPolicy,
    state: Mutex<PodState>,
    /// Serialises creates.
    creating: Mutex<()>,
    /// The pod's host cgroup, once joined (see `host_cgroup`).
    host_cgroup: std::sync::Mutex<Option<crate::host_cgroup::HostCgroup>>,
    exit: watch::Sender<bool>,
}

impl PodService {
    pub fn new(cfg: Config, deps: Deps) -> Arc<PodService> {
        let health = HealthPolicy::of(&cfg);
        PodService::with_health(cfg, deps, health)
    }

    /// [`PodService::new`] with a health policy of the caller's (tests use milliseconds).
    pub fn with_health(cfg: Config, deps: Deps, health: HealthPolicy) -> Arc<PodService> {
        Arc::new(PodService {
            cfg,
            deps,
            health,
            state: Mutex::new(PodState {
                pod_id: None,
                vm: VmState::NotStarted,
                vm_pid: 0,
                containers: HashMap::new(),
            }),
            creating: Mutex::new(()),
            host_cgroup: std::sync::Mutex::new(None),
            exit: watch::Sender::new(false),
        })
    }

    /// Resolves when the shim should exit (Shutdown with no containers left).
    pub async fn wait_exit(&self) {
        let mut rx = self.exit.subscribe();
        let _ = rx.wait_for(|e| *e).await;
    }

    fn pod_dir(&self, pod_id: &str) -> PathBuf {
        self.cfg.state_dir.join(pod_id)
    }

    pub async fn create(self: &Arc<Self>, req: CreateRequest) -> Result<u32> {
        let mut spec = BundleSpec::load(&req.bundle)?;
        let role = PodRole::checked(&req.id, &spec)?;
        // What the share would refuse is refused before a VM boots for it.
        crate::mount::check_rootfs_mounts(&req.rootfs)?;
        crate::share::rewrite_spec(&req.id, &mut spec.clone())?;
        let guest_ns = crate::network::namespaces::rewrite_for_guest(&role, &mut spec);
        if let Some(ns) = guest_ns.host_netns.as_deref() {
            if crate::network::netns::is_own(ns) {
                return Err(ShimError::InvalidArgument(format!(
                    "network namespace {} is the host's own: a pod needs a namespace of its own",
                    ns.display()
                )));
            }
        }
        if role.boots_vm() {
            match &guest_ns.host_netns {
                Some(ns) => log::info!("pod {}: network namespace {}", role.pod_id(), ns.display()),
                None => log::info!(
                    "pod {}: no network namespace in the spec: the pod has loopback only",
                    role.pod_id()
                ),
            }
        }
        let pod_id = role.pod_id().to_string();
        let pod_dir = self.pod_dir(&pod_id);
        // Creates run one at a time (a member's create waits for its sandbox's boot), but
        // the state lock is never held across a boot or an agent call, so State and
        // friends answer while a VM boots.
        let _one_at_a_time = self.creating.lock().await;
        {
            let st = self.state.lock().await;
            if st.containers.contains_key(&req.id) {
                return Err(ShimError::AlreadyExists(format!("container {}", req.id)));
            }
            if let Some(serving) = &st.pod_id {
                if *serving != pod_id {
                    return Err(ShimError::InvalidArgument(format!(
                        "container {} belongs to pod {pod_id}, this shim serves pod {serving}",
                        req.id
                    )));
                }
            }
            if role.boots_vm() && !matches!(st.vm, VmState::NotStarted) {
                return Err(ShimError::AlreadyExists(format!("vm of pod {pod_id}")));
            }
        }
        if role.boots_vm() {
            self.make_pod_dir(&pod_dir)?;
            if let Err(e) = self.join_host_cgroup(&spec, &pod_id) {
                self.remove_pod(&pod_dir);
                return Err(e);
            }
            let shared_dir = match self.deps.share.prepare_pod(&pod_dir) {
                Ok(d) => d,
                Err(e) => {
                    self.remove_pod(&pod_dir);
                    return Err(e);
                }
            };
            let vm_req = VmRequest {
                pod_id: pod_id.clone(),
                size: vm_size(&spec, &self.cfg),
                pod_dir: pod_dir.clone(),
                shared_dir,
                netns: guest_ns.host_netns.clone(),
            };
            let vm = match self.deps.launcher.launch(&vm_req).await {
                Ok(vm) => vm,
                Err(e) => {
                    self.remove_pod(&pod_dir);
                    return Err(e);
                }
            };
            let sandbox = SandboxRequest {
                pod_id: pod_id.clone(),
                hostname: pod_hostname(&spec, host_hostname),
                dns: pod_dns(&spec),
                shared_fs_tag: SHARED_FS_TAG.into(),
            };
            let t = std::time::Instant::now();
            let made = vm.agent.create_sandbox(sandbox).await;
            log::debug!(
                "pod {pod_id}: sandbox set up in {} ms",
                t.elapsed().as_millis()
            );
            if let Err(e) = made {
                vm.process.stop().await;
                self.remove_pod(&pod_dir);
                return Err(e.into());
            }
            let mut st = self.state.lock().await;
            st.pod_id = Some(pod_id.clone());
            st.vm_pid = vm.process.pid();
            st.vm = VmState::Running {
                process: vm.process.clone(),
                agent: vm.agent.clone(),
            };
            self.watch_vm(vm.process, vm.agent, pod_dir.clone());
        }
        let agent = self.state.lock().await.agent()?;
        if let Err(e) =
            self.deps
                .share
                .share(&pod_dir, &req.id, &req.bundle, &req.rootfs, &mut spec)
        {
            // What was mounted before the failure goes, and a VM booted for this
            // container alone goes with it.
            let _ = self.deps.share.unshare(&pod_dir, &req.id, &req.bundle);
            if role.boots_vm() {
                let process = self
                    .mark_vm_dead("its first container could not be shared")
                    .await;
                self.stop_process(process, &pod_dir).await;
            }
            return Err(e);
        }
        let stdio = flags(&req.stdio);
        let creq = ContainerRequest {
            container_id: req.id.clone(),
            spec_json: spec.to_bytes(),
            stdio,
        };
        let t = std::time::Instant::now();
        let made = agent.create_container(creq).await;
        log::debug!(
            "container {}: created in {} ms",
            req.id,
            t.elapsed().as_millis()
        );
        if let Err(e) = made {
            let _ = self.deps.share.unshare(&pod_dir, &req.id, &req.bundle);
            if role.boots_vm() {
                let process = self.mark_vm_dead("its first container failed").await;
                self.stop_process(process, &pod_dir).await;
            }
            return Err(e.into());
        }
        let pref = ProcessRef::init(&req.id);
        let init = Proc::new(pref.clone(), req.stdio.clone(), Vec::new());
        *init.io.lock().await = ProcessIo::start(agent, &pref, &req.stdio);
        let mut st = self.state.lock().await;
        let pid = st.vm_pid;
        st.containers.insert(
            req.id.clone(),
            Container {
                bundle: req.bundle.clone(),
                role,
                init,
                execs: HashMap::new(),
            },
        );
        drop(st);
        self.deps
            .events
            .publish(Event::Create {
                container_id: req.id,
                bundle: req.bundle.display().to_string(),
                pid,
                stdio: req.stdio,
            })
            .await;
        Ok(pid)
    }

    /// Creates the pod's directory (see [`crate::poddir`]: never one planted there).
    fn make_pod_dir(&self, pod_dir: &std::path::Path) -> Result<()> {
        std::fs::create_dir_all(&self.cfg.state_dir)
            .map_err(|e| ShimError::io(self.cfg.state_dir.display().to_string(), e))?;
        crate::poddir::ensure_dir(pod_dir)?;
        Ok(())
    }

    /// Undoes the pod's sharing and removes its directory (sockets, logs, vm.json).
    fn remove_pod(&self, pod_dir: &std::path::Path) {
        let _ = self.deps.share.cleanup_pod(pod_dir);
        crate::poddir::remove(pod_dir);
        // The vmm and virtiofsd are gone: the shim leaves the pod's cgroup, which goes.
        let joined = self.host_cgroup.lock().ok().and_then(|mut c| c.take());
        if let Some(cg) = joined {
            cg.leave();
        }
    }

    /// Moves the shim into the sandbox's host cgroup before it starts the pod's processes
    /// (they inherit it). A host without cgroup v2 or a spec without `cgroupsPath` keeps
    /// them where the shim is; a cgroup that cannot be made fails the create, as runc's
    /// would.
    fn join_host_cgroup(&self, spec: &BundleSpec, pod_id: &str) -> Result<()> {
        let Some(path) = spec.cgroups_path().filter(|_| self.cfg.host_cgroups) else {
            return Ok(());
        };
        let root = Path::new(crate::host_cgroup::CGROUP_ROOT);
        if !crate::host_cgroup::is_cgroup2(root) {
            log::warn!(
                "pod {pod_id}: {} is not cgroup v2: the pod's processes stay in the shim's cgroup, not {path}",
                root.display()
            );
            return Ok(());
        }
        let cg = crate::host_cgroup::HostCgroup::join(root, path)?;
        log::info!("pod {pod_id}: host cgroup {}", cg.dir().display());
        if let Ok(mut slot) = self.host_cgroup.lock() {
            *slot = Some(cg);
        }
        Ok(())
    }

    /// Publishes the end of the VM to every live process, cleans up the pod's mounts and
    /// directory, forwards OOM kills as they come, and checks the agent's health.
    fn watch_vm(
        self: &Arc<Self>,
        process: Arc<dyn VmProcess>,
        agent: Arc<dyn AgentClient>,
        pod_dir: PathBuf,
    ) {
        self.watch_agent_health(process.clone(), agent.clone(), pod_dir.clone());
        let me = self.clone();
        tokio::spawn(async move {
            let exit = process.exited().await;
            let mut st = me.state.lock().await;
            // A VM the shim stopped (health check, delete) keeps the reason it gave.
            let reason = match &st.vm {
                VmState::Dead { reason } => reason.clone(),
                _ => format!("vmm {}", exit.description),
            };
            log::warn!("pod vm ended: {reason}");
            if let VmState::Running { .. } = st.vm {
                st.vm = VmState::Dead {
                    reason: reason.clone(),
                };
            }
            let pid = st.vm_pid;
            let mut exits = Vec::new();
            for (cid, c) in &st.containers {
                for p in std::iter::once(&c.init).chain(c.execs.values()) {
                    if p.status.exit(VM_DIED_EXIT_STATUS) {
                        exits.push(exit_event(cid, &p.pref, pid, &p.status));
                    }
                }
            }
            drop(st);
            for e in exits {
                me.deps.events.publish(e).await;
            }
            // Reaps the helpers (virtiofsd) too.
            process.stop().await;
            // Nothing serves the pod's mounts, sockets and files any more; Delete finds
            // them gone (each step is idempotent).
            me.remove_pod(&pod_dir);
        });
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok(container_id) = agent.next_oom_event().await {
                // The id is the guest's word: only a container of this pod gets a TaskOOM.
                if !me.state.lock().await.containers.contains_key(&container_id) {
                    log::warn!(
                        "the agent reported an OOM kill of {:?}, which is no container of this pod: ignored",
                        container_id.chars().take(80).collect::<String>()
                    );
                    continue;
                }
                me.deps.events.publish(Event::Oom { container_id }).await;
            }
        });
    }

    /// Every `health_check_interval_secs` the agent's Check, bounded by
    /// `health_check_timeout_secs`; after `health_check_failures` failures or timeouts in
    /// a row the VM is declared dead with that reason and stopped, and the VM's end
    /// (`watch_vm`) does the rest: TaskExit for every process, cleanup.
    fn watch_agent_health(
        self: &Arc<Self>,
        process: Arc<dyn VmProcess>,
        agent: Arc<dyn AgentClient>,
        pod_dir: PathBuf,
    ) {
        let policy = self.health;
        if policy.interval.is_zero() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut failed = 0u32;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(policy.interval) => {}
                    _ = process.exited() => return,
                }
                // A VM the shim is stopping anyway (delete, shutdown) is not checked.
                if !matches!(me.state.lock().await.vm, VmState::Running { .. }) {
                    return;
                }
                let result = tokio::time::timeout(policy.timeout, agent.health_check()).await;
                let passed = matches!(result, Ok(Ok(())));
                failed = if passed { 0 } else { failed + 1 };
                // For `husk ps` and `husk metrics`; not once the VM has ended (its pod
                // directory is being removed).
                if matches!(me.state.lock().await.vm, VmState::Running { .. }) {
                    crate::pod_status::update(&pod_dir, |s| {
                        s.health_checks += 1;
                        s.health_failures = failed;
                    });
                }
                let last = match result {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {} ms", policy.timeout.as_millis()),
                };
                log::warn!(
                    "agent health check failed ({failed} of {} allowed in a row): {last}",
                    policy.failures
                );
                if failed < policy.failures {
                    continue;
                }
                let reason =
                    format!("the agent failed {failed} health checks in a row (last: {last})");
                log::error!("{reason}: stopping the vm");
                if me.mark_vm_dead(&reason).await.is_some() {
                    process.stop().await;
                }
                return;
            }
        });
    }

    /// Marks the VM dead (under the state lock, briefly); returns its process to stop.
    async fn mark_vm_dead(&self, why: &str) -> Option<Arc<dyn VmProcess>> {
        let mut st = self.state.lock().await;
        let process = match &st.vm {
            VmState::Running { process, .. } => Some(process.clone()),
            _ => None,
        };
        if process.is_some() {
            st.vm = VmState::Dead { reason: why.into() };
        }
        process
    }

    /// Stops the VM process and undoes the pod's sharing, without the state lock.
    async fn stop_process(&self, process: Option<Arc<dyn VmProcess>>, pod_dir: &std::path::Path) {
        if let Some(p) = process {
            p.stop().await;
        }
        self.remove_pod(pod_dir);
    }

    async fn stop_vm(&self, why: &str) {
        let process = self.mark_vm_dead(why).await;
        let pod = self.state.lock().await.pod_id.clone();
        if let Some(pod) = pod {
            self.stop_process(process, &self.pod_dir(&pod)).await;
        } else if let Some(p) = process {
            p.stop().await;
        }
    }

    pub async fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<u32> {
        let st = self.state.lock().await;
        let p = st.process(id, exec_id)?;
        p.status.get().check(&p.pref, Op::Start)?;
        let agent = st.agent()?;
        let (pref, status, io) = (p.pref.clone(), p.status.clone(), p.io.clone());
        let exec_req = (!exec_id.is_empty()).then(|| ExecRequest {
            process: pref.clone(),
            process_json: p.exec_spec.clone(),
            stdio: flags(&p.stdio),
        });
        let stdio = p.stdio.clone();
        let pid = st.vm_pid;
        drop(st);
        match exec_req {
            None => {
                agent.start_container(id).await?;
            }
            Some(req) => {
                agent.exec_process(req).await?;
                *io.lock().await = ProcessIo::start(agent.clone(), &pref, &stdio);
            }
        }
        status.set(Status::Running);
        let event = if exec_id.is_empty() {
            Event::Start {
                container_id: id.into(),
                pid,
            }
        } else {
            Event::ExecStarted {
                container_id: id.into(),
                exec_id: exec_id.into(),
                pid,
            }
        };
        self.deps.events.publish(event).await;
        let events = self.deps.events.clone();
        tokio::spawn(async move {
            let code = match agent.wait_process(&pref).await {
                // A wait status is 0-255 (128 + signal for a killed process): anything
                // else is the guest's invention.
                Ok(c) if c > 255 => {
                    log::warn!("the agent reported exit status {c} for {pref}: reporting 255");
                    VM_DIED_EXIT_STATUS
                }
                Ok(c) => c,
                Err(_) => VM_DIED_EXIT_STATUS,
            };
            {
                let mut io = io.lock().await;
                io.drain(OUTPUT_DRAIN).await;
                // Releases a stdin reader still waiting for containerd's side.
                io.close_stdin();
            }
            if status.exit(code) {
                events
                    .publish(exit_event(&pref.container_id, &pref, pid, &status))
                    .await;
            }
        });
        Ok(pid)
    }

    pub async fn state(&self, id: &str, exec_id: &str) -> Result<ProcessState> {
        let st = self.state.lock().await;
        let c = st.container(id)?;
        let p = st.process(id, exec_id)?;
        Ok(ProcessState {
            id: id.into(),
            exec_id: exec_id.into(),
            bundle: c.bundle.display().to_string(),
            pid: st.vm_pid,
            status: p.status.get(),
            stdio: p.stdio.clone(),
        })
    }

    pub async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let (agent, pref) = self.checked(id, exec_id, Op::Kill).await?;
        agent.signal_process(&pref, signal, all).await?;
        Ok(())
    }

    /// The agent and the process, once `op` is allowed on it.
    async fn checked(
        &self,
        id: &str,
        exec_id: &str,
        op: Op,
    ) -> Result<(Arc<dyn AgentClient>, ProcessRef)> {
        let st = self.state.lock().await;
        let p = st.process(id, exec_id)?;
        p.status.get().check(&p.pref, op)?;
        Ok((st.agent()?, p.pref.clone()))
    }

    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        stdio: StdioPaths,
        spec_json: Vec<u8>,
    ) -> Result<()> {
        if exec_id.is_empty() {
            return Err(ShimError::InvalidArgument("empty exec id".into()));
        }
        let mut st = self.state.lock().await;
        let c = st.container(id)?;
        c.init.status.get().check(&c.init.pref, Op::Exec)?;
        if c.execs.contains_key(exec_id) {
            return Err(ShimError::AlreadyExists(format!(
                "exec {exec_id} in container {id}"
            )));
        }
        let p = Proc::new(ProcessRef::exec(id, exec_id), stdio, spec_json);
        if let Some(c) = st.containers.get_mut(id) {
            c.execs.insert(exec_id.into(), p);
        }
        drop(st);
        self.deps
            .events
            .publish(Event::ExecAdded {
                container_id: id.into(),
                exec_id: exec_id.into(),
            })
            .await;
        Ok(())
    }

    pub async fn pause(&self, id: &str) -> Result<()> {
        let (agent, _) = self.checked(id, "", Op::Pause).await?;
        agent.pause_container(id).await?;
        self.set_status(id, Status::Paused).await;
        self.deps
            .events
            .publish(Event::Paused {
                container_id: id.into(),
            })
            .await;
        Ok(())
    }

    pub async fn resume(&self, id: &str) -> Result<()> {
        let (agent, _) = self.checked(id, "", Op::Resume).await?;
        agent.resume_container(id).await?;
        self.set_status(id, Status::Running).await;
        self.deps
            .events
            .publish(Event::Resumed {
                container_id: id.into(),
            })
            .await;
        Ok(())
    }

    async fn set_status(&self, id: &str, s: Status) {
        if let Ok(c) = self.state.lock().await.container(id) {
            c.init.status.set(s);
        }
    }

    pub async fn pids(&self, id: &str) -> Result<Vec<u32>> {
        let (agent, _) = self.checked(id, "", Op::Inspect).await?;
        Ok(agent.list_processes(id).await?)
    }

    pub async fn stats(&self, id: &str) -> Result<ContainerStats> {
        let (agent, _) = self.checked(id, "", Op::Inspect).await?;
        Ok(agent.stats_container(id).await?)
    }

    pub async fn update(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        let (agent, _) = self.checked(id, "", Op::Update).await?;
        Ok(agent.update_container(id, resources_json).await?)
    }

    pub async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let (agent, pref) = self.checked(id, exec_id, Op::ResizePty).await?;
        Ok(agent.resize_tty(&pref, width, height).await?)
    }

    pub async fn close_io(&self, id: &str, exec_id: &str, stdin: bool) -> Result<()> {
        let io = self.state.lock().await.process(id, exec_id)?.io.clone();
        if stdin {
            io.lock().await.close_stdin();
        }
        Ok(())
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<(u32, SystemTime)> {
        let status = self.state.lock().await.process(id, exec_id)?.status.clone();
        Ok(status.wait().await)
    }

    /// Deletes an exec or a container. Returns (pid, exit status, exit time).
    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<(u32, u32, SystemTime)> {
        let mut st = self.state.lock().await;
        let pid = st.vm_pid;
        let p = st.process(id, exec_id)?;
        let status = p.status.get();
        status.check(&p.pref, Op::Delete)?;
        let (exit_status, exited_at) = match status {
            Status::Stopped {
                exit_status,
                exited_at,
            } => (exit_status, exited_at),
            _ => (0, SystemTime::now()),
        };
        if !exec_id.is_empty() {
            if let Some(c) = st.containers.get_mut(id) {
                c.execs.remove(exec_id);
            }
            return Ok((pid, exit_status, exited_at));
        }
        let agent = st.agent();
        drop(st);
        match agent {
            Ok(agent) => match agent.remove_container(id).await {
                Ok(()) | Err(AgentError::Unavailable(_)) => {}
                Err(e) => return Err(e.into()),
            },
            Err(ShimError::VmGone(_)) => {}
            Err(e) => return Err(e),
        }
        let (c, pod) = {
            let mut st = self.state.lock().await;
            let Some(c) = st.containers.remove(id) else {
                return Err(ShimError::NotFound(format!("container {id}")));
            };
            (c, st.pod_id.clone())
        };
        if let Some(pod) = pod {
            if let Err(e) = self.deps.share.unshare(&self.pod_dir(&pod), id, &c.bundle) {
                log::warn!("unsharing {id}: {e}");
            }
        }
        if c.role.boots_vm() {
            self.stop_vm("its sandbox was deleted").await;
        }
        self.deps
            .events
            .publish(Event::Delete {
                container_id: id.into(),
                pid,
                exit_status,
                exited_at,
            })
            .await;
        Ok((pid, exit_status, exited_at))
    }

    /// containerd's Connect: (shim pid, task pid).
    pub async fn connect(&self, id: &str) -> Result<(u32, u32)> {
        let st = self.state.lock().await;
        st.container(id)?;
        Ok((std::process::id(), st.vm_pid))
    }

    /// Stops the VM now (the shim was told to go): every live process gets its TaskExit.
    pub async fn force_stop(&self, why: &str) {
        log::info!("{why}: stopping the pod");
        self.stop_vm(why).await;
        self.exit.send_replace(true);
    }

    /// containerd's Shutdown: the shim exits once no container is left.
    pub async fn shutdown(&self) -> bool {
        if !self.state.lock().await.containers.is_empty() {
            return false;
        }
        self.stop_vm("shim shutdown").await;
        self.exit.send_replace(true);
        true
    }
}

fn flags(s: &StdioPaths) -> StdioFlags {
    StdioFlags {
        stdin: !s.stdin.is_empty(),
        stdout: !s.stdout.is_empty(),
        stderr: !s.stderr.is_empty() && !s.terminal,
        terminal: s.terminal,
    }
}

fn exit_event(container_id: &str, pref: &ProcessRef, pid: u32, status: &StatusCell) -> Event {
    let (exit_status, exited_at) = match status.get() {
        Status::Stopped {
            exit_status,
            exited_at,
        } => (exit_status, exited_at),
        _ => (VM_DIED_EXIT_STATUS, SystemTime::now()),
    };
    Event::Exit {
        container_id: container_id.into(),
        id: if pref.exec_id.is_empty() {
            container_id.into()
        } else {
            pref.exec_id.clone()
        },
        pid,
        exit_status,
        exited_at,
    }
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
