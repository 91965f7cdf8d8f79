//! A small CRI client for husk's VM tests: containerd's CRI gRPC service (`runtime.v1`)
//! over its unix socket, with the few calls the tests need (run a pod sandbox with a
//! runtime handler, create and start containers in it, exec in them, read the pod's IP,
//! stop and remove the pod). The request builders are plain functions so that what the
//! tests send is unit-tested without containerd.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("connecting to {path}: {source}")]
    Connect {
        path: PathBuf,
        source: tonic::transport::Error,
    },
    #[error("{call}: {status}")]
    Call {
        call: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, CriError>;

fn call(call: &'static str) -> impl FnOnce(tonic::Status) -> CriError {
    move |status| CriError::Call {
        call,
        status: Box::new(status),
    }
}

/// CRI's `NamespaceMode` values (the generated enum is an i32 on the wire).
pub mod ns_mode {
    pub const POD: i32 = 0;
    pub const CONTAINER: i32 = 1;
    pub const NODE: i32 = 2;
}

/// What a test pod looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    pub name: String,
    /// Kubernetes namespace of the pod (metadata only).
    pub namespace: String,
    /// Host directory for the containers' logs ("" for none).
    pub log_dir: String,
    /// Whether the pod uses the node's network namespace (no CNI, no netns).
    pub host_network: bool,
    /// Whether the pod's containers share one pid namespace (`shareProcessNamespace`).
    pub share_pid: bool,
    /// Whether the pod asks for the node's pid namespace (`hostPID`).
    pub host_pid: bool,
}

impl PodSpec {
    pub fn new(name: &str) -> PodSpec {
        PodSpec {
            name: name.into(),
            namespace: "husk-test".into(),
            log_dir: String::new(),
            host_network: false,
            share_pid: false,
            host_pid: false,
        }
    }

    /// The pid namespace mode of the pod and of each of its containers, as the kubelet
    /// sets it.
    pub fn pid_mode(&self) -> i32 {
        if self.host_pid {
            ns_mode::NODE
        } else if self.share_pid {
            ns_mode::POD
        } else {
            ns_mode::CONTAINER
        }
    }
}

/// The pod's CRI config. Deterministic in `spec`, so that a later CreateContainer can send
/// the same sandbox config again (as the kubelet does) from the pod's name alone.
pub fn sandbox_config(spec: &PodSpec) -> cri::PodSandboxConfig {
    let network = if spec.host_network {
        ns_mode::NODE
    } else {
        ns_mode::POD
    };
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: spec.name.clone(),
            uid: format!("husk-test-uid-{}", spec.name),
            namespace: spec.namespace.clone(),
            attempt: 0,
        }),
        hostname: spec.name.clone(),
        log_directory: spec.log_dir.clone(),
        labels: HashMap::from([("husk-test".to_string(), spec.name.clone())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network,
                    pid: spec.pid_mode(),
                    ipc: ns_mode::POD,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container of pod `pod`: `image` runs `command` (the image's entry when empty).
pub fn container_config(
    pod: &PodSpec,
    name: &str,
    image: &str,
    command: &[String],
) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.to_vec(),
        log_path: format!("{name}.log"),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                // The container's own namespace options (the sandbox's do not apply):
                // the pod's network and IPC, and the pid mode the pod asks for (the
                // kubelet sets the same mode on the sandbox and on every container).
                namespace_options: Some(cri::NamespaceOption {
                    network: ns_mode::POD,
                    pid: pod.pid_mode(),
                    ipc: ns_mode::POD,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A client of containerd's CRI runtime service.
#[derive(Debug, Clone)]
pub struct CriClient {
    rt: RuntimeServiceClient<Channel>,
}

impl CriClient {
    /// Connects to the CRI gRPC service at the unix socket `path`.
    pub async fn connect(path: &Path) -> Result<CriClient> {
        let socket = path.to_path_buf();
        // The URI is required by tonic but unused: every connection goes to the socket.
        let endpoint = Endpoint::from_static("http://[::1]:0")
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(600));
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|source| CriError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(CriClient {
            rt: RuntimeServiceClient::new(channel),
        })
    }

    /// The runtime's name and CRI version.
    pub async fn version(&mut self) -> Result<(String, String)> {
        let r = self
            .rt
            .version(cri::VersionRequest {
                version: "v1".into(),
            })
            .await
            .map_err(call("Version"))?
            .into_inner();
        Ok((r.runtime_name, r.runtime_api_version))
    }

    /// RunPodSandbox with runtime handler `handler`; returns the pod's id.
    pub async fn run_pod(&mut self, spec: &PodSpec, handler: &str) -> Result<String> {
        let r = self
            .rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(sandbox_config(spec)),
                runtime_handler: handler.into(),
            })
            .await
            .map_err(call("RunPodSandbox"))?
            .into_inner();
        Ok(r.pod_sandbox_id)
    }

    /// CreateContainer then StartContainer; returns the container's id.
    pub async fn run_container(
        &mut self,
        pod_id: &str,
        pod: &PodSpec,
        config: cri::ContainerConfig,
    ) -> Result<String> {
        let id = self
            .rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.into(),
                config: Some(config),
                sandbox_config: Some(sandbox_config(pod)),
            })
            .await
            .map_err(call("CreateContainer"))?
            .into_inner()
            .container_id;
        self.rt
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .map_err(call("StartContainer"))?;
        Ok(id)
    }

    /// ExecSync: (exit code, stdout, stderr).
    pub async fn exec_sync(
        &mut self,
        container_id: &str,
        cmd: &[String],
        timeout_s: i64,
    ) -> Result<(i32, Vec<u8>, Vec<u8>)> {
        if cmd.is_empty() {
            return Err(CriError::Invalid("exec: empty command".into()));
        }
        let r = self
            .rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: container_id.into(),
                cmd: cmd.to_vec(),
                timeout: timeout_s,
            })
            .await
            .map_err(call("ExecSync"))?
            .into_inner();
        Ok((r.exit_code, r.stdout, r.stderr))
    }

    /// The pod's IP from PodSandboxStatus ("" for a pod without one).
    pub async fn pod_ip(&mut self, pod_id: &str) -> Result<String> {
        let r = self
            .rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod_id.into(),
                verbose: false,
            })
            .await
            .map_err(call("PodSandboxStatus"))?
            .into_inner();
        Ok(r.status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default())
    }

    /// The pod's state as CRI names it (SANDBOX_READY / SANDBOX_NOTREADY).
    pub async fn pod_state(&mut self, pod_id: &str) -> Result<String> {
        let r = self
            .rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod_id.into(),
                verbose: false,
            })
            .await
            .map_err(call("PodSandboxStatus"))?
            .into_inner();
        let state = r.status.map(|s| s.state).unwrap_or(-1);
        Ok(cri::PodSandboxState::try_from(state)
            .map(|s| s.as_str_name().to_string())
            .unwrap_or_else(|_| format!("unknown state {state}")))
    }

    /// StopPodSandbox then RemovePodSandbox (which removes its containers too).
    pub async fn remove_pod(&mut self, pod_id: &str) -> Result<()> {
        self.rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod_id.into(),
            })
            .await
            .map_err(call("StopPodSandbox"))?;
        self.rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod_id.into(),
            })
            .await
            .map_err(call("RemovePodSandbox"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sandbox's namespace options for `spec`.
    fn sandbox_ns(spec: &PodSpec) -> cri::NamespaceOption {
        sandbox_config(spec)
            .linux
            .and_then(|l| l.security_context)
            .and_then(|s| s.namespace_options)
            .expect("namespace options")
    }

    #[test]
    fn sandbox_config_is_deterministic_and_names_the_pod() {
        let mut spec = PodSpec::new("web");
        spec.log_dir = "/tmp/logs".into();
        let a = sandbox_config(&spec);
        assert_eq!(a, sandbox_config(&spec));
        let md = a.metadata.as_ref().expect("metadata");
        assert_eq!(md.name, "web");
        assert_eq!(md.uid, "husk-test-uid-web");
        assert_eq!(a.hostname, "web");
        assert_eq!(a.log_directory, "/tmp/logs");
        let ns = sandbox_ns(&spec);
        assert_eq!(ns.network, ns_mode::POD);
        assert_eq!(ns.pid, ns_mode::CONTAINER);
    }

    #[test]
    fn a_pod_sharing_its_pid_namespace_says_so() {
        let mut spec = PodSpec::new("s");
        spec.share_pid = true;
        assert_eq!(sandbox_ns(&spec).pid, ns_mode::POD);
        assert_eq!(spec.pid_mode(), ns_mode::POD);
        spec.host_pid = true;
        assert_eq!(spec.pid_mode(), ns_mode::NODE);
    }

    #[test]
    fn host_network_pod_uses_the_node_namespace() {
        let mut spec = PodSpec::new("h");
        spec.host_network = true;
        assert_eq!(sandbox_ns(&spec).network, ns_mode::NODE);
    }

    #[test]
    fn container_config_carries_image_and_command() {
        let pod = PodSpec::new("web");
        let c = container_config(
            &pod,
            "srv",
            "docker.io/library/busybox:husk",
            &["httpd".into()],
        );
        assert_eq!(c.metadata.map(|m| m.name).as_deref(), Some("srv"));
        assert_eq!(
            c.image.map(|i| i.image).as_deref(),
            Some("docker.io/library/busybox:husk")
        );
        assert_eq!(c.command, vec!["httpd".to_string()]);
        assert_eq!(c.log_path, "srv.log");
        let ns = c
            .linux
            .and_then(|l| l.security_context)
            .and_then(|s| s.namespace_options)
            .expect("namespace options");
        assert_eq!(ns.pid, ns_mode::CONTAINER);
        let mut shared = PodSpec::new("s");
        shared.share_pid = true;
        let pid = container_config(&shared, "a", "img", &[])
            .linux
            .and_then(|l| l.security_context)
            .and_then(|s| s.namespace_options)
            .map(|n| n.pid);
        assert_eq!(pid, Some(ns_mode::POD));
    }

    #[tokio::test]
    async fn connecting_to_a_missing_socket_fails() {
        let e = CriClient::connect(Path::new("/nonexistent/husk-cri.sock"))
            .await
            .expect_err("no socket");
        assert!(e.to_string().contains("/nonexistent/husk-cri.sock"), "{e}");
    }
}
