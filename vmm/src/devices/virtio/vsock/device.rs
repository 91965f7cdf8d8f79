//! The virtio-vsock device model: three queues (rx, tx, event), config space holding the
//! guest CID, and the handlers moving packets between the queues and the [`Muxer`].

use std::io::Read;
use std::sync::Arc;

use virtio_queue::QueueT;
use vmm_sys_util::epoll::EventSet;

use super::muxer::Muxer;
use super::packet::{validate, Header, HDR_LEN};
use super::{VsockError, MAX_PKT_LEN};
use crate::config::VsockConfig;
use crate::devices::virtio::queue::GuestQueue;
use crate::devices::virtio::{
    ActivateError, Activation, EventRegistry, Interrupt, VirtioDevice, INT_USED_RING, TYPE_VSOCK,
};
use crate::memory::GuestMemory;

pub const RXQ: usize = 0;
pub const TXQ: usize = 1;
pub const EVQ: usize = 2;
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];

struct Active {
    mem: GuestMemory,
    rx: GuestQueue,
    tx: GuestQueue,
    interrupt: Arc<Interrupt>,
}

enum State {
    Inactive,
    Active(Active),
}

pub struct Vsock {
    guest_cid: u64,
    muxer: Muxer,
    state: State,
    /// Fixed bounce buffers: nothing is sized by the guest.
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
}

impl Vsock {
    pub fn new(cfg: &VsockConfig) -> Result<Vsock, VsockError> {
        let guest_cid = u64::from(cfg.guest_cid);
        Ok(Vsock {
            guest_cid,
            muxer: Muxer::new(&cfg.socket, guest_cid)?,
            state: State::Inactive,
            rx_buf: vec![0u8; MAX_PKT_LEN],
            tx_buf: vec![0u8; MAX_PKT_LEN],
        })
    }

    pub fn muxer(&self) -> &Muxer {
        &self.muxer
    }

    pub fn muxer_mut(&mut self) -> &mut Muxer {
        &mut self.muxer
    }

    /// Takes packets from the guest's TX queue; returns how many chains were consumed.
    pub fn process_tx(&mut self, reg: &mut dyn EventRegistry) -> usize {
        let State::Active(a) = &mut self.state else {
            return 0;
        };
        let mem = a.mem.clone();
        let mut used = 0;
        while let Some(chain) = a.tx.pop(&mem) {
            let head = chain.head_index();
            match chain.reader(&mem) {
                Ok(mut reader) => {
                    let mut hdr = [0u8; HDR_LEN];
                    if reader.available_bytes() >= HDR_LEN && reader.read_exact(&mut hdr).is_ok() {
                        let h = Header::from_bytes(&hdr);
                        match validate(&h, self.guest_cid, reader.available_bytes()) {
                            Ok(()) => {
                                let len = h.len as usize;
                                let payload = &mut self.tx_buf[..len];
                                if reader.read_exact(payload).is_ok() {
                                    self.muxer.from_guest(&h, payload, reg);
                                }
                            }
                            Err(e) => log::debug!("vsock: dropped tx packet: {e}"),
                        }
                    }
                }
                Err(e) => log::debug!("vsock: bad tx chain: {e}"),
            }
            if a.tx.add_used(&mem, head, 0).is_err() {
                // A head outside the table (the driver's error) cannot be given back; the
                // chains after it still are.
                continue;
            }
            used += 1;
        }
        if used > 0 {
            a.interrupt.signal(INT_USED_RING);
        }
        used
    }

    /// Fills the guest's RX buffers with what the muxer has; returns packets delivered.
    pub fn process_rx(&mut self, reg: &mut dyn EventRegistry) -> usize {
        let State::Active(a) = &mut self.state else {
            return 0;
        };
        let mem = a.mem.clone();
        let mut used = 0;
        while self.muxer.has_rx() {
            let Some(chain) = a.rx.pop(&mem) else {
                break;
            };
            let head = chain.head_index();
            let written = match chain.writer(&mem) {
                Ok(mut w) if w.available_bytes() >= HDR_LEN => {
                    let room = (w.available_bytes() - HDR_LEN).min(MAX_PKT_LEN);
                    match self.muxer.next_rx(&mut self.rx_buf[..room], reg) {
                        Some((h, n)) => {
                            use std::io::Write;
                            let ok = w.write_all(&h.to_bytes()).is_ok()
                                && w.write_all(&self.rx_buf[..n]).is_ok();
                            if ok {
                                (HDR_LEN + n) as u32
                            } else {
                                0
                            }
                        }
                        None => {
                            // Nothing after all: give the buffer back to the ring.
                            let back = a.rx.next_avail().wrapping_sub(1);
                            a.rx.set_next_avail(back);
                            break;
                        }
                    }
                }
                // Unusable buffer (too small, outside memory, read-only): consume it empty.
                _ => 0,
            };
            if a.rx.add_used(&mem, head, written).is_err() {
                // A head outside the table (the driver's error) cannot be given back; the
                // chains after it still are.
                continue;
            }
            used += 1;
        }
        if used > 0 {
            a.interrupt.signal(INT_USED_RING);
        }
        used
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data)
    }

    fn activate(
        &mut self,
        a: Activation,
        reg: &mut dyn EventRegistry,
    ) -> Result<(), ActivateError> {
        let mut queues = a.queues.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err(ActivateError::InvalidQueue(EVQ));
        };
        // Connections from before a reset (reset runs on a vCPU thread, with no event
        // loop at hand to unregister their sockets; activation runs on the event loop).
        self.muxer.drop_connections(reg);
        self.state = State::Active(Active {
            mem: a.mem,
            rx: GuestQueue::new(rx, "virtio-vsock receive queue"),
            tx: GuestQueue::new(tx, "virtio-vsock transmit queue"),
            interrupt: a.interrupt,
        });
        Ok(())
    }

    fn reset(&mut self, _: &mut dyn EventRegistry) {
        self.state = State::Inactive;
    }

    fn queue_notify(&mut self, index: usize, reg: &mut dyn EventRegistry) {
        match index {
            TXQ => {
                self.process_tx(reg);
                self.process_rx(reg);
            }
            RXQ => {
                self.process_rx(reg);
            }
            _ => {}
        }
    }

    fn init_events(&mut self, reg: &mut dyn EventRegistry) {
        self.muxer.init_events(reg);
    }

    fn needs_reset(&self) -> bool {
        matches!(&self.state, State::Active(a) if a.rx.is_broken() || a.tx.is_broken())
    }

    fn process_event(&mut self, token: u32, events: EventSet, reg: &mut dyn EventRegistry) {
        self.muxer.process_event(token, events, reg);
        self.process_rx(reg);
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
