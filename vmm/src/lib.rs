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
pub mod file_size;
pub mod logger;
pub mod memory;
pub mod rate_limiter;
pub mod seccomp;
pub mod snapshot;
pub mod vcpu;
pub mod vm;

/// Stack size of the vmm's threads (vCPUs, event loop, console). Smaller than a huge page
/// on purpose: Rust's default, 2 MiB, is exactly one, and once guest RAM is mapped
/// huge-page aligned a 2 MiB stack can land aligned too and be backed, on first touch, by a
/// whole 2 MiB transparent huge page (seen in the nested test host: +2 MiB RSS per such
/// thread). None of these threads needs more than a few tens of KiB.
pub const THREAD_STACK_SIZE: usize = 1 << 20;
