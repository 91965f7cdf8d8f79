//! The virtio-fs device: a vhost-user session with the backend, set up at activation.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{FsError, NUM_QUEUES, QUEUE_SIZE, REQUEST_QUEUES, TAG_LEN};
use crate::config::FsConfig;
use crate::devices::virtio::{
    read_config_bytes, ActivateError, Activation, EventRegistry, Interrupt, VirtioDevice,
    INT_USED_RING, TYPE_FS, VIRTIO_F_VERSION_1,
};

const QUEUE_SIZES: [u16; NUM_QUEUES] = [QUEUE_SIZE; NUM_QUEUES];
const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Guest-visible features we pass through when the backend has them.
const PASSTHROUGH: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX;
/// Event tokens of the backend's per-queue "call" eventfds.
const TOKEN_CALL_BASE: u32 = 0x100;

/// Device lifecycle. A backend session serves one activation: after a guest reset the
/// device stays [`State::Spent`] (virtiofsd exits when its frontend goes away).
enum State {
    Inactive,
    Active(Arc<Interrupt>),
    Spent,
}

pub struct Fs {
    socket: PathBuf,
    frontend: Frontend,
    backend_features: u64,
    protocol_features: Option<VhostUserProtocolFeatures>,
    config: [u8; TAG_LEN + 4],
    calls: Vec<EventFd>,
    state: State,
}

fn backend<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(vhost::Error) -> FsError + 'a {
    move |err| FsError::Backend {
        path: path.into(),
        op,
        err,
    }
}

/// The config space: the tag, NUL-padded, then the number of request queues.
pub fn config_space(tag: &str) -> Result<[u8; TAG_LEN + 4], FsError> {
    if tag.is_empty() || tag.len() > TAG_LEN {
        return Err(FsError::Tag(tag.into()));
    }
    let mut c = [0u8; TAG_LEN + 4];
    c[..tag.len()].copy_from_slice(tag.as_bytes());
    c[TAG_LEN..].copy_from_slice(&(REQUEST_QUEUES as u32).to_le_bytes());
    Ok(c)
}

impl Fs {
    /// Connects to the backend (which must already listen) and learns its features.
    pub fn new(cfg: &FsConfig) -> Result<Fs, FsError> {
        let config = config_space(&cfg.tag)?;
        let path = cfg.socket.as_path();
        let mut frontend =
            Frontend::connect(path, NUM_QUEUES as u64).map_err(backend(path, "connect"))?;
        frontend.set_owner().map_err(backend(path, "SET_OWNER"))?;
        let backend_features = frontend
            .get_features()
            .map_err(backend(path, "GET_FEATURES"))?;
        let protocol_features =
            if backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
                let pf = frontend
                    .get_protocol_features()
                    .map_err(backend(path, "GET_PROTOCOL_FEATURES"))?;
                let want = pf & VhostUserProtocolFeatures::MQ;
                frontend
                    .set_protocol_features(want)
                    .map_err(backend(path, "SET_PROTOCOL_FEATURES"))?;
                Some(want)
            } else {
                None
            };
        let calls = (0..NUM_QUEUES)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(FsError::EventFd)?;
        Ok(Fs {
            socket: cfg.socket.clone(),
            frontend,
            backend_features,
            protocol_features,
            config,
            calls,
            state: State::Inactive,
        })
    }

    fn setup_backend(&mut self, a: &Activation) -> Result<(), vhost::Error> {
        let mut features = a.acked_features & self.backend_features;
        if self.protocol_features.is_some() {
            features |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        self.frontend.set_features(features)?;
        let regions = a
            .mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()?;
        self.frontend.set_mem_table(&regions)?;
        // Ring addresses travel as addresses in our address space (the backend translates
        // them through the memory table's userspace_addr), not as guest addresses.
        let host = |gpa: u64| -> Result<u64, vhost::Error> {
            a.mem
                .get_host_address(GuestAddress(gpa))
                .map(|p| p as u64)
                .map_err(|_| vhost::Error::InvalidGuestMemory)
        };
        for (i, (q, kick)) in a.queues.iter().zip(&a.queue_evts).enumerate() {
            self.frontend.set_vring_num(i, q.size())?;
            self.frontend.set_vring_addr(
                i,
                &VringConfigData {
                    queue_max_size: q.max_size(),
                    queue_size: q.size(),
                    flags: 0,
                    desc_table_addr: host(q.desc_table())?,
                    used_ring_addr: host(q.used_ring())?,
                    avail_ring_addr: host(q.avail_ring())?,
                    log_addr: None,
                },
            )?;
            // 0 at boot; where the template left it for a restored VM.
            self.frontend.set_vring_base(i, q.next_avail())?;
            self.frontend.set_vring_call(i, &self.calls[i])?;
            self.frontend.set_vring_kick(i, kick)?;
            if self.protocol_features.is_some() {
                self.frontend.set_vring_enable(i, true)?;
            }
        }
        Ok(())
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        self.backend_features & PASSTHROUGH
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data)
    }

    fn uses_queue_events(&self) -> bool {
        false
    }

    fn activate(&mut self, a: Activation, _: &mut dyn EventRegistry) -> Result<(), ActivateError> {
        if !matches!(self.state, State::Inactive) {
            return Err(ActivateError::Device(
                "the vhost-user session was already used; virtio-fs cannot be re-activated".into(),
            ));
        }
        if a.queues.len() != NUM_QUEUES || a.queue_evts.len() != NUM_QUEUES {
            return Err(ActivateError::InvalidQueue(a.queues.len()));
        }
        self.setup_backend(&a).map_err(|e| {
            ActivateError::Device(format!("vhost-user backend {}: {e}", self.socket.display()))
        })?;
        self.state = State::Active(a.interrupt);
        Ok(())
    }

    fn reset(&mut self, _: &mut dyn EventRegistry) {
        // Runs on a vCPU thread (the guest wrote 0 to Status; Linux does so at reboot),
        // which may not talk to the backend: just stop relaying its notifications. The
        // backend goes away with the vmm.
        if matches!(self.state, State::Active(_)) {
            self.state = State::Spent;
        }
    }

    fn queue_notify(&mut self, _: usize, _: &mut dyn EventRegistry) {}

    fn init_events(&mut self, reg: &mut dyn EventRegistry) {
        use std::os::fd::AsRawFd;
        for (i, c) in self.calls.iter().enumerate() {
            reg.add(c.as_raw_fd(), TOKEN_CALL_BASE + i as u32, EventSet::IN);
        }
    }

    fn process_event(&mut self, token: u32, _: EventSet, _: &mut dyn EventRegistry) {
        let Some(call) = token
            .checked_sub(TOKEN_CALL_BASE)
            .and_then(|i| self.calls.get(i as usize))
        else {
            return;
        };
        let _ = call.read();
        if let State::Active(irq) = &self.state {
            irq.signal(INT_USED_RING);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_layout() {
        let c = config_space("husk-shared").unwrap();
        assert_eq!(&c[..11], b"husk-shared");
        assert!(c[11..TAG_LEN].iter().all(|b| *b == 0));
        assert_eq!(u32::from_le_bytes([c[36], c[37], c[38], c[39]]), 1);
        assert!(config_space("").is_err());
        assert!(config_space(&"x".repeat(37)).is_err());
    }

    #[test]
    fn missing_backend_is_an_error() {
        let e = Fs::new(&FsConfig {
            tag: "t".into(),
            socket: "/nonexistent/virtiofsd.sock".into(),
        });
        assert!(matches!(e, Err(FsError::Backend { op: "connect", .. })));
    }
}
