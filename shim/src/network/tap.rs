//! Creating the pod's tap device. Netlink cannot create a tun/tap device (the kernel's
//! tun driver has no rtnl "newlink"), so this is the `/dev/net/tun` ioctl interface:
//! TUNSETIFF makes the device in the calling thread's network namespace and TUNSETPERSIST
//! keeps it after this fd closes, so husk-vmm can open it by name later. Deleting it is a
//! netlink link delete ([`super::tc`]/[`super::attach`]).

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use super::NetError;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
/// The flags husk-vmm opens the tap with (it reads frames with a virtio-net header).
const IFF_VNET_HDR: libc::c_short = 0x4000;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn err(name: &str, what: &str, e: impl std::fmt::Display) -> NetError {
    NetError::Tap {
        name: name.into(),
        msg: format!("{what}: {e}"),
    }
}

/// The tap name as the kernel takes it (at most IFNAMSIZ - 1 bytes, no NUL or slash).
pub fn check_name(name: &str) -> Result<[u8; libc::IFNAMSIZ], NetError> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() >= libc::IFNAMSIZ || b.iter().any(|c| *c == 0 || *c == b'/') {
        return Err(err(name, "invalid name", "1 to 15 bytes, no NUL or '/'"));
    }
    let mut out = [0u8; libc::IFNAMSIZ];
    out[..b.len()].copy_from_slice(b);
    Ok(out)
}

/// Creates the persistent tap `name` in the calling thread's network namespace.
pub fn create_persistent(name: &str) -> Result<(), NetError> {
    let ifname = check_name(name)?;
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| err(name, "opening /dev/net/tun", e))?;
    let mut req = IfReq {
        name: ifname,
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    // SAFETY: TUNSETIFF reads and writes a struct ifreq (name, flags, padding to its
    // 40 bytes), which `req` is; `tun` is an open /dev/net/tun fd.
    let r = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
    if r < 0 {
        return Err(err(name, "TUNSETIFF", std::io::Error::last_os_error()));
    }
    // SAFETY: TUNSETPERSIST takes an integer argument by value on an attached tun fd.
    let r = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) };
    if r < 0 {
        return Err(err(name, "TUNSETPERSIST", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_is_the_kernels_size() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("husk_tap0").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a-name-that-is-too-long").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("a\0b").is_err());
        assert!(create_persistent("a/b").is_err());
    }
}
