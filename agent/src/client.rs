//! A small blocking client of the agent API, for tests and debugging (`husk-agent ctl`).

use std::time::Duration;

use husk_protocol::agent::*;
use husk_protocol::agent_ttrpc::AgentClient;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting or calling failed.
    #[error("agent at {addr}: {source}")]
    Ttrpc {
        /// The address.
        addr: String,
        /// The error.
        #[source]
        source: ttrpc::Error,
    },
}

/// Connects to `addr` (`unix:///path` or `vsock://cid:port`), retrying until `timeout`.
pub fn connect(addr: &str, timeout: Duration) -> Result<AgentClient, ClientError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let r = ttrpc::Client::connect(addr).and_then(|c| {
            let a = AgentClient::new(c);
            a.check(ctx(), &Empty::new()).map(|_| a)
        });
        match r {
            Ok(a) => return Ok(a),
            Err(e) if std::time::Instant::now() >= deadline => {
                return Err(ClientError::Ttrpc {
                    addr: addr.into(),
                    source: e,
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(30).as_nanos() as i64)
}

/// One line describing the agent and its machine, e.g. for a smoke test.
pub fn describe(addr: &str, timeout: Duration) -> Result<String, ClientError> {
    let c = connect(addr, timeout)?;
    let err = |source| ClientError::Ttrpc {
        addr: addr.into(),
        source,
    };
    let h = c.check(ctx(), &Empty::new()).map_err(err)?;
    let d = c.get_guest_details(ctx(), &Empty::new()).map_err(err)?;
    Ok(format!(
        "agent {} serving={} kernel={} cpus={} memory_mib={}",
        h.agent_version,
        h.serving,
        d.kernel_version,
        d.cpus,
        d.mem_total_bytes >> 20
    ))
}

/// What a container run through the API produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: Vec<u8>,
    /// Exit status (128 + signal when killed).
    pub status: u32,
}

fn read_stream(c: &AgentClient, id: &str, s: OutputStream) -> Result<Vec<u8>, ttrpc::Error> {
    let mut out = Vec::new();
    loop {
        let mut r = ReadOutputRequest::new();
        r.container_id = id.into();
        r.stream = s.into();
        r.max_len = 65536;
        let resp = c.read_output(ctx(), &r)?;
        if resp.eof {
            return Ok(out);
        }
        out.extend(resp.data);
    }
}

/// Creates, starts, drains, waits for and removes one container from a spec (JSON whose
/// paths are the agent's).
pub fn run(addr: &str, id: &str, spec_json: &[u8]) -> Result<RunOutput, ClientError> {
    let c = connect(addr, Duration::from_secs(30))?;
    let err = |source| ClientError::Ttrpc {
        addr: addr.into(),
        source,
    };
    let mut req = CreateContainerRequest::new();
    req.container_id = id.into();
    req.spec_json = spec_json.to_vec();
    let mut stdio = Stdio::new();
    stdio.stdout = true;
    stdio.stderr = true;
    req.stdio = protobuf::MessageField::some(stdio);
    c.create_container(ctx(), &req).map_err(err)?;
    let mut cr = ContainerRequest::new();
    cr.container_id = id.into();
    c.start_container(ctx(), &cr).map_err(err)?;
    let c2 = c.clone();
    let id2 = id.to_string();
    let errs = std::thread::spawn(move || read_stream(&c2, &id2, OutputStream::STDERR));
    let stdout = read_stream(&c, id, OutputStream::STDOUT).map_err(err)?;
    let stderr = errs
        .join()
        .map_err(|_| err(ttrpc::Error::Others("stderr reader panicked".into())))?
        .map_err(err)?;
    let mut pr = ProcessRequest::new();
    pr.container_id = id.into();
    let status = c.wait_process(ctx(), &pr).map_err(err)?.status;
    c.remove_container(ctx(), &cr).map_err(err)?;
    Ok(RunOutput {
        stdout,
        stderr,
        status,
    })
}

/// Blocks until the agent reports an OOM kill; returns the container id.
pub fn next_oom(addr: &str, timeout: Duration) -> Result<String, ClientError> {
    let c = connect(addr, timeout)?;
    let ctx = ttrpc::context::with_timeout(timeout.as_nanos() as i64);
    c.get_oom_event(ctx, &Empty::new())
        .map(|e| e.container_id)
        .map_err(|source| ClientError::Ttrpc {
            addr: addr.into(),
            source,
        })
}
