//! The husk agent API, shared by the shim (client) and the agent (server).
//!
//! The vsock port the agent listens on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;
