//! SIGXFSZ: what a write past RLIMIT_FSIZE does to the vmm.
//!
//! The kernel answers such a write with EFBIG and sends the writer SIGXFSZ, whose default
//! action ends the process. For the vmm the write is a disk image (or a snapshot) that
//! reached its limit: an I/O error for the guest (VIRTIO_BLK_S_IOERR, which virtio-blk
//! logs) or a failed snapshot, not the end of the VM. So [`handle_signal`] installs a
//! handler that lets that write fail: it logs the first one and returns. A SIGXFSZ that
//! another process sends stays fatal, as the other fatal signals are (a line on stderr,
//! exit 128 + 25): the kernel sends the file-size one as from the writing process itself
//! (SI_USER with our own pid), which is how the two are told apart.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// The vmm's pid, read once (the handler makes no syscall it does not need).
static PID: AtomicI32 = AtomicI32::new(0);
static LOGGED: AtomicBool = AtomicBool::new(false);

const LIMIT_LINE: &[u8] =
    b"husk-vmm: WARN a file reached RLIMIT_FSIZE (SIGXFSZ): its writes fail with EFBIG\n";
const FATAL_LINE: &[u8] = b"husk-vmm: fatal signal SIGXFSZ\n";

extern "C" fn on_sigxfsz(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler; si_pid is
    // meaningful for SI_USER, the code the file-size signal and kill(2) both carry.
    let (code, pid) = unsafe { ((*info).si_code, (*info).si_pid()) };
    if code == libc::SI_USER && pid == PID.load(Ordering::Relaxed) {
        if !LOGGED.swap(true, Ordering::Relaxed) {
            // SAFETY: write(2) of a static buffer is async-signal-safe.
            unsafe { libc::write(2, LIMIT_LINE.as_ptr().cast(), LIMIT_LINE.len()) };
        }
        return;
    }
    // SAFETY: write(2) of a static buffer and _exit are async-signal-safe.
    unsafe {
        libc::write(2, FATAL_LINE.as_ptr().cast(), FATAL_LINE.len());
        libc::_exit(128 + sig);
    }
}

/// Installs the SIGXFSZ handler (see the module comment). Call before starting threads.
pub fn handle_signal() -> std::io::Result<()> {
    PID.store(std::process::id() as i32, Ordering::Relaxed);
    // SAFETY: a zeroed sigaction is valid; the handler and flags are set below.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_sigxfsz as *const () as libc::sighandler_t;
    act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: sigemptyset initialises a mask we own; the handler only does
    // async-signal-safe work (atomics, write(2), _exit).
    let r = unsafe {
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGXFSZ, &act, std::ptr::null_mut())
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
