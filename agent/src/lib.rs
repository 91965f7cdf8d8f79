//! husk-agent: PID 1 of the guest and the container engine.
//!
//! See ARCHITECTURE.md at the repository root.

pub mod client;
pub mod engine;
pub mod init;
pub mod net;
pub mod server;
