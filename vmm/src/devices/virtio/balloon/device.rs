//! The virtio-balloon device model: queue 0 inflates (PFN lists), queue 1 deflates, queue 2
//! carries free page reports (device-writable buffers, each one a free range).

use std::sync::Arc;

use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::{MAX_PFNS_PER_CHAIN, PFN_SHIFT, VIRTIO_BALLOON_F_REPORTING};
use crate::devices::virtio::queue::GuestQueue;
use crate::devices::virtio::{
    read_config_bytes, ActivateError, Activation, EventRegistry, Interrupt, VirtioDevice,
    INT_USED_RING, TYPE_BALLOON,
};
use crate::memory::{self, GuestMemory, PAGE_SIZE};

pub const INFLATEQ: usize = 0;
pub const DEFLATEQ: usize = 1;
pub const REPORTQ: usize = 2;
/// Linux needs at least 32 entries on the reporting queue (PAGE_REPORTING_CAPACITY).
const QUEUE_SIZES: [u16; 3] = [64, 64, 128];
/// `struct virtio_balloon_config`: num_pages, actual, free_page_hint_cmd_id, poison_val.
const CONFIG_LEN: usize = 16;
const ACTUAL_OFFSET: u64 = 4;

struct Active {
    mem: GuestMemory,
    queues: Vec<GuestQueue>,
    interrupt: Arc<Interrupt>,
}

enum State {
    Inactive,
    Active(Active),
}

/// What the guest gave back so far (for logs and tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Bytes dropped from guest RAM.
    pub discarded: u64,
    /// Ranges refused (outside RAM) or that the host failed to drop.
    pub refused: u64,
}

pub struct Balloon {
    config: [u8; CONFIG_LEN],
    state: State,
    counters: Counters,
}

impl Default for Balloon {
    fn default() -> Self {
        Self::new()
    }
}

impl Balloon {
    pub fn new() -> Balloon {
        Balloon {
            config: [0; CONFIG_LEN],
            state: State::Inactive,
            counters: Counters::default(),
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The size in pages the driver reports having inflated to (`actual`).
    pub fn actual_pages(&self) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.config[4..8]);
        u32::from_le_bytes(b)
    }

    /// Handles every chain published on queue `index`; returns how many were used.
    pub fn process_queue(&mut self, index: usize) -> usize {
        let State::Active(a) = &mut self.state else {
            return 0;
        };
        let Some(q) = a.queues.get_mut(index) else {
            return 0;
        };
        if !q.ready() {
            return 0;
        }
        let mem = &a.mem;
        let counters = &mut self.counters;
        let mut used = 0;
        while let Some(chain) = q.pop(mem) {
            let head = chain.head_index();
            match index {
                INFLATEQ => inflate(counters, mem, chain),
                REPORTQ => report(counters, mem, chain),
                // Deflated pages are the guest's again; nothing to do on the host.
                _ => {}
            }
            if q.add_used(mem, head, 0).is_err() {
                break;
            }
            used += 1;
        }
        if used > 0 {
            a.interrupt.signal(INT_USED_RING);
            log::debug!("balloon: {:?}", self.counters);
        }
        used
    }
}

fn discard(counters: &mut Counters, mem: &GuestMemory, gpa: u64, len: u64) {
    match memory::discard(mem, gpa, len) {
        Ok(n) => counters.discarded += n,
        Err(e) => {
            counters.refused += 1;
            log::debug!("balloon: {e}");
        }
    }
}

/// One free page report: every device-writable descriptor is a free range.
fn report(counters: &mut Counters, mem: &GuestMemory, chain: DescriptorChain<&GuestMemory>) {
    // The chain iterator stops at the queue size, at loops and past 4 GiB in all: bounded.
    for d in chain {
        if d.is_write_only() {
            discard(counters, mem, d.addr().0, u64::from(d.len()));
        } else {
            counters.refused += 1;
        }
    }
}

/// One inflate buffer: little-endian u32 PFNs, each a 4 KiB page given up.
fn inflate(counters: &mut Counters, mem: &GuestMemory, chain: DescriptorChain<&GuestMemory>) {
    let mut taken = 0;
    'descs: for d in chain {
        if d.is_write_only() {
            continue;
        }
        for i in 0..u64::from(d.len()) / 4 {
            if taken == MAX_PFNS_PER_CHAIN {
                break 'descs;
            }
            taken += 1;
            let Some(addr) = d.addr().0.checked_add(i * 4) else {
                break;
            };
            match mem.read_obj::<u32>(GuestAddress(addr)) {
                Ok(pfn) => discard(counters, mem, u64::from(pfn) << PFN_SHIFT, PAGE_SIZE),
                Err(_) => {
                    counters.refused += 1;
                    break;
                }
            }
        }
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_BALLOON_F_REPORTING
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data)
    }

    /// The driver may write only `actual`.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if offset == ACTUAL_OFFSET && data.len() == 4 {
            self.config[4..8].copy_from_slice(data);
        }
    }

    fn queue_required(&self, index: usize, acked_features: u64) -> bool {
        index != REPORTQ || acked_features & VIRTIO_BALLOON_F_REPORTING != 0
    }

    fn activate(&mut self, a: Activation, _: &mut dyn EventRegistry) -> Result<(), ActivateError> {
        if a.queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::InvalidQueue(a.queues.len()));
        }
        const NAMES: [&str; 3] = [
            "virtio-balloon inflate queue",
            "virtio-balloon deflate queue",
            "virtio-balloon reporting queue",
        ];
        self.state = State::Active(Active {
            mem: a.mem,
            queues: a
                .queues
                .into_iter()
                .zip(NAMES)
                .map(|(q, n)| GuestQueue::new(q, n))
                .collect(),
            interrupt: a.interrupt,
        });
        Ok(())
    }

    fn reset(&mut self, _: &mut dyn EventRegistry) {
        self.state = State::Inactive;
        self.config = [0; CONFIG_LEN];
    }

    fn queue_notify(&mut self, index: usize, _: &mut dyn EventRegistry) {
        self.process_queue(index);
    }

    fn needs_reset(&self) -> bool {
        matches!(&self.state, State::Active(a) if a.queues.iter().any(|q| q.is_broken()))
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
