//! The virtio-blk device model: config space, feature bits and the request queue handler.
//! Read-only is enforced here, whatever the guest negotiated. A configured rate limiter
//! (`rate_limiter`) charges each request one op and its data bytes (reads and writes);
//! when it is short the request stays in the queue until the limiter's timer fires.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::EventSet;

use super::request::{status_of, Request, RequestType};
use super::{
    ID_BYTES, SECTOR_SHIFT, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
};
use crate::config::{DriveConfig, ImageFormat};
use crate::devices::virtio::queue::GuestQueue;
use crate::devices::virtio::{
    read_config_bytes, ActivateError, Activation, EventRegistry, Interrupt, VirtioDevice,
    INT_USED_RING, TYPE_BLOCK,
};
use crate::memory::GuestMemory;
use crate::rate_limiter::{RateLimiter, RateLimiterError};

pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];
/// Event token of the rate limiter's timer.
pub const TOKEN_RATE_LIMITER: u32 = 0;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("opening disk image {path}: {err}")]
    Open { path: PathBuf, err: std::io::Error },
    #[error("drive {path}: {err}")]
    RateLimiter {
        path: PathBuf,
        err: RateLimiterError,
    },
}

struct Active {
    mem: GuestMemory,
    queue: GuestQueue,
    interrupt: Arc<Interrupt>,
}

/// Device lifecycle.
enum State {
    Inactive,
    Active(Active),
}

pub struct Block {
    file: File,
    read_only: bool,
    capacity: u64,
    id: [u8; ID_BYTES],
    config: [u8; 16],
    state: State,
    /// Requests failed by the disk image (a full file system, RLIMIT_FSIZE, EIO).
    io_errors: u64,
    limiter: RateLimiter,
}

impl Block {
    pub fn new(cfg: &DriveConfig) -> Result<Block, BlockError> {
        let open_err = |err| BlockError::Open {
            path: cfg.path.clone(),
            err,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!cfg.read_only)
            .open(&cfg.path)
            .map_err(open_err)?;
        // The format is what was configured; raw is the only one, so nothing is probed.
        match cfg.format {
            ImageFormat::Raw => {}
        }
        let len = file.metadata().map_err(open_err)?.len();
        let mut id = [0u8; ID_BYTES];
        let name = cfg.id.clone().unwrap_or_else(|| default_id(&cfg.path));
        let n = name.len().min(ID_BYTES);
        id[..n].copy_from_slice(&name.as_bytes()[..n]);
        let limiter =
            RateLimiter::new(cfg.rate_limiter.as_ref()).map_err(|err| BlockError::RateLimiter {
                path: cfg.path.clone(),
                err,
            })?;
        let mut b = Block::from_parts(file, cfg.read_only, len >> SECTOR_SHIFT, id);
        b.limiter = limiter;
        Ok(b)
    }

    fn from_parts(file: File, read_only: bool, capacity: u64, id: [u8; ID_BYTES]) -> Block {
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&capacity.to_le_bytes());
        // size_max (unused) then seg_max: the header and status take two descriptors.
        config[12..16].copy_from_slice(&(u32::from(QUEUE_SIZE) - 2).to_le_bytes());
        Block {
            file,
            read_only,
            capacity,
            id,
            config,
            state: State::Inactive,
            io_errors: 0,
            limiter: RateLimiter::unlimited(),
        }
    }

    /// Replaces the rate limiter (tests give one on a fake clock). Before the device is
    /// added to the event loop: the timer is registered then.
    pub fn set_rate_limiter(&mut self, limiter: RateLimiter) {
        self.limiter = limiter;
    }

    pub fn rate_limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Requests the disk image failed so far.
    pub fn io_errors(&self) -> u64 {
        self.io_errors
    }

    /// A request failed on the image: the guest gets IOERR. The first failure is logged;
    /// later ones only counted (a guest retrying on a full disk is no log flood).
    fn image_failed(&mut self, what: &str, e: &std::io::Error) -> (u8, u32) {
        self.io_errors += 1;
        if self.io_errors == 1 {
            log::warn!("virtio-blk: {what} the disk image: {e}; further I/O errors are counted");
        }
        (VIRTIO_BLK_S_IOERR, 0)
    }

    /// Performs one checked request; returns (status, bytes written into guest data buffers).
    fn execute(&mut self, mem: &GuestMemory, req: &Request) -> (u8, u32) {
        match req.rtype {
            RequestType::In => {
                let mut offset = req.sector << SECTOR_SHIFT;
                for (addr, len) in &req.segments {
                    if let Err(e) = self.read_into(mem, offset, *addr, *len) {
                        return self.image_failed("reading", &e);
                    }
                    offset += u64::from(*len);
                }
                (VIRTIO_BLK_S_OK, req.data_len)
            }
            RequestType::Out if self.read_only => (VIRTIO_BLK_S_IOERR, 0),
            RequestType::Out => {
                let mut offset = req.sector << SECTOR_SHIFT;
                for (addr, len) in &req.segments {
                    if let Err(e) = self.write_from(mem, offset, *addr, *len) {
                        return self.image_failed("writing", &e);
                    }
                    offset += u64::from(*len);
                }
                (VIRTIO_BLK_S_OK, 0)
            }
            RequestType::Flush if self.read_only => (VIRTIO_BLK_S_OK, 0),
            RequestType::Flush => match self.file.sync_data() {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(e) => self.image_failed("flushing", &e),
            },
            RequestType::GetId => {
                let mut left = req.id_len();
                let mut src = &self.id[..];
                for (addr, len) in &req.segments {
                    let n = (*len as usize).min(left);
                    if mem.write_slice(&src[..n], *addr).is_err() {
                        return (VIRTIO_BLK_S_IOERR, 0);
                    }
                    src = &src[n..];
                    left -= n;
                }
                (VIRTIO_BLK_S_OK, req.id_len() as u32)
            }
            RequestType::Unsupported(_) => (VIRTIO_BLK_S_UNSUPP, 0),
        }
    }

    fn read_into(
        &mut self,
        mem: &GuestMemory,
        offset: u64,
        addr: GuestAddress,
        len: u32,
    ) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(offset))?;
        mem.read_exact_volatile_from(addr, &mut self.file, len as usize)
            .map_err(std::io::Error::other)
    }

    fn write_from(
        &mut self,
        mem: &GuestMemory,
        offset: u64,
        addr: GuestAddress,
        len: u32,
    ) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(offset))?;
        mem.write_all_volatile_to(addr, &mut self.file, len as usize)
            .map_err(std::io::Error::other)
    }

    /// Drains the request queue, as far as the rate limiter lets it; returns how many
    /// requests completed.
    pub fn process_queue(&mut self) -> usize {
        let State::Active(active) = &mut self.state else {
            return 0;
        };
        let mem = active.mem.clone();
        let interrupt = active.interrupt.clone();
        let mut done = 0;
        while let State::Active(active) = &mut self.state {
            // Blocked: the timer resumes the queue; a kick meanwhile reads no ring.
            if self.limiter.is_blocked() {
                break;
            }
            let Some(chain) = active.queue.pop(&mem) else {
                break;
            };
            let head = chain.head_index();
            let max_segments = usize::from(active.queue.size());
            let parsed = Request::parse(chain.clone(), &mem, self.capacity, max_segments);
            // Every chain costs an op, malformed ones too; reads and writes their bytes.
            let bytes = match &parsed {
                Ok(r) if matches!(r.rtype, RequestType::In | RequestType::Out) => {
                    u64::from(r.data_len)
                }
                _ => 0,
            };
            if !self.limiter.consume(bytes) {
                // The chain goes back: it is taken again, whole, when the timer fires (and
                // a snapshot meanwhile finds the queue where the used ring says).
                active.queue.undo_pop();
                break;
            }
            let used_len = match parsed {
                Ok(req) => {
                    let (status, written) = self.execute(&mem, &req);
                    match mem.write_obj(status, req.status) {
                        Ok(()) => written.saturating_add(1),
                        Err(_) => 0,
                    }
                }
                Err(e) => {
                    log::debug!("virtio-blk: bad request: {e}");
                    match status_of(chain) {
                        Some(addr) if mem.write_obj(VIRTIO_BLK_S_IOERR, addr).is_ok() => 1,
                        _ => 0,
                    }
                }
            };
            let State::Active(active) = &mut self.state else {
                break;
            };
            if active.queue.add_used(&mem, head, used_len).is_err() {
                // A head outside the table (the driver's error) cannot be given back; the
                // chains after it still are.
                continue;
            }
            done += 1;
        }
        if done > 0 {
            interrupt.signal(INT_USED_RING);
        }
        done
    }
}

fn default_id(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let ro = if self.read_only { VIRTIO_BLK_F_RO } else { 0 };
        VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_FLUSH | ro
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data)
    }

    fn activate(&mut self, a: Activation, _: &mut dyn EventRegistry) -> Result<(), ActivateError> {
        let queue = a
            .queues
            .into_iter()
            .next()
            .ok_or(ActivateError::InvalidQueue(0))?;
        self.state = State::Active(Active {
            mem: a.mem,
            queue: GuestQueue::new(queue, "virtio-blk request queue"),
            interrupt: a.interrupt,
        });
        Ok(())
    }

    fn reset(&mut self, _: &mut dyn EventRegistry) {
        // On a vCPU thread: the limiter is left as it is (a timer armed fires, and finds
        // the device inactive or active again).
        self.state = State::Inactive;
    }

    fn init_events(&mut self, reg: &mut dyn EventRegistry) {
        if let Some(fd) = self.limiter.timer_fd() {
            reg.add(fd, TOKEN_RATE_LIMITER, EventSet::IN);
        }
    }

    fn process_event(&mut self, token: u32, _: EventSet, _: &mut dyn EventRegistry) {
        if token == TOKEN_RATE_LIMITER {
            self.limiter.on_timer();
            self.process_queue();
        }
    }

    fn queue_notify(&mut self, index: usize, _: &mut dyn EventRegistry) {
        if index == 0 {
            self.process_queue();
        }
    }

    fn needs_reset(&self) -> bool {
        matches!(&self.state, State::Active(a) if a.queue.is_broken())
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
