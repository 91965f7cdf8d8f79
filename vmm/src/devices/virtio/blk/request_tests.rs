use super::*;
use crate::devices::virtio::test_utils::{desc, mem, queue_with, F_INDIRECT, F_NEXT, F_WRITE};
use virtio_queue::QueueT;

const HDR: u64 = 0x1000;
const DATA: u64 = 0x10000;
const STATUS: u64 = 0x2000;

fn header(m: &GuestMemory, t: u32, sector: u64) {
    m.write_obj(t.to_le(), GuestAddress(HDR)).unwrap();
    m.write_obj(sector.to_le(), GuestAddress(HDR + 8)).unwrap();
}

fn parse(
    m: &GuestMemory,
    descs: &[virtio_queue::desc::RawDescriptor],
) -> Result<Request, RequestError> {
    let (_vq, mut q) = queue_with(m, 16, descs);
    let chain = q.pop_descriptor_chain(m).ok_or(RequestError::BrokenChain)?;
    Request::parse(chain, m, 100, 16)
}

#[test]
fn read_request() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_IN, 3);
    let r = parse(
        &m,
        &[
            desc(HDR, 16, F_NEXT, 1),
            desc(DATA, 1024, F_NEXT | F_WRITE, 2),
            desc(STATUS, 1, F_WRITE, 0),
        ],
    )
    .unwrap();
    assert_eq!(r.rtype, RequestType::In);
    assert_eq!(r.sector, 3);
    assert_eq!(r.data_len, 1024);
    assert_eq!(r.segments, vec![(GuestAddress(DATA), 1024)]);
    assert_eq!(r.status, GuestAddress(STATUS));
}

#[test]
fn direction_and_shape_checked() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_IN, 0);
    // Data for a read must be writable.
    let e = parse(
        &m,
        &[
            desc(HDR, 16, F_NEXT, 1),
            desc(DATA, 512, F_NEXT, 2),
            desc(STATUS, 1, F_WRITE, 0),
        ],
    );
    assert!(matches!(e, Err(RequestError::WrongDirection { .. })));
    // Writable header.
    let e = parse(
        &m,
        &[
            desc(HDR, 16, F_NEXT | F_WRITE, 1),
            desc(STATUS, 1, F_WRITE, 0),
        ],
    );
    assert_eq!(e, Err(RequestError::BadHeader));
    // Short header.
    let e = parse(&m, &[desc(HDR, 8, F_NEXT, 1), desc(STATUS, 1, F_WRITE, 0)]);
    assert_eq!(e, Err(RequestError::BadHeader));
    // Header only: no status.
    assert_eq!(
        parse(&m, &[desc(HDR, 16, 0, 0)]),
        Err(RequestError::BadStatus)
    );
    // Read-only status.
    let e = parse(&m, &[desc(HDR, 16, F_NEXT, 1), desc(STATUS, 1, 0, 0)]);
    assert_eq!(e, Err(RequestError::BadStatus));
}

#[test]
fn sectors_checked_against_disk() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_OUT, 99);
    let e = parse(
        &m,
        &[
            desc(HDR, 16, F_NEXT, 1),
            desc(DATA, 1024, F_NEXT, 2),
            desc(STATUS, 1, F_WRITE, 0),
        ],
    );
    assert!(matches!(e, Err(RequestError::OutOfDisk { .. })));
    header(&m, VIRTIO_BLK_T_OUT, u64::MAX);
    let e = parse(
        &m,
        &[
            desc(HDR, 16, F_NEXT, 1),
            desc(DATA, 512, F_NEXT, 2),
            desc(STATUS, 1, F_WRITE, 0),
        ],
    );
    assert!(matches!(e, Err(RequestError::OutOfDisk { .. })));
    header(&m, VIRTIO_BLK_T_OUT, 0);
    let e = parse(
        &m,
        &[
            desc(HDR, 16, F_NEXT, 1),
            desc(DATA, 100, F_NEXT, 2),
            desc(STATUS, 1, F_WRITE, 0),
        ],
    );
    assert_eq!(e, Err(RequestError::Unaligned(100)));
}

#[test]
fn case_03_addresses_outside_memory_and_huge_lengths() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_IN, 0);
    let e = parse(
        &m,
        &[
            desc(HDR, 16, F_NEXT, 1),
            desc(0xffff_ffff_0000, 512, F_NEXT | F_WRITE, 2),
            desc(STATUS, 1, F_WRITE, 0),
        ],
    );
    assert!(matches!(e, Err(RequestError::OutOfMemory { .. })));
    let e = parse(
        &m,
        &[
            desc(HDR, 16, F_NEXT, 1),
            desc(DATA, !511, F_NEXT | F_WRITE, 2),
            desc(STATUS, 1, F_WRITE, 0),
        ],
    );
    assert!(matches!(e, Err(RequestError::OutOfMemory { .. })));
    // Header straddling the end of memory.
    let e = parse(
        &m,
        &[
            desc((16 << 20) - 8, 16, F_NEXT, 1),
            desc(STATUS, 1, F_WRITE, 0),
        ],
    );
    assert!(matches!(e, Err(RequestError::OutOfMemory { .. })));
    // Status outside memory.
    let e = parse(
        &m,
        &[desc(HDR, 16, F_NEXT, 1), desc(1 << 40, 1, F_WRITE, 0)],
    );
    assert!(matches!(e, Err(RequestError::OutOfMemory { .. })));
    // Data straddling the end of memory, addr + len past 2^64, addr = 2^64 - 1.
    for (addr, len) in [
        ((16 << 20) - 256, 512),
        (u64::MAX - 255, 512),
        (u64::MAX, 512),
        (u64::MAX, 1),
    ] {
        let e = parse(
            &m,
            &[
                desc(HDR, 16, F_NEXT, 1),
                desc(addr, len, F_NEXT | F_WRITE, 2),
                desc(STATUS, 1, F_WRITE, 0),
            ],
        );
        assert!(
            matches!(e, Err(RequestError::OutOfMemory { .. })),
            "{addr:#x}+{len:#x}: {e:?}"
        );
    }
    // Two regions with a hole between them (as the MMIO gap): a buffer running from the
    // end of the first into the hole, one inside the hole, and one spanning both regions.
    let m = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 16 << 20),
        (GuestAddress(32 << 20), 1 << 20),
    ])
    .unwrap();
    header(&m, VIRTIO_BLK_T_IN, 0);
    for (addr, len) in [
        ((16 << 20) - 512, 1024),
        (20 << 20, 512),
        ((16 << 20) - 512, (16 << 20) + 1024),
    ] {
        let e = parse(
            &m,
            &[
                desc(HDR, 16, F_NEXT, 1),
                desc(addr, len, F_NEXT | F_WRITE, 2),
                desc(STATUS, 1, F_WRITE, 0),
            ],
        );
        assert!(
            matches!(e, Err(RequestError::OutOfMemory { .. })),
            "{addr:#x}+{len:#x}: {e:?}"
        );
    }
    // The same buffer wholly inside the second region is fine.
    assert!(parse(
        &m,
        &[
            desc(HDR, 16, F_NEXT, 1),
            desc(32 << 20, 512, F_NEXT | F_WRITE, 2),
            desc(STATUS, 1, F_WRITE, 0),
        ],
    )
    .is_ok());
}

#[test]
fn case_01_loops_and_bad_next_terminate() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_IN, 0);
    // 0 -> 1 -> 0 -> ... : the chain iterator stops after queue-size descriptors, and the
    // request is refused, not spun on.
    let (_vq, mut q) = queue_with(&m, 16, &[]);
    let vq = virtio_queue::mock::MockSplitQueue::create(&m, GuestAddress(0), 16);
    vq.desc_table().store(0, desc(HDR, 16, F_NEXT, 1)).unwrap();
    vq.desc_table()
        .store(1, desc(DATA, 512, F_NEXT | F_WRITE, 0))
        .unwrap();
    vq.avail().ring().ref_at(0).unwrap().store(0);
    vq.avail().idx().store(1);
    let chain = q.pop_descriptor_chain(&m).unwrap();
    assert!(chain.clone().count() <= 16);
    let r = Request::parse(chain, &m, 100, 16);
    assert!(r.is_err());
    // next out of range.
    let m = mem();
    header(&m, VIRTIO_BLK_T_IN, 0);
    let (vq, mut q) = queue_with(
        &m,
        16,
        &[desc(HDR, 16, F_NEXT, 1), desc(STATUS, 1, F_WRITE, 0)],
    );
    vq.desc_table()
        .store(0, desc(HDR, 16, F_NEXT, 500))
        .unwrap();
    let chain = q.pop_descriptor_chain(&m).unwrap();
    assert_eq!(
        Request::parse(chain, &m, 100, 16),
        Err(RequestError::BadStatus)
    );
    // A descriptor pointing at itself, and a full table of NEXT ending in a writable
    // descriptor that would pass for a status: the chain stops after at most the queue
    // size, and a chain that stopped early is refused.
    for table in [
        vec![desc(HDR, 16, F_NEXT, 0)],
        (0..16u16)
            .map(|i| match i {
                0 => desc(HDR, 16, F_NEXT, 1),
                _ => desc(STATUS, 1, F_NEXT | F_WRITE, (i + 1) % 16),
            })
            .collect(),
    ] {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 0);
        let vq = virtio_queue::mock::MockSplitQueue::create(&m, GuestAddress(0), 16);
        for (i, d) in table.iter().enumerate() {
            vq.desc_table().store(i as u16, *d).unwrap();
        }
        vq.avail().ring().ref_at(0).unwrap().store(0);
        vq.avail().idx().store(1);
        let mut q: virtio_queue::Queue = vq.create_queue().unwrap();
        let chain = q.pop_descriptor_chain(&m).unwrap();
        assert!(chain.clone().count() <= 16);
        assert!(Request::parse(chain, &m, 100, 16).is_err());
    }
}

#[test]
fn case_02_next_beyond_the_table_ends_the_chain() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_IN, 0);
    // Data descriptor whose next is the queue size: the chain stops there (the table entry
    // past the end, a plausible status, is never read), and the request is refused.
    let (vq, mut q) = queue_with(
        &m,
        16,
        &[
            desc(HDR, 16, F_NEXT, 1),
            desc(DATA, 512, F_NEXT | F_WRITE, 16),
        ],
    );
    let _ = vq;
    let chain = q.pop_descriptor_chain(&m).unwrap();
    assert_eq!(chain.clone().count(), 2);
    assert_eq!(
        Request::parse(chain, &m, 100, 16),
        Err(RequestError::BrokenChain)
    );
}

#[test]
fn case_04_chains_past_4_gib_are_refused() {
    // 5 GiB of guest memory (reserved, never touched) so the descriptors lie in it.
    let Ok(m) = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 5 << 30)]) else {
        eprintln!("skipped: cannot map 5 GiB of guest memory here");
        return;
    };
    header(&m, VIRTIO_BLK_T_IN, 0);
    let g = 1u64 << 30;
    let e = parse(
        &m,
        &[
            desc(HDR, 16, F_NEXT, 1),
            desc(g, 0x8000_0000, F_NEXT | F_WRITE, 2),
            desc(3 * g, 0x8000_0000, F_NEXT | F_WRITE, 3),
            desc(STATUS, 1, F_WRITE, 0),
        ],
    );
    assert_eq!(e, Err(RequestError::BrokenChain));
    // Under 4 GiB in all but far beyond the disk: refused before any I/O.
    let e = parse(
        &m,
        &[
            desc(HDR, 16, F_NEXT, 1),
            desc(g, 0xffff_fe00, F_NEXT | F_WRITE, 2),
            desc(STATUS, 1, F_WRITE, 0),
        ],
    );
    assert!(matches!(e, Err(RequestError::OutOfDisk { .. })), "{e:?}");
}

#[test]
fn case_05_bad_indirect_tables_refused() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_IN, 0);
    // An indirect descriptor whose table length is not a multiple of 16 ends the chain.
    let r = parse(&m, &[desc(0x3000, 17, F_INDIRECT, 0)]);
    assert!(r.is_err());
    // A good indirect table (header, data, status) works, for reference.
    let table = 0x3000u64;
    let put = |i: u64, d: virtio_queue::desc::RawDescriptor| {
        m.write_obj(d, GuestAddress(table + 16 * i)).unwrap();
    };
    put(0, desc(HDR, 16, F_NEXT, 1));
    put(1, desc(DATA, 512, F_NEXT | F_WRITE, 2));
    put(2, desc(STATUS, 1, F_WRITE, 0));
    assert!(parse(&m, &[desc(table, 48, F_INDIRECT, 0)]).is_ok());
    // An indirect descriptor inside the indirect table.
    put(1, desc(0x4000, 48, F_INDIRECT, 0));
    assert!(parse(&m, &[desc(table, 48, F_INDIRECT, 0)]).is_err());
    put(1, desc(DATA, 512, F_NEXT | F_WRITE, 2));
    // More than 65535 entries.
    assert!(parse(&m, &[desc(table, 16 * 65536, F_INDIRECT, 0)]).is_err());
    // A table outside guest memory, and one straddling its end.
    assert!(parse(&m, &[desc(1 << 40, 48, F_INDIRECT, 0)]).is_err());
    assert!(parse(&m, &[desc((16 << 20) - 32, 48, F_INDIRECT, 0)]).is_err());
    // A table whose entries point past it.
    put(1, desc(DATA, 512, F_NEXT | F_WRITE, 9));
    assert!(parse(&m, &[desc(table, 48, F_INDIRECT, 0)]).is_err());
    put(1, desc(DATA, 512, F_NEXT | F_WRITE, 2));
    // INDIRECT together with NEXT: the table is followed and the NEXT ignored, as
    // virtio-queue does; the request is the table's.
    let r = parse(
        &m,
        &[
            desc(table, 48, F_INDIRECT | F_NEXT, 1),
            desc(0x5000, 1, 0, 0),
        ],
    )
    .unwrap();
    assert_eq!(r.status, GuestAddress(STATUS));
}

#[test]
fn segment_count_bounded() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_IN, 0);
    let mut d = vec![desc(HDR, 16, F_NEXT, 1)];
    for i in 0..10u16 {
        d.push(desc(
            DATA + u64::from(i) * 512,
            512,
            F_NEXT | F_WRITE,
            i + 2,
        ));
    }
    d.push(desc(STATUS, 1, F_WRITE, 0));
    let (_vq, mut q) = queue_with(&m, 16, &d);
    let chain = q.pop_descriptor_chain(&m).unwrap();
    assert_eq!(
        Request::parse(chain, &m, 100, 4),
        Err(RequestError::TooManySegments(4))
    );
}
