//! Helpers shared by the agent's integration tests: a real `husk-agent serve` process on a
//! Unix socket, its generated ttrpc client, and busybox root filesystems and specs.

#![allow(dead_code)] // each test crate uses some of these
#![allow(clippy::unwrap_used)] // test helpers panic on setup failure

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use husk_protocol::agent::*;
use husk_protocol::agent_ttrpc::AgentClient;
use ttrpc::context;

/// A running `husk-agent serve`, killed and its directory removed on drop.
pub struct Server {
    /// The agent process.
    pub child: Child,
    /// Its scratch directory (socket, state root).
    pub dir: PathBuf,
    /// The socket.
    pub sock: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How a test agent is started.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// In the test's own namespaces.
    Plain,
    /// In a private mount namespace where `/sys/fs/cgroup` is the cgroup2 hierarchy
    /// (on a hybrid host, its `unified` mount): containers get a v2 cgroup there.
    Cgroup2,
}

/// Starts `husk-agent serve` on a fresh socket and connects to it.
pub fn start_server(name: &str) -> (Server, AgentClient) {
    start_server_with(name, Launch::Plain)
}

/// Starts `husk-agent serve` as `how` says and connects to it.
pub fn start_server_with(name: &str, how: Launch) -> (Server, AgentClient) {
    let dir = std::env::temp_dir().join(format!("husk-api-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("agent.sock");
    let agent = env!("CARGO_BIN_EXE_husk-agent");
    let mut cmd = match how {
        Launch::Plain => Command::new(agent),
        Launch::Cgroup2 => {
            // unshare and sh exec in place: the child's pid is the agent's.
            let mut c = Command::new("unshare");
            c.args(["-m", "--propagation", "private", "sh", "-c"])
                .arg(format!(
                    "mount --bind {} /sys/fs/cgroup && exec \"$0\" \"$@\"",
                    cgroup2_mount().unwrap().display()
                ))
                .arg(agent);
            c
        }
    };
    let child = cmd
        .arg("serve")
        .arg("--address")
        .arg(format!("unix://{}", sock.display()))
        .arg("--root")
        .arg(dir.join("root"))
        .spawn()
        .unwrap();
    // The socket file exists from bind(2) on, before listen(2): until then a connect is
    // refused, so retry until the deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = loop {
        match ttrpc::Client::connect(&format!("unix://{}", sock.display())) {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "agent did not listen: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    (Server { child, dir, sock }, AgentClient::new(client))
}

/// Where cgroup2 is mounted on this host: `/sys/fs/cgroup` itself, or the hybrid layout's
/// `/sys/fs/cgroup/unified`.
pub fn cgroup2_mount() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.controllers").exists())
}

/// Whether the cgroup2 hierarchy at /sys/fs/cgroup offers `controller` (pids, memory).
pub fn cgroup2_has(controller: &str) -> bool {
    std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .is_ok_and(|c| c.split_whitespace().any(|x| x == controller))
}

/// A connection of its own to the agent.
pub fn connect(srv: &Server) -> AgentClient {
    AgentClient::new(ttrpc::Client::connect(&format!("unix://{}", srv.sock.display())).unwrap())
}

/// A field of /proc/<pid>/status as a number (`VmRSS` in kB, `Threads`).
pub fn proc_status(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// Whether the agent answers Check within `within`.
pub fn answers_check(srv: &Server, within: Duration) -> bool {
    let Ok(c) = ttrpc::Client::connect(&format!("unix://{}", srv.sock.display())) else {
        return false;
    };
    let c = AgentClient::new(c);
    let t = context::with_timeout(within.as_nanos() as i64);
    c.check(t, &Empty::new()).is_ok_and(|r| r.serving)
}

/// Asserts the agent process is still running (it never aborted).
pub fn assert_alive(srv: &mut Server) {
    assert!(
        srv.child.try_wait().unwrap().is_none(),
        "the agent exited: {:?}",
        srv.child.try_wait()
    );
}

pub fn ctx() -> context::Context {
    context::with_timeout(Duration::from_secs(20).as_nanos() as i64)
}

pub fn code<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> ttrpc::Code {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => s.code.enum_value_or_default(),
        other => panic!("expected an rpc status, got {other:?}"),
    }
}

pub fn creq(id: &str, spec: &[u8]) -> CreateContainerRequest {
    let mut r = CreateContainerRequest::new();
    r.container_id = id.into();
    r.spec_json = spec.to_vec();
    r
}

pub fn can_run_containers() -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP agent API container tests: need root");
        return None;
    }
    let bb = Path::new("/bin/busybox");
    let out = Command::new("file").arg("-L").arg(bb).output().ok();
    let static_bb = out.is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains("statically"));
    if !static_bb {
        eprintln!(
            "SKIP agent API container tests: no static /bin/busybox (apt install busybox-static)"
        );
        return None;
    }
    Some(bb.to_path_buf())
}

pub fn rootfs(dir: &Path, bb: &Path) -> PathBuf {
    let r = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::copy(bb, r.join("bin/busybox")).unwrap();
    for c in ["sh", "cat", "echo", "sleep", "true", "test", "stty"] {
        std::os::unix::fs::symlink("busybox", r.join("bin").join(c)).unwrap();
    }
    r
}

pub fn spec(root: &Path, args: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "ociVersion": "1.0.2",
        "root": {"path": root, "readonly": true},
        "process": {"cwd": "/", "args": args, "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0},
                    "noNewPrivileges": true},
        "hostname": "api-test",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
                   {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                    "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}]}
    }))
    .unwrap()
}

/// A create request whose process gets stdout and stderr pipes and no stdin.
pub fn creq_out(id: &str, spec: &[u8]) -> CreateContainerRequest {
    let mut r = creq(id, spec);
    r.stdio = stdio(false);
    r
}

pub fn container_req(id: &str) -> ContainerRequest {
    let mut r = ContainerRequest::new();
    r.container_id = id.into();
    r
}

/// SIGKILLs the container's init and returns its wait status.
pub fn kill9(c: &AgentClient, id: &str) -> u32 {
    let mut sig = SignalProcessRequest::new();
    sig.container_id = id.into();
    sig.signal = 9;
    c.signal_process(ctx(), &sig).unwrap();
    c.wait_process(ctx(), &proc_req(id, "")).unwrap().status
}

pub fn proc_req(id: &str, exec: &str) -> ProcessRequest {
    let mut r = ProcessRequest::new();
    r.container_id = id.into();
    r.exec_id = exec.into();
    r
}

pub fn read_all(c: &AgentClient, id: &str, exec: &str, stream: OutputStream) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut r = ReadOutputRequest::new();
        r.container_id = id.into();
        r.exec_id = exec.into();
        r.stream = stream.into();
        r.max_len = 4096;
        let resp = c.read_output(ctx(), &r).unwrap();
        if resp.eof {
            return out;
        }
        out.extend(resp.data);
    }
}

pub fn stdio(stdin: bool) -> protobuf::MessageField<Stdio> {
    let mut s = Stdio::new();
    s.stdin = stdin;
    s.stdout = true;
    s.stderr = true;
    protobuf::MessageField::some(s)
}
