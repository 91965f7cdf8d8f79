//! Opening a tap device (`/dev/net/tun`, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR), nonblocking,
//! and switching its offloads (TUNSETOFFLOAD) once the driver has chosen its features.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use super::{NetError, HDR_LEN};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `_IOW('T', 208, unsigned int)`; the event loop's seccomp filter allows it.
pub const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    pad: [u8; 22],
}

/// Opens (or creates, given the privilege) the tap `name`.
pub fn open(name: &str) -> Result<File, NetError> {
    let err = |err| NetError::Tap {
        name: name.into(),
        err,
    };
    if name.is_empty() || name.len() >= 16 {
        return Err(err(std::io::Error::from(std::io::ErrorKind::InvalidInput)));
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(err)?;
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is (name, flags, padding).
    if unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    let hdr = HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int.
    if unsafe { libc::ioctl(f.as_raw_fd(), TUNSETVNETHDRSZ, &hdr) } < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(f)
}

/// What the device needs of its tap besides reads and writes: a seam, so device tests (over
/// a socket pair) see which offloads were set.
pub trait SetOffload: Send {
    /// Sets the tap's offloads (`TUN_F_*`): what the tap may hand to the device.
    fn set_offload(&mut self, tap: &File, flags: u32) -> std::io::Result<()>;
}

/// The real one: TUNSETOFFLOAD on the tap.
#[derive(Debug, Default)]
pub struct TunSetOffload;

impl SetOffload for TunSetOffload {
    fn set_offload(&mut self, tap: &File, flags: u32) -> std::io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes an unsigned int by value; `tap` is an open fd.
        if unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETOFFLOAD, libc::c_ulong::from(flags)) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A detached NIC's stand-in for a tap: one end of a datagram socket pair whose other end
/// is closed, so it is never readable (no frame arrives, the event loop never wakes for it)
/// and a write fails at once (the frame is dropped, as a full tap queue drops it).
pub fn detached() -> Result<File, NetError> {
    let (ours, theirs) = std::os::unix::net::UnixDatagram::pair().map_err(NetError::Detached)?;
    ours.set_nonblocking(true).map_err(NetError::Detached)?;
    // Not shutdown(SHUT_RD): that makes the socket readable (EOF) for good and would spin
    // the event loop. A datagram peer's close leaves ours quiet.
    drop(theirs);
    Ok(File::from(std::os::fd::OwnedFd::from(ours)))
}

/// A detached NIC has no offloads to set.
#[derive(Debug, Default)]
pub struct NoOffload;

impl SetOffload for NoOffload {
    fn set_offload(&mut self, _: &File, _: u32) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bad_names_refused() {
        assert!(super::open("").is_err());
        assert!(super::open("a-name-far-too-long").is_err());
    }

    #[test]
    fn a_detached_tap_never_delivers_and_drops_writes() {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let mut t = super::detached().unwrap();
        let mut p = libc::pollfd {
            fd: t.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd that lives across the call, zero timeout.
        let ready = unsafe { libc::poll(&mut p, 1, 0) };
        assert_eq!(ready, 0, "readable: {:#x}", p.revents);
        let mut b = [0u8; 64];
        assert!(t.read(&mut b).is_err());
        assert!(t.write(&[1, 2, 3]).is_err());
    }
}
