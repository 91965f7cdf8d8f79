//! Device models. Each is a plain state machine reachable from the bus or the event loop.

pub mod legacy;
pub mod virtio;
