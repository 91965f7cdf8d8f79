//! virtio-blk on a raw image file (virtio 1.2, section 5.2).
//!
//! - `request.rs`: turning a guest descriptor chain into a checked [`request::Request`].
//! - `device.rs`: the device model, config space and the queue handler doing the I/O.

pub mod device;
pub mod request;

pub use device::Block;

pub const SECTOR_SHIFT: u64 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;

pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Length of the device id string (VIRTIO_BLK_ID_BYTES).
pub const ID_BYTES: usize = 20;
