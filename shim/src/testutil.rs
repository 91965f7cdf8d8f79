//! Fakes for the VM, the agent, sharing and events, so the task service is tested without
//! KVM or root.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::agent::*;
use crate::error::{Result, ShimError};
use crate::events::{Event, EventSink};
use crate::share::{RootfsMount, RootfsShare};
use crate::spec::BundleSpec;
use crate::vm::{RunningVm, VmExit, VmLauncher, VmProcess, VmRequest};

#[derive(Default)]
struct FakeProc {
    exit: Option<u32>,
    out: VecDeque<Vec<u8>>,
    stdin: Vec<u8>,
    stdin_closed: bool,
}

/// An in-memory agent: processes exit when the test says so.
#[derive(Default)]
pub struct FakeAgent {
    procs: Mutex<HashMap<ProcessRef, FakeProc>>,
    calls: Mutex<Vec<String>>,
    fail: Mutex<HashMap<String, AgentError>>,
    dead: watch::Sender<bool>,
    oom: Mutex<VecDeque<String>>,
    /// What the next replies say instead of the defaults (a hostile guest's answers).
    pub hostile: Mutex<Hostile>,
    /// The specs create_container received.
    pub specs: Mutex<Vec<Vec<u8>>>,
}

/// Replies a hostile or broken agent gives.
#[derive(Default)]
pub struct Hostile {
    /// health_check fails (the agent crashed but its VM lives).
    pub health_fails: bool,
    /// health_check never answers (a wedged agent) until the VM is stopped.
    pub health_hangs: bool,
    pub stats: Option<ContainerStats>,
    pub pids: Option<Vec<u32>>,
}

impl FakeAgent {
    fn call(&self, name: &str) -> AgentResult<()> {
        self.calls.lock().unwrap().push(name.to_string());
        if *self.dead.borrow() {
            return Err(AgentError::Unavailable("connection closed".into()));
        }
        match self.fail.lock().unwrap().remove(name) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    pub fn fail(&self, call: &str, e: AgentError) {
        self.fail.lock().unwrap().insert(call.into(), e);
    }
    pub fn exit(&self, p: &ProcessRef, code: u32) {
        self.procs
            .lock()
            .unwrap()
            .entry(p.clone())
            .or_default()
            .exit = Some(code);
    }
    pub fn output(&self, p: &ProcessRef, chunk: &[u8]) {
        let mut procs = self.procs.lock().unwrap();
        procs
            .entry(p.clone())
            .or_default()
            .out
            .push_back(chunk.to_vec());
    }
    pub fn stdin(&self, p: &ProcessRef) -> (Vec<u8>, bool) {
        let procs = self.procs.lock().unwrap();
        procs
            .get(p)
            .map(|f| (f.stdin.clone(), f.stdin_closed))
            .unwrap_or_default()
    }
    pub fn oom(&self, cid: &str) {
        self.oom.lock().unwrap().push_back(cid.into());
    }
    pub fn die(&self) {
        self.dead.send_replace(true);
    }
    fn dead(&self) -> bool {
        *self.dead.borrow()
    }
}

#[async_trait]
impl AgentClient for FakeAgent {
    async fn health_check(&self) -> AgentResult<()> {
        self.call("health_check")?;
        let (fails, hangs) = {
            let h = self.hostile.lock().unwrap();
            (h.health_fails, h.health_hangs)
        };
        if hangs {
            let mut dead = self.dead.subscribe();
            let _ = dead.wait_for(|d| *d).await;
            return Err(AgentError::Unavailable("connection closed".into()));
        }
        if fails {
            return Err(AgentError::Unavailable("connection reset by peer".into()));
        }
        Ok(())
    }
    async fn create_sandbox(&self, _req: SandboxRequest) -> AgentResult<()> {
        self.call("create_sandbox")
    }
    async fn configure_network(
        &self,
        iface: &crate::network::Interface,
        _dns: &[String],
    ) -> AgentResult<()> {
        self.call(&format!("configure_network {}", iface.mac_string()))
    }
    async fn create_container(&self, req: ContainerRequest) -> AgentResult<()> {
        self.specs.lock().unwrap().push(req.spec_json.clone());
        self.call(&format!("create_container {}", req.container_id))
    }
    async fn start_container(&self, id: &str) -> AgentResult<u32> {
        self.call(&format!("start_container {id}"))?;
        Ok(100)
    }
    async fn exec_process(&self, req: ExecRequest) -> AgentResult<u32> {
        self.call(&format!("exec_process {}", req.process.exec_id))?;
        Ok(101)
    }
    async fn signal_process(&self, p: &ProcessRef, signal: u32, _all: bool) -> AgentResult<()> {
        self.call(&format!("signal_process {} {signal}", p.container_id))?;
        if signal == 9 || signal == 15 {
            self.exit(p, 128 + signal);
        }
        Ok(())
    }
    async fn wait_process(&self, p: &ProcessRef) -> AgentResult<u32> {
        loop {
            if self.dead() {
                return Err(AgentError::Unavailable("connection closed".into()));
            }
            if let Some(code) = self.procs.lock().unwrap().get(p).and_then(|f| f.exit) {
                return Ok(code);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    async fn write_stdin(&self, p: &ProcessRef, data: &[u8]) -> AgentResult<()> {
        self.call("write_stdin")?;
        let mut procs = self.procs.lock().unwrap();
        procs
            .entry(p.clone())
            .or_default()
            .stdin
            .extend_from_slice(data);
        Ok(())
    }
    async fn close_stdin(&self, p: &ProcessRef) -> AgentResult<()> {
        self.call("close_stdin")?;
        self.procs
            .lock()
            .unwrap()
            .entry(p.clone())
            .or_default()
            .stdin_closed = true;
        Ok(())
    }
    async fn read_output(&self, p: &ProcessRef, s: OutputStream) -> AgentResult<Option<Vec<u8>>> {
        loop {
            if self.dead() {
                return Err(AgentError::Unavailable("connection closed".into()));
            }
            {
                let mut procs = self.procs.lock().unwrap();
                let f = procs.entry(p.clone()).or_default();
                if s == OutputStream::Stdout {
                    if let Some(c) = f.out.pop_front() {
                        return Ok(Some(c));
                    }
                }
                if f.exit.is_some() {
                    return Ok(None);
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    async fn resize_tty(&self, _p: &ProcessRef, w: u32, h: u32) -> AgentResult<()> {
        self.call(&format!("resize_tty {w}x{h}"))
    }
    async fn pause_container(&self, id: &str) -> AgentResult<()> {
        self.call(&format!("pause_container {id}"))
    }
    async fn resume_container(&self, id: &str) -> AgentResult<()> {
        self.call(&format!("resume_container {id}"))
    }
    async fn update_container(&self, id: &str, _r: &[u8]) -> AgentResult<()> {
        self.call(&format!("update_container {id}"))
    }
    async fn stats_container(&self, id: &str) -> AgentResult<ContainerStats> {
        self.call(&format!("stats_container {id}"))?;
        if let Some(s) = self.hostile.lock().unwrap().stats {
            return Ok(s);
        }
        Ok(ContainerStats {
            cpu_usage_usec: 7,
            memory_usage: 4096,
            pids_current: 1,
            ..Default::default()
        })
    }
    async fn list_processes(&self, id: &str) -> AgentResult<Vec<u32>> {
        self.call(&format!("list_processes {id}"))?;
        if let Some(p) = self.hostile.lock().unwrap().pids.clone() {
            return Ok(p);
        }
        Ok(vec![1, 7])
    }
    async fn remove_container(&self, id: &str) -> AgentResult<()> {
        self.call(&format!("remove_container {id}"))
    }
    async fn next_oom_event(&self) -> AgentResult<String> {
        loop {
            if self.dead() {
                return Err(AgentError::Unavailable("connection closed".into()));
            }
            if let Some(c) = self.oom.lock().unwrap().pop_front() {
                return Ok(c);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// A VM that runs until stopped or told to die.
pub struct FakeVm {
    exit: watch::Sender<Option<VmExit>>,
    agent: Arc<FakeAgent>,
}

impl FakeVm {
    pub fn crash(&self) {
        self.agent.die();
        self.exit.send_replace(Some(VmExit {
            description: "was killed by signal 9".into(),
            code: None,
        }));
    }
    /// The vmm exits by itself with `code` (a guest panic is 4).
    pub fn end(&self, description: &str, code: i32) {
        self.agent.die();
        self.exit.send_replace(Some(VmExit {
            description: description.into(),
            code: Some(code),
        }));
    }
    pub fn is_running(&self) -> bool {
        self.exit.borrow().is_none()
    }
}

#[async_trait]
impl VmProcess for FakeVm {
    fn pid(&self) -> u32 {
        4242
    }
    async fn exited(&self) -> VmExit {
        let mut rx = self.exit.subscribe();
        let v = rx.wait_for(Option::is_some).await.map(|v| v.clone());
        v.ok().flatten().unwrap_or(VmExit {
            description: "gone".into(),
            code: None,
        })
    }
    async fn stop(&self) {
        self.agent.die();
        self.exit.send_if_modified(|e| {
            if e.is_some() {
                return false;
            }
            *e = Some(VmExit {
                description: "stopped".into(),
                code: None,
            });
            true
        });
    }
}

/// Launches [`FakeVm`]s with one shared [`FakeAgent`].
pub struct FakeLauncher {
    pub agent: Arc<FakeAgent>,
    pub vm: Arc<FakeVm>,
    pub requests: Mutex<Vec<VmRequest>>,
    pub fail: Mutex<Option<String>>,
    /// How long a boot takes.
    pub boot_time: Mutex<Duration>,
}

impl Default for FakeLauncher {
    fn default() -> Self {
        let agent = Arc::new(FakeAgent::default());
        FakeLauncher {
            vm: Arc::new(FakeVm {
                exit: watch::Sender::new(None),
                agent: agent.clone(),
            }),
            agent,
            requests: Mutex::new(Vec::new()),
            fail: Mutex::new(None),
            boot_time: Mutex::new(Duration::ZERO),
        }
    }
}

#[async_trait]
impl VmLauncher for FakeLauncher {
    async fn launch(&self, req: &VmRequest) -> Result<RunningVm> {
        self.requests.lock().unwrap().push(req.clone());
        let boot_time = *self.boot_time.lock().unwrap();
        tokio::time::sleep(boot_time).await;
        if let Some(msg) = self.fail.lock().unwrap().take() {
            return Err(ShimError::VmStart(msg));
        }
        Ok(RunningVm {
            process: self.vm.clone(),
            agent: self.agent.clone(),
        })
    }
}

/// Records share calls; creates nothing.
#[derive(Default)]
pub struct FakeShare {
    pub calls: Mutex<Vec<String>>,
}

impl RootfsShare for FakeShare {
    fn prepare_pod(&self, pod_dir: &Path) -> Result<PathBuf> {
        self.calls.lock().unwrap().push("prepare_pod".into());
        Ok(pod_dir.join("shared"))
    }
    fn share(
        &self,
        _d: &Path,
        id: &str,
        _b: &Path,
        _r: &[RootfsMount],
        spec: &mut BundleSpec,
    ) -> Result<()> {
        crate::share::rewrite_spec(id, spec)?;
        self.calls.lock().unwrap().push(format!("share {id}"));
        Ok(())
    }
    fn unshare(&self, _d: &Path, id: &str, _b: &Path) -> Result<()> {
        self.calls.lock().unwrap().push(format!("unshare {id}"));
        Ok(())
    }
    fn cleanup_pod(&self, _d: &Path) -> Result<()> {
        self.calls.lock().unwrap().push("cleanup_pod".into());
        Ok(())
    }
}

/// Records events.
#[derive(Default)]
pub struct RecordingEvents {
    pub events: Mutex<Vec<Event>>,
}

impl RecordingEvents {
    pub fn topics(&self) -> Vec<&'static str> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.to_message().0)
            .collect()
    }
    /// Waits (at most 5 s) until an event matches.
    pub async fn wait_for(&self, pred: impl Fn(&Event) -> bool) -> Event {
        for _ in 0..2500 {
            if let Some(e) = self.events.lock().unwrap().iter().find(|e| pred(e)) {
                return e.clone();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("no such event; got {:?}", self.events.lock().unwrap());
    }
}

#[async_trait]
impl EventSink for RecordingEvents {
    async fn publish(&self, event: Event) {
        self.events.lock().unwrap().push(event);
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "husk-shim-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

thread_local! {
    static CAPTURED: std::cell::RefCell<Option<Vec<(log::Level, String)>>> =
        const { std::cell::RefCell::new(None) };
}

/// The test binary's logger: records go to the capture of the thread that logs them, if
/// it has one (see [`capture_logs`]).
struct ThreadLogger;

impl log::Log for ThreadLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        CAPTURED.with(|c| {
            if let Some(v) = c.borrow_mut().as_mut() {
                v.push((r.level(), r.args().to_string()));
            }
        });
    }
    fn flush(&self) {}
}

/// Log records of the calling thread while it lives (a `#[tokio::test]` runs its futures
/// on the test's thread; `spawn_blocking` work is not seen).
pub struct LogCapture(());

pub fn capture_logs() -> LogCapture {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let _ = log::set_logger(&ThreadLogger);
        log::set_max_level(log::LevelFilter::Trace);
    });
    CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
    LogCapture(())
}

impl LogCapture {
    /// The messages logged at `level` so far.
    pub fn at(&self, level: log::Level) -> Vec<String> {
        CAPTURED.with(|c| {
            c.borrow()
                .iter()
                .flatten()
                .filter(|(l, _)| *l == level)
                .map(|(_, m)| m.clone())
                .collect()
        })
    }
}

impl Drop for LogCapture {
    fn drop(&mut self) {
        CAPTURED.with(|c| *c.borrow_mut() = None);
    }
}
