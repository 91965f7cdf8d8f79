//! The real agent client: ttrpc (husk-protocol's `Agent` service) over the vsock stream.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim_protos::ttrpc::{self, context, r#async::transport::Socket};
use husk_protocol::agent as pb;
use husk_protocol::asynchronous::agent_ttrpc::AgentClient as RpcClient;
use tokio::net::UnixStream;

use crate::agent::*;
use crate::vmm::AgentConnector;

/// Calls that return at once get this long; waits (process exit, output, OOM) have none.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// What one ReadOutput asks for.
const READ_CHUNK: u32 = 256 * 1024;

/// Connects [`TtrpcAgent`]s.
pub struct TtrpcConnector;

#[async_trait]
impl AgentConnector for TtrpcConnector {
    async fn connect(&self, stream: UnixStream) -> AgentResult<Arc<dyn AgentClient>> {
        Ok(Arc::new(TtrpcAgent::new(stream)))
    }
}

/// The agent over one ttrpc connection (ttrpc multiplexes concurrent calls).
pub struct TtrpcAgent {
    rpc: RpcClient,
}

impl TtrpcAgent {
    pub fn new(stream: UnixStream) -> Self {
        let client = ttrpc::r#async::Client::new(Socket::from(stream));
        TtrpcAgent {
            rpc: RpcClient::new(client),
        }
    }
}

fn quick() -> context::Context {
    context::with_duration(CALL_TIMEOUT)
}

fn blocking() -> context::Context {
    context::Context::default()
}

/// Status errors keep their code; anything else means the connection is gone (or the
/// call took longer than [`CALL_TIMEOUT`]). `call` names the RPC in the latter.
fn map(call: &str, e: ttrpc::Error) -> AgentError {
    match e {
        ttrpc::Error::RpcStatus(s) if s.code() != ttrpc::Code::DEADLINE_EXCEEDED => {
            AgentError::Status {
                code: s.code(),
                message: s.message,
            }
        }
        other => AgentError::Unavailable(format!("{call}: {other}")),
    }
}

fn container(id: &str) -> pb::ContainerRequest {
    pb::ContainerRequest {
        container_id: id.into(),
        ..Default::default()
    }
}

fn process(p: &ProcessRef) -> pb::ProcessRequest {
    pb::ProcessRequest {
        container_id: p.container_id.clone(),
        exec_id: p.exec_id.clone(),
        ..Default::default()
    }
}

fn stdio(s: StdioFlags) -> pb::Stdio {
    pb::Stdio {
        stdin: s.stdin,
        stdout: s.stdout,
        stderr: s.stderr,
        terminal: s.terminal,
        ..Default::default()
    }
}

#[async_trait]
impl AgentClient for TtrpcAgent {
    async fn health_check(&self) -> AgentResult<()> {
        let r = self
            .rpc
            .check(quick(), &pb::Empty::new())
            .await
            .map_err(|e| map("check", e))?;
        if !r.serving {
            return Err(AgentError::Unavailable(
                "the agent is not serving yet".into(),
            ));
        }
        Ok(())
    }

    async fn create_sandbox(&self, req: SandboxRequest) -> AgentResult<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let r = pb::CreateSandboxRequest {
            pod_id: req.pod_id,
            hostname: req.hostname,
            dns: req.dns,
            shared_fs_tag: req.shared_fs_tag,
            time_unix_nanos: i64::try_from(now.as_nanos()).unwrap_or(0),
            entropy: fresh_entropy()?,
            ..Default::default()
        };
        self.rpc
            .create_sandbox(quick(), &r)
            .await
            .map_err(|e| map("create_sandbox", e))?;
        Ok(())
    }

    async fn configure_network(
        &self,
        iface: &crate::network::Interface,
        dns: &[String],
    ) -> AgentResult<()> {
        let r = network_request(iface, dns);
        self.rpc
            .configure_network(quick(), &r)
            .await
            .map_err(|e| map("configure_network", e))?;
        Ok(())
    }

    async fn create_container(&self, req: ContainerRequest) -> AgentResult<()> {
        let r = pb::CreateContainerRequest {
            container_id: req.container_id,
            spec_json: req.spec_json,
            stdio: Some(stdio(req.stdio)).into(),
            ..Default::default()
        };
        self.rpc
            .create_container(quick(), &r)
            .await
            .map_err(|e| map("create_container", e))?;
        Ok(())
    }

    async fn start_container(&self, id: &str) -> AgentResult<u32> {
        let r = self
            .rpc
            .start_container(quick(), &container(id))
            .await
            .map_err(|e| map("start_container", e))?;
        Ok(r.pid)
    }

    async fn exec_process(&self, req: ExecRequest) -> AgentResult<u32> {
        let r = pb::ExecProcessRequest {
            container_id: req.process.container_id,
            exec_id: req.process.exec_id,
            process_json: req.process_json,
            stdio: Some(stdio(req.stdio)).into(),
            ..Default::default()
        };
        Ok(self
            .rpc
            .exec_process(quick(), &r)
            .await
            .map_err(|e| map("exec_process", e))?
            .pid)
    }

    async fn signal_process(&self, p: &ProcessRef, signal: u32, all: bool) -> AgentResult<()> {
        let r = pb::SignalProcessRequest {
            container_id: p.container_id.clone(),
            exec_id: p.exec_id.clone(),
            signal,
            all,
            ..Default::default()
        };
        self.rpc
            .signal_process(quick(), &r)
            .await
            .map_err(|e| map("signal_process", e))?;
        Ok(())
    }

    async fn wait_process(&self, p: &ProcessRef) -> AgentResult<u32> {
        let r = self
            .rpc
            .wait_process(blocking(), &process(p))
            .await
            .map_err(|e| map("wait_process", e))?;
        Ok(r.status)
    }

    async fn write_stdin(&self, p: &ProcessRef, data: &[u8]) -> AgentResult<()> {
        let r = pb::WriteStdinRequest {
            container_id: p.container_id.clone(),
            exec_id: p.exec_id.clone(),
            data: data.to_vec(),
            ..Default::default()
        };
        self.rpc
            .write_stdin(quick(), &r)
            .await
            .map_err(|e| map("write_stdin", e))?;
        Ok(())
    }

    async fn close_stdin(&self, p: &ProcessRef) -> AgentResult<()> {
        self.rpc
            .close_stdin(quick(), &process(p))
            .await
            .map_err(|e| map("close_stdin", e))?;
        Ok(())
    }

    async fn read_output(&self, p: &ProcessRef, s: OutputStream) -> AgentResult<Option<Vec<u8>>> {
        let r = pb::ReadOutputRequest {
            container_id: p.container_id.clone(),
            exec_id: p.exec_id.clone(),
            stream: match s {
                OutputStream::Stdout => pb::OutputStream::STDOUT,
                OutputStream::Stderr => pb::OutputStream::STDERR,
            }
            .into(),
            max_len: READ_CHUNK,
            ..Default::default()
        };
        let resp = self
            .rpc
            .read_output(blocking(), &r)
            .await
            .map_err(|e| map("read_output", e))?;
        // Data that comes with the end is still delivered; the next call reports the end.
        match (resp.data.is_empty(), resp.eof) {
            (true, true) => Ok(None),
            _ => Ok(Some(resp.data)),
        }
    }

    async fn resize_tty(&self, p: &ProcessRef, width: u32, height: u32) -> AgentResult<()> {
        let r = pb::ResizeTtyRequest {
            container_id: p.container_id.clone(),
            exec_id: p.exec_id.clone(),
            width,
            height,
            ..Default::default()
        };
        self.rpc
            .resize_tty(quick(), &r)
            .await
            .map_err(|e| map("resize_tty", e))?;
        Ok(())
    }

    async fn pause_container(&self, id: &str) -> AgentResult<()> {
        self.rpc
            .pause_container(quick(), &container(id))
            .await
            .map_err(|e| map("pause_container", e))?;
        Ok(())
    }

    async fn resume_container(&self, id: &str) -> AgentResult<()> {
        self.rpc
            .resume_container(quick(), &container(id))
            .await
            .map_err(|e| map("resume_container", e))?;
        Ok(())
    }

    async fn update_container(&self, id: &str, resources_json: &[u8]) -> AgentResult<()> {
        let r = pb::UpdateContainerRequest {
            container_id: id.into(),
            resources_json: resources_json.to_vec(),
            ..Default::default()
        };
        self.rpc
            .update_container(quick(), &r)
            .await
            .map_err(|e| map("update_container", e))?;
        Ok(())
    }

    async fn stats_container(&self, id: &str) -> AgentResult<ContainerStats> {
        let s = self
            .rpc
            .stats_container(quick(), &container(id))
            .await
            .map_err(|e| map("stats_container", e))?;
        Ok(ContainerStats {
            cpu_usage_usec: s.cpu_usage_usec,
            cpu_user_usec: s.cpu_user_usec,
            cpu_system_usec: s.cpu_system_usec,
            memory_usage: s.memory_usage,
            memory_limit: s.memory_limit,
            pids_current: s.pids_current,
            pids_limit: s.pids_limit,
            oom_kills: s.oom_kills,
        })
    }

    async fn list_processes(&self, id: &str) -> AgentResult<Vec<u32>> {
        let r = self
            .rpc
            .list_processes(quick(), &container(id))
            .await
            .map_err(|e| map("list_processes", e))?;
        Ok(r.pids)
    }

    async fn remove_container(&self, id: &str) -> AgentResult<()> {
        self.rpc
            .remove_container(quick(), &container(id))
            .await
            .map_err(|e| map("remove_container", e))?;
        Ok(())
    }

    async fn next_oom_event(&self) -> AgentResult<String> {
        let r = self
            .rpc
            .get_oom_event(blocking(), &pb::Empty::new())
            .await
            .map_err(|e| map("get_oom_event", e))?;
        Ok(r.container_id)
    }
}

/// Bytes of fresh randomness each CreateSandbox carries.
pub const SANDBOX_ENTROPY_BYTES: usize = 32;

/// [`SANDBOX_ENTROPY_BYTES`] from the host's RNG, for the agent to reseed the guest's: a
/// VM restored from a template (`template.rs`) resumes with the template's RNG state. A
/// host whose RNG cannot be read fails the sandbox rather than start pods whose guests
/// may share their "random" numbers.
fn fresh_entropy() -> AgentResult<Vec<u8>> {
    use std::io::Read;
    let mut bytes = vec![0u8; SANDBOX_ENTROPY_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| AgentError::Status {
            code: ttrpc::Code::INTERNAL,
            message: format!("reading /dev/urandom for the guest's RNG: {e}"),
        })?;
    Ok(bytes)
}

/// The agent's ConfigureNetwork request for the pod's interface.
pub fn network_request(
    iface: &crate::network::Interface,
    dns: &[String],
) -> pb::ConfigureNetworkRequest {
    let i = pb::NetworkInterface {
        mac: iface.mac_string(),
        mtu: iface.mtu,
        addresses: iface
            .addresses
            .iter()
            .map(|a| pb::IpAddress {
                address: a.addr.to_string(),
                prefix_len: u32::from(a.prefix_len),
                ..Default::default()
            })
            .collect(),
        routes: iface
            .routes
            .iter()
            .map(|r| pb::Route {
                destination: r
                    .destination
                    .map(|d| d.addr.to_string())
                    .unwrap_or_default(),
                destination_prefix_len: r.destination.map(|d| u32::from(d.prefix_len)).unwrap_or(0),
                gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    pb::ConfigureNetworkRequest {
        interfaces: vec![i],
        dns: dns.to_vec(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use husk_protocol::asynchronous::agent_ttrpc::{create_agent, Agent};
    use ttrpc::r#async::{transport::Listener, Server, TtrpcContext};

    use super::*;
    use crate::testutil::TempDir;

    /// A ttrpc agent that answers a few calls the way husk-agent does.
    #[derive(Default)]
    struct MockAgent {
        reads: AtomicU32,
        sandboxes: std::sync::Mutex<Vec<pb::CreateSandboxRequest>>,
    }

    #[async_trait]
    impl Agent for MockAgent {
        async fn check(&self, _: &TtrpcContext, _: pb::Empty) -> ttrpc::Result<pb::CheckResponse> {
            Ok(pb::CheckResponse {
                serving: true,
                ..Default::default()
            })
        }
        async fn create_sandbox(
            &self,
            _: &TtrpcContext,
            r: pb::CreateSandboxRequest,
        ) -> ttrpc::Result<pb::Empty> {
            self.sandboxes.lock().unwrap().push(r);
            Ok(pb::Empty::new())
        }
        async fn start_container(
            &self,
            _: &TtrpcContext,
            r: pb::ContainerRequest,
        ) -> ttrpc::Result<pb::PidResponse> {
            if r.container_id != "c1" {
                return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                    ttrpc::Code::NOT_FOUND,
                    format!("container {} not found", r.container_id),
                )));
            }
            Ok(pb::PidResponse {
                pid: 42,
                ..Default::default()
            })
        }
        async fn wait_process(
            &self,
            _: &TtrpcContext,
            r: pb::ProcessRequest,
        ) -> ttrpc::Result<pb::WaitProcessResponse> {
            assert_eq!((r.container_id.as_str(), r.exec_id.as_str()), ("c1", "e1"));
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(pb::WaitProcessResponse {
                status: 137,
                ..Default::default()
            })
        }
        async fn read_output(
            &self,
            _: &TtrpcContext,
            r: pb::ReadOutputRequest,
        ) -> ttrpc::Result<pb::ReadOutputResponse> {
            assert_eq!(r.stream.enum_value(), Ok(pb::OutputStream::STDERR));
            let n = self.reads.fetch_add(1, Ordering::SeqCst);
            Ok(pb::ReadOutputResponse {
                data: if n == 0 {
                    b"hello".to_vec()
                } else {
                    Vec::new()
                },
                eof: n > 0,
                ..Default::default()
            })
        }
        async fn stats_container(
            &self,
            _: &TtrpcContext,
            _: pb::ContainerRequest,
        ) -> ttrpc::Result<pb::StatsResponse> {
            Ok(pb::StatsResponse {
                memory_usage: 1 << 20,
                oom_kills: 1,
                ..Default::default()
            })
        }
    }

    #[tokio::test]
    async fn calls_map_to_the_agent_api() {
        let d = TempDir::new("agent");
        let path = d.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let mock = Arc::new(MockAgent::default());
        let mut server = Server::new()
            .add_listener(Listener::from(listener))
            .register_service(create_agent(mock.clone()));
        server.start().await.unwrap();

        let agent = TtrpcAgent::new(UnixStream::connect(&path).await.unwrap());
        agent.health_check().await.unwrap();
        // Each sandbox gets the host's time and its own fresh entropy (a guest restored
        // from a template reseeds its RNG with it).
        for _ in 0..2 {
            let r = SandboxRequest {
                pod_id: "p1".into(),
                ..Default::default()
            };
            agent.create_sandbox(r).await.unwrap();
        }
        {
            let seen = mock.sandboxes.lock().unwrap();
            assert_eq!(seen.len(), 2);
            assert_eq!(seen[0].pod_id, "p1");
            assert!(seen[0].time_unix_nanos > 0);
            assert_eq!(seen[0].entropy.len(), SANDBOX_ENTROPY_BYTES);
            assert_eq!(seen[1].entropy.len(), SANDBOX_ENTROPY_BYTES);
            assert_ne!(seen[0].entropy, seen[1].entropy);
        }
        assert_eq!(agent.start_container("c1").await.unwrap(), 42);
        let e = agent.start_container("zz").await.unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::NOT_FOUND);
        assert_eq!(e.to_string(), "container zz not found");
        // a blocking wait and other calls share the connection
        let p = ProcessRef::exec("c1", "e1");
        let (status, stats) = tokio::join!(agent.wait_process(&p), agent.stats_container("c1"));
        assert_eq!(status.unwrap(), 137);
        assert_eq!(stats.unwrap().oom_kills, 1);
        assert_eq!(
            agent.read_output(&p, OutputStream::Stderr).await.unwrap(),
            Some(b"hello".to_vec())
        );
        assert_eq!(
            agent.read_output(&p, OutputStream::Stderr).await.unwrap(),
            None
        );
        // a call the mock does not implement is a status error, not a dead connection
        let e = agent.pause_container("c1").await.unwrap_err();
        assert!(matches!(e, AgentError::Status { .. }), "{e:?}");

        server.shutdown().await.unwrap();
        drop(server);
        let e = agent.health_check().await.unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::UNAVAILABLE, "{e}");
    }

    #[test]
    fn network_request_carries_the_interface() {
        use crate::network::{Interface, IpNet, Route};
        let gw: std::net::IpAddr = "10.88.77.1".parse().unwrap();
        let iface = Interface {
            name: "eth0".into(),
            index: 3,
            mac: [0x0a, 0x58, 0x0a, 0x58, 0x4d, 0x05],
            mtu: 1450,
            addresses: vec![IpNet {
                addr: "10.88.77.5".parse().unwrap(),
                prefix_len: 24,
            }],
            routes: vec![
                Route {
                    destination: None,
                    gateway: Some(gw),
                },
                Route {
                    destination: Some(IpNet {
                        addr: "10.1.0.0".parse().unwrap(),
                        prefix_len: 16,
                    }),
                    gateway: None,
                },
            ],
        };
        let r = network_request(&iface, &["192.0.2.53".to_string()]);
        assert_eq!(r.interfaces.len(), 1);
        let i = &r.interfaces[0];
        assert_eq!(i.mac, "0a:58:0a:58:4d:05");
        assert_eq!(i.mtu, 1450);
        assert_eq!(i.addresses[0].address, "10.88.77.5");
        assert_eq!(i.addresses[0].prefix_len, 24);
        assert_eq!(i.routes[0].destination, "");
        assert_eq!(i.routes[0].gateway, "10.88.77.1");
        assert_eq!(i.routes[1].destination, "10.1.0.0");
        assert_eq!(i.routes[1].destination_prefix_len, 16);
        assert_eq!(i.routes[1].gateway, "");
        assert_eq!(r.dns, vec!["192.0.2.53".to_string()]);
    }
}
