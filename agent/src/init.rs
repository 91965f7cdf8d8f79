//! Guest init: what the agent does first when it runs as PID 1.

use std::io::Write;

/// The first line the agent writes on the console. The nested smoke test and the vmm's
/// boot benchmark wait for exactly this prefix.
pub const FIRST_LINE_PREFIX: &str = "husk-agent: started";

/// Formats the agent's first console line.
pub fn first_line(pid: u32) -> String {
    format!(
        "{FIRST_LINE_PREFIX} version={} pid={pid}",
        env!("CARGO_PKG_VERSION")
    )
}

/// Writes the first line to `out` and flushes it at once: the host measures boot time by it.
pub fn announce(out: &mut dyn Write, pid: u32) -> std::io::Result<()> {
    writeln!(out, "{}", first_line(pid))?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_names_version_and_pid() {
        let mut buf = Vec::new();
        announce(&mut buf, 1).unwrap();
        let s = String::from_utf8(buf).unwrap();
        assert!(s.starts_with(FIRST_LINE_PREFIX));
        assert!(s.ends_with("pid=1\n"));
    }
}
