//! Writing one received frame (its `virtio_net_hdr_v1` plus the Ethernet frame, as the tap
//! gave it) into the guest's RX buffers.
//!
//! Without mergeable RX buffers a frame takes one descriptor chain, which must hold all of
//! it. With them (VIRTIO_NET_F_MRG_RXBUF) it fills as many chains as it needs, in order,
//! and the header's `num_buffers` says how many; the used-ring entries of one frame are
//! published together, so a driver polling the ring never sees a first buffer before the
//! others it announces. A frame is never truncated: it fits, waits for buffers, or is
//! dropped.

use std::io::Write;
use std::sync::atomic::Ordering;

use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress};

use super::HDR_LEN;
use crate::devices::virtio::queue::GuestQueue;
use crate::memory::GuestMemory;

/// What became of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written; the chains to publish are in `used`.
    Delivered,
    /// Too few buffers posted yet: nothing was consumed; keep the frame and retry when the
    /// driver adds buffers.
    NoBuffers,
    /// Dropped. The chains it consumed (a chain too small, unwritable or outside guest
    /// memory) are in `used` with length 0; there may be none.
    Dropped,
}

/// Byte offset of `num_buffers` in the header.
const NUM_BUFFERS: usize = 10;

/// Writes `frame` into the RX queue's buffers; `used` receives the (head, length) pairs to
/// publish with [`publish`]. `frame` is at least a header long; its `num_buffers` is set.
pub fn write_frame(
    q: &mut GuestQueue,
    mem: &GuestMemory,
    frame: &mut [u8],
    mergeable: bool,
    used: &mut Vec<(u16, u32)>,
) -> Outcome {
    used.clear();
    if frame.len() < HDR_LEN {
        return Outcome::Dropped;
    }
    if !mergeable {
        return write_one(q, mem, frame, used);
    }
    let start = q.next_avail();
    // The first chain carries the header, written last, once `num_buffers` is known.
    let mut first = None;
    let mut off = 0;
    while off < frame.len() {
        let Some(chain) = q.pop(mem) else {
            // Every slot of the ring was posted and the frame still does not fit: no more
            // buffers can come before these are used, so waiting would stall RX for good.
            // (Counted in chains: a driver posting multi-descriptor chains fills its ring
            // with fewer; it then waits, which stalls only its own RX.)
            let whole_ring = used.len() >= usize::from(q.size());
            q.set_next_avail(start);
            used.clear();
            return if whole_ring {
                Outcome::Dropped
            } else {
                Outcome::NoBuffers
            };
        };
        let head = chain.head_index();
        // A driver must post buffers of at least a header each (virtio 1.2, 5.1.6.3.1).
        let mut w = match chain.writer(mem) {
            Ok(w) if w.available_bytes() >= HDR_LEN => w,
            _ => return drop_consumed(used, head),
        };
        let n = w.available_bytes().min(frame.len() - off);
        if first.is_none() {
            first = Some((w, n));
        } else if w.write_all(&frame[off..off + n]).is_err() {
            return drop_consumed(used, head);
        }
        // n <= frame.len(), a frame is at most MAX_FRAME bytes.
        used.push((head, n as u32));
        off += n;
    }
    let Some((mut w, n)) = first else {
        return Outcome::Dropped;
    };
    // At most the queue's size (<= 32768) chains were popped.
    let count = used.len() as u16;
    frame[NUM_BUFFERS..HDR_LEN].copy_from_slice(&count.to_le_bytes());
    if w.write_all(&frame[..n]).is_err() {
        for u in used.iter_mut() {
            u.1 = 0;
        }
        return Outcome::Dropped;
    }
    Outcome::Delivered
}

/// One chain holds the whole frame, else the frame is dropped and the chain returned empty.
fn write_one(
    q: &mut GuestQueue,
    mem: &GuestMemory,
    frame: &mut [u8],
    used: &mut Vec<(u16, u32)>,
) -> Outcome {
    let Some(chain) = q.pop(mem) else {
        return Outcome::NoBuffers;
    };
    let head = chain.head_index();
    frame[NUM_BUFFERS..HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
    let written = match chain.writer(mem) {
        Ok(mut w) if w.available_bytes() >= frame.len() => w.write_all(frame).is_ok(),
        _ => false,
    };
    if !written {
        return drop_consumed(used, head);
    }
    used.push((head, frame.len() as u32));
    Outcome::Delivered
}

/// Drops the frame: every chain consumed so far, and `head`, is returned with length 0.
fn drop_consumed(used: &mut Vec<(u16, u32)>, head: u16) -> Outcome {
    for u in used.iter_mut() {
        u.1 = 0;
    }
    used.push((head, 0));
    Outcome::Dropped
}

/// Puts `used` on the used ring and then moves its index once, so all of a frame's
/// entries become visible to the driver together.
pub fn publish(
    q: &mut GuestQueue,
    mem: &GuestMemory,
    used: &[(u16, u32)],
) -> Result<(), virtio_queue::Error> {
    let size = q.size();
    let ring = GuestAddress(q.used_ring());
    let next = q.next_used();
    for (i, &(head, len)) in used.iter().enumerate() {
        if size == 0 || head >= size {
            return Err(virtio_queue::Error::InvalidDescriptorIndex);
        }
        // Sizes are powers of two, so wrapping at 2^16 then reducing is the ring slot.
        let slot = next.wrapping_add(i as u16) % size;
        // struct virtq_used: flags, idx, then 8-byte elements (id: le32, len: le32).
        let addr = ring
            .checked_add(4 + 8 * u64::from(slot))
            .ok_or(virtio_queue::Error::AddressOverflow)?;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&elem, addr)
            .map_err(virtio_queue::Error::GuestMemory)?;
    }
    let idx = next.wrapping_add(used.len() as u16);
    let idx_addr = ring
        .checked_add(2)
        .ok_or(virtio_queue::Error::AddressOverflow)?;
    // Release: the elements are visible before the index that publishes them.
    mem.store(idx.to_le(), idx_addr, Ordering::Release)
        .map_err(virtio_queue::Error::GuestMemory)?;
    q.set_next_used(idx);
    Ok(())
}
