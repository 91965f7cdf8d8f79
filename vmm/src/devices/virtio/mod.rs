//! virtio devices over the virtio-mmio transport. The transport ([`mmio`]) owns the register
//! state and hands validated queues to a [`VirtioDevice`] when the driver sets DRIVER_OK.
//! Each device lives in its own folder with the same file roles: `device.rs` (the model and
//! its queue handling), plus its request or packet parsers.

pub mod balloon;
pub mod blk;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod queue;
pub mod vsock;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use event_manager::{EventOps, Events};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemory;

/// VIRTIO_F_VERSION_1: every husk device is a modern (1.0+) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_BALLOON: u32 = 5;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// Interrupt status bits (virtio-mmio InterruptStatus).
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// A device's interrupt line: the status register the driver reads and acknowledges, and
/// the irqfd that raises the guest IRQ.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    evt: EventFd,
}

impl Interrupt {
    pub fn new(evt: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            evt,
        }
    }

    /// Raises the IRQ for `kind` (a used buffer or a config change).
    pub fn signal(&self, kind: u32) {
        self.status.fetch_or(kind, Ordering::SeqCst);
        // A full eventfd counter still means the IRQ is pending.
        let _ = self.evt.write(1);
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// Event-loop registrations a device may make for its own file descriptors (host sockets,
/// taps). Implemented over event-manager's `EventOps`, and by a recorder in tests.
pub trait EventRegistry {
    fn add(&mut self, fd: RawFd, token: u32, events: EventSet);
    fn modify(&mut self, fd: RawFd, token: u32, events: EventSet);
    fn remove(&mut self, fd: RawFd);
}

/// `EventOps` as an [`EventRegistry`].
pub struct OpsRegistry<'a, 'b>(pub &'a mut EventOps<'b>);

impl EventRegistry for OpsRegistry<'_, '_> {
    fn add(&mut self, fd: RawFd, token: u32, events: EventSet) {
        if let Err(e) = self.0.add(Events::with_data_raw(fd, token, events)) {
            log::warn!("registering fd {fd}: {e:?}");
        }
    }
    fn modify(&mut self, fd: RawFd, token: u32, events: EventSet) {
        if let Err(e) = self.0.modify(Events::with_data_raw(fd, token, events)) {
            log::warn!("modifying fd {fd}: {e:?}");
        }
    }
    fn remove(&mut self, fd: RawFd) {
        let _ = self.0.remove(Events::empty_raw(fd));
    }
}

/// A registry that records nothing (for callers with no event loop at hand).
#[derive(Debug, Default)]
pub struct NoRegistry;

impl EventRegistry for NoRegistry {
    fn add(&mut self, _: RawFd, _: u32, _: EventSet) {}
    fn modify(&mut self, _: RawFd, _: u32, _: EventSet) {}
    fn remove(&mut self, _: RawFd) {}
}

/// Tokens at or above this value are queue notifications; below it they belong to the device.
pub const QUEUE_TOKEN_BASE: u32 = 0x8000_0000;

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("queue {0} is not valid in guest memory")]
    InvalidQueue(usize),
    #[error("device-specific activation failed: {0}")]
    Device(String),
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation {
    pub mem: GuestMemory,
    pub queues: Vec<Queue>,
    /// The queues' notification eventfds (for devices whose backend takes them directly).
    pub queue_evts: Vec<EventFd>,
    pub interrupt: std::sync::Arc<Interrupt>,
    pub acked_features: u64,
}

/// A virtio device model behind the mmio transport. Everything here runs on the event-loop
/// thread or, for config space, on a vCPU thread; both under the transport's lock.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    fn queue_max_sizes(&self) -> &[u16];
    fn features(&self) -> u64;
    /// Reads device config space; bytes outside it read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, a: Activation, reg: &mut dyn EventRegistry)
        -> Result<(), ActivateError>;
    /// Back to the inactive state (driver wrote 0 to Status).
    fn reset(&mut self, reg: &mut dyn EventRegistry);
    /// Whether the driver must have set up queue `index` before DRIVER_OK, given the
    /// features it accepted. Some queues exist only with a feature (virtio-balloon's
    /// reporting queue); a queue that is not required may reach the device unready.
    fn queue_required(&self, _index: usize, _acked_features: u64) -> bool {
        true
    }
    /// The driver notified queue `index`.
    fn queue_notify(&mut self, index: usize, reg: &mut dyn EventRegistry);
    /// Whether the event loop handles the queue notifications (false when a vhost-user
    /// backend takes the kick eventfds itself).
    fn uses_queue_events(&self) -> bool {
        true
    }
    /// Device file descriptors to watch from the start.
    fn init_events(&mut self, _reg: &mut dyn EventRegistry) {}
    /// One of the device's own file descriptors is ready.
    fn process_event(&mut self, _token: u32, _events: EventSet, _reg: &mut dyn EventRegistry) {}
    /// Whether the driver broke one of the device's queues (see [`queue::GuestQueue`]):
    /// the transport then sets DEVICE_NEEDS_RESET and stops passing on the queues' kicks.
    fn needs_reset(&self) -> bool {
        false
    }
}

/// A copy of a queue's driver-written configuration (virtio-queue's `Queue` is not `Clone`).
pub fn copy_queue(q: &Queue) -> Queue {
    // `q` was built with this max size, so `new` cannot fail; keep a sane default anyway.
    let mut n = Queue::new(q.max_size()).unwrap_or_default();
    n.set_size(q.size());
    n.set_desc_table_address(
        Some(q.desc_table() as u32),
        Some((q.desc_table() >> 32) as u32),
    );
    n.set_avail_ring_address(
        Some(q.avail_ring() as u32),
        Some((q.avail_ring() >> 32) as u32),
    );
    n.set_used_ring_address(
        Some(q.used_ring() as u32),
        Some((q.used_ring() >> 32) as u32),
    );
    n.set_ready(q.ready());
    // Non-zero only for a VM restored from a template (see `snapshot`).
    n.set_next_avail(q.next_avail());
    n.set_next_used(q.next_used());
    n
}

/// Reads `data.len()` bytes at `offset` from a config-space byte image.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

#[cfg(test)]
pub(crate) mod test_utils;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let cfg = [1u8, 2, 3];
        let mut d = [9u8; 4];
        read_config_bytes(&cfg, 1, &mut d);
        assert_eq!(d, [2, 3, 0, 0]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn interrupt_status_and_ack() {
        let i = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        i.signal(INT_USED_RING);
        i.signal(INT_CONFIG);
        assert_eq!(i.status(), 3);
        i.ack(INT_USED_RING);
        assert_eq!(i.status(), INT_CONFIG);
        assert_eq!(i.eventfd().read().unwrap(), 2);
    }

    #[test]
    fn queue_copy_keeps_config() {
        let mut q = Queue::new(16).unwrap();
        q.set_size(8);
        q.set_desc_table_address(Some(0x1000), Some(1));
        q.set_ready(true);
        let c = copy_queue(&q);
        assert_eq!(c.size(), 8);
        assert_eq!(c.desc_table(), 0x1_0000_1000);
        assert!(c.ready());
    }
}
