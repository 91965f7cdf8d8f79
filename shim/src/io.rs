//! containerd's stdio FIFOs to the agent's process streams.
//!
//! stdout/stderr: the agent's chunks are written to the FIFO until the stream ends, so
//! output arrives whole before the exit is reported. stdin: the FIFO is read (once
//! containerd's side opens it) and forwarded; its end closes the process's stdin.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::agent::{AgentClient, OutputStream, ProcessRef};
use crate::events::StdioPaths;

const STDIN_CHUNK: usize = 32 * 1024;

/// The copy tasks of one process.
#[derive(Debug, Default)]
pub struct ProcessIo {
    outputs: Vec<JoinHandle<()>>,
    stdin_path: Option<PathBuf>,
    stdin_close: Option<Arc<Notify>>,
}

impl ProcessIo {
    /// Starts copying between the FIFOs in `paths` and the agent's streams of `p`.
    pub fn start(agent: Arc<dyn AgentClient>, p: &ProcessRef, paths: &StdioPaths) -> ProcessIo {
        let mut io = ProcessIo::default();
        let mut outs = vec![(OutputStream::Stdout, paths.stdout.as_str())];
        if !paths.terminal {
            outs.push((OutputStream::Stderr, paths.stderr.as_str()));
        }
        for (stream, path) in outs {
            if path.is_empty() {
                continue;
            }
            let (agent, p, path) = (agent.clone(), p.clone(), PathBuf::from(path));
            io.outputs
                .push(tokio::spawn(copy_output(agent, p, stream, path)));
        }
        if !paths.stdin.is_empty() {
            let close = Arc::new(Notify::new());
            let path = PathBuf::from(&paths.stdin);
            tokio::spawn(copy_stdin(agent, p.clone(), path.clone(), close.clone()));
            io.stdin_path = Some(path);
            io.stdin_close = Some(close);
        }
        io
    }

    /// Closes the process's stdin now (CloseIO), whatever containerd's side does.
    pub fn close_stdin(&mut self) {
        if let Some(n) = self.stdin_close.take() {
            n.notify_one();
        }
        if let Some(path) = self.stdin_path.take() {
            unblock_fifo_open(&path);
        }
    }

    /// Waits until the output streams have ended, at most `limit`.
    pub async fn drain(&mut self, limit: Duration) {
        let all = futures_join(std::mem::take(&mut self.outputs));
        if tokio::time::timeout(limit, all).await.is_err() {
            log::warn!("output streams still open {} s after exit", limit.as_secs());
        }
    }
}

async fn futures_join(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

/// A reader blocked opening a FIFO no writer opened yet is released by opening (and
/// closing) a writer ourselves.
fn unblock_fifo_open(path: &std::path::Path) {
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path);
}

async fn copy_output(agent: Arc<dyn AgentClient>, p: ProcessRef, s: OutputStream, path: PathBuf) {
    // Read-write, so the open neither blocks nor fails while containerd's reader is not
    // there yet; we hold the only write end, so the reader sees EOF when we close it.
    let mut fifo = match pipe::OpenOptions::new().read_write(true).open_sender(&path) {
        Ok(f) => Some(f),
        Err(e) => {
            log::warn!("{p}: opening {}: {e}", path.display());
            None
        }
    };
    loop {
        match agent.read_output(&p, s).await {
            Ok(Some(chunk)) => {
                if let Some(f) = fifo.as_mut() {
                    if let Err(e) = f.write_all(&chunk).await {
                        // Keep draining the agent so the guest process never blocks.
                        log::warn!("{p}: writing {}: {e}", path.display());
                        fifo = None;
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                log::debug!("{p}: {s:?} ended: {e}");
                break;
            }
        }
    }
}

async fn copy_stdin(agent: Arc<dyn AgentClient>, p: ProcessRef, path: PathBuf, close: Arc<Notify>) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
    let reader_path = path.clone();
    tokio::task::spawn_blocking(move || {
        // Blocks until containerd opens its write end.
        let mut f = match std::fs::File::open(&reader_path) {
            Ok(f) => f,
            Err(e) => {
                log::warn!("opening {}: {e}", reader_path.display());
                return;
            }
        };
        let mut buf = vec![0u8; STDIN_CHUNK];
        loop {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    loop {
        tokio::select! {
            chunk = rx.recv() => match chunk {
                Some(data) => {
                    if let Err(e) = agent.write_stdin(&p, &data).await {
                        log::debug!("{p}: stdin: {e}");
                        break;
                    }
                }
                None => break,
            },
            _ = close.notified() => break,
        }
    }
    if let Err(e) = agent.close_stdin(&p).await {
        log::debug!("{p}: closing stdin: {e}");
    }
}
