//! A VM template's state.json from arbitrary bytes, as a restoring vmm reads it:
//! `Snapshot::read` (version first, then the whole state), `check_fits` against the VM's
//! config (1 MiB, one vCPU, one virtio-blk device), the transport state put back onto a
//! real virtio-mmio transport, activated as the event loop does, kicked and its registers
//! read, and the serial state given to the
//! 8250. Errors are fine; panics are not. A snapshot that reads re-serializes to JSON that
//! reads back the same, and the UART's state comes back as it was given.
#![no_main]

mod common;

use std::sync::OnceLock;

use husk_vmm::bus::BusDevice;
use husk_vmm::config::{DriveConfig, ImageFormat};
use husk_vmm::devices::legacy::console::{ConsoleBuffer, ConsoleWriter};
use husk_vmm::devices::legacy::serial::{IrqTrigger, SerialDevice};
use husk_vmm::devices::virtio::blk::Block;
use husk_vmm::devices::virtio::mmio::{
    MmioTransport, SnapshotTransport, REG_QUEUE_NOTIFY, TOKEN_ACTIVATE,
};
use husk_vmm::devices::virtio::NoRegistry;
use husk_vmm::exit::ExitNotifier;
use husk_vmm::snapshot::{Snapshot, SnapshotError, STATE_FILE};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// The snapshot directory: on /dev/shm when there is one (one file rewritten per input).
fn dir() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            std::path::PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("husk-fuzz-snapshot-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fn image() -> &'static std::path::PathBuf {
    static IMG: OnceLock<std::path::PathBuf> = OnceLock::new();
    IMG.get_or_init(|| {
        let p = dir().join("disk.img");
        std::fs::write(&p, vec![0u8; 64 * 1024]).unwrap();
        p
    })
}

fuzz_target!(|data: &[u8]| {
    std::fs::write(dir().join(STATE_FILE), data).unwrap();
    let snap = match Snapshot::read(dir()) {
        Ok(s) => s,
        Err(SnapshotError::Format { .. }) => return,
        Err(e) => panic!("reading a state file that exists: {e}"),
    };
    // What was read writes out as JSON that reads back to the same JSON.
    let json = serde_json::to_vec(&snap).expect("a snapshot serializes");
    std::fs::write(dir().join(STATE_FILE), &json).unwrap();
    let again = Snapshot::read(dir()).expect("a re-serialized snapshot reads");
    assert_eq!(serde_json::to_vec(&again).unwrap(), json);

    let fits = snap.check_fits(common::MEM_SIZE as u64, 1, &[2]);
    if fits.is_ok() {
        assert_eq!(snap.vcpus.len(), 1);
        assert_eq!(snap.devices.len(), 1);
    }
    // The restore path checks fit first; the transports see states of any shape anyway.
    for state in &snap.devices {
        let blk = Block::new(&DriveConfig {
            path: image().clone(),
            read_only: false,
            format: ImageFormat::Raw,
            id: None,
            rate_limiter: None,
        })
        .unwrap();
        let mem = common::memory(&[]);
        let mut t =
            MmioTransport::new(blk, mem, EventFd::new(libc::EFD_NONBLOCK).unwrap()).unwrap();
        match t.restore(state) {
            Ok(()) => {
                assert_eq!(state.device_type, 2);
                // The event loop's first event on a restored active transport: activation
                // on the queues the state file gave, then a kick.
                t.handle_event(TOKEN_ACTIVATE, EventSet::IN, &mut NoRegistry);
                t.write(REG_QUEUE_NOTIFY, &0u32.to_le_bytes());
                for off in (0..0x100u64).step_by(4) {
                    let mut b = [0u8; 4];
                    t.read(off, &mut b);
                }
            }
            Err(SnapshotError::Mismatch(_)) => {}
            Err(e) => panic!("restore failed other than by a mismatch: {e}"),
        }
    }

    let (tx, _rx) = std::sync::mpsc::channel();
    let out = ConsoleWriter::new(ConsoleBuffer::new(4096), ExitNotifier::new(tx));
    let irq = IrqTrigger(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    if let Ok(mut uart) = SerialDevice::from_snapshot(&snap.serial, irq, out) {
        assert_eq!(uart.snapshot(), snap.serial);
        for off in 0..8u64 {
            let mut b = [0u8];
            uart.read(off, &mut b);
        }
        uart.write(0, b"x");
    }
});
