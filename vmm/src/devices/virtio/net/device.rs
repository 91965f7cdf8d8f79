//! The virtio-net device model: queue 0 receives (tap -> guest), queue 1 transmits
//! (guest -> tap). Frames go through one fixed buffer each way (a frame of at most
//! [`MAX_FRAME`] bytes); nothing is allocated per frame. Each direction may have a rate
//! limiter (`rate_limiter`; a frame is one op and its bytes, header included): a TX chain
//! it refuses stays in the queue, an RX frame it refuses stays read (`pending`) with the
//! tap unwatched, until the limiter's timer fires.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use vmm_sys_util::epoll::EventSet;

use super::features::{tap_offloads, OFFERED, VIRTIO_NET_F_MRG_RXBUF};
use super::header::NetHdr;
use super::rx::{self, Outcome};
use super::tap::{self, NoOffload, SetOffload, TunSetOffload};
use super::{parse_mac, NetError, HDR_LEN, MAX_FRAME};
use crate::config::NetConfig;
use crate::devices::virtio::queue::GuestQueue;
use crate::devices::virtio::{
    read_config_bytes, ActivateError, Activation, EventRegistry, Interrupt, VirtioDevice,
    INT_USED_RING, TYPE_NET,
};
use crate::memory::GuestMemory;
use crate::rate_limiter::RateLimiter;

pub const RXQ: usize = 0;
pub const TXQ: usize = 1;
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE; 2];
const TOKEN_TAP: u32 = 0;
/// Event tokens of the rate limiters' timers.
pub const TOKEN_RX_LIMITER: u32 = 1;
pub const TOKEN_TX_LIMITER: u32 = 2;

struct Active {
    mem: GuestMemory,
    rx: GuestQueue,
    tx: GuestQueue,
    interrupt: Arc<Interrupt>,
    /// The features the driver accepted.
    acked: u64,
}

enum State {
    Inactive,
    Active(Active),
}

pub struct Net {
    tap: File,
    offload: Box<dyn SetOffload>,
    config: [u8; 6],
    state: State,
    /// A frame read from the tap that found no RX buffer yet.
    pending: Option<usize>,
    /// Whether the tap's readability is watched (dropped while RX buffers run out).
    watching: bool,
    /// One byte longer than a frame may be, so a longer read is seen and dropped.
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    /// The used-ring entries of the frame being delivered (capacity: the queue's size).
    rx_used: Vec<(u16, u32)>,
    rx_limiter: RateLimiter,
    tx_limiter: RateLimiter,
}

impl Net {
    pub fn new(cfg: &NetConfig) -> Result<Net, NetError> {
        let mac = match &cfg.mac {
            Some(m) => parse_mac(m)?,
            None => [0x06, 0x00, 0x48, 0x55, 0x53, 0x4b],
        };
        let limiter = |c: &Option<crate::config::RateLimiterConfig>| {
            RateLimiter::new(c.as_ref()).map_err(|err| NetError::RateLimiter {
                name: cfg.tap.clone(),
                err,
            })
        };
        let (rx, tx) = (
            limiter(&cfg.rx_rate_limiter)?,
            limiter(&cfg.tx_rate_limiter)?,
        );
        let mut n = if cfg.detached {
            Net::with_tap(tap::detached()?, mac, Box::new(NoOffload))
        } else {
            Net::with_tap(tap::open(&cfg.tap)?, mac, Box::new(TunSetOffload))
        };
        n.set_rate_limiters(rx, tx);
        Ok(n)
    }

    /// A device over any tap-like file (tests use a socket pair) and its offload switch.
    pub fn with_tap(tap: File, mac: [u8; 6], offload: Box<dyn SetOffload>) -> Net {
        Net {
            tap,
            offload,
            config: mac,
            state: State::Inactive,
            pending: None,
            watching: true,
            rx_buf: vec![0u8; MAX_FRAME + 1],
            tx_buf: vec![0u8; MAX_FRAME],
            rx_used: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            rx_limiter: RateLimiter::unlimited(),
            tx_limiter: RateLimiter::unlimited(),
        }
    }

    /// Sets the receive and transmit limiters, before the device is added to the event
    /// loop (their timers are registered then).
    pub fn set_rate_limiters(&mut self, rx: RateLimiter, tx: RateLimiter) {
        self.rx_limiter = rx;
        self.tx_limiter = tx;
    }

    /// Sends the guest's frames to the tap; returns how many chains were consumed.
    pub fn process_tx(&mut self) -> usize {
        let State::Active(a) = &mut self.state else {
            return 0;
        };
        let mem = a.mem.clone();
        let mut used = 0;
        // Blocked: the timer resumes the queue; a kick meanwhile reads no ring.
        while !self.tx_limiter.is_blocked() {
            let Some(chain) = a.tx.pop(&mem) else {
                break;
            };
            let head = chain.head_index();
            let reader = chain.reader(&mem).ok();
            // Malformed chains cost an op too; a chain longer than a frame is dropped, and
            // charged as the longest frame.
            let bytes = reader.as_ref().map_or(0, |r| r.available_bytes());
            if !self.tx_limiter.consume(bytes.min(MAX_FRAME + 1) as u64) {
                // Sent whole when the timer fires.
                a.tx.undo_pop();
                break;
            }
            if let Some(mut r) = reader {
                let len = bytes;
                // Oversized or header-less frames are dropped, not truncated; so are
                // frames whose header asks for what was not negotiated or is malformed.
                if (HDR_LEN..=MAX_FRAME).contains(&len)
                    && r.read_exact(&mut self.tx_buf[..len]).is_ok()
                    && NetHdr::parse(&self.tx_buf[..len])
                        .and_then(|h| h.check_tx(a.acked, len - HDR_LEN))
                        .is_ok()
                {
                    // A full tap queue drops the frame, as a NIC would.
                    let _ = self.tap.write(&self.tx_buf[..len]);
                }
            }
            if a.tx.add_used(&mem, head, 0).is_err() {
                // A head outside the table (the driver's error) cannot be given back; the
                // chains after it still are.
                continue;
            }
            used += 1;
        }
        if used > 0 {
            a.interrupt.signal(INT_USED_RING);
        }
        used
    }

    /// Moves frames from the tap into RX buffers until either runs out.
    pub fn process_rx(&mut self, reg: &mut dyn EventRegistry) -> usize {
        let State::Active(a) = &mut self.state else {
            return 0;
        };
        let mem = a.mem.clone();
        let mut used = 0;
        loop {
            let len = match self.pending.take() {
                Some(l) => l,
                None => match self.tap.read(&mut self.rx_buf) {
                    // A tap reports a frame's whole length even when it did not fit the
                    // buffer: longer than a frame may be means truncated, dropped.
                    Ok(n) if (HDR_LEN..=MAX_FRAME).contains(&n) => n,
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => break,
                },
            };
            if !self.rx_limiter.consume(len as u64) {
                // Kept, with the tap unwatched (it would be readable all along), until
                // the timer fires.
                self.pending = Some(len);
                if self.watching {
                    reg.modify(self.tap.as_raw_fd(), TOKEN_TAP, EventSet::empty());
                    self.watching = false;
                }
                break;
            }
            let mergeable = a.acked & VIRTIO_NET_F_MRG_RXBUF != 0;
            let frame = &mut self.rx_buf[..len];
            match rx::write_frame(&mut a.rx, &mem, frame, mergeable, &mut self.rx_used) {
                Outcome::NoBuffers => {
                    // Not delivered: charged again when it is.
                    self.rx_limiter.refund(len as u64);
                    // Keep the frame and stop watching the tap until the guest adds
                    // buffers (else epoll would report it readable forever).
                    self.pending = Some(len);
                    if self.watching {
                        reg.modify(self.tap.as_raw_fd(), TOKEN_TAP, EventSet::empty());
                        self.watching = false;
                    }
                    break;
                }
                Outcome::Dropped if self.rx_used.is_empty() => {}
                Outcome::Delivered | Outcome::Dropped => {
                    if rx::publish(&mut a.rx, &mem, &self.rx_used).is_err() {
                        break;
                    }
                    used += self.rx_used.len();
                }
            }
        }
        if used > 0 {
            a.interrupt.signal(INT_USED_RING);
        }
        // Everything the tap had went in (after a wait for the limiter): watch it again.
        if self.pending.is_none() && !self.watching {
            reg.modify(self.tap.as_raw_fd(), TOKEN_TAP, EventSet::IN);
            self.watching = true;
        }
        used
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        OFFERED
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data)
    }

    fn activate(&mut self, a: Activation, _: &mut dyn EventRegistry) -> Result<(), ActivateError> {
        let mut queues = a.queues.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err(ActivateError::InvalidQueue(TXQ));
        };
        // The tap hands over only what the guest accepted (also after a reset and a new
        // negotiation). A tap that refuses leaves frames unoffloaded, which every guest
        // takes: worth a warning, not a failed device.
        let offloads = tap_offloads(a.acked_features);
        if let Err(e) = self.offload.set_offload(&self.tap, offloads) {
            log::warn!("virtio-net: setting tap offloads {offloads:#x}: {e}");
        }
        self.state = State::Active(Active {
            mem: a.mem,
            rx: GuestQueue::new(rx, "virtio-net receive queue"),
            tx: GuestQueue::new(tx, "virtio-net transmit queue"),
            interrupt: a.interrupt,
            acked: a.acked_features,
        });
        Ok(())
    }

    fn reset(&mut self, _: &mut dyn EventRegistry) {
        self.state = State::Inactive;
        self.pending = None;
    }

    fn queue_notify(&mut self, index: usize, reg: &mut dyn EventRegistry) {
        match index {
            TXQ => {
                self.process_tx();
            }
            RXQ => {
                if !self.watching {
                    reg.modify(self.tap.as_raw_fd(), TOKEN_TAP, EventSet::IN);
                    self.watching = true;
                }
                self.process_rx(reg);
            }
            _ => {}
        }
    }

    fn init_events(&mut self, reg: &mut dyn EventRegistry) {
        reg.add(self.tap.as_raw_fd(), TOKEN_TAP, EventSet::IN);
        for (l, token) in [
            (&self.rx_limiter, TOKEN_RX_LIMITER),
            (&self.tx_limiter, TOKEN_TX_LIMITER),
        ] {
            if let Some(fd) = l.timer_fd() {
                reg.add(fd, token, EventSet::IN);
            }
        }
    }

    fn needs_reset(&self) -> bool {
        matches!(&self.state, State::Active(a) if a.rx.is_broken() || a.tx.is_broken())
    }

    fn process_event(&mut self, token: u32, _: EventSet, reg: &mut dyn EventRegistry) {
        match token {
            TOKEN_RX_LIMITER => {
                self.rx_limiter.on_timer();
                self.process_rx(reg);
                return;
            }
            TOKEN_TX_LIMITER => {
                self.tx_limiter.on_timer();
                self.process_tx();
                return;
            }
            TOKEN_TAP => {}
            _ => return,
        }
        if matches!(self.state, State::Active(_)) {
            self.process_rx(reg);
        } else {
            // Nobody to deliver to yet: drain so the loop does not spin.
            while matches!(self.tap.read(&mut self.rx_buf), Ok(n) if n > 0) {}
        }
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
