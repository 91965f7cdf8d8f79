//! Test doubles for device tests: guest memory, descriptors, a recording event registry and
//! a queue driven through virtio-queue's mock driver.

use std::os::fd::RawFd;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::EventRegistry;
use crate::memory::GuestMemory;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// 16 MiB of plain anonymous guest memory.
pub fn mem() -> GuestMemory {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
}

pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// A queue of `size` at address 0 with `chains` published (heads added to the avail ring).
pub fn queue_with<'a>(
    mem: &'a GuestMemory,
    size: u16,
    descs: &[RawDescriptor],
) -> (MockSplitQueue<'a, GuestMemory>, Queue) {
    let vq = MockSplitQueue::create(mem, GuestAddress(0), size);
    if !descs.is_empty() {
        vq.add_desc_chains(descs, 0).unwrap();
    }
    let q: Queue = vq.create_queue().unwrap();
    (vq, q)
}

/// Used-ring entries (id, len) published so far.
pub fn used(vq: &MockSplitQueue<'_, GuestMemory>) -> Vec<(u32, u32)> {
    let n = vq.used().idx().load();
    (0..n)
        .map(|i| {
            let e = vq.used().ring().ref_at(i as usize).unwrap().load();
            (e.id(), e.len())
        })
        .collect()
}

#[derive(Debug, Default)]
pub struct RecordingRegistry {
    pub added: Vec<(RawFd, u32, EventSet)>,
    pub removed: Vec<RawFd>,
}

impl EventRegistry for RecordingRegistry {
    fn add(&mut self, fd: RawFd, token: u32, events: EventSet) {
        self.added.push((fd, token, events));
    }
    fn modify(&mut self, fd: RawFd, token: u32, events: EventSet) {
        self.added.retain(|a| a.0 != fd);
        self.added.push((fd, token, events));
    }
    fn remove(&mut self, fd: RawFd) {
        self.added.retain(|a| a.0 != fd);
        self.removed.push(fd);
    }
}

#[test]
fn recording_registry_tracks_fds() {
    let mut r = RecordingRegistry::default();
    r.add(3, 1, EventSet::IN);
    r.modify(3, 1, EventSet::OUT);
    assert_eq!(r.added, vec![(3, 1, EventSet::OUT)]);
    r.remove(3);
    assert!(r.added.is_empty());
    assert_eq!(r.removed, vec![3]);
}
