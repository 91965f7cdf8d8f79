//! Guest RAM: one shared file holding every RAM range, so the same pages can later be handed
//! to a vhost-user backend (virtiofsd) by file descriptor. The file is a memfd, or an unlinked
//! file in a directory the caller names (a tmpfs mounted `huge=within_size`, or hugetlbfs).
//!
//! Huge pages matter more here than anywhere else in the vmm: the first touch of every guest
//! page costs a nested page fault (an exit to the host kernel, which then allocates and
//! zeroes the page), and in a nested test host each of those costs a few hundred
//! microseconds. A booting guest touches some 30 MiB: backed by 2 MiB pages that is about
//! 15 faults instead of 7,500, a third of the boot time. A memfd is advised MADV_HUGEPAGE,
//! which takes effect where the host's `shmem_enabled` is `advise` (Debian's default is
//! `never`). A file in a directory is left to its mount: a tmpfs mounted
//! `huge=within_size` (what the shim gives a pod) gets huge pages unadvised, so a fault
//! takes one when one is free and never waits for compaction (an advised mapping would, under
//! the default THP `defrag`).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

use crate::arch::layout;

/// Guest memory as the rest of the vmm sees it.
pub type GuestMemory = GuestMemoryMmap<()>;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory size {0} bytes is too small (at least 16 MiB)")]
    TooSmall(u64),
    #[error("memfd_create failed: {0}")]
    Memfd(std::io::Error),
    #[error("creating the guest memory file in {dir}: {err}")]
    TmpFile {
        dir: std::path::PathBuf,
        err: std::io::Error,
    },
    #[error("sizing the guest memory memfd to {size} bytes failed: {err}")]
    Resize { size: u64, err: std::io::Error },
    #[error("mapping guest memory failed: {0}")]
    Map(vm_memory::mmap::FromRangesError),
}

#[derive(Debug, thiserror::Error)]
pub enum DiscardError {
    #[error("range {gpa:#x}+{len:#x} is not inside guest RAM")]
    OutOfRange { gpa: u64, len: u64 },
    #[error("discarding {len:#x} bytes at {gpa:#x}: {err}")]
    Io {
        gpa: u64,
        len: u64,
        err: std::io::Error,
    },
}

/// Guest page size: what discards are aligned to.
pub const PAGE_SIZE: u64 = 4096;

/// Gives back to the host the guest pages in `[gpa, gpa + len)`, which the guest said it no
/// longer uses (free page reporting, balloon inflation). Only the whole pages inside the
/// range go; the guest reads zeros there afterwards. Memfd-backed RAM gets its pages
/// punched out of the file (so virtiofsd's mapping of it lets go too); anonymous RAM (tests)
/// is dropped with MADV_DONTNEED. The whole range is checked before anything is dropped: a
/// range that leaves guest RAM, wherever the guest put it, drops nothing. Returns the bytes
/// dropped.
pub fn discard(mem: &GuestMemory, gpa: u64, len: u64) -> Result<u64, DiscardError> {
    let out = || DiscardError::OutOfRange { gpa, len };
    let end = gpa.checked_add(len).ok_or_else(out)?;
    let start = gpa.checked_next_multiple_of(PAGE_SIZE).ok_or_else(out)?;
    let end = end - end % PAGE_SIZE;
    if start >= end {
        return Ok(0);
    }
    // (region, offset in region, length): at most one piece per region, so this is bounded
    // by the region count (two), not by anything the guest chose.
    let mut pieces = Vec::with_capacity(2);
    let mut at = start;
    while at < end {
        let region = mem.find_region(GuestAddress(at)).ok_or_else(out)?;
        let off = at - region.start_addr().0;
        let n = (region.len() - off).min(end - at);
        pieces.push((region, off, n));
        at += n;
    }
    for (region, off, n) in pieces {
        let io = |err| DiscardError::Io {
            gpa: region.start_addr().0 + off,
            len: n,
            err,
        };
        let rc = match region.file_offset() {
            Some(fo) => {
                let file_off = i64::try_from(fo.start() + off).map_err(|_| out())?;
                let n = i64::try_from(n).map_err(|_| out())?;
                // SAFETY: fallocate on the memfd we own; punching a hole only drops pages of
                // that file (KEEP_SIZE: its size stays), no memory of ours is touched.
                unsafe {
                    libc::fallocate(
                        fo.file().as_raw_fd(),
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        file_off,
                        n,
                    )
                }
            }
            None => {
                let host = region
                    .get_host_address(MemoryRegionAddress(off))
                    .map_err(|_| out())?;
                // SAFETY: `host..host+n` lies inside this region's mapping (checked above);
                // the guest gave these pages up, and nothing in the vmm keeps references
                // into guest memory across this call.
                unsafe { libc::madvise(host.cast(), n as usize, libc::MADV_DONTNEED) }
            }
        };
        if rc != 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
    }
    Ok(end - start)
}

/// Smallest guest we agree to build.
pub const MIN_MEM_SIZE: u64 = 16 << 20;

/// Creates guest memory of `mem_size` bytes backed by one memfd (advised to use huge
/// pages), or by an unlinked file in `dir` when given (see the module doc).
pub fn create(mem_size: u64, dir: Option<&std::path::Path>) -> Result<GuestMemory, MemoryError> {
    if mem_size < MIN_MEM_SIZE {
        return Err(MemoryError::TooSmall(mem_size));
    }
    let file = match dir {
        Some(d) => tmpfile(d)?,
        None => memfd("husk-guest-ram")?,
    };
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
    let mem = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MemoryError::Map)?;
    if dir.is_none() {
        for region in mem.iter() {
            advise_huge(region.as_ptr(), region.len() as usize);
        }
    }
    Ok(mem)
}

/// Asks for transparent huge pages on `[addr, addr + len)`. Best effort: a kernel without
/// THP answers EINVAL, and the guest then runs on 4 KiB pages as before.
fn advise_huge(addr: *mut u8, len: usize) {
    // SAFETY: `addr..addr+len` is a mapping this module just made; MADV_HUGEPAGE only sets
    // a flag on the VMA and changes no memory contents.
    let rc = unsafe { libc::madvise(addr.cast(), len, libc::MADV_HUGEPAGE) };
    if rc != 0 {
        log::debug!(
            "MADV_HUGEPAGE on guest memory: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// An unlinked file in `dir`: nothing to clean up when the vmm dies, however it dies.
fn tmpfile(dir: &std::path::Path) -> Result<File, MemoryError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|err| MemoryError::TmpFile {
            dir: dir.into(),
            err,
        })
}

pub(crate) fn memfd(name: &str) -> Result<File, MemoryError> {
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
    use vm_memory::Bytes;

    #[test]
    fn memfd_backed_and_usable() {
        let mem = create(32 << 20, None).unwrap();
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

    /// Resident pages of the memfd behind `mem` (via mincore on a fresh mapping).
    fn resident_pages(mem: &GuestMemory) -> usize {
        let region = mem.iter().next().unwrap();
        let fd = region.file_offset().unwrap().file().as_raw_fd();
        let len = region.len() as usize;
        // SAFETY: a fresh shared read-only mapping of our own memfd, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let mut vec = vec![0u8; len / PAGE_SIZE as usize];
        // SAFETY: `p` maps `len` bytes; `vec` has one byte per page.
        assert_eq!(unsafe { libc::mincore(p, len, vec.as_mut_ptr()) }, 0);
        // SAFETY: unmapping what we mapped.
        unsafe { libc::munmap(p, len) };
        vec.iter().filter(|b| *b & 1 != 0).count()
    }

    #[test]
    fn discard_gives_pages_back_and_reads_zero() {
        let mem = create(32 << 20, None).unwrap();
        let data = vec![0xa5u8; 1 << 20];
        mem.write_slice(&data, GuestAddress(4 << 20)).unwrap();
        assert!(resident_pages(&mem) >= 256);
        // An unaligned range: only the whole pages inside it go.
        let n = discard(&mem, (4 << 20) + 1, (1 << 20) - 1).unwrap();
        assert_eq!(n, (1 << 20) - PAGE_SIZE);
        assert_eq!(resident_pages(&mem), 1);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(4 << 20)).unwrap(), 0xa5);
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress((4 << 20) + 8192)).unwrap(),
            0
        );
    }

    #[test]
    fn discard_outside_ram_drops_nothing() {
        let mem = create(32 << 20, None).unwrap();
        mem.write_slice(&[1u8; 8192], GuestAddress((32 << 20) - 8192))
            .unwrap();
        // Starts inside, ends past the end: refused as a whole.
        assert!(matches!(
            discard(&mem, (32 << 20) - 8192, 16384),
            Err(DiscardError::OutOfRange { .. })
        ));
        assert_eq!(resident_pages(&mem), 2);
        assert!(discard(&mem, u64::MAX - 10, 100).is_err());
        assert!(discard(&mem, 1 << 40, 4096).is_err());
        // Less than a page: nothing to do, not an error.
        assert_eq!(discard(&mem, 0x1001, 100).unwrap(), 0);
    }

    #[test]
    fn discard_on_anonymous_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        mem.write_obj(7u64, GuestAddress(0x3000)).unwrap();
        assert_eq!(discard(&mem, 0x3000, 0x1000).unwrap(), 0x1000);
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0x3000)).unwrap(), 0);
    }

    #[test]
    fn too_small_refused() {
        assert!(matches!(
            create(1 << 20, None),
            Err(MemoryError::TooSmall(_))
        ));
    }

    #[test]
    fn backed_by_an_unlinked_file_in_a_directory() {
        let dir = std::env::temp_dir().join(format!("husk-mem-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mem = create(32 << 20, Some(&dir)).unwrap();
        mem.write_obj(0x1234_5678_u32, GuestAddress(16 << 20))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(16 << 20)).unwrap(),
            0x1234_5678
        );
        let region = mem.iter().next().unwrap();
        let fd = region.file_offset().unwrap().file().as_raw_fd();
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        assert!(link.to_string_lossy().ends_with("(deleted)"), "{link:?}");
        // Nothing is left behind in the directory.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        let _ = discard(&mem, 16 << 20, 1 << 20).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(16 << 20)).unwrap(), 0);
        drop(mem);
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn a_missing_directory_is_a_clear_error() {
        let err = create(32 << 20, Some(std::path::Path::new("/nonexistent/husk"))).unwrap_err();
        assert!(matches!(err, MemoryError::TmpFile { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/husk"), "{err}");
    }
}
