//! Guest RAM: one memfd holding every RAM range, so the same pages can later be handed to a
//! vhost-user backend (virtiofsd) by file descriptor.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::arch::layout;

/// Guest memory as the rest of the vmm sees it.
pub type GuestMemory = GuestMemoryMmap<()>;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory size {0} bytes is too small (at least 16 MiB)")]
    TooSmall(u64),
    #[error("memfd_create failed: {0}")]
    Memfd(std::io::Error),
    #[error("sizing the guest memory memfd to {size} bytes failed: {err}")]
    Resize { size: u64, err: std::io::Error },
    #[error("mapping guest memory failed: {0}")]
    Map(vm_memory::mmap::FromRangesError),
}

/// Smallest guest we agree to build.
pub const MIN_MEM_SIZE: u64 = 16 << 20;

/// Creates guest memory of `mem_size` bytes backed by one memfd.
pub fn create(mem_size: u64) -> Result<GuestMemory, MemoryError> {
    if mem_size < MIN_MEM_SIZE {
        return Err(MemoryError::TooSmall(mem_size));
    }
    let file = memfd("husk-guest-ram")?;
    file.set_len(mem_size).map_err(|err| MemoryError::Resize {
        size: mem_size,
        err,
    })?;
    let file = std::sync::Arc::new(file);
    let mut offset = 0u64;
    let ranges: Vec<_> = layout::ram_ranges(mem_size)
        .into_iter()
        .map(|(start, len)| {
            let r = (
                GuestAddress(start),
                len as usize,
                Some(FileOffset::from_arc(file.clone(), offset)),
            );
            offset += len;
            r
        })
        .collect();
    GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MemoryError::Map)
}

fn memfd(name: &str) -> Result<File, MemoryError> {
    let name = CString::new(name).map_err(|e| MemoryError::Memfd(std::io::Error::other(e)))?;
    // SAFETY: `name` is a valid NUL-terminated string; the flags are valid memfd flags.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn memfd_backed_and_usable() {
        let mem = create(32 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        let region = mem.iter().next().unwrap();
        assert!(region.file_offset().is_some());
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
    }

    #[test]
    fn too_small_refused() {
        assert!(matches!(create(1 << 20), Err(MemoryError::TooSmall(_))));
    }
}
