//! The husk agent API, shared by the shim (client) and the agent (server).
//!
//! Messages and ttrpc services are generated at build time from `proto/agent.proto`.
//! [`agent`] holds the messages, [`agent_ttrpc`] the blocking client and server (used by
//! the agent), and, with the `async` feature, [`asynchronous::agent_ttrpc`] the tokio
//! client and server (used by the shim).

/// The vsock port the agent listens on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The host vsock port the agent connects to (and at once closes) once it serves on
/// [`AGENT_VSOCK_PORT`]: the host then connects right away instead of polling a guest that
/// is still booting. Through husk-vmm the connection reaches the Unix socket
/// `<vsock socket>_1025`.
pub const AGENT_READY_PORT: u32 = 1025;

/// Where the agent keeps a handle (an nsfs bind mount) on a container's pid namespace, for
/// the pod's other containers to join: Kubernetes' `shareProcessNamespace`. The shim names
/// the sandbox's file here in a member's spec, in place of containerd's host path
/// `/proc/<sandbox pid>/ns/pid`; the agent makes it on the first create that names it.
pub const SHARED_PID_NS_DIR: &str = "/run/husk-agent/pidns";

/// The path of container `id`'s shared pid namespace (see [`SHARED_PID_NS_DIR`]).
pub fn shared_pid_ns_path(id: &str) -> String {
    format!("{SHARED_PID_NS_DIR}/{id}")
}

/// The MAC a VM template's NIC number `index` has (locally administered, "husk"). A pod's
/// VM restored from a template keeps the MACs its guest driver read at the template's boot;
/// ConfigureNetwork gives the pod's MAC to the NIC that still has this one.
pub fn template_mac(index: u8) -> [u8; 6] {
    [0x02, 0x68, 0x75, 0x73, 0x6b, index]
}

/// [`template_mac`] as `aa:bb:cc:dd:ee:ff`.
pub fn template_mac_string(index: u8) -> String {
    template_mac(index)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Protobuf messages of the agent API.
#[allow(clippy::all, clippy::unwrap_used, clippy::undocumented_unsafe_blocks)]
#[allow(missing_docs, unused, nonstandard_style)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// Blocking ttrpc client and server of the agent API.
#[allow(clippy::all, clippy::unwrap_used, clippy::undocumented_unsafe_blocks)]
#[allow(missing_docs, unused, nonstandard_style)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

/// Async (tokio) ttrpc client and server of the agent API.
#[cfg(feature = "async")]
pub mod asynchronous {
    pub use crate::agent;

    /// Async ttrpc client and server.
    #[allow(clippy::all, clippy::unwrap_used, clippy::undocumented_unsafe_blocks)]
    #[allow(missing_docs, unused, nonstandard_style)]
    pub mod agent_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/async/agent_ttrpc.rs"));
    }
}

/// Largest chunk the agent returns from one `ReadOutput` call.
pub const MAX_READ_CHUNK: u32 = 1 << 20;

/// Largest message the agent accepts (spec JSON, stdin chunk).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

#[cfg(test)]
mod tests {
    use super::agent::*;
    use protobuf::Message;

    #[test]
    fn messages_round_trip() {
        let mut r = CreateContainerRequest::new();
        r.container_id = "c1".into();
        r.spec_json = b"{}".to_vec();
        let mut s = Stdio::new();
        s.stdout = true;
        r.stdio = protobuf::MessageField::some(s);
        let bytes = r.write_to_bytes().unwrap();
        let back = CreateContainerRequest::parse_from_bytes(&bytes).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&[0xff, 0xff, 0xff][..], &[0x0a, 0x80], &[0x12, 0x05, 0x01]] {
            assert!(CreateContainerRequest::parse_from_bytes(bytes).is_err());
        }
    }
}
