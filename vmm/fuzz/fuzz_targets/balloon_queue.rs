//! virtio-balloon: arbitrary inflate, deflate and free-page-report chains. Reported and
//! inflated ranges are dropped from the (anonymous) fuzz memory, which may be the rings
//! themselves: the device must cope with that too.
#![no_main]

mod common;

use husk_vmm::devices::virtio::balloon::Balloon;
use husk_vmm::devices::virtio::{Activation, NoRegistry, VirtioDevice};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&size, rest)) = data.split_first() else {
        return;
    };
    let mut dev = Balloon::new();
    let _ = dev.activate(
        Activation {
            mem: common::memory(rest),
            // All three queues share one ring on purpose.
            queues: vec![
                common::queue(size),
                common::queue(size),
                common::queue(size),
            ],
            interrupt: common::interrupt(),
            queue_evts: Vec::new(),
            acked_features: husk_vmm::devices::virtio::balloon::VIRTIO_BALLOON_F_REPORTING,
        },
        &mut NoRegistry,
    );
    for q in [2, 0, 1] {
        dev.queue_notify(q, &mut NoRegistry);
    }
});
