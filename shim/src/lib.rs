//! containerd-shim-husk-v2: the containerd runtime `io.containerd.husk.v2`.
//!
//! See ARCHITECTURE.md at the repository root.

/// The runtime type containerd uses to find this shim.
pub const RUNTIME_TYPE: &str = "io.containerd.husk.v2";
