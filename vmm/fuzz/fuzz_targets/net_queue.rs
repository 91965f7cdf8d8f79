//! virtio-net: arbitrary TX queue contents go out through a stand-in tap (one end of a
//! datagram socketpair, which keeps frame boundaries as a tap does); then frames of the
//! input's own bytes come back in through the RX path into arbitrary RX buffers. The second
//! byte picks the accepted features (none, or every offload and mergeable RX buffers), so
//! the TX header checks and the mergeable RX path both see arbitrary input.
#![no_main]

mod common;

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;

use husk_vmm::devices::virtio::net::features::OFFERED;
use husk_vmm::devices::virtio::net::tap::SetOffload;
use husk_vmm::devices::virtio::net::Net;
use husk_vmm::devices::virtio::{Activation, NoRegistry, VirtioDevice};
use libfuzzer_sys::fuzz_target;

/// The tap stand-in has no offloads to set.
struct NoOffload;

impl SetOffload for NoOffload {
    fn set_offload(&mut self, _: &File, _: u32) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let [size, features, rest @ ..] = data else {
        return;
    };
    let acked = if features & 1 == 1 { OFFERED } else { 0 };
    let (ours, theirs) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    theirs.set_nonblocking(true).unwrap();
    let mut dev = Net::with_tap(
        File::from(OwnedFd::from(ours)),
        [2, 0, 0, 0, 0, 1],
        Box::new(NoOffload),
    );
    let mem = common::memory(rest);
    // RX and TX share the rings on purpose: the device must cope with any overlap.
    let _ = dev.activate(
        Activation {
            mem,
            queues: vec![common::queue(*size), common::queue(*size)],
            interrupt: common::interrupt(),
            queue_evts: Vec::new(),
            acked_features: acked,
        },
        &mut NoRegistry,
    );
    dev.queue_notify(1, &mut NoRegistry);
    let mut tap = File::from(OwnedFd::from(theirs));
    for frame in rest.chunks(1500).take(4) {
        let _ = tap.write(frame);
    }
    dev.queue_notify(0, &mut NoRegistry);
});
