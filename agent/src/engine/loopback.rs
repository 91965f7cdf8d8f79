//! The loopback interface of a network namespace: the guest's own (brought up by the
//! agent's init) and each new one a container gets, which the kernel creates with `lo`
//! down. runc brings it up in a new namespace (its "loopback" network strategy), so
//! 127.0.0.1 answers in every container; without it a connect there fails with
//! "Network is unreachable".

use std::os::fd::AsRawFd;

/// Brings `lo` of the calling thread's network namespace up (SIOCSIFFLAGS on a datagram
/// socket: no netlink needed for one flag).
pub fn up() -> std::io::Result<()> {
    // SAFETY: plain socket creation; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned only here.
    let sock = unsafe { super::syscall::own_fd(fd) };
    // SAFETY: ifreq is plain data; zeroed is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `ifr`, which lives across the calls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
