#![allow(dead_code)] // each target uses a subset
//! Shared set-up: the fuzz input becomes guest memory holding a split virtqueue (descriptor
//! table at 0, avail ring at 0x1000, used ring at 0x2000) and whatever the descriptors
//! point at; the queue size comes from the first byte.

use std::sync::Arc;

use husk_vmm::devices::virtio::Interrupt;
use husk_vmm::memory::GuestMemory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

pub const MEM_SIZE: usize = 1 << 20;

pub fn memory(data: &[u8]) -> GuestMemory {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let n = data.len().min(MEM_SIZE);
    mem.write_slice(&data[..n], GuestAddress(0)).unwrap();
    mem
}

pub fn queue(size_byte: u8) -> Queue {
    let size = 1u16 << (size_byte % 9); // 1..=256
    let mut q = Queue::new(256).unwrap();
    q.set_size(size);
    q.set_desc_table_address(Some(0), Some(0));
    q.set_avail_ring_address(Some(0x1000), Some(0));
    q.set_used_ring_address(Some(0x2000), Some(0));
    q.set_ready(true);
    q
}

pub fn interrupt() -> Arc<Interrupt> {
    Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()))
}
