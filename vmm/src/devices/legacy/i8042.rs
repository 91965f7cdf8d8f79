//! The i8042 keyboard controller, reduced to its CPU reset line: the guest's `reboot=k`
//! writes 0xfe to port 0x64 and the VM ends.

use vm_superio::{I8042Device, Trigger};

use crate::bus::BusDevice;
use crate::exit::ExitNotifier;

/// Ports 0x60..=0x64.
pub const I8042_PORTS: u64 = 5;

/// Reports a guest reset to the vmm.
#[derive(Debug)]
pub struct ResetTrigger(pub ExitNotifier);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.reset();
        Ok(())
    }
}

pub struct I8042 {
    inner: I8042Device<ResetTrigger>,
}

impl I8042 {
    pub fn new(exit: ExitNotifier) -> Self {
        I8042 {
            inner: I8042Device::new(ResetTrigger(exit)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(off), [b]) => *b = self.inner.read(off),
            (_, data) => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [b]) = (u8::try_from(offset), data) {
            let _ = self.inner.write(off, *b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::ExitReason;

    #[test]
    fn reset_command_ends_vm() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut d = I8042::new(ExitNotifier::new(tx));
        d.write(4, &[0x01]);
        assert!(rx.try_recv().is_err());
        d.write(4, &[0xfe]);
        assert_eq!(rx.try_recv().unwrap(), ExitReason::GuestReset);
    }
}
