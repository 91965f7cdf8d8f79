//! A virtqueue as a device model takes chains from it: virtio-queue's [`Queue`] plus
//! whether the driver broke it.
//!
//! A driver that publishes an available index more than the queue's size ahead of the
//! device's position (or a ring the device cannot read) breaks the queue: virtio-queue
//! refuses to iterate it (`InvalidAvailRingIndex`), and its `pop_descriptor_chain` turns
//! that refusal into `None` after logging it, on every call. A guest kicking such a queue
//! in a loop then cost a ring read and a log line per kick. Here the first refusal is
//! logged once and marks the queue broken: it is never read again until the driver resets
//! the device, and the transport shows the driver DEVICE_NEEDS_RESET
//! ([`super::VirtioDevice::needs_reset`]).

use std::ops::{Deref, DerefMut};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use crate::memory::GuestMemory;

pub struct GuestQueue {
    queue: Queue,
    /// Names the queue in the one log line a broken queue gets.
    what: &'static str,
    broken: bool,
}

impl GuestQueue {
    pub fn new(queue: Queue, what: &'static str) -> GuestQueue {
        GuestQueue {
            queue,
            what,
            broken: false,
        }
    }

    /// The next chain the driver made available; `None` when there is none or the queue
    /// is broken.
    pub fn pop<'m>(&mut self, mem: &'m GuestMemory) -> Option<DescriptorChain<&'m GuestMemory>> {
        if self.broken {
            return None;
        }
        match self.queue.iter(mem) {
            Ok(mut chains) => chains.next(),
            Err(e) => {
                self.broken = true;
                log::error!(
                    "{}: {e}; the queue is ignored until the driver resets the device",
                    self.what
                );
                None
            }
        }
    }

    /// Puts chain `head` on the used ring with `len` bytes written. A head outside the
    /// descriptor table (a driver's error, from its avail ring) is refused here, without
    /// the error line virtio-queue's `add_used` logs for each one: a log line per
    /// guest-chosen index would be a log flood.
    pub fn add_used(
        &mut self,
        mem: &GuestMemory,
        head: u16,
        len: u32,
    ) -> Result<(), virtio_queue::Error> {
        if head >= self.queue.size() {
            return Err(virtio_queue::Error::InvalidDescriptorIndex);
        }
        QueueT::add_used(&mut self.queue, mem, head, len)
    }

    /// Puts the chain [`GuestQueue::pop`] returned last back: the next pop returns it
    /// again (a device that may not take it yet, see `rate_limiter`).
    pub fn undo_pop(&mut self) {
        self.queue.go_to_previous_position();
    }

    /// Whether the driver broke the queue (see the module comment).
    pub fn is_broken(&self) -> bool {
        self.broken
    }
}

impl Deref for GuestQueue {
    type Target = Queue;
    fn deref(&self) -> &Queue {
        &self.queue
    }
}

impl DerefMut for GuestQueue {
    fn deref_mut(&mut self) -> &mut Queue {
        &mut self.queue
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
