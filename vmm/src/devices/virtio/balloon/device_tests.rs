use super::*;
use crate::devices::virtio::test_utils::{desc, used, RecordingRegistry, F_NEXT, F_WRITE};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const DATA: u64 = 0x10_0000;
const PFNS: u64 = 0x8_0000;

fn setup(m: &GuestMemory) -> (Balloon, [MockSplitQueue<'_, GuestMemory>; 3]) {
    let qs = [
        MockSplitQueue::create(m, GuestAddress(0), 16),
        MockSplitQueue::create(m, GuestAddress(0x4000), 16),
        MockSplitQueue::create(m, GuestAddress(0x8000), 32),
    ];
    let mut b = Balloon::new();
    b.activate(
        Activation {
            mem: m.clone(),
            queues: qs.iter().map(|q| q.create_queue().unwrap()).collect(),
            queue_evts: Vec::new(),
            interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
            acked_features: VIRTIO_BALLOON_F_REPORTING,
        },
        &mut RecordingRegistry::default(),
    )
    .unwrap();
    (b, qs)
}

/// Guest memory backed by a memfd, as the vmm runs it (so discards are observable).
fn mem() -> GuestMemory {
    crate::memory::create(32 << 20, None).unwrap()
}

fn filled(m: &GuestMemory, at: u64, len: usize) {
    m.write_slice(&vec![0x5au8; len], GuestAddress(at)).unwrap();
}

#[test]
fn reported_ranges_read_zero_and_are_counted() {
    let m = mem();
    let (mut b, qs) = setup(&m);
    filled(&m, DATA, 3 << 20);
    qs[REPORTQ]
        .add_desc_chains(
            &[
                desc(DATA, 1 << 20, F_WRITE | F_NEXT, 1),
                desc(DATA + (2 << 20), 1 << 20, F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
    assert_eq!(b.process_queue(REPORTQ), 1);
    assert_eq!(used(&qs[REPORTQ]), vec![(0, 0)]);
    assert_eq!(b.counters().discarded, 2 << 20);
    assert_eq!(m.read_obj::<u64>(GuestAddress(DATA)).unwrap(), 0);
    // The range between the two reports is untouched.
    assert_eq!(
        m.read_obj::<u8>(GuestAddress(DATA + (1 << 20))).unwrap(),
        0x5a
    );
    assert_eq!(
        m.read_obj::<u64>(GuestAddress(DATA + (2 << 20))).unwrap(),
        0
    );
}

#[test]
fn hostile_reports_drop_nothing_outside_ram_and_never_panic() {
    let m = mem();
    let (mut b, qs) = setup(&m);
    filled(&m, (32 << 20) - 4096, 4096);
    qs[REPORTQ]
        .add_desc_chains(
            &[
                // Runs past the end of RAM: refused whole.
                desc((32 << 20) - 4096, 8192, F_WRITE | F_NEXT, 1),
                // Far outside RAM. (A chain of over 4 GiB in all is cut short by
                // virtio-queue itself: virtio 1.2, 2.7.5.2.)
                desc(1 << 40, 1 << 30, F_WRITE | F_NEXT, 2),
                // A device-readable buffer on the reporting queue is not a report.
                desc(DATA, 4096, F_NEXT, 3),
                // Wraps the address space.
                desc(u64::MAX - 4095, 8192, F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
    assert_eq!(b.process_queue(REPORTQ), 1);
    assert_eq!(b.counters().discarded, 0);
    assert_eq!(b.counters().refused, 4);
    assert_eq!(
        m.read_obj::<u8>(GuestAddress((32 << 20) - 1)).unwrap(),
        0x5a
    );
}

#[test]
fn inflated_pfns_are_given_back_and_bounded() {
    let m = mem();
    let (mut b, qs) = setup(&m);
    filled(&m, DATA, 8192);
    let pfns: Vec<u8> = [(DATA >> 12) as u32, (DATA >> 12) as u32 + 1, u32::MAX]
        .iter()
        .flat_map(|p| p.to_le_bytes())
        .collect();
    m.write_slice(&pfns, GuestAddress(PFNS)).unwrap();
    qs[INFLATEQ]
        .add_desc_chains(&[desc(PFNS, 12, 0, 0)], 0)
        .unwrap();
    assert_eq!(b.process_queue(INFLATEQ), 1);
    assert_eq!(b.counters().discarded, 8192);
    // PFN u32::MAX is 16 TiB: outside this guest.
    assert_eq!(b.counters().refused, 1);
    assert_eq!(m.read_obj::<u64>(GuestAddress(DATA + 4096)).unwrap(), 0);

    // A descriptor claiming 4 GiB of PFNs is cut at MAX_PFNS_PER_CHAIN entries (or where
    // it leaves RAM), never walked to its end.
    let before = b.counters();
    qs[INFLATEQ]
        .add_desc_chains(&[desc(0x20_0000, u32::MAX, 0, 0)], 1)
        .unwrap();
    assert_eq!(b.process_queue(INFLATEQ), 1);
    let handled = (b.counters().refused - before.refused)
        + (b.counters().discarded - before.discarded) / PAGE_SIZE;
    assert!(handled <= MAX_PFNS_PER_CHAIN as u64, "{handled}");
}

#[test]
fn deflate_is_acknowledged() {
    let m = mem();
    let (mut b, qs) = setup(&m);
    qs[DEFLATEQ]
        .add_desc_chains(&[desc(PFNS, 4, 0, 0)], 0)
        .unwrap();
    assert_eq!(b.process_queue(DEFLATEQ), 1);
    assert_eq!(used(&qs[DEFLATEQ]), vec![(0, 0)]);
    assert_eq!(b.counters(), Counters::default());
}

#[test]
fn config_space_lets_the_driver_write_only_actual() {
    let mut b = Balloon::new();
    b.write_config(0, &7u32.to_le_bytes());
    b.write_config(ACTUAL_OFFSET, &9u32.to_le_bytes());
    b.write_config(ACTUAL_OFFSET, &[1, 2]);
    let mut cfg = [0u8; 8];
    b.read_config(0, &mut cfg);
    assert_eq!(&cfg[..4], &0u32.to_le_bytes(), "num_pages is the device's");
    assert_eq!(b.actual_pages(), 9);
}

#[test]
fn reporting_queue_needed_only_with_the_feature() {
    let b = Balloon::new();
    assert!(b.queue_required(INFLATEQ, 0));
    assert!(!b.queue_required(REPORTQ, 0));
    assert!(b.queue_required(REPORTQ, VIRTIO_BALLOON_F_REPORTING));
}

#[test]
fn inactive_device_ignores_notifications() {
    let mut b = Balloon::new();
    assert_eq!(b.process_queue(REPORTQ), 0);
    b.queue_notify(7, &mut RecordingRegistry::default());
}
