//! Parsing one virtio-blk request from a descriptor chain. Every address and length the guest
//! gave is checked against guest memory and the disk before any I/O; nothing is allocated in
//! proportion to a guest-chosen length (segments are bounded by the queue size).

use std::ops::Deref;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::{
    ID_BYTES, SECTOR_SHIFT, SECTOR_SIZE, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use crate::memory::GuestMemory;

/// Size of `struct virtio_blk_outhdr`.
pub const HEADER_LEN: u32 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            t => RequestType::Unsupported(t),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("descriptor chain is empty or broken")]
    BrokenChain,
    #[error("request header descriptor is writable or shorter than 16 bytes")]
    BadHeader,
    #[error("status descriptor missing, read-only or empty")]
    BadStatus,
    #[error("data descriptor at {addr:#x}+{len:#x} has the wrong direction")]
    WrongDirection { addr: u64, len: u32 },
    #[error("guest range {addr:#x}+{len:#x} is outside guest memory")]
    OutOfMemory { addr: u64, len: u32 },
    #[error("request has more than {0} data segments")]
    TooManySegments(usize),
    #[error("data length overflows")]
    LengthOverflow,
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(u32),
    #[error("sectors {sector}+{len} beyond the disk's {capacity} sectors")]
    OutOfDisk {
        sector: u64,
        len: u64,
        capacity: u64,
    },
}

/// A checked request: segments and status are known to lie in guest memory, and for reads
/// and writes the sectors lie on the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub rtype: RequestType,
    pub sector: u64,
    pub segments: Vec<(GuestAddress, u32)>,
    pub data_len: u32,
    pub status: GuestAddress,
}

fn check_range(mem: &GuestMemory, d: &Descriptor) -> Result<(), RequestError> {
    let err = RequestError::OutOfMemory {
        addr: d.addr().raw_value(),
        len: d.len(),
    };
    if d.len() == 0 {
        return Ok(());
    }
    let len = usize::try_from(d.len()).map_err(|_| err.clone())?;
    if GuestMemoryBackend::check_range(mem, d.addr(), len) {
        Ok(())
    } else {
        Err(err)
    }
}

/// Where the status byte goes, if the chain gets far enough to have one. Used to report a
/// failed parse to the guest.
pub fn status_of<M>(chain: DescriptorChain<M>) -> Option<GuestAddress>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let last = chain.last()?;
    (last.is_write_only() && last.len() >= 1).then_some(last.addr())
}

impl Request {
    /// Parses `chain` for a disk of `capacity` sectors whose queue holds at most
    /// `max_segments` descriptors.
    pub fn parse<M>(
        chain: DescriptorChain<M>,
        mem: &GuestMemory,
        capacity: u64,
        max_segments: usize,
    ) -> Result<Request, RequestError>
    where
        M: Deref,
        M::Target: vm_memory::GuestMemory,
    {
        let mut descs = chain;
        let header = descs.next().ok_or(RequestError::BrokenChain)?;
        if header.is_write_only() || header.len() < HEADER_LEN {
            return Err(RequestError::BadHeader);
        }
        check_range(mem, &header)?;
        let rtype: u32 = mem
            .read_obj(header.addr())
            .map_err(|_| RequestError::BadHeader)?;
        let sector: u64 = mem
            .read_obj(header.addr().unchecked_add(8))
            .map_err(|_| RequestError::BadHeader)?;
        let rtype = RequestType::from(u32::from_le(rtype));
        let sector = u64::from_le(sector);

        let mut segments: Vec<(GuestAddress, u32)> = Vec::new();
        let mut status: Option<Descriptor> = None;
        for d in descs {
            // The previous "last" descriptor turns out to be data.
            if let Some(prev) = status.replace(d) {
                if segments.len() >= max_segments {
                    return Err(RequestError::TooManySegments(max_segments));
                }
                segments.push((prev.addr(), prev.len()));
                check_data(mem, &prev, rtype)?;
            }
        }
        let status = status.ok_or(RequestError::BadStatus)?;
        if !status.is_write_only() || status.len() < 1 {
            return Err(RequestError::BadStatus);
        }
        // The chain iterator stopped early (a loop, a next index outside the table, more
        // than 4 GiB in all, a bad indirect table): what it gave is not the whole request.
        if status.has_next() {
            return Err(RequestError::BrokenChain);
        }
        check_range(mem, &status)?;
        let data_len = segments
            .iter()
            .try_fold(0u32, |acc, (_, l)| acc.checked_add(*l))
            .ok_or(RequestError::LengthOverflow)?;

        if matches!(rtype, RequestType::In | RequestType::Out) {
            if u64::from(data_len) % SECTOR_SIZE != 0 {
                return Err(RequestError::Unaligned(data_len));
            }
            let len = u64::from(data_len) >> SECTOR_SHIFT;
            let end = sector.checked_add(len);
            if end.is_none_or(|e| e > capacity) {
                return Err(RequestError::OutOfDisk {
                    sector,
                    len,
                    capacity,
                });
            }
        }
        Ok(Request {
            rtype,
            sector,
            segments,
            data_len,
            status: status.addr(),
        })
    }

    /// Bytes of the id string the guest may receive.
    pub fn id_len(&self) -> usize {
        (self.data_len as usize).min(ID_BYTES)
    }
}

fn check_data(mem: &GuestMemory, d: &Descriptor, rtype: RequestType) -> Result<(), RequestError> {
    let wants_write = matches!(rtype, RequestType::In | RequestType::GetId);
    let ok = match rtype {
        RequestType::In | RequestType::GetId | RequestType::Out => d.is_write_only() == wants_write,
        _ => true,
    };
    if !ok {
        return Err(RequestError::WrongDirection {
            addr: d.addr().raw_value(),
            len: d.len(),
        });
    }
    check_range(mem, d)
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
