//! Legacy PC devices on the port I/O bus: the 8250 serial console and the i8042 reset line.

pub mod console;
pub mod i8042;
pub mod serial;
