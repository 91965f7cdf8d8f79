//! The 8250 UART at 0x3f8 (vm-superio) on the port I/O bus, interrupting on IRQ 4.

use vm_superio::serial::NoEvents;
pub use vm_superio::serial::SerialState;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::console::ConsoleWriter;
use crate::bus::BusDevice;

/// An interrupt line as an eventfd registered with KVM as an irqfd.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub struct SerialDevice {
    inner: Serial<IrqTrigger, NoEvents, ConsoleWriter>,
}

/// vm-superio's `SerialState` as a VM template stores it: the guest's 8250 driver
/// programmed these registers at boot (interrupt enable above all: without it a restored
/// guest's console writes would wait for a transmit interrupt that never comes). serde's
/// remote derive, as vm-superio has no serde support.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(remote = "SerialState")]
pub struct SerialStateDef {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl SerialDevice {
    pub fn new(irq: IrqTrigger, out: ConsoleWriter) -> Self {
        SerialDevice {
            inner: Serial::new(irq, out),
        }
    }

    /// A UART in the state `s` (from a template).
    pub fn from_snapshot(
        s: &SerialState,
        irq: IrqTrigger,
        out: ConsoleWriter,
    ) -> Result<Self, String> {
        Ok(SerialDevice {
            inner: Serial::from_state(s, irq, NoEvents, out)
                .map_err(|e| format!("serial state: {e:?}"))?,
        })
    }

    pub fn snapshot(&self) -> SerialState {
        self.inner.state()
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(off), [b]) => *b = self.inner.read(off),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [b]) = (u8::try_from(offset), data) {
            // A failed interrupt injection loses only that interrupt.
            let _ = self.inner.write(off, *b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::legacy::console::ConsoleBuffer;
    use crate::exit::ExitNotifier;
    use std::sync::{Arc, Condvar, Mutex};

    #[test]
    fn bytes_reach_the_buffer() {
        let (tx, _rx) = std::sync::mpsc::channel();
        let buf = ConsoleBuffer::new(64);
        let w = ConsoleWriter::new(buf.clone(), ExitNotifier::new(tx));
        let mut s = SerialDevice::new(IrqTrigger(EventFd::new(0).unwrap()), w);
        for b in b"hi" {
            s.write(0, &[*b]);
        }
        // A wide access is ignored, not a crash.
        s.write(0, &[1, 2]);
        let mut d = [0u8; 2];
        s.read(5, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        buf.close();
        assert_eq!(buf.dropped(), 0);
    }

    /// Whether the reader runs, and what it read.
    type ReaderState = Mutex<(bool, Vec<u8>)>;

    /// A console reader that is stopped until released, then takes everything.
    #[derive(Clone, Default)]
    struct StoppedReader(Arc<(ReaderState, Condvar)>);

    impl std::io::Write for StoppedReader {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let (m, cv) = &*self.0;
            let mut g = m.lock().unwrap();
            while !g.0 {
                g = cv.wait(g).unwrap();
            }
            g.1.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn case_38_console_flood_with_a_stopped_reader() {
        use crate::devices::legacy::console::{spawn_output, CONSOLE_BUFFER_BYTES};
        use crate::devices::virtio::test_utils::allocated_during;
        const FLOOD: usize = 1 << 20;
        let (tx, _rx) = std::sync::mpsc::channel();
        let buf = ConsoleBuffer::new(CONSOLE_BUFFER_BYTES);
        let reader = StoppedReader::default();
        let out = spawn_output(buf.clone(), Box::new(reader.clone()), false).unwrap();
        let w = ConsoleWriter::new(buf.clone(), ExitNotifier::new(tx));
        let mut s = SerialDevice::new(IrqTrigger(EventFd::new(libc::EFD_NONBLOCK).unwrap()), w);
        // The guest writes 1 MiB (16 buffers' worth) to the transmit register, one byte per port write, lines
        // of 80 characters, while nobody reads the console.
        let mut slowest = std::time::Duration::ZERO;
        let t0 = std::time::Instant::now();
        let ((), allocated) = allocated_during(|| {
            for i in 0..FLOOD {
                let b = if i % 81 == 80 {
                    b'\n'
                } else {
                    b'a' + (i % 26) as u8
                };
                let t = std::time::Instant::now();
                s.write(0, &[b]);
                slowest = slowest.max(t.elapsed());
            }
        });
        let took = t0.elapsed();
        // The vCPU never waited on the reader (which is released only below: had a write
        // waited for it, the loop would never have ended), and its memory did not grow
        // with the flood. The slowest write is bounded loosely: scheduling noise on a
        // loaded host, not the reader.
        assert!(slowest < std::time::Duration::from_secs(2), "{slowest:?}");
        assert!(
            allocated < 1 << 20,
            "{allocated} bytes allocated by the vCPU side"
        );
        let dropped = buf.dropped();
        assert!(
            dropped as usize >= FLOOD - 2 * CONSOLE_BUFFER_BYTES,
            "{dropped}"
        );
        // The reader comes back: what was kept arrives, and kept + dropped = written.
        {
            let (m, cv) = &*reader.0;
            m.lock().unwrap().0 = true;
            cv.notify_all();
        }
        buf.close();
        out.join().unwrap();
        let got = reader.0 .0.lock().unwrap().1.len();
        assert_eq!(got as u64 + buf.dropped(), FLOOD as u64);
        assert!(got <= 2 * CONSOLE_BUFFER_BYTES, "{got}");
        eprintln!(
            "case 38: {FLOOD} bytes in {took:?} (slowest write {slowest:?}), {dropped} dropped"
        );
    }

    #[test]
    fn case_38_drops_are_reported_at_most_every_interval() {
        use crate::devices::legacy::console::DropReports;
        let buf = ConsoleBuffer::new(4);
        let mut r = DropReports::default();
        let t0 = std::time::Instant::now();
        let s = std::time::Duration::from_secs(1);
        assert_eq!(r.due(&buf, t0), None);
        buf.push(b"abcdef");
        assert_eq!(r.due(&buf, t0), Some((2, 2)));
        // More drops within the interval wait, and are carried into the next report.
        buf.push(b"xyz");
        assert_eq!(r.due(&buf, t0 + 5 * s), None);
        buf.push(b"!");
        assert_eq!(r.due(&buf, t0 + 11 * s), Some((4, 6)));
        assert_eq!(r.due(&buf, t0 + 30 * s), None);
    }
}
