//! The legacy devices as the guest reaches them: port I/O through the vmm's port bus to
//! the 8250 UART (0x3f8, vm-superio behind husk's wrapper and console watcher) and the
//! i8042 reset controller (0x60), registered as the builder does. Each 4-byte op is
//! (port offset, width and direction, value). Checked: only those ports are claimed, the
//! i8042 never says "input buffer full" (the guest's reboot path would spin), the
//! console buffer stays within its capacity, and the only ways the VM may end are the
//! guest's own (reset, halt, panic).
#![no_main]

use std::sync::{Arc, Mutex};

use husk_vmm::bus::Bus;
use husk_vmm::devices::legacy::console::{ConsoleBuffer, ConsoleWriter};
use husk_vmm::devices::legacy::i8042::{I8042, I8042_PORTS};
use husk_vmm::devices::legacy::serial::{IrqTrigger, SerialDevice};
use husk_vmm::exit::{ExitNotifier, ExitReason};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

const SERIAL: u64 = 0x3f8;
const I8042_BASE: u64 = 0x60;
const CONSOLE_CAP: usize = 256;

fuzz_target!(|data: &[u8]| {
    let (tx, rx) = std::sync::mpsc::channel();
    let exit = ExitNotifier::new(tx);
    let console = ConsoleBuffer::new(CONSOLE_CAP);
    let serial = SerialDevice::new(
        IrqTrigger(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
        ConsoleWriter::new(console.clone(), exit.clone()),
    );
    let mut pio = Bus::new();
    pio.insert(Arc::new(Mutex::new(serial)), SERIAL, 8).unwrap();
    pio.insert(
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
        I8042_BASE,
        I8042_PORTS,
    )
    .unwrap();
    let mut written = 0usize;
    for op in data.chunks_exact(4) {
        // Ports around both devices, so the bus's range ends are crossed too.
        let port = if op[0] & 0x80 != 0 {
            SERIAL - 4 + u64::from(op[0] & 0xf)
        } else {
            I8042_BASE - 2 + u64::from(op[0] & 0x7)
        };
        let width = [1usize, 2, 4, 1][usize::from(op[1] & 3)];
        let value = [op[2], op[3], op[2], op[3]];
        let claimed_expected = (SERIAL..SERIAL + 8).contains(&port)
            || (I8042_BASE..I8042_BASE + I8042_PORTS).contains(&port);
        let claimed = if op[1] & 4 != 0 {
            if port == SERIAL && width == 1 {
                written += 1;
            }
            pio.write(port, &value[..width])
        } else {
            let mut out = [0u8; 4];
            let c = pio.read(port, &mut out[..width]);
            if port == I8042_BASE + 4 {
                assert_eq!(out[0] & 0x02, 0, "i8042 input buffer reads full");
            }
            c
        };
        assert_eq!(claimed, claimed_expected, "port {port:#x}");
    }
    // Bytes the guest wrote to THR either reached the buffer, were dropped (counted), or
    // went to the divisor latch / loopback; never more than were written.
    console.close();
    let mut kept = Vec::new();
    console.drain_into(&mut kept).unwrap();
    assert!(kept.len() <= CONSOLE_CAP);
    assert!(kept.len() as u64 + console.dropped() <= written as u64);
    while let Ok(r) = rx.try_recv() {
        assert!(
            matches!(
                r,
                ExitReason::GuestReset | ExitReason::GuestHalt | ExitReason::GuestPanic
            ),
            "{r:?}"
        );
    }
});
