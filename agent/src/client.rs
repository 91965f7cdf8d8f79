//! A small blocking client of the agent API, for tests and debugging (`husk-agent ctl`).

use std::time::Duration;

use husk_protocol::agent::Empty;
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
