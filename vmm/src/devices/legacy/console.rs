//! The serial console's output path: a bounded buffer filled by the vCPU thread and drained
//! by one output thread, so a slow or blocked reader never stalls the guest (bytes beyond
//! the bound are dropped and counted). A line watcher spots kernel panics and halts.
//!
//! The 8250 hands over one byte per port write, so the output thread is woken per line, not
//! per byte: when a line starts (to write a line that never ends, such as a prompt, within
//! [`PARTIAL_LINE_WAIT`]), when it ends, and when the buffer is half full. A wake per byte
//! cost a futex wake and a context switch per console byte on the vCPU's CPU.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::exit::{ExitNotifier, ExitReason};

/// Default bound of the console buffer.
pub const CONSOLE_BUFFER_BYTES: usize = 64 * 1024;
const LINE_MAX: usize = 256;
/// At most one "bytes dropped" log line per this interval (the count is carried over).
const DROP_REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// How long the output thread lets a started line grow before writing it anyway.
const PARTIAL_LINE_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

#[derive(Default)]
struct State {
    buf: VecDeque<u8>,
    closed: bool,
}

/// Shared between the serial device (producer) and the output thread (consumer).
#[derive(Default)]
pub struct ConsoleBuffer {
    state: Mutex<State>,
    ready: Condvar,
    cap: usize,
    dropped: AtomicU64,
}

impl ConsoleBuffer {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(ConsoleBuffer {
            cap,
            ..Default::default()
        })
    }

    /// Queues what fits and drops the rest.
    pub fn push(&self, bytes: &[u8]) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        let was_empty = s.buf.is_empty();
        let room = self.cap.saturating_sub(s.buf.len());
        let take = room.min(bytes.len());
        s.buf.extend(&bytes[..take]);
        if take < bytes.len() {
            self.dropped
                .fetch_add((bytes.len() - take) as u64, Ordering::Relaxed);
        }
        let wake = was_empty || bytes.contains(&b'\n') || self.half_full(&s);
        drop(s);
        if wake {
            self.ready.notify_one();
        }
    }

    /// Whether enough is queued to write it without waiting for the line's end.
    fn half_full(&self, s: &State) -> bool {
        s.buf.len() >= self.cap / 2
    }

    /// Bytes dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Ends the output thread once everything queued is written.
    pub fn close(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.closed = true;
        }
        self.ready.notify_all();
    }

    /// Writes whatever is queued to `out` without waiting.
    pub fn drain_into(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let bytes: Vec<u8> = match self.state.lock() {
            Ok(mut s) => s.buf.drain(..).collect(),
            Err(_) => return Ok(()),
        };
        out.write_all(&bytes)
    }

    /// Waits for bytes; `None` once closed and empty. A started line gets up to
    /// [`PARTIAL_LINE_WAIT`] to end (or the buffer to fill half) before it is taken.
    fn take(&self) -> Option<Vec<u8>> {
        let mut s = self.state.lock().ok()?;
        loop {
            if s.buf.is_empty() {
                if s.closed {
                    return None;
                }
                s = self.ready.wait(s).ok()?;
                continue;
            }
            if !s.closed && !s.buf.contains(&b'\n') && !self.half_full(&s) {
                // Woken by a line's first byte: one wait for its end, not a loop (a line
                // that never ends is written after one wait).
                s = self.ready.wait_timeout(s, PARTIAL_LINE_WAIT).ok()?.0;
            }
            return Some(s.buf.drain(..).collect());
        }
    }
}

/// When the output thread says how many bytes it dropped: at most once per
/// [`DROP_REPORT_INTERVAL`] (the count carries over), so a guest flooding a slow reader
/// does not get a log line per chunk, and a gap in the output is never silent.
#[derive(Debug, Default)]
pub(crate) struct DropReports {
    reported: u64,
    last: Option<std::time::Instant>,
}

impl DropReports {
    /// (dropped since the last report, dropped in all) if a report is due at `now`.
    pub(crate) fn due(
        &mut self,
        buffer: &ConsoleBuffer,
        now: std::time::Instant,
    ) -> Option<(u64, u64)> {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < DROP_REPORT_INTERVAL)
        {
            return None;
        }
        let all = buffer.dropped();
        let new = all.checked_sub(self.reported).filter(|n| *n > 0)?;
        self.reported = all;
        self.last = Some(now);
        Some((new, all))
    }
}

/// Starts the output thread writing `buffer` to `sink` until the buffer is closed.
pub fn spawn_output(
    buffer: Arc<ConsoleBuffer>,
    mut sink: Box<dyn Write + Send>,
    seccomp: bool,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("console".into())
        .stack_size(crate::THREAD_STACK_SIZE)
        .spawn(move || {
            if seccomp {
                if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Console) {
                    let _ = writeln!(std::io::stderr(), "husk-vmm: {e}");
                    return;
                }
            }
            let mut drops = DropReports::default();
            while let Some(bytes) = buffer.take() {
                // Logged here, not on the vCPU thread that dropped them: a log write must
                // never be what blocks the guest.
                if let Some((n, all)) = drops.due(&buffer, std::time::Instant::now()) {
                    log::warn!(
                        "console: {n} bytes of guest output dropped (the reader is behind; \
                         {all} in all)"
                    );
                }
                if sink.write_all(&bytes).and_then(|_| sink.flush()).is_err() {
                    // Nowhere to write: keep draining so the guest is not affected.
                    continue;
                }
            }
            if let Some((n, all)) =
                drops.due(&buffer, std::time::Instant::now() + DROP_REPORT_INTERVAL)
            {
                log::warn!("console: {n} bytes of guest output dropped ({all} in all)");
            }
        })
}

/// What the line watcher recognized.
#[derive(Debug, PartialEq, Eq)]
pub enum ConsoleEvent {
    Panic,
    Halt,
}

/// Classifies one console line.
pub fn classify(line: &[u8]) -> Option<ConsoleEvent> {
    let has = |needle: &[u8]| line.windows(needle.len()).any(|w| w == needle);
    if has(b"Kernel panic - not syncing") {
        Some(ConsoleEvent::Panic)
    } else if has(b"reboot: System halted") || has(b"reboot: Power down") {
        Some(ConsoleEvent::Halt)
    } else {
        None
    }
}

/// The serial device's `Write` end.
pub struct ConsoleWriter {
    buffer: Arc<ConsoleBuffer>,
    line: Vec<u8>,
    exit: ExitNotifier,
}

impl ConsoleWriter {
    pub fn new(buffer: Arc<ConsoleBuffer>, exit: ExitNotifier) -> Self {
        ConsoleWriter {
            buffer,
            line: Vec::with_capacity(LINE_MAX),
            exit,
        }
    }

    fn watch(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                match classify(&self.line) {
                    Some(ConsoleEvent::Panic) => self.exit.mark_panicked(),
                    Some(ConsoleEvent::Halt) => self.exit.send(ExitReason::GuestHalt),
                    None => {}
                }
                self.line.clear();
            } else if self.line.len() < LINE_MAX {
                self.line.push(b);
            }
        }
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.watch(buf);
        self.buffer.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_counts_drops() {
        let b = ConsoleBuffer::new(4);
        b.push(b"abcdef");
        assert_eq!(b.dropped(), 2);
        b.close();
        assert_eq!(b.take().unwrap(), b"abcd");
        assert!(b.take().is_none());
    }

    #[test]
    fn output_thread_drains_then_ends() {
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Arc::new(Mutex::new(Vec::new()));
        let b = ConsoleBuffer::new(1024);
        let t = spawn_output(b.clone(), Box::new(Shared(out.clone())), false).unwrap();
        b.push(b"hello ");
        b.push(b"world");
        b.close();
        t.join().unwrap();
        assert_eq!(&*out.lock().unwrap(), b"hello world");
    }

    #[test]
    fn lines_are_taken_whole_and_unfinished_ones_after_a_wait() {
        let b = ConsoleBuffer::new(1024);
        let producer = {
            let b = b.clone();
            std::thread::spawn(move || {
                for &c in b"one line\n" {
                    b.push(&[c]);
                }
                // Never ended: still written, after PARTIAL_LINE_WAIT.
                b.push(b"login: ");
            })
        };
        let mut got = Vec::new();
        let t0 = std::time::Instant::now();
        while got.len() < b"one line\nlogin: ".len() {
            got.extend(b.take().unwrap());
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(10),
                "stuck: {got:?}"
            );
        }
        producer.join().unwrap();
        assert_eq!(got, b"one line\nlogin: ");
        b.close();
        assert!(b.take().is_none());
    }

    #[test]
    fn a_half_full_buffer_is_taken_without_a_newline() {
        let b = ConsoleBuffer::new(8);
        b.push(b"abcd");
        let t0 = std::time::Instant::now();
        assert_eq!(b.take().unwrap(), b"abcd");
        assert!(t0.elapsed() < PARTIAL_LINE_WAIT);
    }

    #[test]
    fn watcher_sees_panic_and_halt() {
        let (tx, rx) = std::sync::mpsc::channel();
        let exit = ExitNotifier::new(tx);
        let mut w = ConsoleWriter::new(ConsoleBuffer::new(1024), exit.clone());
        w.write_all(b"[ 1.0] Kernel panic - not syncing: boom\r\n")
            .unwrap();
        exit.reset();
        assert_eq!(rx.recv().unwrap(), ExitReason::GuestPanic);
        w.write_all(b"[ 2.0] reboot: System ").unwrap();
        w.write_all(b"halted\n").unwrap();
        assert_eq!(rx.recv().unwrap(), ExitReason::GuestHalt);
        // An endless line is bounded.
        w.write_all(&vec![b'x'; 10_000]).unwrap();
        assert!(w.line.len() <= LINE_MAX);
    }
}
