//! husk-vmm: a KVM microVM monitor, one process per pod.
//!
//! See ARCHITECTURE.md at the repository root for threads, trust boundaries and the boot
//! sequence.

pub mod check;
