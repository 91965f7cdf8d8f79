//! The vmm's log: one line per record on stderr (`husk-vmm: LEVEL message`), at the level
//! in `HUSK_VMM_LOG` (error, warn, info, debug, trace; default warn).
//!
//! Our own rather than env_logger: a dozen lines, no regex or time crates in the static
//! binary (its size is part of the vmm's RSS budget), and each record is exactly one
//! `write(2)`, the only call the seccomp filters must allow for logging from any thread.

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record) {
        if self.enabled(r.metadata()) {
            let line = format!("husk-vmm: {} {}\n", r.level(), r.args());
            // One write; a failed log line is not worth failing the VM for.
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// The level named by `value` (case-insensitive); warn for anything else.
pub fn level_from(value: Option<&str>) -> LevelFilter {
    value
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(LevelFilter::Warn)
}

/// Installs the logger at the level `HUSK_VMM_LOG` names. Later calls change nothing.
pub fn init() {
    let level = level_from(std::env::var("HUSK_VMM_LOG").ok().as_deref());
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_with_warn_as_default() {
        assert_eq!(level_from(Some("debug")), LevelFilter::Debug);
        assert_eq!(level_from(Some("INFO")), LevelFilter::Info);
        assert_eq!(level_from(Some("loud")), LevelFilter::Warn);
        assert_eq!(level_from(None), LevelFilter::Warn);
    }
}
