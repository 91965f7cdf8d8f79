//! Fresh randomness for the guest's RNG from the shim (CreateSandbox's `entropy`).
//!
//! A VM restored from a template resumes with the template's RNG state: every pod made
//! from one template would draw the same "random" numbers until the kernel reseeds on its
//! own. The agent therefore mixes the shim's bytes into the input pool, crediting them
//! (`RNDADDENTROPY`), and makes the kernel reseed its CRNG from that pool at once
//! (`RNDRESEEDCRNG`). Both need CAP_SYS_ADMIN (the agent is root in the guest).

use std::os::fd::AsRawFd;

/// Most bytes one request may carry (more would add nothing: the CRNG key is 32 bytes).
pub const MAX_ENTROPY_BYTES: usize = 512;

/// `_IOW('R', 0x03, int[2])`: add bytes to the input pool and credit them.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the CRNG from the input pool now (Linux 4.17+).
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// The kernel's `struct rand_pool_info` with room for [`MAX_ENTROPY_BYTES`] (the header is
/// what the kernel reads first; it then copies `buf_size` bytes of `buf`).
#[repr(C)]
struct RandPoolInfo {
    /// Bits of entropy credited.
    entropy_count: libc::c_int,
    /// Bytes in `buf`.
    buf_size: libc::c_int,
    buf: [u8; MAX_ENTROPY_BYTES],
}

/// Errors adding entropy.
#[derive(Debug, thiserror::Error)]
pub enum EntropyError {
    /// More than [`MAX_ENTROPY_BYTES`].
    #[error("entropy: {0} bytes, at most {MAX_ENTROPY_BYTES}")]
    TooLong(usize),
    /// Opening /dev/urandom or an ioctl failed.
    #[error("entropy: {what}: {source}")]
    Io {
        /// What failed.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Checks a request's entropy: empty (nothing to add) or at most [`MAX_ENTROPY_BYTES`].
pub fn check(bytes: &[u8]) -> Result<(), EntropyError> {
    if bytes.len() > MAX_ENTROPY_BYTES {
        return Err(EntropyError::TooLong(bytes.len()));
    }
    Ok(())
}

/// Mixes `bytes` into the kernel's input pool (credited as 8 bits per byte) and reseeds
/// the CRNG from it. Empty `bytes` does nothing.
pub fn add_and_reseed(bytes: &[u8]) -> Result<(), EntropyError> {
    check(bytes)?;
    if bytes.is_empty() {
        return Ok(());
    }
    let io = |what, source| EntropyError::Io { what, source };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| io("opening /dev/urandom", e))?;
    let mut info = RandPoolInfo {
        // At most 512 * 8 = 4096, well inside c_int.
        entropy_count: (bytes.len() * 8) as libc::c_int,
        buf_size: bytes.len() as libc::c_int,
        buf: [0; MAX_ENTROPY_BYTES],
    };
    info.buf[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: RNDADDENTROPY reads a `struct rand_pool_info` header and then `buf_size`
    // bytes after it; `info` is a live repr(C) value with that header and `buf_size` <=
    // the length of its `buf`. The fd is open for the call's duration.
    if unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            RNDADDENTROPY as _,
            &info as *const RandPoolInfo,
        )
    } != 0
    {
        return Err(io("RNDADDENTROPY", std::io::Error::last_os_error()));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument and touches no user memory.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG as _) } != 0 {
        return Err(io("RNDRESEEDCRNG", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ioctl_numbers_are_the_kernels() {
        // _IOC(dir, type, nr, size) = dir << 30 | size << 16 | type << 8 | nr.
        type Ul = libc::c_ulong;
        let iow = |nr: Ul, size: Ul| (1 << 30) | (size << 16) | (Ul::from(b'R') << 8) | nr;
        assert_eq!(RNDADDENTROPY, iow(3, 2 * 4));
        assert_eq!(RNDRESEEDCRNG, (Ul::from(b'R') << 8) | 7);
        // The header the kernel reads is two ints, the bytes right after.
        assert_eq!(std::mem::offset_of!(RandPoolInfo, buf), 8);
    }

    #[test]
    fn too_much_is_refused_before_any_ioctl() {
        assert!(check(&[]).is_ok());
        assert!(check(&[7; MAX_ENTROPY_BYTES]).is_ok());
        let e = add_and_reseed(&[7; MAX_ENTROPY_BYTES + 1]).unwrap_err();
        assert_eq!(e.to_string(), "entropy: 513 bytes, at most 512");
        // Nothing to add: nothing done, whoever runs it.
        assert!(add_and_reseed(&[]).is_ok());
    }

    #[test]
    fn adds_and_reseeds_as_root_and_fails_clearly_otherwise() {
        // Bytes from the RNG itself: crediting them to this machine's pool changes nothing.
        let mut bytes = [0u8; 32];
        let read = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
        if read.is_err() {
            eprintln!("SKIP entropy ioctl test: no /dev/urandom");
            return;
        }
        let r = add_and_reseed(&bytes);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // Without CAP_SYS_ADMIN the kernel refuses: an error, never a panic.
            let e = r.unwrap_err().to_string();
            assert!(e.starts_with("entropy: RNDADDENTROPY:"), "{e}");
            return;
        }
        match r {
            Ok(()) => {}
            // A root without CAP_SYS_ADMIN (a container) is refused the same way.
            Err(EntropyError::Io { source, .. }) if source.raw_os_error() == Some(libc::EPERM) => {
                eprintln!("SKIP entropy ioctl test: no CAP_SYS_ADMIN");
            }
            Err(e) => panic!("{e}"),
        }
    }
}
