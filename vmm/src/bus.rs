//! Address buses for port I/O and MMIO exits: a device owns a range and sees offsets into it.
//! Built once before the vCPUs start, then shared read-only between vCPU threads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable from a vCPU exit. Guest-controlled: `data` is 1 to 8 bytes and
/// `offset` any value inside the registered range.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or overlaps another device")]
    Overlap { base: u64, len: u64 },
}

#[derive(Default)]
pub struct Bus {
    /// base -> (length, device)
    devices: BTreeMap<u64, (u64, SharedDevice)>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self.devices.iter().map(|(b, (l, _))| (*b, *l)).collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device` at `base..base+len`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::Overlap { base, len })?;
        if let Some((b, (l, _))) = self.devices.range(..end).next_back() {
            if b + l > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let (base, (len, dev)) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < *len).then_some((offset, dev))
    }

    /// Dispatches a read; `false` if no device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                if let Ok(mut d) = dev.lock() {
                    d.read(offset, data);
                }
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; `false` if no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                if let Ok(mut d) = dev.lock() {
                    d.write(offset, data);
                }
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Rec(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Rec {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_by_offset() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Rec::default()));
        bus.insert(dev.clone(), 0x100, 0x10).unwrap();
        let mut b = [0u8; 2];
        assert!(bus.read(0x105, &mut b));
        assert_eq!(b, [5, 5]);
        assert!(bus.write(0x10f, &[1]));
        assert!(!bus.write(0x110, &[1]));
        assert!(!bus.read(0xff, &mut b));
        assert_eq!(dev.lock().unwrap().0, vec![(0xf, vec![1])]);
    }

    #[test]
    fn overlaps_refused() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Rec::default()));
        bus.insert(dev.clone(), 0x100, 0x10).unwrap();
        assert!(bus.insert(dev.clone(), 0x10f, 1).is_err());
        assert!(bus.insert(dev.clone(), 0xf0, 0x11).is_err());
        assert!(bus.insert(dev.clone(), 0x0, 0).is_err());
        assert!(bus.insert(dev.clone(), u64::MAX, 2).is_err());
        bus.insert(dev, 0x110, 1).unwrap();
    }
}
