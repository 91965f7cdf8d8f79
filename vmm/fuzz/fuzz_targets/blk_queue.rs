//! virtio-blk: arbitrary queue contents against a 1 MiB raw image.
#![no_main]

mod common;

use std::sync::OnceLock;

use husk_vmm::config::{DriveConfig, ImageFormat};
use husk_vmm::devices::virtio::blk::Block;
use husk_vmm::devices::virtio::{Activation, NoRegistry, VirtioDevice};
use libfuzzer_sys::fuzz_target;

fn image() -> &'static std::path::PathBuf {
    static IMG: OnceLock<std::path::PathBuf> = OnceLock::new();
    IMG.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("husk-fuzz-blk-{}", std::process::id()));
        std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
        p
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&size, rest)) = data.split_first() else {
        return;
    };
    let mut blk = Block::new(&DriveConfig {
        path: image().clone(),
        read_only: size & 0x80 != 0,
        format: ImageFormat::Raw,
        id: None,
        rate_limiter: None,
    })
    .unwrap();
    let mem = common::memory(rest);
    let _ = blk.activate(
        Activation {
            mem,
            queues: vec![common::queue(size)],
            interrupt: common::interrupt(),
            queue_evts: Vec::new(),
            acked_features: 0,
        },
        &mut NoRegistry,
    );
    blk.queue_notify(0, &mut NoRegistry);
});
