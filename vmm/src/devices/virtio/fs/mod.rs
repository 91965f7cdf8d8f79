//! virtio-fs (virtio 1.2, section 5.11) as a vhost-user frontend: the guest's queues are
//! served by an external backend (virtiofsd) that maps guest memory from our memfd; the
//! vmm only negotiates, hands over the rings, and relays the backend's used-buffer
//! notifications into the transport's interrupt status.
//!
//! - `device.rs`: the device model, config space (tag, queue count) and the vhost-user
//!   session.

pub mod device;

pub use device::Fs;

/// Length of the tag field in the config space.
pub const TAG_LEN: usize = 36;
/// One high-priority queue plus this many request queues.
pub const REQUEST_QUEUES: usize = 1;
pub const NUM_QUEUES: usize = 1 + REQUEST_QUEUES;
pub const QUEUE_SIZE: u16 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs tag {0:?} is empty or longer than 36 bytes")]
    Tag(String),
    #[error("vhost-user backend at {path}: {op}: {err}")]
    Backend {
        path: std::path::PathBuf,
        op: &'static str,
        err: vhost::Error,
    },
    #[error("creating an eventfd: {0}")]
    EventFd(std::io::Error),
}
