//! virtio-vsock: arbitrary TX queue contents (packet headers, payload descriptors), then
//! the RX path, and the header parser alone.
#![no_main]

mod common;

use husk_vmm::config::VsockConfig;
use husk_vmm::devices::virtio::vsock::packet::{validate, Header, HDR_LEN};
use husk_vmm::devices::virtio::vsock::Vsock;
use husk_vmm::devices::virtio::{Activation, NoRegistry, VirtioDevice};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(h) = data.get(..HDR_LEN) {
        let mut b = [0u8; HDR_LEN];
        b.copy_from_slice(h);
        let hdr = Header::from_bytes(&b);
        let _ = validate(&hdr, 3, data.len() - HDR_LEN);
        assert_eq!(Header::from_bytes(&hdr.to_bytes()), hdr);
    }
    let Some((&size, rest)) = data.split_first() else {
        return;
    };
    let sock = std::env::temp_dir().join(format!("husk-fuzz-vsock-{}.sock", std::process::id()));
    let mut dev = Vsock::new(&VsockConfig {
        guest_cid: 3,
        socket: sock,
    })
    .unwrap();
    let mem = common::memory(rest);
    // RX and TX share the rings on purpose: the device must cope with any overlap.
    let _ = dev.activate(
        Activation {
            mem,
            queues: vec![
                common::queue(size),
                common::queue(size),
                common::queue(size),
            ],
            interrupt: common::interrupt(),
            queue_evts: Vec::new(),
            acked_features: 0,
        },
        &mut NoRegistry,
    );
    dev.queue_notify(1, &mut NoRegistry);
    dev.queue_notify(0, &mut NoRegistry);
});
