//! The i8042 keyboard controller, reduced to the CPU reset line: `reboot=k` writes 0xfe to
//! port 0x64 and the VM ends. No keyboard is attached, and the device says so the way an
//! absent controller does (the output buffer always reads full of 0xff), so the guest's
//! i8042 driver gives up at once ("No controller found") instead of probing for seconds.
//! The input-buffer-full bit stays clear so the kernel's reboot path never waits.

use crate::bus::BusDevice;
use crate::exit::ExitNotifier;

/// Ports 0x60..=0x64.
pub const I8042_PORTS: u64 = 5;
const DATA: u64 = 0;
const COMMAND: u64 = 4;

/// Every status bit but "input buffer full".
const STATUS: u8 = 0xfd;
const CMD_WRITE_OUTPORT: u8 = 0xd1;
const CMD_RESET_CPU: u8 = 0xfe;

/// Device state: whether the last command waits for a data byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    /// 0xd1 was written: the next data byte is the output port; bit 0 low resets the CPU.
    WriteOutport,
}

pub struct I8042 {
    state: State,
    exit: ExitNotifier,
}

impl I8042 {
    pub fn new(exit: ExitNotifier) -> Self {
        I8042 {
            state: State::Idle,
            exit,
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            COMMAND => STATUS,
            _ => 0xff,
        };
        data.fill(0xff);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [b] = data else {
            return;
        };
        match (offset, self.state, *b) {
            (COMMAND, _, CMD_RESET_CPU) => {
                self.state = State::Idle;
                self.exit.reset();
            }
            (COMMAND, _, CMD_WRITE_OUTPORT) => self.state = State::WriteOutport,
            (COMMAND, _, _) => self.state = State::Idle,
            (DATA, State::WriteOutport, v) => {
                self.state = State::Idle;
                if v & 1 == 0 {
                    self.exit.reset();
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::ExitReason;

    fn dev() -> (I8042, std::sync::mpsc::Receiver<ExitReason>) {
        let (tx, rx) = std::sync::mpsc::channel();
        (I8042::new(ExitNotifier::new(tx)), rx)
    }

    fn rd(d: &mut I8042, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_ends_vm() {
        let (mut d, rx) = dev();
        d.write(COMMAND, &[0xae]);
        assert!(rx.try_recv().is_err());
        // kb_wait() polls until the input buffer is empty.
        assert_eq!(rd(&mut d, COMMAND) & 0x02, 0);
        d.write(COMMAND, &[CMD_RESET_CPU]);
        assert_eq!(rx.try_recv().unwrap(), ExitReason::GuestReset);
    }

    #[test]
    fn reads_like_an_absent_controller() {
        let (mut d, _rx) = dev();
        assert_eq!(rd(&mut d, COMMAND) & 0x01, 0x01);
        assert_eq!(rd(&mut d, DATA), 0xff);
    }

    #[test]
    fn output_port_reset_and_odd_accesses() {
        let (mut d, rx) = dev();
        d.write(DATA, &[0x00]);
        d.write(DATA, &[1, 2]);
        d.write(2, &[CMD_RESET_CPU]);
        let mut wide = [0u8; 4];
        d.read(DATA, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        assert!(rx.try_recv().is_err());
        d.write(COMMAND, &[CMD_WRITE_OUTPORT]);
        d.write(DATA, &[0x01]);
        assert!(rx.try_recv().is_err());
        d.write(COMMAND, &[CMD_WRITE_OUTPORT]);
        d.write(DATA, &[0xfe]);
        assert_eq!(rx.try_recv().unwrap(), ExitReason::GuestReset);
    }
}
