//! The virtio-mmio transport (virtio 1.2, section 4.2.2), version 2 registers. Guest writes
//! arrive from vCPU threads; queue notifications arrive as ioeventfds on the event loop.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{
    copy_queue, Activation, EventRegistry, Interrupt, OpsRegistry, VirtioDevice, INT_CONFIG,
    QUEUE_TOKEN_BASE, VIRTIO_F_VERSION_1,
};
use crate::bus::BusDevice;
use crate::memory::GuestMemory;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4b53_5548; // "HUSK"

pub const REG_QUEUE_NOTIFY: u64 = 0x50;
const REG_CONFIG: u64 = 0x100;

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

/// The device's lifecycle as the transport sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    /// Reset or being configured by the driver.
    Inactive,
    /// DRIVER_OK seen on a vCPU thread; the event loop activates the device (activation may
    /// talk to a vhost-user backend, which vCPU threads are not allowed to).
    Activating,
    /// DRIVER_OK accepted: the device owns its queues.
    Active,
    /// Activation failed: the driver must reset the device.
    Failed,
    /// The device was active and the driver broke one of its queues: DEVICE_NEEDS_RESET
    /// is set, kicks are dropped unread, the device keeps its queues until the reset.
    Broken,
}

pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    state: DeviceState,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    config_generation: u32,
    activate_evt: EventFd,
    /// Per queue, the fields ([`QueueField`] bits) whose last write the queue refused (a
    /// size that is 0, above the maximum or not a power of two; a misaligned ring). The
    /// queue keeps its previous value, so activation must fail rather than run the device
    /// on rings the driver did not give.
    refused: Vec<u8>,
    /// Activations that failed so far (only some are logged).
    failed_activations: u64,
}

/// Bits of [`MmioTransport`]'s `refused`.
struct QueueField;

impl QueueField {
    const SIZE: u8 = 1;
    const DESC: u8 = 2;
    const AVAIL: u8 = 4;
    const USED: u8 = 8;
}

/// Whether queue `q` is ready and its three rings lie in guest memory: virtio-queue's
/// `is_valid` without the error line it logs for each refusal (a driver can make one per
/// initialization, in a loop).
fn rings_in_memory(q: &Queue, mem: &GuestMemory) -> bool {
    use vm_memory::GuestMemoryBackend;
    let n = usize::from(q.size());
    q.ready()
        && [
            (q.desc_table(), 16 * n),
            (q.avail_ring(), 6 + 2 * n),
            (q.used_ring(), 6 + 8 * n),
        ]
        .iter()
        .all(|&(addr, len)| GuestMemoryBackend::check_range(mem, GuestAddress(addr), len))
}

/// Event token of the transport's activation request.
pub const TOKEN_ACTIVATE: u32 = QUEUE_TOKEN_BASE - 1;

impl<D: VirtioDevice> MmioTransport<D> {
    /// `irq_evt` is registered as the device's irqfd; `queue_evts` (one per queue) as
    /// ioeventfds on QueueNotify by the caller.
    pub fn new(device: D, mem: GuestMemory, irq_evt: EventFd) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for &max in device.queue_max_sizes() {
            queues.push(Queue::new(max).map_err(|e| std::io::Error::other(format!("{e}")))?);
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK)?);
        }
        Ok(MmioTransport {
            refused: vec![0; queues.len()],
            device,
            mem,
            interrupt: Arc::new(Interrupt::new(irq_evt)),
            queues,
            queue_evts,
            state: DeviceState::Inactive,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            config_generation: 0,
            activate_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            failed_activations: 0,
        })
    }

    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    pub fn state(&self) -> DeviceState {
        self.state
    }

    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    fn features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        if self.state != DeviceState::Inactive {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self, reg: &mut dyn EventRegistry) {
        if matches!(self.state, DeviceState::Active | DeviceState::Broken) {
            self.device.reset(reg);
        }
        self.state = DeviceState::Inactive;
        self.status = 0;
        self.acked_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.refused.fill(0);
        self.interrupt.ack(u32::MAX);
    }

    fn activate(&mut self, reg: &mut dyn EventRegistry) {
        let all_valid = self
            .queues
            .iter()
            .enumerate()
            .filter(|(i, _)| self.device.queue_required(*i, self.acked_features))
            .find(|(i, q)| self.refused[*i] != 0 || !rings_in_memory(q, &self.mem));
        let kicks: std::io::Result<Vec<EventFd>> =
            self.queue_evts.iter().map(|e| e.try_clone()).collect();
        let result = match (all_valid, kicks) {
            (Some((i, _)), _) => Err(super::ActivateError::InvalidQueue(i)),
            (None, Err(e)) => Err(super::ActivateError::Device(format!(
                "cloning queue eventfds: {e}"
            ))),
            (None, Ok(queue_evts)) => self.device.activate(
                Activation {
                    mem: self.mem.clone(),
                    queues: self.queues.iter().map(copy_queue).collect(),
                    queue_evts,
                    interrupt: self.interrupt.clone(),
                    acked_features: self.acked_features,
                },
                reg,
            ),
        };
        match result {
            Ok(()) => {
                self.state = DeviceState::Active;
                // Kicks that came while activating were consumed: look at every queue once.
                if self.device.uses_queue_events() {
                    for i in 0..self.queues.len() {
                        if self.state == DeviceState::Active {
                            self.device.queue_notify(i, reg);
                            self.check_broken();
                        }
                    }
                }
            }
            Err(e) => {
                // A driver looping over a bad initialization gets log2 of its attempts
                // logged, not a line each.
                self.failed_activations += 1;
                if self.failed_activations.is_power_of_two() {
                    log::warn!(
                        "virtio device type {}: {e} (failed activation {})",
                        self.device.device_type(),
                        self.failed_activations
                    );
                }
                self.state = DeviceState::Failed;
                self.status |= STATUS_NEEDS_RESET;
                self.interrupt.signal(INT_CONFIG);
            }
        }
    }

    /// Moves an active device whose driver broke a queue to [`DeviceState::Broken`] and
    /// tells the driver (NEEDS_RESET and a config interrupt, as for a failed activation).
    fn check_broken(&mut self) {
        if self.state == DeviceState::Active && self.device.needs_reset() {
            self.state = DeviceState::Broken;
            self.status |= STATUS_NEEDS_RESET;
            self.interrupt.signal(INT_CONFIG);
        }
    }

    fn write_status(&mut self, v: u32, reg: &mut dyn EventRegistry) {
        if v == 0 {
            self.reset(reg);
            return;
        }
        // The driver may only add bits (virtio 1.2, 3.1.1).
        if v & self.status != self.status {
            return;
        }
        let mut v = v;
        if v & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            let ok = self.acked_features & !self.features() == 0
                && self.acked_features & VIRTIO_F_VERSION_1 != 0;
            if !ok {
                v &= !STATUS_FEATURES_OK;
            }
        }
        let newly_ok = v & STATUS_DRIVER_OK != 0 && self.status & STATUS_DRIVER_OK == 0;
        self.status = v;
        if newly_ok && v & STATUS_FEATURES_OK != 0 && self.state == DeviceState::Inactive {
            self.state = DeviceState::Activating;
            let _ = self.activate_evt.write(1);
        }
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR,
            0x10 => match self.device_features_sel {
                0 => self.features() as u32,
                1 => (self.features() >> 32) as u32,
                _ => 0,
            },
            0x34 => q.map_or(0, |q| u32::from(q.max_size())),
            0x44 => q.map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32, reg: &mut dyn EventRegistry) {
        let configurable = self.status & STATUS_DRIVER_OK == 0;
        match offset {
            0x14 => self.device_features_sel = v,
            0x20 if self.status & STATUS_FEATURES_OK == 0 => match self.driver_features_sel {
                0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.acked_features = (self.acked_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 if configurable => {
                // try_set_size, not set_size: that one logs every refused write, which
                // would give the guest a log flood.
                let ok = self
                    .selected_queue()
                    .map(|q| u16::try_from(v).is_ok_and(|size| q.try_set_size(size).is_ok()));
                self.note_refused(QueueField::SIZE, ok);
            }
            0x44 if configurable => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            REG_QUEUE_NOTIFY => {
                // Reached only without an ioeventfd: forward to the queue's eventfd.
                if let Some(e) = self.queue_evts.get(v as usize) {
                    let _ = e.write(1);
                }
            }
            0x64 => self.interrupt.ack(v),
            0x70 => self.write_status(v, reg),
            0x80..=0xa4 if configurable => {
                let Some(q) = self.selected_queue() else {
                    return;
                };
                let half = |old: u64| {
                    if offset % 8 == 0 {
                        (old & !0xffff_ffff) | u64::from(v)
                    } else {
                        (old & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                };
                let (field, ok) = match offset {
                    0x80 | 0x84 => {
                        let a = GuestAddress(half(q.desc_table()));
                        (QueueField::DESC, q.try_set_desc_table_address(a).is_ok())
                    }
                    0x90 | 0x94 => {
                        let a = GuestAddress(half(q.avail_ring()));
                        (QueueField::AVAIL, q.try_set_avail_ring_address(a).is_ok())
                    }
                    0xa0 | 0xa4 => {
                        let a = GuestAddress(half(q.used_ring()));
                        (QueueField::USED, q.try_set_used_ring_address(a).is_ok())
                    }
                    _ => return,
                };
                self.note_refused(field, Some(ok));
            }
            _ => {}
        }
    }

    /// Records whether the selected queue took the last write of `field` (`None`: no
    /// queue is selected).
    fn note_refused(&mut self, field: u8, ok: Option<bool>) {
        let (Some(ok), Some(r)) = (ok, self.refused.get_mut(self.queue_sel as usize)) else {
            return;
        };
        if ok {
            *r &= !field;
        } else {
            *r |= field;
        }
    }

    /// Dispatches a queue notification or a device event (event-loop side).
    pub fn handle_event(&mut self, token: u32, events: EventSet, reg: &mut dyn EventRegistry) {
        if token == TOKEN_ACTIVATE {
            let _ = self.activate_evt.read();
            if self.state == DeviceState::Activating {
                self.activate(reg);
            }
        } else if token >= QUEUE_TOKEN_BASE {
            let index = (token - QUEUE_TOKEN_BASE) as usize;
            if let Some(e) = self.queue_evts.get(index) {
                let _ = e.read();
            }
            // A broken device's kicks are dropped here: no ring is read per kick.
            if self.state == DeviceState::Active {
                self.device.queue_notify(index, reg);
                self.check_broken();
            }
        } else {
            self.device.process_event(token, events, reg);
            self.check_broken();
        }
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= REG_CONFIG {
            self.device.read_config(offset - REG_CONFIG, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= REG_CONFIG {
            if self.status & STATUS_DRIVER_OK == 0 || self.state == DeviceState::Active {
                self.device.write_config(offset - REG_CONFIG, data);
                self.config_generation = self.config_generation.wrapping_add(1);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if offset % 4 != 0 {
            return;
        }
        // A vCPU thread has no event loop at hand: devices register their file descriptors
        // in `init_events` or while handling events, never in activate/reset.
        self.write_reg(offset, u32::from_le_bytes(bytes), &mut super::NoRegistry);
    }
}

impl<D: VirtioDevice> MutEventSubscriber for MmioTransport<D> {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::with_data(
            &self.activate_evt,
            TOKEN_ACTIVATE,
            EventSet::IN,
        )) {
            log::warn!("registering the activation eventfd: {err:?}");
        }
        // A vhost-user device's kicks go straight to its backend.
        let queue_evts: &[EventFd] = if self.device.uses_queue_events() {
            &self.queue_evts
        } else {
            &[]
        };
        for (i, e) in queue_evts.iter().enumerate() {
            if let Err(err) = ops.add(Events::with_data(
                e,
                QUEUE_TOKEN_BASE + i as u32,
                EventSet::IN,
            )) {
                log::warn!("registering queue {i} eventfd: {err:?}");
            }
        }
        self.device.init_events(&mut OpsRegistry(ops));
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.handle_event(events.data(), events.event_set(), &mut OpsRegistry(ops));
    }
}

/// One queue's driver-written configuration and the device's position in it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueState {
    pub size: u16,
    pub ready: bool,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// The used index the device last published (= its next available index: see
    /// `snapshot`).
    pub used_idx: u16,
}

/// A transport's registers, for a VM template (see `snapshot`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportState {
    pub device_type: u32,
    pub status: u32,
    pub acked_features: u64,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub queue_sel: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    /// The driver set DRIVER_OK and the device took its queues.
    pub active: bool,
    pub queues: Vec<QueueState>,
}

/// A transport as the snapshot code sees it, whatever its device.
pub trait SnapshotTransport: Send {
    fn device_type(&self) -> u32;
    /// The transport's state; the VM must be stopped (no vCPU, no event loop running).
    fn save(&self) -> Result<TransportState, crate::snapshot::SnapshotError>;
    /// Puts `s` back on a transport just built; an active device is activated by the
    /// event loop when it starts, with its queues where the template left them.
    fn restore(&mut self, s: &TransportState) -> Result<(), crate::snapshot::SnapshotError>;
}

impl<D: VirtioDevice> SnapshotTransport for MmioTransport<D> {
    fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    fn save(&self) -> Result<TransportState, crate::snapshot::SnapshotError> {
        use crate::snapshot::SnapshotError;
        let ty = self.device.device_type();
        let active = match self.state {
            DeviceState::Inactive => false,
            DeviceState::Activating | DeviceState::Active => true,
            DeviceState::Failed => {
                return Err(SnapshotError::NotQuiescent(format!(
                    "virtio device type {ty} failed to activate"
                )))
            }
            DeviceState::Broken => {
                return Err(SnapshotError::NotQuiescent(format!(
                    "virtio device type {ty} needs a reset"
                )))
            }
        };
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter().enumerate() {
            let mut used_idx = 0;
            if active && q.ready() {
                let read = |addr: u64| -> Result<u16, SnapshotError> {
                    vm_memory::Bytes::load::<u16>(
                        &self.mem,
                        vm_memory::GuestAddress(addr + 2),
                        Ordering::Acquire,
                    )
                    .map_err(|e| SnapshotError::Memory(format!("device {ty} queue {i} index: {e}")))
                };
                used_idx = read(q.used_ring())?;
                // A vhost-user backend's requests are not ours to see finished: require
                // that the driver has made none it did not get back.
                if !self.device.uses_queue_events() && read(q.avail_ring())? != used_idx {
                    return Err(SnapshotError::NotQuiescent(format!(
                        "virtio device type {ty} queue {i} has requests in flight"
                    )));
                }
            }
            queues.push(QueueState {
                size: q.size(),
                ready: q.ready(),
                desc: q.desc_table(),
                avail: q.avail_ring(),
                used: q.used_ring(),
                used_idx,
            });
        }
        Ok(TransportState {
            device_type: ty,
            status: self.status,
            acked_features: self.acked_features,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            active,
            queues,
        })
    }

    fn restore(&mut self, s: &TransportState) -> Result<(), crate::snapshot::SnapshotError> {
        use crate::snapshot::SnapshotError;
        let ty = self.device.device_type();
        if s.device_type != ty || s.queues.len() != self.queues.len() {
            return Err(SnapshotError::Mismatch(format!(
                "virtio device type {} with {} queues, the VM has type {ty} with {}",
                s.device_type,
                s.queues.len(),
                self.queues.len()
            )));
        }
        if s.acked_features & !self.features() != 0 {
            return Err(SnapshotError::Mismatch(format!(
                "virtio device type {ty}: the driver accepted features {:#x}, the device \
                 now offers {:#x}",
                s.acked_features,
                self.features()
            )));
        }
        for (q, qs) in self.queues.iter_mut().zip(&s.queues) {
            q.set_size(qs.size);
            q.set_desc_table_address(Some(qs.desc as u32), Some((qs.desc >> 32) as u32));
            q.set_avail_ring_address(Some(qs.avail as u32), Some((qs.avail >> 32) as u32));
            q.set_used_ring_address(Some(qs.used as u32), Some((qs.used >> 32) as u32));
            q.set_ready(qs.ready);
            q.set_next_avail(qs.used_idx);
            q.set_next_used(qs.used_idx);
        }
        self.status = s.status;
        self.acked_features = s.acked_features;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.queue_sel = s.queue_sel;
        self.config_generation = s.config_generation;
        if s.active {
            self.state = DeviceState::Activating;
            let _ = self.activate_evt.write(1);
        }
        // An interrupt the template raised may not have reached the guest's irqchip
        // before the stop (irqfd injection is asynchronous): raise it again. The driver
        // reads the status register, so a spurious one costs nothing.
        if s.interrupt_status != 0 {
            self.interrupt.signal(s.interrupt_status);
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
