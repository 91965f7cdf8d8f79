use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;

use super::*;
use crate::devices::virtio::test_utils::{desc, mem, used, RecordingRegistry, F_NEXT, F_WRITE};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x20_0000;

fn setup(
    m: &GuestMemory,
) -> (
    Net,
    UnixDatagram,
    MockSplitQueue<'_, GuestMemory>,
    MockSplitQueue<'_, GuestMemory>,
) {
    let (a, b) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    let mut n = Net::with_tap(File::from(OwnedFd::from(a)), [2, 0, 0, 0, 0, 1]);
    let rxq = MockSplitQueue::create(m, GuestAddress(0), 16);
    let txq = MockSplitQueue::create(m, GuestAddress(0x8000), 16);
    n.activate(
        Activation {
            mem: m.clone(),
            queues: vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()],
            queue_evts: Vec::new(),
            interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
            acked_features: 0,
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
