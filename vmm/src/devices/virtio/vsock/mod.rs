//! virtio-vsock (virtio 1.2, section 5.10) backed by host Unix sockets, with Firecracker's
//! protocol: a host process connects to the configured socket and writes `CONNECT <port>\n`,
//! and gets `OK <host_port>\n` once the guest accepted; a guest connection to host port P
//! is forwarded to the Unix socket `<socket>_<P>`.
//!
//! - `packet.rs`: the packet header and its validation.
//! - `connection.rs`: one connection's state machine and credit accounting.
//! - `muxer.rs`: the host side: listener, connections, and the packets they want to send.
//! - `device.rs`: the device model and its queue handlers.

pub mod connection;
pub mod device;
pub mod muxer;
pub mod packet;

pub use device::Vsock;

use std::path::PathBuf;

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Largest payload accepted from or sent to the guest in one packet.
pub const MAX_PKT_LEN: usize = 64 * 1024;
/// Bytes the vmm buffers per connection on the way to the host (our `buf_alloc`).
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// Send a credit update once this many bytes were forwarded since the last one.
pub const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 4;
/// Guest-initiated connections alive at once. Host-initiated ones (with host connections
/// still sending their CONNECT line) have a cap of their own, [`MAX_HOST_CONNECTIONS`], so
/// a guest that floods the host with REQUESTs cannot lock the shim out of its agent.
pub const MAX_CONNECTIONS: usize = 1024;
/// Host-initiated connections alive at once, handshakes included.
pub const MAX_HOST_CONNECTIONS: usize = 1024;
/// Control packets (resets) queued for unknown connections; more are dropped.
pub const MAX_PENDING_RSTS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("binding vsock socket {path}: {err}")]
    Bind { path: PathBuf, err: std::io::Error },
}
