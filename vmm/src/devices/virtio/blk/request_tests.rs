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
fn addresses_outside_memory_and_huge_lengths() {
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
}

#[test]
fn loops_and_bad_next_terminate() {
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
}

#[test]
fn indirect_table_with_bad_length_refused() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_IN, 0);
    // An indirect descriptor whose table length is not a multiple of 16 ends the chain.
    let r = parse(&m, &[desc(0x3000, 17, F_INDIRECT, 0)]);
    assert!(r.is_err());
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
