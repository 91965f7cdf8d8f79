use std::io::Write;
use std::os::unix::fs::MetadataExt;

use vm_memory::{Bytes, GuestAddress};

use super::*;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "husk-snapshot-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn memfd_with(chunks: &[(u64, &[u8])], len: u64) -> std::fs::File {
    let f = crate::memory::memfd("snapshot-test").unwrap();
    f.set_len(len).unwrap();
    for (off, data) in chunks {
        use std::os::unix::fs::FileExt;
        f.write_all_at(data, *off).unwrap();
    }
    f
}

#[test]
fn data_extents_skip_holes() {
    let f = memfd_with(&[(0, b"a"), (3 << 20, b"b")], 8 << 20);
    let e = ram::data_extents(&f, 0, 8 << 20).unwrap();
    // Page granular (or coarser); two separate runs, the second around 3 MiB.
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!(e[0].0, 0);
    assert!(e[1].0 <= 3 << 20 && e[1].0 + e[1].1 > 3 << 20);
    // Bounded by the window asked for.
    let e = ram::data_extents(&f, 1 << 20, 2 << 20).unwrap();
    assert!(e.is_empty(), "{e:?}");
    let e = ram::data_extents(&f, 3 << 20, (3 << 20) + 10).unwrap();
    assert_eq!(e, vec![(3 << 20, 10)]);
}

#[test]
fn ram_round_trips_only_what_was_written() {
    let size = 64 << 20;
    let mem = crate::memory::create(size, None).unwrap();
    mem.write_slice(b"kernel", GuestAddress(0x10_0000)).unwrap();
    mem.write_slice(&[7u8; 5000], GuestAddress(40 << 20))
        .unwrap();
    let dir = TempDir::new();
    let path = dir.path().join(RAM_FILE);
    let saved = ram::save(&mem, &path).unwrap();
    assert!((4096 * 3..1 << 20).contains(&saved), "{saved}");
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), size);
    // Sparse: blocks are allocated for the written pages only.
    assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());

    let fresh = crate::memory::create(size, None).unwrap();
    assert_eq!(ram::load(&fresh, &path).unwrap(), saved);
    let mut b = [0u8; 6];
    fresh.read_slice(&mut b, GuestAddress(0x10_0000)).unwrap();
    assert_eq!(&b, b"kernel");
    let mut b = [0u8; 5000];
    fresh.read_slice(&mut b, GuestAddress(40 << 20)).unwrap();
    assert!(b.iter().all(|x| *x == 7));
    let mut z = [1u8; 16];
    fresh.read_slice(&mut z, GuestAddress(20 << 20)).unwrap();
    assert_eq!(z, [0; 16]);

    // Another memory size is refused, not half loaded.
    let small = crate::memory::create(32 << 20, None).unwrap();
    assert!(matches!(
        ram::load(&small, &path),
        Err(SnapshotError::Mismatch(_))
    ));
}

#[test]
fn ram_of_anonymous_memory_is_refused() {
    let mem = crate::devices::virtio::test_utils::mem();
    let dir = TempDir::new();
    assert!(matches!(
        ram::save(&mem, &dir.path().join(RAM_FILE)),
        Err(SnapshotError::Memory(_))
    ));
}

#[test]
fn state_files_of_another_version_or_malformed_are_refused() {
    let dir = TempDir::new();
    assert!(matches!(
        Snapshot::read(dir.path()),
        Err(SnapshotError::Io { .. })
    ));
    let mut f = std::fs::File::create(dir.path().join(STATE_FILE)).unwrap();
    f.write_all(b"{\"version\": 1, \"mem_size\": ").unwrap();
    let e = Snapshot::read(dir.path()).unwrap_err();
    assert!(matches!(e, SnapshotError::Format { .. }), "{e}");
    drop(f);
    std::fs::write(
        dir.path().join(STATE_FILE),
        br#"{"version": 999, "mem_size": 1, "vm": null, "vcpus": [], "serial": {}, "devices": []}"#,
    )
    .unwrap();
    let e = Snapshot::read(dir.path()).unwrap_err();
    assert!(e.to_string().contains("format version 999"), "{e}");
}

#[test]
fn case_40_snapshots_into_a_full_or_read_only_directory_fail_cleanly() {
    use crate::devices::virtio::test_utils::Tmpfs;
    let mem = crate::memory::create(16 << 20, None).unwrap();
    mem.write_slice(&[9u8; 4 << 20], GuestAddress(1 << 20))
        .unwrap();
    // 1 MiB of room for 4 MiB of guest RAM.
    let Some(full) = Tmpfs::mount("snap-full", 1 << 20, false) else {
        return;
    };
    let e = ram::save(&mem, &full.path().join(RAM_FILE)).unwrap_err();
    assert!(e.to_string().contains("No space left"), "{e}");
    // The error names what failed; nothing panicked and the directory is still usable.
    std::fs::remove_file(full.path().join(RAM_FILE)).unwrap();
    std::fs::write(full.path().join("after"), b"ok").unwrap();

    let Some(ro) = Tmpfs::mount("snap-ro", 1 << 20, true) else {
        return;
    };
    let e = ram::save(&mem, &ro.path().join(RAM_FILE)).unwrap_err();
    assert!(
        matches!(
            e,
            SnapshotError::Io {
                what: "creating",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("Read-only file system"), "{e}");
    let e = Snapshot::read(ro.path()).unwrap_err();
    assert!(matches!(e, SnapshotError::Io { .. }), "{e}");
}
