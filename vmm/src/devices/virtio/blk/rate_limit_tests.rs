//! Catalogue case 42 against virtio-blk: a limited drive leaves short-bucket requests in
//! the queue for its timer, counts data bytes, and keeps its limit across a snapshot.

use super::*;

#[test]
fn case_42_rate_limited_requests_wait_in_the_queue_for_the_timer() {
    let m = mem();
    let (mut b, vq, p) = active_block("limited", 64, &m);
    let clock = FakeClock::default();
    // 2 requests and 2 KiB per second.
    b.set_rate_limiter(limiter(Some((2048, 1000)), Some((2, 1000)), &clock));
    let mut reg = RecordingRegistry::default();
    b.init_events(&mut reg);
    let timer = b.rate_limiter().timer_fd().unwrap();
    assert_eq!(reg.added, vec![(timer, TOKEN_RATE_LIMITER, EventSet::IN)]);
    m.write_slice(&[0x42; 512], GuestAddress(DATA)).unwrap();
    for i in 0..4u16 {
        publish(&vq, &m, VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, false)], i * 3);
    }
    assert_eq!(b.process_queue(), 2);
    assert!(b.rate_limiter().is_blocked());
    // A kick while blocked reads nothing and completes nothing.
    b.queue_notify(0, &mut NoRegistry);
    assert_eq!(used(&vq).len(), 2);
    // Each half second gives one more op; the request that waited is the next one, whole.
    for want in [3, 4] {
        clock.advance_ms(500);
        b.process_event(TOKEN_RATE_LIMITER, EventSet::IN, &mut NoRegistry);
        let u = used(&vq);
        assert_eq!(u.len(), want);
        assert_eq!(u[want - 1], (3 * (want as u32 - 1), 1));
    }
    assert_eq!(status_byte(&m), VIRTIO_BLK_S_OK);
    assert_eq!(&file_bytes(&p)[..512], &[0x42; 512][..]);
    // The queue is empty: nothing waits.
    assert!(!b.rate_limiter().is_blocked());
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn case_42_bandwidth_counts_data_bytes_and_an_oversized_request_still_goes() {
    let m = mem();
    let (mut b, vq, p) = active_block("limited-bw", 64, &m);
    let clock = FakeClock::default();
    // 1 KiB per second: a 4 KiB read is more than the bucket holds.
    b.set_rate_limiter(limiter(Some((1024, 1000)), None, &clock));
    // A flush and a get-id carry no data: they take no bandwidth.
    publish(&vq, &m, super::super::super::VIRTIO_BLK_T_FLUSH, 0, &[], 0);
    assert_eq!(b.process_queue(), 1);
    publish(&vq, &m, VIRTIO_BLK_T_IN, 0, &[(DATA, 4096, true)], 0);
    publish(&vq, &m, VIRTIO_BLK_T_IN, 0, &[(DATA, 512, true)], 3);
    // The full bucket serves the 4 KiB read; the 512 bytes after it wait for the 3 KiB
    // it overdrew and their own 512 (3.5 s).
    assert_eq!(b.process_queue(), 1);
    assert!(b.rate_limiter().is_blocked());
    clock.advance_ms(3400);
    b.process_event(TOKEN_RATE_LIMITER, EventSet::IN, &mut NoRegistry);
    assert_eq!(used(&vq).len(), 2);
    clock.advance_ms(100);
    b.process_event(TOKEN_RATE_LIMITER, EventSet::IN, &mut NoRegistry);
    assert_eq!(used(&vq).len(), 3);
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn an_unlimited_drive_has_no_timer() {
    let p = image("unlimited", &vec![0u8; 4096]);
    let mut b = block(&p, false);
    let mut reg = RecordingRegistry::default();
    b.init_events(&mut reg);
    assert!(reg.added.is_empty());
    assert!(!b.rate_limiter().is_limited());
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn case_42_a_throttled_queue_snapshots_at_its_used_index_and_restores_with_its_limit() {
    use crate::config::{RateLimiterConfig, TokenBucketConfig};
    use crate::devices::virtio::mmio::{SnapshotTransport, TOKEN_ACTIVATE};
    let p = image("limited-snap", &vec![0u8; 8192]);
    // Two requests a minute: the third of four waits far beyond the test.
    let cfg = DriveConfig {
        path: p.clone(),
        read_only: false,
        format: ImageFormat::Raw,
        id: None,
        rate_limiter: Some(RateLimiterConfig {
            bandwidth: None,
            ops: Some(TokenBucketConfig {
                size: 2,
                refill_time_ms: 60_000,
                one_time_burst: 0,
            }),
        }),
    };
    let m = mem();
    let mut t = transport(Block::new(&cfg).unwrap(), &m);
    let vq = MockSplitQueue::create(&m, GuestAddress(0x8000), 16);
    assert_eq!(
        bring_up(&mut t, &[RingSetup::of(&vq, 16)]),
        DeviceState::Active
    );
    for i in 0..4u16 {
        publish(&vq, &m, VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, false)], i * 3);
    }
    kick(&mut t, 0);
    assert_eq!(vq.used().idx().load(), 2);
    assert!(t.device().rate_limiter().is_blocked());
    // The two waiting requests were given back to the queue: the snapshot's position is
    // the used index, and nothing is in flight.
    let s = t.save().unwrap();
    assert_eq!(s.queues[0].used_idx, 2);
    // Restored from the same config: limited again, with a full bucket that serves the
    // two requests the template left.
    let mut n = transport(Block::new(&cfg).unwrap(), &m);
    assert!(n.device().rate_limiter().is_limited());
    n.restore(&s).unwrap();
    n.handle_event(TOKEN_ACTIVATE, EventSet::IN, &mut NoRegistry);
    assert_eq!(n.state(), DeviceState::Active);
    assert_eq!(vq.used().idx().load(), 4);
    assert_eq!(n.device().rate_limiter().ops().unwrap().budget(), 0);
    std::fs::remove_file(&p).unwrap();
}
