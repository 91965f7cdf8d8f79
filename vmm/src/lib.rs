//! husk-vmm: a KVM microVM monitor, one process per pod.
//!
//! See ARCHITECTURE.md at the repository root for threads, trust boundaries and the boot
//! sequence.

pub mod arch;
pub mod builder;
pub mod bus;
pub mod check;
pub mod config;
pub mod control;
pub mod devices;
pub mod exit;
pub mod logger;
pub mod memory;
pub mod seccomp;
pub mod vcpu;
pub mod vm;
