use super::*;
use crate::devices::virtio::test_utils::{mem, queue_with};
use crate::devices::virtio::{ActivateError, NoRegistry};

#[derive(Default)]
struct Dummy {
    activated: bool,
    notified: Vec<usize>,
    resets: u32,
    fail: bool,
    /// Queue positions handed over at activation.
    positions: Vec<(u16, u16)>,
    /// Behave as a vhost-user device (kicks go to a backend).
    vhost: bool,
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 16]
    }
    fn features(&self) -> u64 {
        1 << 5
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::super::read_config_bytes(&[0xaa, 0xbb], offset, data)
    }
    fn activate(&mut self, a: Activation, _: &mut dyn EventRegistry) -> Result<(), ActivateError> {
        assert_eq!(a.queues.len(), 2);
        if self.fail {
            return Err(ActivateError::Device("nope".into()));
        }
        self.activated = true;
        self.positions = a
            .queues
            .iter()
            .map(|q| (q.next_avail(), q.next_used()))
            .collect();
        Ok(())
    }
    fn uses_queue_events(&self) -> bool {
        !self.vhost
    }
    fn reset(&mut self, _: &mut dyn EventRegistry) {
        self.activated = false;
        self.resets += 1;
    }
    fn queue_notify(&mut self, index: usize, _: &mut dyn EventRegistry) {
        self.notified.push(index);
    }
}

fn rd(t: &mut MmioTransport<Dummy>, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport<Dummy>, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn transport(fail: bool) -> MmioTransport<Dummy> {
    let d = Dummy {
        fail,
        ..Default::default()
    };
    MmioTransport::new(d, mem(), EventFd::new(libc::EFD_NONBLOCK).unwrap()).unwrap()
}

/// Drives the driver side of initialization with valid queues at 0x10000 and 0x20000.
fn bring_up(t: &mut MmioTransport<Dummy>) {
    let m = mem();
    wr(t, 0x70, STATUS_ACKNOWLEDGE);
    wr(t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    wr(t, 0x24, 1);
    wr(t, 0x20, 1); // VERSION_1
    wr(t, 0x24, 0);
    wr(t, 0x20, 1 << 5);
    wr(
        t,
        0x70,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    assert_ne!(rd(t, 0x70) & STATUS_FEATURES_OK, 0);
    for (i, base) in [(0u32, 0x10000u64), (1, 0x20000)] {
        let (vq, _) = queue_with(&m, 16, &[]);
        drop(vq);
        wr(t, 0x30, i);
        wr(t, 0x38, 16);
        wr(t, 0x80, base as u32);
        wr(t, 0x90, (base + 0x100) as u32);
        wr(t, 0xa0, (base + 0x200) as u32);
        wr(t, 0x44, 1);
    }
    wr(
        t,
        0x70,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    assert_eq!(t.state(), DeviceState::Activating);
    t.handle_event(TOKEN_ACTIVATE, EventSet::IN, &mut NoRegistry);
}

#[test]
fn identification_registers() {
    let mut t = transport(false);
    assert_eq!(rd(&mut t, 0x00), MAGIC);
    assert_eq!(rd(&mut t, 0x04), 2);
    assert_eq!(rd(&mut t, 0x08), 42);
    assert_eq!(rd(&mut t, 0x10), 1 << 5);
    wr(&mut t, 0x14, 1);
    assert_eq!(rd(&mut t, 0x10), 1);
    assert_eq!(rd(&mut t, 0x34), 16);
    let mut b = [0u8; 2];
    t.read(0x100, &mut b);
    assert_eq!(b, [0xaa, 0xbb]);
    // Narrow or unaligned register accesses read as zero and are ignored on write.
    let mut one = [9u8; 1];
    t.read(0x00, &mut one);
    assert_eq!(one, [0]);
    t.write(0x70, &[1]);
    assert_eq!(rd(&mut t, 0x70), 0);
}

#[test]
fn full_bring_up_activates_and_reset_deactivates() {
    let mut t = transport(false);
    bring_up(&mut t);
    assert_eq!(t.state(), DeviceState::Active);
    assert!(t.device().activated);
    // Activation looks at every queue once (kicks may have come while activating).
    assert_eq!(t.device().notified, vec![0, 1]);
    t.handle_event(QUEUE_TOKEN_BASE + 1, EventSet::IN, &mut NoRegistry);
    assert_eq!(t.device().notified, vec![0, 1, 1]);
    // Queue config is frozen while active.
    wr(&mut t, 0x30, 0);
    wr(&mut t, 0x38, 4);
    wr(&mut t, 0x30, 0);
    wr(&mut t, 0x70, 0);
    assert_eq!(t.state(), DeviceState::Inactive);
    assert_eq!(t.device().resets, 1);
    assert_eq!(rd(&mut t, 0x70), 0);
    assert_eq!(rd(&mut t, 0x44), 0);
}

#[test]
fn features_ok_refused_for_unknown_features_or_legacy() {
    let mut t = transport(false);
    wr(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    wr(&mut t, 0x20, 1 << 7); // not offered, and no VERSION_1
    wr(
        &mut t,
        0x70,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    assert_eq!(rd(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
}

#[test]
fn invalid_queue_fails_activation() {
    let mut t = transport(false);
    wr(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    wr(&mut t, 0x24, 1);
    wr(&mut t, 0x20, 1);
    wr(
        &mut t,
        0x70,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    // Queues never made ready, and one placed outside guest memory.
    wr(&mut t, 0x30, 0);
    wr(&mut t, 0x84, 0xffff_ffff);
    wr(&mut t, 0x44, 1);
    wr(
        &mut t,
        0x70,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    t.handle_event(TOKEN_ACTIVATE, EventSet::IN, &mut NoRegistry);
    assert_eq!(t.state(), DeviceState::Failed);
    assert!(!t.device().activated);
    assert_ne!(rd(&mut t, 0x70) & STATUS_NEEDS_RESET, 0);
    assert_ne!(rd(&mut t, 0x60) & INT_CONFIG, 0);
    // Notifications to a failed device go nowhere.
    t.handle_event(QUEUE_TOKEN_BASE, EventSet::IN, &mut NoRegistry);
    assert!(t.device().notified.is_empty());
}

#[test]
fn device_activation_error_is_contained() {
    let mut t = transport(true);
    bring_up(&mut t);
    assert_eq!(t.state(), DeviceState::Failed);
}

#[test]
fn hostile_register_values() {
    let mut t = transport(false);
    wr(&mut t, 0x30, u32::MAX); // queue select out of range
    assert_eq!(rd(&mut t, 0x34), 0);
    wr(&mut t, 0x38, 1 << 20);
    wr(&mut t, 0x44, 1);
    wr(&mut t, 0x50, u32::MAX); // notify of a queue that does not exist
    wr(&mut t, 0x24, 7);
    wr(&mut t, 0x20, u32::MAX);
    wr(&mut t, 0x14, u32::MAX);
    assert_eq!(rd(&mut t, 0x10), 0);
    t.handle_event(QUEUE_TOKEN_BASE + 999, EventSet::IN, &mut NoRegistry);
    t.write(0xfff, &[1, 2, 3, 4, 5, 6, 7, 8]);
    let mut big = [0u8; 8];
    t.read(u64::MAX, &mut big);
    // Status bits cannot be taken away except by reset.
    wr(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    wr(&mut t, 0x70, STATUS_ACKNOWLEDGE);
    assert_eq!(rd(&mut t, 0x70), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
}

fn set_ring_idx(t: &MmioTransport<Dummy>, addr: u64, idx: u16) {
    vm_memory::Bytes::store(
        &t.mem,
        idx,
        vm_memory::GuestAddress(addr + 2),
        Ordering::Release,
    )
    .unwrap();
}

#[test]
fn snapshot_state_round_trips_into_a_new_transport() {
    let mut t = transport(false);
    bring_up(&mut t);
    // The device has used 5 chains of queue 0 and none of queue 1.
    set_ring_idx(&t, 0x10200, 5);
    set_ring_idx(&t, 0x20200, 0);
    t.interrupt().signal(INT_CONFIG);
    let s = t.save().unwrap();
    assert!(s.active);
    assert_eq!(s.device_type, 42);
    assert_eq!(s.acked_features, VIRTIO_F_VERSION_1 | 1 << 5);
    assert_eq!(s.interrupt_status, INT_CONFIG);
    assert_eq!(s.queues[0].used_idx, 5);
    assert_eq!(s.queues[0].desc, 0x10000);
    assert_eq!(s.queues[1].used, 0x20200);

    let mut n = transport(false);
    n.restore(&s).unwrap();
    assert_eq!(n.state(), DeviceState::Activating);
    assert_eq!(rd(&mut n, 0x70), s.status);
    assert_eq!(rd(&mut n, 0x60), INT_CONFIG);
    // The interrupt is raised again: it may not have reached the template's irqchip.
    assert_eq!(n.interrupt().eventfd().read().unwrap(), 1);
    n.handle_event(TOKEN_ACTIVATE, EventSet::IN, &mut NoRegistry);
    assert_eq!(n.state(), DeviceState::Active);
    assert_eq!(n.device().positions, vec![(5, 5), (0, 0)]);
    // The restored transport saves to the same state (its RAM would be the template's).
    set_ring_idx(&n, 0x10200, 5);
    assert_eq!(n.save().unwrap(), s);
    // Active: the driver can no longer reconfigure queues.
    wr(&mut n, 0x30, 0);
    wr(&mut n, 0x38, 8);
    assert_eq!(n.save().unwrap().queues[0].size, 16);
}

#[test]
fn snapshot_of_an_inactive_transport_restores_inactive() {
    let t = transport(false);
    let s = t.save().unwrap();
    assert!(!s.active);
    let mut n = transport(false);
    n.restore(&s).unwrap();
    assert_eq!(n.state(), DeviceState::Inactive);
}

#[test]
fn snapshot_refuses_vhost_user_requests_in_flight() {
    let mut t = MmioTransport::new(
        Dummy {
            vhost: true,
            ..Default::default()
        },
        mem(),
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    )
    .unwrap();
    bring_up(&mut t);
    set_ring_idx(&t, 0x10100, 3); // avail: the driver made 3 requests
    set_ring_idx(&t, 0x10200, 2); // used: the backend answered 2
    set_ring_idx(&t, 0x20100, 0);
    set_ring_idx(&t, 0x20200, 0);
    assert!(matches!(
        t.save(),
        Err(crate::snapshot::SnapshotError::NotQuiescent(_))
    ));
    set_ring_idx(&t, 0x10200, 3);
    assert_eq!(t.save().unwrap().queues[0].used_idx, 3);
}

#[test]
fn restore_refuses_another_device_or_unoffered_features() {
    let mut t = transport(false);
    bring_up(&mut t);
    set_ring_idx(&t, 0x10200, 0);
    set_ring_idx(&t, 0x20200, 0);
    let s = t.save().unwrap();
    let mut other = TransportState {
        device_type: 7,
        ..s.clone()
    };
    let mut n = transport(false);
    assert!(n.restore(&other).is_err());
    other.device_type = 42;
    other.acked_features |= 1 << 9;
    assert!(n.restore(&other).is_err());
    other.acked_features = s.acked_features;
    other.queues.pop();
    assert!(n.restore(&other).is_err());
    assert_eq!(n.state(), DeviceState::Inactive);
}

/// Every hostile value a driver can write into queue `i`'s registers.
fn rewrite_queue(t: &mut MmioTransport<Dummy>, i: u32) {
    wr(t, 0x30, i);
    for size in [0, 3, 17, 1 << 15, u32::MAX] {
        wr(t, 0x38, size);
    }
    for reg in [0x80, 0x84, 0x90, 0x94, 0xa0, 0xa4] {
        wr(t, reg, 0xffff_f001);
    }
    wr(t, 0x44, 0);
}

#[test]
fn case_07_queue_registers_are_frozen_after_driver_ok() {
    let mut t = transport(false);
    bring_up(&mut t);
    set_ring_idx(&t, 0x10200, 0);
    set_ring_idx(&t, 0x20200, 0);
    let before = t.save().unwrap();
    for i in [0, 1, 2, u32::MAX] {
        rewrite_queue(&mut t, i);
    }
    assert_eq!(t.state(), DeviceState::Active);
    assert_eq!(t.save().unwrap().queues, before.queues);
    wr(&mut t, 0x30, 0);
    assert_eq!(rd(&mut t, 0x44), 1);

    // Between DRIVER_OK and the event loop's activation too.
    let mut t = transport(false);
    bring_up_without_activation(&mut t);
    for i in [0, 1] {
        rewrite_queue(&mut t, i);
    }
    t.handle_event(TOKEN_ACTIVATE, EventSet::IN, &mut NoRegistry);
    assert_eq!(t.state(), DeviceState::Active);
    set_ring_idx(&t, 0x10200, 0);
    set_ring_idx(&t, 0x20200, 0);
    assert_eq!(t.save().unwrap().queues, before.queues);
}

/// `bring_up` up to DRIVER_OK, without the activation the event loop does.
fn bring_up_without_activation(t: &mut MmioTransport<Dummy>) {
    wr(t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    wr(t, 0x24, 1);
    wr(t, 0x20, 1);
    wr(t, 0x24, 0);
    wr(t, 0x20, 1 << 5);
    let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    wr(t, 0x70, ok);
    for (i, base) in [(0u32, 0x10000u32), (1, 0x20000)] {
        wr(t, 0x30, i);
        wr(t, 0x38, 16);
        wr(t, 0x80, base);
        wr(t, 0x90, base + 0x100);
        wr(t, 0xa0, base + 0x200);
        wr(t, 0x44, 1);
    }
    wr(t, 0x70, ok | STATUS_DRIVER_OK);
    assert_eq!(t.state(), DeviceState::Activating);
}

/// Brings `t` up to DRIVER_OK with queue 0 configured by `queue0` after the good values.
fn activate_with(queue0: &[(u64, u32)]) -> MmioTransport<Dummy> {
    let mut t = transport(false);
    wr(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    wr(&mut t, 0x24, 1);
    wr(&mut t, 0x20, 1);
    let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    wr(&mut t, 0x70, ok);
    for (i, base) in [(0u32, 0x10000u32), (1, 0x20000)] {
        wr(&mut t, 0x30, i);
        wr(&mut t, 0x38, 16);
        wr(&mut t, 0x80, base);
        wr(&mut t, 0x90, base + 0x100);
        wr(&mut t, 0xa0, base + 0x200);
        wr(&mut t, 0x44, 1);
    }
    wr(&mut t, 0x30, 0);
    for &(reg, v) in queue0 {
        wr(&mut t, reg, v);
    }
    wr(&mut t, 0x70, ok | STATUS_DRIVER_OK);
    t.handle_event(TOKEN_ACTIVATE, EventSet::IN, &mut NoRegistry);
    t
}

#[test]
fn case_08_activation_with_invalid_rings_fails_with_needs_reset() {
    let cases: &[(&str, &[(u64, u32)])] = &[
        ("size 0", &[(0x38, 0)]),
        ("size not a power of two", &[(0x38, 12)]),
        ("size above the maximum", &[(0x38, 32)]),
        ("size beyond 16 bits", &[(0x38, 1 << 16 | 8)]),
        ("misaligned descriptor table", &[(0x80, 0x10008)]),
        ("misaligned available ring", &[(0x90, 0x10101)]),
        ("misaligned used ring", &[(0xa0, 0x10202)]),
        ("descriptor table beyond memory", &[(0x84, 1)]),
        (
            "available ring at the end of memory",
            &[(0x90, (16 << 20) - 4)],
        ),
        ("used ring in the MMIO gap", &[(0xa0, 0xd000_0000)]),
        (
            "used ring wrapping past 2^64",
            &[(0xa0, 0xffff_fffc), (0xa4, u32::MAX)],
        ),
    ];
    for (what, writes) in cases {
        let mut t = activate_with(writes);
        assert_eq!(t.state(), DeviceState::Failed, "{what}");
        assert!(!t.device().activated, "{what}");
        assert_ne!(rd(&mut t, 0x70) & STATUS_NEEDS_RESET, 0, "{what}");
        assert_ne!(rd(&mut t, 0x60) & INT_CONFIG, 0, "{what}");
        // A reset and a good initialization recover.
        wr(&mut t, 0x70, 0);
        assert_eq!(rd(&mut t, 0x70), 0);
        bring_up(&mut t);
        assert_eq!(t.state(), DeviceState::Active, "{what} then a good init");
    }
    // A driver retrying a bad initialization in a loop: every attempt fails, the log
    // gets log2 of them.
    let mut t = transport(false);
    let ((), logged) = crate::devices::virtio::test_utils::capture_logs(|| {
        for _ in 0..1000 {
            wr(&mut t, 0x70, 0);
            wr(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
            wr(&mut t, 0x24, 1);
            wr(&mut t, 0x20, 1);
            let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
            wr(&mut t, 0x70, ok);
            wr(&mut t, 0x30, 0);
            wr(&mut t, 0x84, 1);
            wr(&mut t, 0x44, 1);
            wr(&mut t, 0x70, ok | STATUS_DRIVER_OK);
            t.handle_event(TOKEN_ACTIVATE, EventSet::IN, &mut NoRegistry);
            assert_eq!(t.state(), DeviceState::Failed);
        }
    });
    assert!(logged.len() <= 10, "{} lines: {logged:?}", logged.len());
    assert!(
        logged
            .iter()
            .any(|(_, m)| m.contains("failed activation 512")),
        "{logged:?}"
    );
    // A refused value followed by a good one is the good one.
    let t = activate_with(&[(0x38, 12), (0x38, 8), (0x80, 0x10008), (0x80, 0x10000)]);
    assert_eq!(t.state(), DeviceState::Active);
}
