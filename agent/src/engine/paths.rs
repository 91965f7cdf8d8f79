//! Path resolution inside a container rootfs that never leaves it: the `husk-inroot`
//! crate (openat2 `RESOLVE_IN_ROOT`), which the shim shares, with the agent's error type.

use std::os::fd::OwnedFd;
use std::path::Path;

pub use husk_inroot::clean;

use super::syscall::{Create, SysError};

/// Opens `dest` (a container path) inside `root` as an `O_PATH` fd, creating what is
/// missing on the way; see [`husk_inroot::open_in_root`].
pub fn open_in_root(root: &Path, dest: &Path, create: Create) -> Result<OwnedFd, SysError> {
    husk_inroot::open_in_root(root, dest, create).map_err(|e| SysError::new(e.op, e.path, e.source))
}
