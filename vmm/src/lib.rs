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
pub mod snapshot;
pub mod vcpu;
pub mod vm;

/// Stack size of the vmm's threads (vCPUs, event loop, console). Smaller than a huge page
/// on purpose: Rust's default, 2 MiB, is exactly one, and once guest RAM is mapped
/// huge-page aligned a 2 MiB stack can land aligned too and be backed, on first touch, by a
/// whole 2 MiB transparent huge page (seen in the nested test host: +2 MiB RSS per such
/// thread). None of these threads needs more than a few tens of KiB.
pub const THREAD_STACK_SIZE: usize = 1 << 20;

/// Makes a write past RLIMIT_FSIZE fail with EFBIG instead of ending the vmm with SIGXFSZ
/// (whose default action kills the process): a disk image or snapshot that reaches the
/// limit is then an I/O error for the guest (VIRTIO_BLK_S_IOERR, logged by virtio-blk) or
/// a failed snapshot with its error, not the end of the VM. Call before starting threads.
pub fn ignore_file_size_signal() -> std::io::Result<()> {
    // SAFETY: SIG_IGN for SIGXFSZ installs no handler code; it only changes what the
    // kernel does when a write passes RLIMIT_FSIZE.
    let r = unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    if r == libc::SIG_ERR {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
