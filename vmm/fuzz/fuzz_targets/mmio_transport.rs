//! The virtio-mmio transport: arbitrary register accesses (offset, width, value) against a
//! virtio-blk device, including activation with whatever queues the input configured (the
//! event loop's activation event is delivered after every write, as it would be).
#![no_main]

mod common;

use husk_vmm::bus::BusDevice;
use husk_vmm::config::{DriveConfig, ImageFormat};
use husk_vmm::devices::virtio::blk::Block;
use husk_vmm::devices::virtio::mmio::{MmioTransport, TOKEN_ACTIVATE};
use husk_vmm::devices::virtio::NoRegistry;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|data: &[u8]| {
    let img = std::env::temp_dir().join(format!("husk-fuzz-mmio-{}", std::process::id()));
    if !img.exists() {
        std::fs::write(&img, vec![0u8; 64 * 1024]).unwrap();
    }
    let blk = Block::new(&DriveConfig {
        path: img,
        read_only: false,
        format: ImageFormat::Raw,
        id: None,
        rate_limiter: None,
    })
    .unwrap();
    let mem = common::memory(&[]);
    let mut t = MmioTransport::new(blk, mem, EventFd::new(libc::EFD_NONBLOCK).unwrap()).unwrap();
    for op in data.chunks_exact(7) {
        let offset = u64::from(u16::from_le_bytes([op[0], op[1]]) & 0xfff);
        let width = [1usize, 2, 4, 8][usize::from(op[2] & 3)];
        let value = [op[3], op[4], op[5], op[6], 0, 0, 0, 0];
        if op[2] & 4 != 0 {
            t.write(offset, &value[..width]);
            t.handle_event(TOKEN_ACTIVATE, EventSet::IN, &mut NoRegistry);
        } else {
            let mut out = [0u8; 8];
            t.read(offset, &mut out[..width]);
        }
    }
});
