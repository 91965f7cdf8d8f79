use super::super::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use super::*;
use crate::devices::virtio::mmio::{DeviceState, MmioTransport, STATUS_NEEDS_RESET};
use crate::devices::virtio::test_utils::{
    allocated_during, at_least, bring_up, capture_logs, desc, kick, limiter, mem, mmio_read,
    mmio_write, queue_with, transport, used, FakeClock, RecordingRegistry, RingSetup, F_NEXT,
    F_WRITE,
};
use crate::devices::virtio::{NoRegistry, INT_CONFIG};
use virtio_queue::mock::MockSplitQueue;
use vmm_sys_util::eventfd::EventFd;

const HDR: u64 = 0x1000;
const DATA: u64 = 0x10000;
const STATUS: u64 = 0x2000;

fn image(name: &str, bytes: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("husk-blk-{}-{name}", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

fn block(path: &Path, read_only: bool) -> Block {
    Block::new(&DriveConfig {
        path: path.into(),
        read_only,
        format: ImageFormat::Raw,
        id: Some("husk-disk".into()),
        rate_limiter: None,
    })
    .unwrap()
}

fn run(
    b: &mut Block,
    m: &GuestMemory,
    t: u32,
    sector: u64,
    data: &[(u64, u32, bool)],
) -> (u8, Vec<(u32, u32)>) {
    m.write_obj(t, GuestAddress(HDR)).unwrap();
    m.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
    m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let mut d = vec![desc(HDR, 16, F_NEXT, 1)];
    for (i, (addr, len, w)) in data.iter().enumerate() {
        let f = F_NEXT | if *w { F_WRITE } else { 0 };
        d.push(desc(*addr, *len, f, i as u16 + 2));
    }
    d.push(desc(STATUS, 1, F_WRITE, 0));
    let (vq, q) = queue_with(m, 16, &d);
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    b.activate(
        Activation {
            mem: m.clone(),
            queues: vec![q],
            interrupt: Arc::new(Interrupt::new(irq)),
            queue_evts: Vec::new(),
            acked_features: 0,
        },
        &mut NoRegistry,
    )
    .unwrap();
    b.queue_notify(0, &mut NoRegistry);
    let status: u8 = m.read_obj(GuestAddress(STATUS)).unwrap();
    (status, used(&vq))
}

#[test]
fn write_then_read_round_trip() {
    let p = image("rw", &vec![0u8; 8192]);
    let mut b = block(&p, false);
    assert_eq!(b.capacity(), 16);
    let m = mem();
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    m.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    let (s, u) = run(
        &mut b,
        &m,
        super::super::VIRTIO_BLK_T_OUT,
        2,
        &[(DATA, 1024, false)],
    );
    assert_eq!((s, u), (VIRTIO_BLK_S_OK, vec![(0, 1)]));
    let on_disk = std::fs::read(&p).unwrap();
    assert_eq!(&on_disk[1024..2048], &pattern[..]);
    // Read it back in two segments.
    let (s, u) = run(
        &mut b,
        &m,
        super::super::VIRTIO_BLK_T_IN,
        2,
        &[(DATA + 0x10000, 512, true), (DATA + 0x20000, 512, true)],
    );
    assert_eq!((s, u), (VIRTIO_BLK_S_OK, vec![(0, 1025)]));
    let mut back = vec![0u8; 512];
    m.read_slice(&mut back, GuestAddress(DATA + 0x20000))
        .unwrap();
    assert_eq!(&back[..], &pattern[512..]);
    let (s, _) = run(&mut b, &m, super::super::VIRTIO_BLK_T_FLUSH, 0, &[]);
    assert_eq!(s, VIRTIO_BLK_S_OK);
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn case_10_read_only_enforced_even_if_guest_ignores_the_feature() {
    let p = image("ro", &vec![5u8; 4096]);
    let mut b = block(&p, true);
    assert_ne!(b.features() & VIRTIO_BLK_F_RO, 0);
    let m = mem();
    m.write_slice(&[1u8; 512], GuestAddress(DATA)).unwrap();
    let (s, u) = run(
        &mut b,
        &m,
        super::super::VIRTIO_BLK_T_OUT,
        0,
        &[(DATA, 512, false)],
    );
    assert_eq!((s, u), (VIRTIO_BLK_S_IOERR, vec![(0, 1)]));
    assert_eq!(std::fs::read(&p).unwrap(), vec![5u8; 4096]);
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn get_id_and_unsupported() {
    let p = image("id", &vec![0u8; 4096]);
    let mut b = block(&p, false);
    let m = mem();
    let (s, u) = run(
        &mut b,
        &m,
        super::super::VIRTIO_BLK_T_GET_ID,
        0,
        &[(DATA, 20, true)],
    );
    assert_eq!((s, u), (VIRTIO_BLK_S_OK, vec![(0, 21)]));
    let mut id = [0u8; 9];
    m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"husk-disk");
    let (s, _) = run(&mut b, &m, 77, 0, &[]);
    assert_eq!(s, VIRTIO_BLK_S_UNSUPP);
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn malformed_requests_complete_with_error() {
    let p = image("bad", &vec![0u8; 4096]);
    let mut b = block(&p, false);
    let m = mem();
    // Beyond the disk: IOERR, used length 1, nothing written.
    let (s, u) = run(
        &mut b,
        &m,
        super::super::VIRTIO_BLK_T_IN,
        8,
        &[(DATA, 512, true)],
    );
    assert_eq!((s, u), (VIRTIO_BLK_S_IOERR, vec![(0, 1)]));
    // Data outside guest memory.
    let (s, _) = run(
        &mut b,
        &m,
        super::super::VIRTIO_BLK_T_IN,
        0,
        &[(1 << 40, 512, true)],
    );
    assert_eq!(s, VIRTIO_BLK_S_IOERR);
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn config_space_capacity_and_seg_max() {
    let p = image("cfg", &vec![0u8; 10 * 512 + 100]);
    let b = block(&p, false);
    let mut cap = [0u8; 8];
    b.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 10);
    let mut seg = [0u8; 4];
    b.read_config(12, &mut seg);
    assert_eq!(u32::from_le_bytes(seg), u32::from(QUEUE_SIZE) - 2);
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn inactive_device_ignores_notifications() {
    let p = image("inactive", &vec![0u8; 4096]);
    let mut b = block(&p, false);
    assert_eq!(b.process_queue(), 0);
    std::fs::remove_file(&p).unwrap();
}

/// Lays out a request (header, data descriptors, status) in guest memory and publishes it
/// on `vq` at descriptor `first` (the chain takes `data.len() + 2` descriptors).
fn publish(
    vq: &MockSplitQueue<'_, GuestMemory>,
    m: &GuestMemory,
    t: u32,
    sector: u64,
    data: &[(u64, u32, bool)],
    first: u16,
) {
    m.write_obj(t, GuestAddress(HDR)).unwrap();
    m.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
    m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let mut d = vec![desc(HDR, 16, F_NEXT, first + 1)];
    for (i, (addr, len, w)) in data.iter().enumerate() {
        let f = F_NEXT | if *w { F_WRITE } else { 0 };
        d.push(desc(*addr, *len, f, first + i as u16 + 2));
    }
    d.push(desc(STATUS, 1, F_WRITE, 0));
    vq.add_desc_chains(&d, first).unwrap();
}

fn status_byte(m: &GuestMemory) -> u8 {
    m.read_obj(GuestAddress(STATUS)).unwrap()
}

#[test]
fn case_06_avail_idx_runaway_breaks_the_queue_until_reset() {
    let p = image("runaway", &vec![0u8; 8192]);
    let m = mem();
    let mut t = transport(block(&p, false), &m);
    let vq = MockSplitQueue::create(&m, GuestAddress(0x8000), 16);
    assert_eq!(
        bring_up(&mut t, &[RingSetup::of(&vq, 16)]),
        DeviceState::Active
    );
    t.interrupt().ack(u32::MAX);

    // The driver claims 17 new chains on a 16-entry ring, then kicks over and over.
    vq.avail().idx().store(17);
    let t0 = std::time::Instant::now();
    let ((), logged) = capture_logs(|| {
        for _ in 0..10_000 {
            kick(&mut t, 0);
        }
    });
    eprintln!(
        "case 6: 10000 kicks of a broken queue took {:?}",
        t0.elapsed()
    );
    assert_eq!(t.state(), DeviceState::Broken);
    assert_ne!(mmio_read(&mut t, 0x70) & STATUS_NEEDS_RESET, 0);
    assert_ne!(t.interrupt().status() & INT_CONFIG, 0);
    let errors = at_least(&logged, log::Level::Warn);
    assert_eq!(errors.len(), 1, "one error for 10000 kicks: {logged:?}");
    assert!(errors[0].contains("virtio-blk"), "{errors:?}");

    // Broken until reset: a valid write published behind a sane index is not even read,
    // however often the guest kicks.
    m.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
    publish(&vq, &m, VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, false)], 0);
    vq.avail().idx().store(1);
    let ((), logged) = capture_logs(|| {
        for _ in 0..10_000 {
            kick(&mut t, 0);
        }
    });
    assert!(logged.is_empty(), "{logged:?}");
    assert_eq!(vq.used().idx().load(), 0);
    assert_eq!(status_byte(&m), 0xff);
    assert_eq!(std::fs::read(&p).unwrap(), vec![0u8; 8192]);
    // A broken device is not snapshotted.
    assert!(crate::devices::virtio::mmio::SnapshotTransport::save(&t).is_err());

    // Reset and a new initialization bring the device back.
    mmio_write(&mut t, 0x70, 0);
    assert_eq!(mmio_read(&mut t, 0x70), 0);
    let vq = MockSplitQueue::create(&m, GuestAddress(0xc000), 16);
    assert_eq!(
        bring_up(&mut t, &[RingSetup::of(&vq, 16)]),
        DeviceState::Active
    );
    publish(&vq, &m, VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, false)], 0);
    kick(&mut t, 0);
    assert_eq!(used(&vq), vec![(0, 1)]);
    assert_eq!(status_byte(&m), VIRTIO_BLK_S_OK);
    assert_eq!(&std::fs::read(&p).unwrap()[..512], &[0x5a; 512][..]);
    std::fs::remove_file(&p).unwrap();
}

/// A read-write block device over an image of `sectors` zero sectors, activated on a
/// 64-entry queue at 0x8000 (virtio-queue's mock driver does not wrap its avail ring).
fn active_block<'m>(
    name: &str,
    sectors: u64,
    m: &'m GuestMemory,
) -> (Block, MockSplitQueue<'m, GuestMemory>, PathBuf) {
    let p = image(name, &[]);
    std::fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(sectors * 512)
        .unwrap();
    let mut b = block(&p, false);
    let vq = MockSplitQueue::create(m, GuestAddress(0x8000), 64);
    b.activate(
        Activation {
            mem: m.clone(),
            queues: vec![vq.create_queue().unwrap()],
            interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
            queue_evts: Vec::new(),
            acked_features: 0,
        },
        &mut NoRegistry,
    )
    .unwrap();
    (b, vq, p)
}

fn file_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn case_01_descriptor_loops_complete_with_ioerr() {
    let m = mem();
    let (mut b, vq, p) = active_block("loop", 16, &m);
    m.write_obj(VIRTIO_BLK_T_OUT, GuestAddress(HDR)).unwrap();
    m.write_obj(0u64, GuestAddress(HDR + 8)).unwrap();
    m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    // 0 -> 1 -> 2 -> ... -> 15 -> 1: every descriptor has NEXT.
    vq.desc_table().store(0, desc(HDR, 16, F_NEXT, 1)).unwrap();
    for i in 1..16u16 {
        let next = if i == 15 { 1 } else { i + 1 };
        vq.desc_table()
            .store(i, desc(DATA, 512, F_NEXT, next))
            .unwrap();
    }
    // A self loop as a second request.
    vq.avail().ring().ref_at(0).unwrap().store(0);
    vq.avail().ring().ref_at(1).unwrap().store(15);
    vq.desc_table()
        .store(15, desc(STATUS, 1, F_NEXT | F_WRITE, 15))
        .unwrap();
    vq.avail().idx().store(2);
    m.write_slice(&[7u8; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(b.process_queue(), 2);
    let u = used(&vq);
    assert_eq!(u.len(), 2);
    assert!(u.iter().all(|&(_, len)| len <= 1), "{u:?}");
    assert_eq!(file_bytes(&p), vec![0u8; 16 * 512]);
    // The loop is not spun on: a later kick finds nothing.
    assert_eq!(b.process_queue(), 0);
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn case_02_head_index_beyond_the_queue_is_dropped() {
    let m = mem();
    let (mut b, vq, p) = active_block("head", 16, &m);
    m.write_slice(&[0x42; 512], GuestAddress(DATA)).unwrap();
    publish(&vq, &m, VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, false)], 0);
    // Heads 64 (the queue size) and 65535 before the good request: no descriptor is read
    // for them, nothing can be given back for them, and the request behind them completes
    // on the same kick.
    vq.avail().ring().ref_at(0).unwrap().store(64);
    vq.avail().ring().ref_at(1).unwrap().store(u16::MAX);
    vq.avail().ring().ref_at(2).unwrap().store(0);
    vq.avail().idx().store(3);
    let (n, logged) = capture_logs(|| b.process_queue());
    assert_eq!(n, 1);
    // Bad heads are a driver's error the guest can repeat at will: no log line for them.
    assert!(at_least(&logged, log::Level::Info).is_empty(), "{logged:?}");
    assert_eq!(used(&vq), vec![(0, 1)]);
    assert_eq!(status_byte(&m), VIRTIO_BLK_S_OK);
    assert_eq!(&file_bytes(&p)[..512], &[0x42; 512][..]);
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn case_03_buffers_outside_guest_memory_touch_nothing() {
    // No ASan on stable Rust: what shows no host memory is touched is that every guest
    // access goes through vm-memory's checked accessors (check_range before any I/O), so a
    // refused request changes neither guest memory next to the bad range nor the disk.
    let m = mem();
    let (mut b, vq, p) = active_block("oob", 16, &m);
    let end = 16u64 << 20;
    let edge = end - 256;
    m.write_slice(&[0x11; 256], GuestAddress(edge)).unwrap();
    let cases = [
        (edge, 512u32),
        (u64::MAX - 255, 512),
        (u64::MAX, 1),
        (0xd000_0000, 512),
        (1 << 40, 512),
    ];
    for (i, (addr, len)) in cases.iter().enumerate() {
        for t in [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT] {
            publish(&vq, &m, t, 0, &[(*addr, *len, t == VIRTIO_BLK_T_IN)], 0);
            assert_eq!(b.process_queue(), 1, "{i} {t}");
            assert_eq!(status_byte(&m), VIRTIO_BLK_S_IOERR, "{addr:#x}+{len:#x}");
        }
    }
    let mut tail = [0u8; 256];
    m.read_slice(&mut tail, GuestAddress(edge)).unwrap();
    assert_eq!(tail, [0x11; 256]);
    assert_eq!(file_bytes(&p), vec![0u8; 16 * 512]);
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn case_04_huge_lengths_are_refused_without_allocating() {
    let m = mem();
    let (mut b, vq, p) = active_block("huge", 1 << 24, &m);
    for (t, len) in [
        (VIRTIO_BLK_T_IN, u32::MAX),
        (VIRTIO_BLK_T_OUT, u32::MAX),
        (VIRTIO_BLK_T_IN, 0xffff_fe00),
        (super::super::VIRTIO_BLK_T_GET_ID, u32::MAX),
    ] {
        publish(&vq, &m, t, 0, &[(DATA, len, t != VIRTIO_BLK_T_OUT)], 0);
        let (n, bytes) = allocated_during(|| b.process_queue());
        assert_eq!(n, 1);
        // IOERR, or no status at all when the chain iterator already stopped at the
        // descriptor that takes the chain past 4 GiB (nothing to write it into).
        let s = status_byte(&m);
        assert!(
            s == VIRTIO_BLK_S_IOERR || s == 0xff,
            "type {t} len {len:#x}: status {s}"
        );
        assert!(
            bytes < 64 << 10,
            "{bytes} bytes allocated for a {len:#x} request"
        );
    }
    // The image (8 GiB, sparse) was not written.
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 1 << 33);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&p).unwrap().blocks(), 0);
    std::fs::remove_file(&p).unwrap();
}

/// Length, bytes and modification time of a file: what must not change on a read-only disk.
fn fingerprint(p: &Path) -> (u64, Vec<u8>, std::time::SystemTime) {
    let md = std::fs::metadata(p).unwrap();
    (md.len(), std::fs::read(p).unwrap(), md.modified().unwrap())
}

const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;

/// A discard/write-zeroes segment (`struct virtio_blk_discard_write_zeroes`) at DATA.
fn dwz_segment(m: &GuestMemory, sector: u64, num_sectors: u32) {
    m.write_obj(sector, GuestAddress(DATA)).unwrap();
    m.write_obj(num_sectors, GuestAddress(DATA + 8)).unwrap();
    m.write_obj(0u32, GuestAddress(DATA + 12)).unwrap();
}

#[test]
fn case_10_read_only_disk_through_a_driver_that_never_accepts_ro() {
    let p = image(
        "ro-mmio",
        &(0..8192u32).map(|i| i as u8).collect::<Vec<_>>(),
    );
    let before = fingerprint(&p);
    let m = mem();
    let mut t = transport(block(&p, true), &m);
    let vq = MockSplitQueue::create(&m, GuestAddress(0x8000), 64);
    // bring_up accepts VERSION_1 only: the driver never saw VIRTIO_BLK_F_RO.
    assert_eq!(
        bring_up(&mut t, &[RingSetup::of(&vq, 64)]),
        DeviceState::Active
    );
    m.write_slice(&[0xee; 1024], GuestAddress(DATA)).unwrap();
    let mut next = 0u16;
    let mut send =
        |t: &mut MmioTransport<Block>, ty: u32, sector: u64, data: &[(u64, u32, bool)]| {
            publish(&vq, &m, ty, sector, data, next);
            next += data.len() as u16 + 2;
            kick(t, 0);
            status_byte(&m)
        };
    assert_eq!(
        send(&mut t, VIRTIO_BLK_T_OUT, 0, &[(DATA, 1024, false)]),
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        send(&mut t, VIRTIO_BLK_T_OUT, 15, &[(DATA, 512, false)]),
        VIRTIO_BLK_S_IOERR
    );
    dwz_segment(&m, 0, 16);
    assert_ne!(
        send(&mut t, T_DISCARD, 0, &[(DATA, 16, false)]),
        VIRTIO_BLK_S_OK
    );
    assert_ne!(
        send(&mut t, T_WRITE_ZEROES, 0, &[(DATA, 16, false)]),
        VIRTIO_BLK_S_OK
    );
    // A flush has nothing to write back: OK, and still no change.
    assert_eq!(
        send(&mut t, super::super::VIRTIO_BLK_T_FLUSH, 0, &[]),
        VIRTIO_BLK_S_OK
    );
    assert_eq!(vq.used().idx().load(), 5);
    assert_eq!(fingerprint(&p), before);
    // Reads still work.
    assert_eq!(
        send(&mut t, VIRTIO_BLK_T_IN, 1, &[(DATA, 512, true)]),
        VIRTIO_BLK_S_OK
    );
    let mut got = vec![0u8; 512];
    m.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(&got[..], &before.1[512..1024]);
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn case_11_range_arithmetic_and_request_shape() {
    let m = mem();
    let (mut b, vq, p) = active_block("ranges", 16, &m);
    let len0 = std::fs::metadata(&p).unwrap().len();
    m.write_slice(&[0x77; 1024], GuestAddress(DATA)).unwrap();
    let run1 = |b: &mut Block, ty: u32, sector: u64, data: &[(u64, u32, bool)]| {
        publish(&vq, &m, ty, sector, data, 0);
        b.process_queue();
        status_byte(&m)
    };
    for (ty, sector, len) in [
        // sector * 512 overflows u64.
        (VIRTIO_BLK_T_OUT, u64::MAX / 512 + 1, 512u32),
        (VIRTIO_BLK_T_IN, u64::MAX / 512 + 1, 512),
        (VIRTIO_BLK_T_OUT, u64::MAX, 512),
        // sector + length overflows, and just past the end.
        (VIRTIO_BLK_T_OUT, u64::MAX - 1, 1024),
        (VIRTIO_BLK_T_OUT, 15, 1024),
        (VIRTIO_BLK_T_IN, 16, 512),
        // Not whole sectors.
        (VIRTIO_BLK_T_OUT, 0, 513),
    ] {
        let w = ty == VIRTIO_BLK_T_IN;
        assert_eq!(
            run1(&mut b, ty, sector, &[(DATA, len, w)]),
            VIRTIO_BLK_S_IOERR,
            "type {ty} sector {sector} len {len}"
        );
    }
    // Discard and write-zeroes (not offered) with overflowing segments, and unknown types.
    for (ty, sector, n) in [
        (T_DISCARD, u64::MAX, u32::MAX),
        (T_WRITE_ZEROES, u64::MAX - 3, 8),
        (T_WRITE_ZEROES, 1 << 40, 1),
        (T_DISCARD, 0, 16),
    ] {
        dwz_segment(&m, sector, n);
        assert_eq!(
            run1(&mut b, ty, 0, &[(DATA, 16, false)]),
            VIRTIO_BLK_S_UNSUPP
        );
    }
    for ty in [2, 3, 5, 9, 0x7fff_ffff, u32::MAX] {
        assert_eq!(run1(&mut b, ty, 0, &[]), VIRTIO_BLK_S_UNSUPP, "type {ty}");
    }
    // No status descriptor, a read-only one, an empty one: completed with length 0 and
    // nothing done.
    m.write_obj(VIRTIO_BLK_T_OUT, GuestAddress(HDR)).unwrap();
    m.write_obj(0u64, GuestAddress(HDR + 8)).unwrap();
    let heads = vq.used().idx().load();
    vq.add_desc_chains(
        &[
            desc(HDR, 16, F_NEXT, 1),
            desc(DATA, 512, 0, 0),
            desc(HDR, 16, F_NEXT, 3),
            desc(DATA, 512, F_NEXT, 4),
            desc(STATUS, 1, 0, 0),
            desc(HDR, 16, F_NEXT, 6),
            desc(DATA, 512, F_NEXT, 7),
            desc(STATUS, 0, F_WRITE, 0),
        ],
        0,
    )
    .unwrap();
    assert_eq!(b.process_queue(), 3);
    let u = used(&vq);
    assert_eq!(&u[usize::from(heads)..], &[(0, 0), (2, 0), (5, 0)]);
    // The file is where it was: never written, never extended.
    assert_eq!(std::fs::metadata(&p).unwrap().len(), len0);
    assert_eq!(file_bytes(&p), vec![0u8; len0 as usize]);
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn case_12_a_qcow2_header_written_by_the_guest_is_data_on_a_raw_disk() {
    let p = image("format", &vec![0u8; 64 * 512]);
    let m = mem();
    // A qcow2 v3 header naming a backing file, as a guest would plant it.
    let mut hdr = vec![0u8; 512];
    hdr[..4].copy_from_slice(&[b'Q', b'F', b'I', 0xfb]);
    hdr[4..8].copy_from_slice(&3u32.to_be_bytes());
    hdr[8..16].copy_from_slice(&104u64.to_be_bytes());
    hdr[16..20].copy_from_slice(&10u32.to_be_bytes());
    hdr[24..32].copy_from_slice(&(1u64 << 40).to_be_bytes());
    hdr[104..114].copy_from_slice(b"/etc/shado");
    m.write_slice(&hdr, GuestAddress(DATA)).unwrap();
    let mut b = block(&p, false);
    let (s, _) = run(&mut b, &m, VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, false)]);
    assert_eq!(s, VIRTIO_BLK_S_OK);
    drop(b);
    // The VM restarts: the same config builds the device again.
    let mut b = block(&p, false);
    assert_eq!(
        b.capacity(),
        64,
        "the size is the raw file's, not the header's"
    );
    let mut cap = [0u8; 8];
    b.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 64);
    let (s, _) = run(
        &mut b,
        &m,
        VIRTIO_BLK_T_IN,
        0,
        &[(DATA + 0x1000, 512, true)],
    );
    assert_eq!(s, VIRTIO_BLK_S_OK);
    let mut back = vec![0u8; 512];
    m.read_slice(&mut back, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(back, hdr);
    // The format is configuration only: a config naming another format is refused.
    assert!(DriveConfig::parse(&format!("path={},format=qcow2", p.display())).is_err());
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn case_09_register_abuse_and_resets_with_requests_in_flight() {
    let p = image("reset", &vec![0u8; 16 * 512]);
    let m = mem();
    let mut t = transport(block(&p, false), &m);
    let old = MockSplitQueue::create(&m, GuestAddress(0x8000), 64);
    assert_eq!(
        bring_up(&mut t, &[RingSetup::of(&old, 64)]),
        DeviceState::Active
    );
    let saved = crate::devices::virtio::mmio::SnapshotTransport::save(&t).unwrap();

    // Wrong widths and unaligned offsets on every register, and config-space accesses far
    // outside the 16 bytes of virtio-blk config: ignored, reads of nothing are zero.
    use crate::bus::BusDevice;
    for off in 0..0x100u64 {
        for len in [1usize, 2, 3, 8] {
            t.write(off, &vec![0xff; len]);
            let mut b = vec![0x5a; len];
            t.read(off, &mut b);
            assert!(b.iter().all(|&x| x == 0), "read {len} at {off:#x}: {b:?}");
        }
        if off % 4 != 0 {
            t.write(off, &[0xff; 4]);
        }
    }
    for off in [0x110u64, 0x1000, 0xfff_ffff, u64::MAX - 8, u64::MAX] {
        for len in [1usize, 4, 8, 64] {
            t.write(off, &vec![0xff; len]);
            let mut b = vec![0x5a; len];
            t.read(off, &mut b);
            assert!(b.iter().all(|&x| x == 0), "config {len} at {off:#x}");
        }
    }
    assert_eq!(t.state(), DeviceState::Active);
    let now = crate::devices::virtio::mmio::SnapshotTransport::save(&t).unwrap();
    assert_eq!(now.queues, saved.queues);

    // A write in flight (published, not yet seen), then STATUS=0 and a driver that
    // re-points the ring elsewhere: the old ring is never completed into.
    m.write_slice(&[0x42; 512], GuestAddress(DATA)).unwrap();
    publish(&old, &m, VIRTIO_BLK_T_OUT, 3, &[(DATA, 512, false)], 0);
    mmio_write(&mut t, 0x70, 0);
    kick(&mut t, 0);
    let new = MockSplitQueue::create(&m, GuestAddress(0xc000), 64);
    assert_eq!(
        bring_up(&mut t, &[RingSetup::of(&new, 64)]),
        DeviceState::Active
    );
    kick(&mut t, 0);
    assert_eq!(old.used().idx().load(), 0);
    assert_eq!(status_byte(&m), 0xff);
    assert_eq!(file_bytes(&p), vec![0u8; 16 * 512]);
    publish(&new, &m, VIRTIO_BLK_T_OUT, 1, &[(DATA, 512, false)], 0);
    kick(&mut t, 0);
    assert_eq!(used(&new), vec![(0, 1)]);
    assert_eq!(&file_bytes(&p)[512..1024], &[0x42; 512][..]);

    // A reset storm: resets at every step of initialization, with kicks and requests in
    // between. Nothing panics, nothing completes into a ring of a reset device.
    for round in 0..500u32 {
        let vq = MockSplitQueue::create(
            &m,
            GuestAddress(0x10_0000 + u64::from(round % 4) * 0x4000),
            64,
        );
        let steps = round % 6;
        mmio_write(&mut t, 0x70, 0);
        if steps == 0 {
            kick(&mut t, 0);
            continue;
        }
        mmio_write(&mut t, 0x70, 1);
        if steps >= 2 {
            assert_eq!(
                bring_up(&mut t, &[RingSetup::of(&vq, 64)]),
                DeviceState::Active
            );
        }
        publish(&vq, &m, VIRTIO_BLK_T_IN, 0, &[(DATA, 512, true)], 0);
        if steps >= 3 {
            kick(&mut t, 0);
            assert_eq!(vq.used().idx().load(), 1, "round {round}");
        }
        mmio_write(&mut t, 0x70, 0);
        kick(&mut t, 0);
        t.handle_event(
            crate::devices::virtio::mmio::TOKEN_ACTIVATE,
            vmm_sys_util::epoll::EventSet::IN,
            &mut NoRegistry,
        );
        let expect = u16::from(steps >= 3);
        assert_eq!(vq.used().idx().load(), expect, "round {round}");
        assert_eq!(t.state(), DeviceState::Inactive);
    }
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn case_40_a_full_file_system_is_an_io_error_for_the_guest() {
    use crate::devices::virtio::test_utils::Tmpfs;
    let Some(fs) = Tmpfs::mount("blk-enospc", 256 << 10, false) else {
        return;
    };
    // An 8 MiB sparse image on a 256 KiB file system.
    let p = fs.path().join("disk.img");
    std::fs::File::create(&p).unwrap().set_len(8 << 20).unwrap();
    let m = mem();
    let mut b = block(&p, false);
    m.write_slice(&[0x33; 64 << 10], GuestAddress(DATA))
        .unwrap();
    let mut statuses = Vec::new();
    let ((), logged) = capture_logs(|| {
        for i in 0..16u64 {
            let (s, u) = run(
                &mut b,
                &m,
                VIRTIO_BLK_T_OUT,
                i * 128,
                &[(DATA, 64 << 10, false)],
            );
            assert_eq!(u.len(), 1);
            statuses.push(s);
        }
    });
    assert!(statuses.contains(&VIRTIO_BLK_S_OK), "{statuses:?}");
    assert!(statuses.contains(&VIRTIO_BLK_S_IOERR), "{statuses:?}");
    assert!(b.io_errors() > 1);
    let warnings = at_least(&logged, log::Level::Warn);
    assert_eq!(warnings.len(), 1, "{logged:?}");
    assert!(warnings[0].contains("No space left"), "{warnings:?}");
    // What was written reads back; the device goes on serving.
    let (s, _) = run(
        &mut b,
        &m,
        VIRTIO_BLK_T_IN,
        0,
        &[(DATA + 0x20000, 512, true)],
    );
    assert_eq!(s, VIRTIO_BLK_S_OK);
    let mut back = [0u8; 512];
    m.read_slice(&mut back, GuestAddress(DATA + 0x20000))
        .unwrap();
    assert_eq!(back, [0x33; 512]);
    drop(b);
}

const FSIZE_CHILD: &str = "HUSK_CASE40_FSIZE_CHILD";
const CHILD_TEST: &str =
    "devices::virtio::blk::device::tests::case_40_rlimit_fsize_is_an_io_error_not_a_kill";

/// This test run again in a child limited to 64 KiB files, in `mode`: "handler" (SIGXFSZ
/// handled as the vmm does), "default" (not), "wait" (handled, then waits to be killed).
fn fsize_child(image: &Path, mode: &str) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut c = std::process::Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(FSIZE_CHILD, image)
        .env("HUSK_CASE40_MODE", mode)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: the closure runs between fork and exec and only calls setrlimit(2),
    // which is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 64 << 10,
                rlim_max: 64 << 10,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

#[test]
fn case_40_rlimit_fsize_is_an_io_error_not_a_kill() {
    if let Some(image) = std::env::var_os(FSIZE_CHILD) {
        let mode = std::env::var("HUSK_CASE40_MODE").unwrap_or_default();
        if mode != "default" {
            crate::file_size::handle_signal().unwrap();
        }
        if mode == "wait" {
            std::fs::write(format!("{}.ready", Path::new(&image).display()), b"").unwrap();
            std::thread::sleep(std::time::Duration::from_secs(30));
            return;
        }
        // The child: a write within the limit, then two past it.
        let m = mem();
        let mut b = block(Path::new(&image), false);
        m.write_slice(&[0x44; 4096], GuestAddress(DATA)).unwrap();
        let (s, _) = run(&mut b, &m, VIRTIO_BLK_T_OUT, 0, &[(DATA, 4096, false)]);
        assert_eq!(s, VIRTIO_BLK_S_OK);
        let ((), logged) = capture_logs(|| {
            for sector in [1024, 1536] {
                let (s, _) = run(&mut b, &m, VIRTIO_BLK_T_OUT, sector, &[(DATA, 4096, false)]);
                assert_eq!(s, VIRTIO_BLK_S_IOERR);
            }
        });
        assert_eq!(b.io_errors(), 2);
        let w = at_least(&logged, log::Level::Warn);
        assert!(
            w.len() == 1 && w[0].contains("File too large"),
            "{logged:?}"
        );
        println!("child done");
        return;
    }
    let p = image("fsize", &[]);
    std::fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    // As the vmm runs: the write fails with EFBIG, the guest gets IOERR, one line says why.
    let out = fsize_child(&p, "handler").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child: {:?} {stderr}", out.status);
    assert!(String::from_utf8_lossy(&out.stdout).contains("child done"));
    assert_eq!(
        stderr.matches("reached RLIMIT_FSIZE").count(),
        1,
        "{stderr}"
    );
    // Without the handler, SIGXFSZ's default action ends the process at that write.
    use std::os::unix::process::ExitStatusExt;
    let out = fsize_child(&p, "default").output().unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGXFSZ),
        "child: {:?}",
        out.status
    );
    assert_eq!(&std::fs::read(&p).unwrap()[..4096], &[0x44; 4096][..]);
    // A SIGXFSZ another process sends is still fatal, with its line (catalogue case 34).
    let mut child = fsize_child(&p, "wait").spawn().unwrap();
    use std::io::Read;
    let ready = PathBuf::from(format!("{}.ready", p.display()));
    let t0 = std::time::Instant::now();
    while !ready.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the child ended early");
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "the child never got ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::fs::remove_file(&ready).unwrap();
    let mut line = vec![0u8; 0];
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGXFSZ) }, 0);
    let st = child.wait().unwrap();
    child.stderr.take().unwrap().read_to_end(&mut line).unwrap();
    assert_eq!(st.code(), Some(128 + libc::SIGXFSZ), "child: {st:?}");
    assert!(String::from_utf8_lossy(&line).contains("fatal signal SIGXFSZ"));
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn case_07_rings_moved_after_driver_ok_are_not_followed() {
    let p = image("moved", &vec![0u8; 16 * 512]);
    let m = mem();
    let mut t = transport(block(&p, false), &m);
    let vq = MockSplitQueue::create(&m, GuestAddress(0x8000), 64);
    assert_eq!(
        bring_up(&mut t, &[RingSetup::of(&vq, 64)]),
        DeviceState::Active
    );
    // The driver moves every ring out of memory (and onto the MMIO gap), and shrinks and
    // un-readies the queue, after DRIVER_OK.
    mmio_write(&mut t, 0x30, 0);
    for (reg, v) in [
        (0x38, 0),
        (0x38, 3),
        (0x80, 0xffff_f000),
        (0x84, 0xffff_ffff),
        (0x90, 0xd000_0000),
        (0xa0, 0xffff_f000),
        (0xa4, 0xffff),
        (0x44, 0),
    ] {
        mmio_write(&mut t, reg, v);
    }
    m.write_slice(&[0x61; 512], GuestAddress(DATA)).unwrap();
    publish(&vq, &m, VIRTIO_BLK_T_OUT, 2, &[(DATA, 512, false)], 0);
    kick(&mut t, 0);
    // Completed through the rings the driver gave at DRIVER_OK.
    assert_eq!(used(&vq), vec![(0, 1)]);
    assert_eq!(status_byte(&m), VIRTIO_BLK_S_OK);
    assert_eq!(&file_bytes(&p)[1024..1536], &[0x61; 512][..]);
    assert_eq!(t.state(), DeviceState::Active);
    std::fs::remove_file(&p).unwrap();
}

// Catalogue case 42 (rate limiters) through the device.
#[path = "rate_limit_tests.rs"]
mod rate_limit;
