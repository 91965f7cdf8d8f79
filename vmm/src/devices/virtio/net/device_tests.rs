use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;

use super::*;
use crate::devices::virtio::net::features::*;
use crate::devices::virtio::net::header::{F_NEEDS_CSUM, GSO_TCPV4};
use crate::devices::virtio::test_utils::{
    desc, limiter, mem, used, FakeClock, RecordingRegistry, F_NEXT, F_WRITE,
};
use crate::rate_limiter::RateLimiter;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x20_0000;

/// Records the offloads the device sets.
#[derive(Default, Clone)]
struct Offloads(Arc<Mutex<Vec<u32>>>);

impl SetOffload for Offloads {
    fn set_offload(&mut self, _: &File, flags: u32) -> std::io::Result<()> {
        self.0.lock().unwrap().push(flags);
        Ok(())
    }
}

type Setup<'a> = (
    Net,
    UnixDatagram,
    MockSplitQueue<'a, GuestMemory>,
    MockSplitQueue<'a, GuestMemory>,
);

fn setup(m: &GuestMemory) -> Setup<'_> {
    setup_with(m, 0, Offloads::default())
}

/// A device activated with `acked` features.
fn setup_with(m: &GuestMemory, acked: u64, offloads: Offloads) -> Setup<'_> {
    let (a, b) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    let mut n = Net::with_tap(
        File::from(OwnedFd::from(a)),
        [2, 0, 0, 0, 0, 1],
        Box::new(offloads),
    );
    let rxq = MockSplitQueue::create(m, GuestAddress(0), 16);
    let txq = MockSplitQueue::create(m, GuestAddress(0x8000), 16);
    n.activate(
        Activation {
            mem: m.clone(),
            queues: vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()],
            queue_evts: Vec::new(),
            interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
            acked_features: acked,
        },
        &mut RecordingRegistry::default(),
    )
    .unwrap();
    (n, b, rxq, txq)
}

#[test]
fn config_space_is_the_mac() {
    let m = mem();
    let (n, _peer, _, _) = setup(&m);
    let mut mac = [0u8; 6];
    n.read_config(0, &mut mac);
    assert_eq!(mac, [2, 0, 0, 0, 0, 1]);
}

#[test]
fn tx_frame_reaches_the_tap() {
    let m = mem();
    let (mut n, peer, _rxq, txq) = setup(&m);
    m.write_slice(&[0u8; HDR_LEN], GuestAddress(TX_BUFS))
        .unwrap();
    m.write_slice(b"ethernet frame", GuestAddress(TX_BUFS + 0x100))
        .unwrap();
    txq.add_desc_chains(
        &[
            desc(TX_BUFS, HDR_LEN as u32, F_NEXT, 1),
            desc(TX_BUFS + 0x100, 14, 0, 0),
        ],
        0,
    )
    .unwrap();
    n.queue_notify(TXQ, &mut RecordingRegistry::default());
    let mut got = [0u8; 64];
    let len = peer.recv(&mut got).unwrap();
    assert_eq!(&got[HDR_LEN..len], b"ethernet frame");
    assert_eq!(used(&txq), vec![(0, 0)]);
}

#[test]
fn malformed_tx_chains_are_dropped() {
    let m = mem();
    let (mut n, peer, _rxq, txq) = setup(&m);
    txq.add_desc_chains(&[desc(TX_BUFS, 4, 0, 0)], 0).unwrap(); // shorter than a header
    txq.add_desc_chains(&[desc(TX_BUFS, u32::MAX, 0, 0)], 1)
        .unwrap(); // huge
    txq.add_desc_chains(&[desc(1 << 40, 100, 0, 0)], 2).unwrap(); // outside memory
    txq.add_desc_chains(&[desc(TX_BUFS, 0x20000, 0, 0)], 3)
        .unwrap(); // too big a frame
    n.queue_notify(TXQ, &mut RecordingRegistry::default());
    assert_eq!(used(&txq).len(), 4);
    let mut got = [0u8; 16];
    assert!(peer.recv(&mut got).is_err());
}

#[test]
fn rx_waits_for_buffers_then_delivers() {
    let m = mem();
    let (mut n, peer, rxq, _txq) = setup(&m);
    let mut reg = RecordingRegistry::default();
    n.init_events(&mut reg);
    let mut frame = vec![0u8; HDR_LEN];
    frame.extend_from_slice(b"hello guest");
    peer.send(&frame).unwrap();
    n.process_event(TOKEN_TAP, EventSet::IN, &mut reg);
    // No RX buffers: the tap is no longer watched, the frame is kept.
    assert!(used(&rxq).is_empty());
    assert_eq!(reg.added[0].2, EventSet::empty());
    rxq.add_desc_chains(&[desc(RX_BUFS, 2048, F_WRITE, 0)], 0)
        .unwrap();
    n.queue_notify(RXQ, &mut reg);
    assert_eq!(used(&rxq), vec![(0, frame.len() as u32)]);
    let mut got = vec![0u8; frame.len()];
    m.read_slice(&mut got, GuestAddress(RX_BUFS)).unwrap();
    assert_eq!(&got[HDR_LEN..], b"hello guest");
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
    assert_eq!(reg.added[0].2, EventSet::IN);
}

#[test]
fn rx_buffer_too_small_drops_the_frame() {
    let m = mem();
    let (mut n, peer, rxq, _txq) = setup(&m);
    rxq.add_desc_chains(&[desc(RX_BUFS, 8, F_WRITE, 0)], 0)
        .unwrap();
    peer.send(&[0u8; 100]).unwrap();
    n.process_event(TOKEN_TAP, EventSet::IN, &mut RecordingRegistry::default());
    assert_eq!(used(&rxq), vec![(0, 0)]);
}

#[test]
fn offers_offloads_and_sets_the_taps_from_the_accepted_ones() {
    let m = mem();
    let offloads = Offloads::default();
    let (n, _peer, _, _) = setup_with(&m, OFFERED, offloads.clone());
    assert_eq!(n.features(), OFFERED);
    assert_eq!(*offloads.0.lock().unwrap(), vec![0x0f]);
    // A driver taking none of them gets a tap that offloads nothing (a persistent tap keeps
    // what the last vmm set).
    let offloads = Offloads::default();
    let _ = setup_with(&m, VIRTIO_NET_F_MAC, offloads.clone());
    assert_eq!(*offloads.0.lock().unwrap(), vec![0]);
}

/// A frame of `len` bytes: a header with `flags` and `gso_type`, then a counting pattern.
fn frame(len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    f[..HDR_LEN].fill(0);
    f
}

fn read_guest(m: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    m.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

#[test]
fn mergeable_rx_spans_chains_and_counts_them() {
    let m = mem();
    let (mut n, peer, rxq, _txq) = setup_with(&m, OFFERED, Offloads::default());
    let chains: Vec<_> = (0..4)
        .map(|i| desc(RX_BUFS + i * 0x100, 64, F_WRITE, 0))
        .collect();
    for (i, d) in chains.iter().enumerate() {
        rxq.add_desc_chains(std::slice::from_ref(d), i as u16)
            .unwrap();
    }
    let f = frame(150);
    peer.send(&f).unwrap();
    n.process_event(TOKEN_TAP, EventSet::IN, &mut RecordingRegistry::default());
    assert_eq!(used(&rxq), vec![(0, 64), (1, 64), (2, 22)]);
    let first = read_guest(&m, RX_BUFS, 64);
    assert_eq!(u16::from_le_bytes([first[10], first[11]]), 3);
    assert_eq!(&first[HDR_LEN..], &f[HDR_LEN..64]);
    assert_eq!(read_guest(&m, RX_BUFS + 0x100, 64), &f[64..128]);
    assert_eq!(read_guest(&m, RX_BUFS + 0x200, 22), &f[128..150]);
}

#[test]
fn mergeable_rx_waits_for_enough_buffers() {
    let m = mem();
    let (mut n, peer, rxq, _txq) = setup_with(&m, OFFERED, Offloads::default());
    let mut reg = RecordingRegistry::default();
    n.init_events(&mut reg);
    rxq.add_desc_chains(&[desc(RX_BUFS, 64, F_WRITE, 0)], 0)
        .unwrap();
    let f = frame(150);
    peer.send(&f).unwrap();
    n.process_event(TOKEN_TAP, EventSet::IN, &mut reg);
    // One buffer is not enough: nothing used, the frame kept, the tap no longer watched.
    assert!(used(&rxq).is_empty());
    assert_eq!(reg.added[0].2, EventSet::empty());
    rxq.add_desc_chains(&[desc(RX_BUFS + 0x100, 64, F_WRITE, 0)], 1)
        .unwrap();
    rxq.add_desc_chains(&[desc(RX_BUFS + 0x200, 64, F_WRITE, 0)], 2)
        .unwrap();
    n.queue_notify(RXQ, &mut reg);
    assert_eq!(used(&rxq), vec![(0, 64), (1, 64), (2, 22)]);
    assert_eq!(read_guest(&m, RX_BUFS + 10, 2), [3, 0]);
    assert_eq!(reg.added[0].2, EventSet::IN);
}

#[test]
fn frame_too_large_for_the_whole_ring_is_dropped_not_truncated() {
    let m = mem();
    let (mut n, peer, rxq, _txq) = setup_with(&m, OFFERED, Offloads::default());
    // The ring (16 entries) full of 16-byte buffers: 256 bytes in all.
    for i in 0..16u16 {
        let d = desc(RX_BUFS + u64::from(i) * 0x100, 16, F_WRITE, 0);
        rxq.add_desc_chains(&[d], i).unwrap();
    }
    peer.send(&frame(300)).unwrap();
    let small = frame(20);
    peer.send(&small).unwrap();
    n.process_event(TOKEN_TAP, EventSet::IN, &mut RecordingRegistry::default());
    // The big frame left no trace; the small one took the first two buffers.
    assert_eq!(used(&rxq), vec![(0, 16), (1, 4)]);
    assert_eq!(read_guest(&m, RX_BUFS + 10, 2), [2, 0]);
    assert_eq!(read_guest(&m, RX_BUFS + 0x100, 4), &small[16..20]);
}

#[test]
fn mergeable_rx_with_a_bad_chain_drops_the_frame() {
    let m = mem();
    let (mut n, peer, rxq, _txq) = setup_with(&m, OFFERED, Offloads::default());
    rxq.add_desc_chains(&[desc(RX_BUFS, 64, F_WRITE, 0)], 0)
        .unwrap();
    // Read-only: the device may not write it.
    rxq.add_desc_chains(&[desc(RX_BUFS + 0x100, 64, 0, 0)], 1)
        .unwrap();
    rxq.add_desc_chains(&[desc(RX_BUFS + 0x200, 64, F_WRITE, 0)], 2)
        .unwrap();
    peer.send(&frame(150)).unwrap();
    n.process_event(TOKEN_TAP, EventSet::IN, &mut RecordingRegistry::default());
    // Both chains it consumed come back empty; the third is still the guest's.
    assert_eq!(used(&rxq), vec![(0, 0), (1, 0)]);
    // The next frame goes on from there.
    peer.send(&frame(40)).unwrap();
    n.process_event(TOKEN_TAP, EventSet::IN, &mut RecordingRegistry::default());
    assert_eq!(used(&rxq), vec![(0, 0), (1, 0), (2, 40)]);
}

#[test]
fn rx_frame_longer_than_the_limit_is_dropped() {
    let m = mem();
    let (mut n, peer, rxq, _txq) = setup_with(&m, OFFERED, Offloads::default());
    for i in 0..16u16 {
        let d = desc(RX_BUFS + u64::from(i) * 0x1_0000, 0x1_0000, F_WRITE, 0);
        rxq.add_desc_chains(&[d], i).unwrap();
    }
    peer.send(&frame(MAX_FRAME + 100)).unwrap();
    peer.send(&frame(MAX_FRAME)).unwrap();
    n.process_event(TOKEN_TAP, EventSet::IN, &mut RecordingRegistry::default());
    // Only the frame of the largest allowed size arrives, in two 64 KiB buffers.
    assert_eq!(
        used(&rxq),
        vec![(0, 0x1_0000), (1, (MAX_FRAME - 0x1_0000) as u32)]
    );
}

/// Puts `f` on the TX queue as one chain at `slot` and sends it.
fn transmit(
    n: &mut Net,
    m: &GuestMemory,
    txq: &MockSplitQueue<'_, GuestMemory>,
    f: &[u8],
    slot: u16,
) {
    let addr = TX_BUFS + u64::from(slot) * 0x1000;
    m.write_slice(f, GuestAddress(addr)).unwrap();
    txq.add_desc_chains(&[desc(addr, f.len() as u32, 0, 0)], slot)
        .unwrap();
    n.queue_notify(TXQ, &mut RecordingRegistry::default());
}

fn tso_header(f: &mut [u8], gso_type: u8, gso_size: u16, hdr_len: u16) {
    f[0] = F_NEEDS_CSUM;
    f[1] = gso_type;
    f[2..4].copy_from_slice(&hdr_len.to_le_bytes());
    f[4..6].copy_from_slice(&gso_size.to_le_bytes());
    f[6..8].copy_from_slice(&34u16.to_le_bytes());
    f[8..10].copy_from_slice(&16u16.to_le_bytes());
}

#[test]
fn tx_offloaded_frames_pass_and_hostile_headers_are_dropped() {
    let m = mem();
    let (mut n, peer, _rxq, txq) = setup_with(&m, OFFERED, Offloads::default());
    let mut got = vec![0u8; 4096];
    let mut good = frame(2000);
    tso_header(&mut good, GSO_TCPV4, 1448, 66);
    transmit(&mut n, &m, &txq, &good, 0);
    assert_eq!(peer.recv(&mut got).unwrap(), 2000);
    assert_eq!(&got[..2000], &good[..]);
    let hostile: [(u8, u16, u16); 4] = [
        (GSO_TCPV4, 0, 66),      // gso_size 0
        (GSO_TCPV4, 1448, 9000), // hdr_len past the frame
        (0x42, 1448, 66),        // no such GSO type
        (3, 1448, 66),           // UFO, not offered
    ];
    for (i, (t, size, hdr_len)) in hostile.into_iter().enumerate() {
        let mut f = frame(2000);
        tso_header(&mut f, t, size, hdr_len);
        transmit(&mut n, &m, &txq, &f, i as u16 + 1);
    }
    assert!(peer.recv(&mut got).is_err());
    // Every chain was returned.
    assert_eq!(used(&txq).len(), 5);
}

#[test]
fn tx_offloads_need_the_features() {
    let m = mem();
    let (mut n, peer, _rxq, txq) = setup_with(&m, VIRTIO_NET_F_MAC, Offloads::default());
    let mut f = frame(2000);
    tso_header(&mut f, GSO_TCPV4, 1448, 66);
    transmit(&mut n, &m, &txq, &f, 0);
    let mut got = [0u8; 16];
    assert!(peer.recv(&mut got).is_err());
    assert_eq!(used(&txq), vec![(0, 0)]);
}

#[test]
fn case_39_rx_flood_with_a_guest_that_stops_refilling() {
    let m = mem();
    let (a, peer) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    let mut n = Net::with_tap(
        File::from(OwnedFd::from(a)),
        [2, 0, 0, 0, 0, 1],
        Box::new(Offloads::default()),
    );
    let rxq = MockSplitQueue::create(&m, GuestAddress(0), 256);
    let txq = MockSplitQueue::create(&m, GuestAddress(0x8000), 16);
    let mut reg = RecordingRegistry::default();
    n.init_events(&mut reg);
    n.activate(
        Activation {
            mem: m.clone(),
            queues: vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()],
            queue_evts: Vec::new(),
            interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
            acked_features: 0,
        },
        &mut reg,
    )
    .unwrap();
    let tap_interest =
        |reg: &RecordingRegistry| reg.added.iter().find(|a| a.1 == TOKEN_TAP).unwrap().2;
    // The network floods: as many frames as the socket takes (UDP: no backoff).
    let mut sent = 0u32;
    loop {
        let mut f = vec![0u8; HDR_LEN];
        f.extend_from_slice(&sent.to_le_bytes());
        f.extend_from_slice(&[0x55; 200]);
        if peer.send(&f).is_err() {
            break;
        }
        sent += 1;
    }
    assert!(sent > 40, "only {sent} frames fit the socket");
    let mut posted = 0u16;
    let mut post = |k: u16| {
        for _ in 0..k {
            let addr = RX_BUFS + u64::from(posted) * 0x800;
            rxq.add_desc_chains(&[desc(addr, 0x800, F_WRITE, 0)], posted)
                .unwrap();
            posted += 1;
        }
    };
    let mut seen = Vec::new();
    let mut read_used = |from: usize| -> usize {
        let u = used(&rxq);
        for &(id, len) in &u[from..] {
            assert_eq!(len as usize, HDR_LEN + 4 + 200);
            let mut s = [0u8; 4];
            m.read_slice(
                &mut s,
                GuestAddress(RX_BUFS + u64::from(id) * 0x800 + HDR_LEN as u64),
            )
            .unwrap();
            seen.push(u32::from_le_bytes(s));
        }
        u.len()
    };
    post(8);
    // epoll reports the tap: 8 frames go in, then RX buffers run out.
    n.process_event(TOKEN_TAP, EventSet::IN, &mut reg);
    let mut done = read_used(0);
    assert_eq!(done, 8);
    for round in 1..20 {
        // No busy loop: the tap is no longer watched, and events that still come
        // (already queued in epoll) read nothing and deliver nothing.
        assert_eq!(tap_interest(&reg), EventSet::empty(), "round {round}");
        for _ in 0..100 {
            n.process_event(TOKEN_TAP, EventSet::IN, &mut reg);
        }
        assert_eq!(read_used(done), done, "round {round}");
        // The guest stopped refilling for a while; then it posts buffers and kicks:
        // the flood goes on into them.
        post(8);
        n.queue_notify(RXQ, &mut reg);
        done = read_used(done);
        assert_eq!(done, 8 * (round + 1), "round {round}");
    }
    // The guest catches up: everything still queued arrives and the tap is watched again.
    post(256 - posted_count(&rxq));
    n.queue_notify(RXQ, &mut reg);
    done = read_used(done);
    assert_eq!(done, sent.min(256) as usize);
    if sent < 256 {
        assert_eq!(tap_interest(&reg), EventSet::IN);
    }
    // Traffic resumed every time, in order, nothing twice.
    assert_eq!(seen.len(), done);
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "{seen:?}");
    assert_eq!(seen[0], 0);
}

/// Chains posted on `q` so far (its avail index).
fn posted_count(q: &MockSplitQueue<'_, GuestMemory>) -> u16 {
    q.avail().idx().load()
}

#[test]
fn case_06_a_runaway_rx_index_stops_rx_without_a_busy_loop() {
    use crate::devices::virtio::test_utils::{at_least, capture_logs};
    let m = mem();
    let (mut n, peer, rxq, _txq) = setup(&m);
    let mut reg = RecordingRegistry::default();
    n.init_events(&mut reg);
    rxq.avail().idx().store(1000);
    for _ in 0..4 {
        peer.send(&[0u8; 64]).unwrap();
    }
    let ((), logged) = capture_logs(|| {
        for _ in 0..1000 {
            n.process_event(TOKEN_TAP, EventSet::IN, &mut reg);
            n.queue_notify(RXQ, &mut reg);
        }
    });
    assert!(n.needs_reset());
    assert_eq!(at_least(&logged, log::Level::Warn).len(), 1, "{logged:?}");
    assert!(used(&rxq).is_empty());
    // The tap is left unwatched: epoll does not report it again and again.
    assert_eq!(reg.added[0].2, EventSet::empty());
}

/// Publishes `n` TX frames of `len` bytes (one descriptor each, at descriptors 0..n).
fn post_tx(m: &GuestMemory, txq: &MockSplitQueue<'_, GuestMemory>, n: u16, len: u32) {
    m.write_slice(&frame(len as usize), GuestAddress(TX_BUFS))
        .unwrap();
    for i in 0..n {
        txq.add_desc_chains(&[desc(TX_BUFS, len, 0, 0)], i).unwrap();
    }
}

fn drain(peer: &UnixDatagram) -> usize {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while peer.recv(&mut buf).is_ok() {
        n += 1;
    }
    n
}

#[test]
fn case_42_tx_waits_for_the_limiter_and_drops_nothing() {
    let m = mem();
    let (mut n, peer, _rxq, txq) = setup(&m);
    let clock = FakeClock::default();
    // 3000 bytes per 100 ms: two 1000-byte frames, then the third waits for the rest.
    n.set_rate_limiters(
        RateLimiter::unlimited(),
        limiter(Some((3000, 100)), None, &clock),
    );
    let mut reg = RecordingRegistry::default();
    n.init_events(&mut reg);
    let timer = n.tx_limiter.timer_fd().unwrap();
    assert!(reg.added.contains(&(timer, TOKEN_TX_LIMITER, EventSet::IN)));
    post_tx(&m, &txq, 5, 1000);
    n.queue_notify(TXQ, &mut reg);
    assert_eq!((used(&txq).len(), drain(&peer)), (3, 3));
    assert!(n.tx_limiter.is_blocked());
    // Kicks while blocked send nothing.
    n.queue_notify(TXQ, &mut reg);
    assert_eq!(used(&txq).len(), 3);
    clock.advance_ms(34);
    n.process_event(TOKEN_TX_LIMITER, EventSet::IN, &mut reg);
    assert_eq!((used(&txq).len(), drain(&peer)), (4, 1));
    clock.advance_ms(34);
    n.process_event(TOKEN_TX_LIMITER, EventSet::IN, &mut reg);
    assert_eq!((used(&txq).len(), drain(&peer)), (5, 1));
    assert!(!n.tx_limiter.is_blocked());
}

#[test]
fn case_42_tx_ops_limit_counts_frames() {
    let m = mem();
    let (mut n, peer, _rxq, txq) = setup(&m);
    let clock = FakeClock::default();
    n.set_rate_limiters(
        RateLimiter::unlimited(),
        limiter(None, Some((2, 1000)), &clock),
    );
    post_tx(&m, &txq, 4, 100);
    n.queue_notify(TXQ, &mut RecordingRegistry::default());
    assert_eq!(drain(&peer), 2);
    clock.advance_ms(1000);
    n.process_event(
        TOKEN_TX_LIMITER,
        EventSet::IN,
        &mut RecordingRegistry::default(),
    );
    assert_eq!(drain(&peer), 2);
    assert_eq!(used(&txq).len(), 4);
}

#[test]
fn case_42_rx_keeps_the_frame_and_unwatches_the_tap_while_limited() {
    let m = mem();
    let (mut n, peer, rxq, _txq) = setup(&m);
    let clock = FakeClock::default();
    // One frame per second.
    n.set_rate_limiters(
        limiter(None, Some((1, 1000)), &clock),
        RateLimiter::unlimited(),
    );
    let mut reg = RecordingRegistry::default();
    n.init_events(&mut reg);
    let tap = reg.added[0].0;
    let timer = n.rx_limiter.timer_fd().unwrap();
    assert!(reg.added.contains(&(timer, TOKEN_RX_LIMITER, EventSet::IN)));
    for i in 0..3 {
        rxq.add_desc_chains(&[desc(RX_BUFS + i * 0x1000, 2048, F_WRITE, 0)], i as u16)
            .unwrap();
    }
    let f = frame(100);
    for _ in 0..3 {
        peer.send(&f).unwrap();
    }
    n.process_event(TOKEN_TAP, EventSet::IN, &mut reg);
    assert_eq!(used(&rxq).len(), 1);
    // The second frame is read and kept; the tap is not watched (it stays readable).
    assert_eq!(n.pending, Some(100));
    assert!(reg.added.contains(&(tap, TOKEN_TAP, EventSet::empty())));
    // Buffers added meanwhile do not get around the limiter.
    n.queue_notify(RXQ, &mut reg);
    assert_eq!(used(&rxq).len(), 1);
    assert!(reg.added.contains(&(tap, TOKEN_TAP, EventSet::empty())));
    clock.advance_ms(1000);
    n.process_event(TOKEN_RX_LIMITER, EventSet::IN, &mut reg);
    assert_eq!(used(&rxq).len(), 2);
    clock.advance_ms(1000);
    n.process_event(TOKEN_RX_LIMITER, EventSet::IN, &mut reg);
    assert_eq!(used(&rxq), vec![(0, 100), (1, 100), (2, 100)]);
    // Everything delivered: the tap is watched again.
    assert_eq!(n.pending, None);
    assert!(reg.added.contains(&(tap, TOKEN_TAP, EventSet::IN)));
}

#[test]
fn case_42_rx_frame_without_buffers_is_not_charged() {
    let m = mem();
    let (mut n, peer, rxq, _txq) = setup(&m);
    let clock = FakeClock::default();
    n.set_rate_limiters(
        limiter(None, Some((1, 1000)), &clock),
        RateLimiter::unlimited(),
    );
    let mut reg = RecordingRegistry::default();
    n.init_events(&mut reg);
    peer.send(&frame(100)).unwrap();
    // No buffers: the frame waits for them, and its op is given back.
    n.process_event(TOKEN_TAP, EventSet::IN, &mut reg);
    assert_eq!(n.rx_limiter.ops().unwrap().budget(), 1);
    rxq.add_desc_chains(&[desc(RX_BUFS, 2048, F_WRITE, 0)], 0)
        .unwrap();
    n.queue_notify(RXQ, &mut reg);
    assert_eq!(used(&rxq), vec![(0, 100)]);
}
