//! virtio-balloon (virtio 1.2, section 5.5), used for one thing: **free page reporting**.
//! The guest kernel hands the device blocks of memory it has free (128 KiB and up, see the
//! shim's `page_reporting.page_reporting_order`), and the vmm punches them out of the
//! guest-RAM memfd, so the host gets back what the guest touched once and freed: the
//! initramfs after it is unpacked, a build's memory after the build. Firecracker and QEMU
//! offer the same; without it a pod's host footprint only ever grows.
//!
//! The target size stays 0 (the vmm never asks the guest to inflate); pages a guest inflates
//! anyway are given back too, deflation is acknowledged.
//!
//! - `device.rs`: the device model, config space and the three queue handlers.

pub mod device;

pub use device::Balloon;

/// VIRTIO_BALLOON_F_REPORTING: the free page reporting queue exists.
pub const VIRTIO_BALLOON_F_REPORTING: u64 = 1 << 5;
/// Balloon PFNs are always 4 KiB pages, whatever the guest's page size.
pub const PFN_SHIFT: u32 = 12;
/// Most PFNs taken from one inflate chain. Linux sends at most 256 per chain; a guest
/// claiming more only gets the first ones handled, so a huge descriptor length costs the
/// vmm nothing.
pub const MAX_PFNS_PER_CHAIN: usize = 1024;
