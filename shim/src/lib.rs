//! containerd-shim-husk-v2: the containerd runtime `io.containerd.husk.v2`.
//!
//! See ARCHITECTURE.md at the repository root (section "The shim").

pub mod admin;
pub mod agent;
pub mod agent_client;
pub mod config;
pub mod error;
pub mod events;
pub mod host_cgroup;
pub mod io;
pub mod mount;
pub mod network;
pub mod pidfile;
pub mod pod;
pub mod pod_status;
pub mod poddir;
pub mod process;
pub mod ram;
pub mod server;
pub mod service;
pub mod share;
pub mod spec;
pub mod task;
pub mod template;
pub mod vm;
pub mod vmm;
pub mod vsock;

#[cfg(test)]
mod catalogue_tests;
#[cfg(test)]
pub mod testutil;

/// The runtime type containerd uses to find this shim.
pub const RUNTIME_TYPE: &str = "io.containerd.husk.v2";
