//! A process's standard streams as the agent holds them: the write end of its stdin, the
//! read ends of its stdout and stderr (or one pty master for a terminal).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use husk_protocol::agent::Stdio as StdioFlags;

/// The container-side ends, handed to the process being created.
#[derive(Debug, Default)]
pub struct ChildEnds {
    /// stdin read end.
    pub stdin: Option<OwnedFd>,
    /// stdout write end.
    pub stdout: Option<OwnedFd>,
    /// stderr write end.
    pub stderr: Option<OwnedFd>,
}

/// The agent-side ends.
#[derive(Debug, Default)]
pub struct ProcessIo {
    stdin: Mutex<Option<File>>,
    stdout: Option<Mutex<File>>,
    stderr: Option<Mutex<File>>,
    tty: Mutex<Option<File>>,
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

/// Output pipes hold this much, so a writing process runs on while one ReadOutput answer
/// is on its way to the shim (a round trip over vsock), and the next read finds a large
/// batch. Pages are only allocated as the pipe fills.
const OUTPUT_PIPE_BYTES: i32 = 1 << 20;

/// An output pipe, enlarged when the kernel allows (the default 64 KiB otherwise).
fn output_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = pipe()?;
    let _ = nix::fcntl::fcntl(&r, nix::fcntl::FcntlArg::F_SETPIPE_SZ(OUTPUT_PIPE_BYTES));
    Ok((r, w))
}

/// Whether `f` can be read without blocking.
fn readable_now(f: &File) -> bool {
    use std::os::fd::AsFd;
    let mut fds = [nix::poll::PollFd::new(
        f.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0)
}

impl ProcessIo {
    /// Pipes for the streams the flags ask for.
    pub fn pipes(f: &StdioFlags) -> std::io::Result<(Self, ChildEnds)> {
        let mut io = Self::default();
        let mut ends = ChildEnds::default();
        if f.stdin {
            let (r, w) = pipe()?;
            ends.stdin = Some(r);
            io.stdin = Mutex::new(Some(File::from(w)));
        }
        if f.stdout {
            let (r, w) = output_pipe()?;
            ends.stdout = Some(w);
            io.stdout = Some(Mutex::new(File::from(r)));
        }
        if f.stderr {
            let (r, w) = output_pipe()?;
            ends.stderr = Some(w);
            io.stderr = Some(Mutex::new(File::from(r)));
        }
        Ok((io, ends))
    }

    /// Streams over a pty master: stdout reads it, stdin writes it.
    pub fn terminal(master: File) -> std::io::Result<Self> {
        let reader = master.try_clone()?;
        let writer = master.try_clone()?;
        Ok(Self {
            stdin: Mutex::new(Some(writer)),
            stdout: Some(Mutex::new(reader)),
            stderr: None,
            tty: Mutex::new(Some(master)),
        })
    }

    /// Writes all of `data` to stdin.
    pub fn write_stdin(&self, data: &[u8]) -> std::io::Result<()> {
        let mut g = self
            .stdin
            .lock()
            .map_err(|_| std::io::Error::other("stdin lock poisoned"))?;
        match g.as_mut() {
            Some(f) => f.write_all(data),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "stdin is closed",
            )),
        }
    }

    /// Closes stdin (the process sees EOF).
    pub fn close_stdin(&self) {
        if let Ok(mut g) = self.stdin.lock() {
            g.take();
        }
    }

    /// Reads up to `max` bytes of stdout (`err` false) or stderr; an empty result is EOF.
    /// Blocks until some output is there, then takes whatever else is already waiting
    /// (up to `max`): each answer crosses vsock as one round trip, so one large answer
    /// beats many small ones (8 MiB of output used to take hundreds of them).
    pub fn read(&self, err: bool, max: usize) -> std::io::Result<Vec<u8>> {
        let s = if err { &self.stderr } else { &self.stdout };
        let Some(s) = s else {
            return Ok(Vec::new());
        };
        let mut f = s
            .lock()
            .map_err(|_| std::io::Error::other("output lock poisoned"))?;
        let mut buf = vec![0u8; max];
        let mut len = 0;
        loop {
            match f.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => {
                    len += n;
                    if len == max || !readable_now(&f) {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // A pty master reads EIO once the last slave fd is closed; what was read
                // before it still goes out, the next call reports the end.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
                // An error after some data: deliver the data; the next call meets it again.
                Err(_) if len > 0 => break,
                Err(e) => return Err(e),
            }
        }
        buf.truncate(len);
        Ok(buf)
    }

    /// Sets the terminal size.
    pub fn resize(&self, width: u16, height: u16) -> std::io::Result<()> {
        let g = self
            .tty
            .lock()
            .map_err(|_| std::io::Error::other("tty lock poisoned"))?;
        let Some(t) = g.as_ref() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "process has no terminal",
            ));
        };
        let ws = libc::winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        use std::os::fd::AsRawFd;
        // SAFETY: TIOCSWINSZ reads a winsize that lives across the call.
        if unsafe { libc::ioctl(t.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_carry_data_and_eof() {
        let mut f = StdioFlags::new();
        f.stdin = true;
        f.stdout = true;
        let (io, ends) = ProcessIo::pipes(&f).unwrap();
        assert!(ends.stderr.is_none());
        io.write_stdin(b"hi").unwrap();
        let mut r = File::from(ends.stdin.unwrap());
        let mut b = [0u8; 2];
        r.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hi");
        let mut w = File::from(ends.stdout.unwrap());
        w.write_all(b"out").unwrap();
        drop(w);
        assert_eq!(io.read(false, 100).unwrap(), b"out");
        assert!(io.read(false, 100).unwrap().is_empty());
        assert!(io.read(true, 100).unwrap().is_empty());
        io.close_stdin();
        assert!(io.write_stdin(b"x").is_err());
        assert!(io.resize(80, 24).is_err());
    }

    #[test]
    fn waiting_output_goes_in_one_read_up_to_max() {
        let mut f = StdioFlags::new();
        f.stdout = true;
        let (io, ends) = ProcessIo::pipes(&f).unwrap();
        let mut w = File::from(ends.stdout.unwrap());
        // More than the default 64 KiB pipe: the enlarged pipe takes it without a reader.
        let chunk = vec![7u8; 4096];
        for _ in 0..64 {
            w.write_all(&chunk).unwrap();
        }
        w.write_all(b"tail").unwrap();
        let total = 64 * 4096 + 4;
        let first = io.read(false, 200_000).unwrap();
        assert_eq!(first.len(), 200_000, "many small writes, one read");
        let rest = io.read(false, 1 << 20).unwrap();
        assert_eq!(first.len() + rest.len(), total);
        assert!(rest.ends_with(b"tail"));
        drop(w);
        assert!(io.read(false, 100).unwrap().is_empty());
    }
}
