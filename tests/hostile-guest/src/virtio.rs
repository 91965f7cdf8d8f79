//! A minimal virtio-mmio (version 2) driver: device discovery from the kernel command line,
//! the init handshake, and split virtqueues laid out at fixed guest-physical addresses. The
//! rounds use it both to do things right and to do them wrong on purpose.

use crate::hw::{fence, read16, read32, write16, write32, write64};
use crate::timer;

pub const REG_MAGIC: u64 = 0x00;
pub const REG_DEVICE_ID: u64 = 0x08;
pub const REG_DEVICE_FEATURES: u64 = 0x10;
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x14;
pub const REG_DRIVER_FEATURES: u64 = 0x20;
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x24;
pub const REG_QUEUE_SEL: u64 = 0x30;
pub const REG_QUEUE_NUM_MAX: u64 = 0x34;
pub const REG_QUEUE_NUM: u64 = 0x38;
pub const REG_QUEUE_READY: u64 = 0x44;
pub const REG_QUEUE_NOTIFY: u64 = 0x50;
pub const REG_INTERRUPT_STATUS: u64 = 0x60;
pub const REG_INTERRUPT_ACK: u64 = 0x64;
pub const REG_STATUS: u64 = 0x70;
pub const REG_QUEUE_DESC: u64 = 0x80;
pub const REG_QUEUE_AVAIL: u64 = 0x90;
pub const REG_QUEUE_USED: u64 = 0xa0;
pub const REG_CONFIG: u64 = 0x100;

pub const MAGIC: u32 = 0x7472_6976;
pub const ID_NET: u32 = 1;
pub const ID_BLOCK: u32 = 2;
pub const ID_BALLOON: u32 = 5;
pub const ID_VSOCK: u32 = 19;

pub const S_ACKNOWLEDGE: u32 = 1;
pub const S_DRIVER: u32 = 2;
pub const S_DRIVER_OK: u32 = 4;
pub const S_FEATURES_OK: u32 = 8;
pub const S_NEEDS_RESET: u32 = 0x40;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// One virtio-mmio window.
#[derive(Clone, Copy)]
pub struct Dev {
    pub base: u64,
    pub id: u32,
}

/// Up to 8 devices found on the command line.
pub struct Devices {
    pub list: [Option<Dev>; 8],
}

impl Devices {
    pub fn find(&self, id: u32) -> Option<Dev> {
        self.list.iter().flatten().find(|d| d.id == id).copied()
    }
}

/// Whether the kernel command line contains `needle`.
pub fn cmdline_has(zero_page: u64, needle: &[u8]) -> bool {
    let ptr = u64::from(read32(zero_page + 0x228));
    let size = u64::from(read32(zero_page + 0x238)).min(4096);
    let n = needle.len() as u64;
    (0..size.saturating_sub(n) + 1).any(|i| {
        n <= size
            && needle
                .iter()
                .enumerate()
                .all(|(k, c)| crate::hw::read8(ptr + i + k as u64) == *c)
    })
}

/// Parses `virtio_mmio.device=4K@0x<base>:<irq>` entries from the command line the zero
/// page points at (boot_params.hdr.cmd_line_ptr at 0x228), and reads each DeviceID.
pub fn discover(zero_page: u64) -> Devices {
    let ptr = u64::from(read32(zero_page + 0x228));
    let size = u64::from(read32(zero_page + 0x238)).min(4096);
    let mut devs = Devices { list: [None; 8] };
    let key = b"virtio_mmio.device=4K@0x";
    let mut n = 0;
    let mut i = 0u64;
    while i + key.len() as u64 <= size && n < devs.list.len() {
        let matches = key
            .iter()
            .enumerate()
            .all(|(k, c)| crate::hw::read8(ptr + i + k as u64) == *c);
        if !matches {
            i += 1;
            continue;
        }
        i += key.len() as u64;
        let mut base = 0u64;
        while i < size {
            let c = crate::hw::read8(ptr + i);
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => break,
            };
            base = base << 4 | u64::from(d);
            i += 1;
        }
        if read32(base + REG_MAGIC) == MAGIC {
            devs.list[n] = Some(Dev {
                base,
                id: read32(base + REG_DEVICE_ID),
            });
            n += 1;
        }
    }
    devs
}

impl Dev {
    pub fn r(&self, off: u64) -> u32 {
        read32(self.base + off)
    }
    pub fn w(&self, off: u64, v: u32) {
        write32(self.base + off, v)
    }
    pub fn status(&self) -> u32 {
        self.r(REG_STATUS)
    }

    /// Reset, ACKNOWLEDGE, DRIVER, VERSION_1 only, FEATURES_OK. False if refused.
    pub fn begin_init(&self) -> bool {
        self.w(REG_STATUS, 0);
        self.w(REG_STATUS, S_ACKNOWLEDGE);
        self.w(REG_STATUS, S_ACKNOWLEDGE | S_DRIVER);
        self.w(REG_DRIVER_FEATURES_SEL, 0);
        self.w(REG_DRIVER_FEATURES, 0);
        self.w(REG_DRIVER_FEATURES_SEL, 1);
        self.w(REG_DRIVER_FEATURES, 1);
        self.w(REG_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        self.status() & S_FEATURES_OK != 0
    }

    pub fn driver_ok(&self) {
        self.w(
            REG_STATUS,
            S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
    }

    /// Sets up queue `index` with `size` entries at `at` (desc, then avail at +0x1000,
    /// used at +0x2000) and clears the rings.
    pub fn setup_queue(&self, index: u32, size: u16, at: u64) -> Vq {
        let q = Vq::new(index, size, at);
        q.clear();
        self.w(REG_QUEUE_SEL, index);
        self.w(REG_QUEUE_NUM, u32::from(size));
        self.w(REG_QUEUE_DESC, q.desc as u32);
        self.w(REG_QUEUE_DESC + 4, (q.desc >> 32) as u32);
        self.w(REG_QUEUE_AVAIL, q.avail as u32);
        self.w(REG_QUEUE_AVAIL + 4, (q.avail >> 32) as u32);
        self.w(REG_QUEUE_USED, q.used as u32);
        self.w(REG_QUEUE_USED + 4, (q.used >> 32) as u32);
        self.w(REG_QUEUE_READY, 1);
        q
    }

    pub fn kick(&self, q: u32) {
        fence();
        self.w(REG_QUEUE_NOTIFY, q);
    }
}

/// A split virtqueue at fixed addresses. The driver's view: the next avail index it
/// publishes and the last used index it has consumed.
pub struct Vq {
    pub index: u32,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub avail_idx: u16,
    pub last_used: u16,
}

impl Vq {
    pub fn new(index: u32, size: u16, at: u64) -> Vq {
        Vq {
            index,
            size,
            desc: at,
            avail: at + 0x1000,
            used: at + 0x2000,
            avail_idx: 0,
            last_used: 0,
        }
    }

    pub fn clear(&self) {
        for off in (0..0x3000u64).step_by(8) {
            write64(self.desc + off, 0);
        }
    }

    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.desc + u64::from(i) * 16;
        write64(d, addr);
        write32(d + 8, len);
        write16(d + 12, flags);
        write16(d + 14, next);
    }

    /// Puts `head` in the avail ring at the driver's index and publishes it.
    pub fn push(&mut self, head: u16) {
        let slot = self.avail_idx % self.size;
        write16(self.avail + 4 + u64::from(slot) * 2, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        fence();
        write16(self.avail + 2, self.avail_idx);
    }

    /// Writes `idx` to avail.idx as is (for runaway indices).
    pub fn publish_raw(&self, idx: u16) {
        fence();
        write16(self.avail + 2, idx);
    }

    pub fn used_idx(&self) -> u16 {
        read16(self.used + 2)
    }

    /// The next used element (id, len), if the device has published one.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        fence();
        if self.used_idx() == self.last_used {
            return None;
        }
        let slot = u64::from(self.last_used % self.size);
        let e = self.used + 4 + slot * 8;
        self.last_used = self.last_used.wrapping_add(1);
        Some((read32(e), read32(e + 4)))
    }

    /// Waits up to `ms` for the next used element.
    pub fn wait_used(&mut self, ms: u64) -> Option<(u32, u32)> {
        let t0 = timer::now();
        loop {
            if let Some(u) = self.pop_used() {
                return Some(u);
            }
            if timer::ms_since(t0) >= ms {
                return None;
            }
        }
    }

    /// Waits until the device's used index stops moving for `quiet_ms` (at most `ms`);
    /// drops what it published. For rounds whose requests may or may not complete.
    pub fn settle(&mut self, quiet_ms: u64, ms: u64) -> u16 {
        let t0 = timer::now();
        let mut seen = self.used_idx();
        let mut last_change = timer::now();
        while timer::ms_since(t0) < ms {
            let u = self.used_idx();
            if u != seen {
                seen = u;
                last_change = timer::now();
            } else if timer::ms_since(last_change) >= quiet_ms {
                break;
            }
        }
        let n = seen.wrapping_sub(self.last_used);
        self.last_used = seen;
        n
    }
}
