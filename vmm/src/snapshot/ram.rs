//! Guest RAM in and out of a snapshot, touching only what the guest wrote. The vmm's guest
//! RAM is one file (see `memory`), so the pages a guest never touched are holes in it:
//! `lseek(SEEK_DATA/SEEK_HOLE)` finds the rest (some 30 MiB of a booted agent VM in a 320
//! MiB guest). Saving writes those extents into a sparse file of the same layout;
//! restoring reads the template's extents straight into the new VM's mapping, one copy,
//! and leaves the rest of the new RAM file empty.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::Path;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::{io, SnapshotError};
use crate::memory::GuestMemory;

/// The data extents of `file` inside `[start, end)`, as (offset, length).
pub fn data_extents(file: &File, start: u64, end: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let Ok(off) = i64::try_from(at) else { break };
        // SAFETY: lseek on a file we own; it only moves that descriptor's offset.
        let data = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            // ENXIO: no data at or after `at`.
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (data, hole) = (data as u64, (hole as u64).min(end));
        if data >= end {
            break;
        }
        if hole > data {
            out.push((data, hole - data));
        }
        at = hole.max(data + 1);
    }
    Ok(out)
}

/// For each RAM region: its guest address, length and offset in the RAM file.
fn regions(mem: &GuestMemory) -> Result<Vec<(u64, u64, u64, &File)>, SnapshotError> {
    mem.iter()
        .map(|r| {
            let fo = r
                .file_offset()
                .ok_or_else(|| SnapshotError::Memory("guest RAM is not backed by a file".into()))?;
            Ok((r.start_addr().0, r.len(), fo.start(), fo.file()))
        })
        .collect()
}

/// Where the data extents of a file laid out as guest RAM go: (guest address, offset in
/// the file, length). `src` is that file; without it, each region's own backing file.
fn placed_extents(
    mem: &GuestMemory,
    src: Option<&File>,
) -> Result<Vec<(u64, u64, u64)>, SnapshotError> {
    let mut out = Vec::new();
    for (gpa, len, fo, file) in regions(mem)? {
        let ext = data_extents(src.unwrap_or(file), fo, fo + len)
            .map_err(|e| SnapshotError::Memory(format!("finding the written pages: {e}")))?;
        out.extend(ext.into_iter().map(|(off, n)| (gpa + (off - fo), off, n)));
    }
    Ok(out)
}

/// The length of the RAM file's layout.
fn layout_len(mem: &GuestMemory) -> Result<u64, SnapshotError> {
    Ok(regions(mem)?.iter().map(|r| r.2 + r.1).max().unwrap_or(0))
}

/// Writes guest RAM's data extents into a new sparse file at `path` (same layout).
pub fn save(mem: &GuestMemory, path: &Path) -> Result<u64, SnapshotError> {
    let total = layout_len(mem)?;
    let mut out = File::create(path).map_err(io("creating", path))?;
    out.set_len(total).map_err(io("sizing", path))?;
    let mut written = 0;
    for (gpa, off, n) in placed_extents(mem, None)? {
        out.seek(SeekFrom::Start(off))
            .map_err(io("seeking", path))?;
        mem.write_all_volatile_to(GuestAddress(gpa), &mut out, n as usize)
            .map_err(|e| SnapshotError::Memory(format!("saving {n:#x} bytes at {off:#x}: {e}")))?;
        written += n;
    }
    out.sync_all().map_err(io("syncing", path))?;
    Ok(written)
}

/// Reads the snapshot's RAM at `path` into `mem` (fresh, all zero); returns bytes read.
pub fn load(mem: &GuestMemory, path: &Path) -> Result<u64, SnapshotError> {
    let mut src = File::open(path).map_err(io("opening", path))?;
    let size = src.metadata().map_err(io("reading", path))?.len();
    let total = layout_len(mem)?;
    if size != total {
        return Err(SnapshotError::Mismatch(format!(
            "its RAM file holds {size} bytes, the VM has {total}"
        )));
    }
    let mut read = 0;
    for (gpa, off, n) in placed_extents(mem, Some(&src))? {
        src.seek(SeekFrom::Start(off))
            .map_err(io("seeking", path))?;
        mem.read_exact_volatile_from(GuestAddress(gpa), &mut src, n as usize)
            .map_err(|e| SnapshotError::Memory(format!("loading {n:#x} bytes at {off:#x}: {e}")))?;
        read += n;
    }
    Ok(read)
}
