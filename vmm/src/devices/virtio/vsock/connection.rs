//! One vsock stream connection between a guest port and a host Unix socket: its lifecycle,
//! the credit accounting in both directions (virtio 1.2, 5.10.6.3), the bounded buffer of
//! guest bytes not yet taken by the host, and the control packets it owes the guest.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use super::packet::{
    Header, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV,
    SHUTDOWN_SEND, TYPE_STREAM,
};
use super::{CONN_BUF_SIZE, CREDIT_UPDATE_THRESHOLD, HOST_CID};

/// Which side opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Host,
    Guest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// The host connected and named a guest port; REQUEST sent, RESPONSE awaited.
    LocalInit,
    Established,
    /// The guest shut down both directions: flush what is buffered, then reset.
    PeerClosing,
}

/// Control packets owed to the guest, sent before any data.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PendingOps {
    pub request: bool,
    pub response: bool,
    pub shutdown: bool,
    pub credit_update: bool,
    pub rst: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("guest sent {got} bytes beyond its credit")]
    CreditOverflow { got: usize },
    #[error("host socket: {0}")]
    Io(#[from] std::io::Error),
}

pub struct Connection {
    stream: UnixStream,
    pub origin: Origin,
    pub state: ConnState,
    pub host_port: u32,
    pub guest_port: u32,
    guest_cid: u64,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Payload bytes sent to the guest.
    tx_cnt: u32,
    /// Guest bytes handed to the host socket.
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    to_host: VecDeque<u8>,
    /// Leading bytes of `to_host` that are control lines, not guest payload.
    uncounted: usize,
    /// The host socket may have bytes (or EOF) for the guest.
    pub host_readable: bool,
    /// The host will send nothing more (EOF read); it may still receive.
    pub host_eof: bool,
    /// The guest will send nothing more: shut the host socket's write side once flushed.
    peer_done_sending: bool,
    pub pending: PendingOps,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("state", &self.state)
            .field("host_port", &self.host_port)
            .field("guest_port", &self.guest_port)
            .finish()
    }
}

impl Connection {
    fn new(
        stream: UnixStream,
        origin: Origin,
        state: ConnState,
        host_port: u32,
        guest_port: u32,
        guest_cid: u64,
    ) -> Self {
        Connection {
            stream,
            origin,
            state,
            host_port,
            guest_port,
            guest_cid,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            to_host: VecDeque::new(),
            uncounted: 0,
            host_readable: false,
            host_eof: false,
            peer_done_sending: false,
            pending: PendingOps::default(),
        }
    }

    /// A host-initiated connection to guest port `guest_port`: REQUEST is owed.
    pub fn host_initiated(
        stream: UnixStream,
        host_port: u32,
        guest_port: u32,
        guest_cid: u64,
    ) -> Self {
        let mut c = Connection::new(
            stream,
            Origin::Host,
            ConnState::LocalInit,
            host_port,
            guest_port,
            guest_cid,
        );
        c.pending.request = true;
        c
    }

    /// A guest-initiated connection accepted by the host: RESPONSE is owed.
    pub fn guest_initiated(stream: UnixStream, req: &Header, guest_cid: u64) -> Self {
        let mut c = Connection::new(
            stream,
            Origin::Guest,
            ConnState::Established,
            req.dst_port,
            req.src_port,
            guest_cid,
        );
        c.update_peer_credit(req);
        c.pending.response = true;
        c.host_readable = true;
        c
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    pub fn update_peer_credit(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
    }

    /// Bytes the guest can still take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    pub fn has_buffered(&self) -> bool {
        !self.to_host.is_empty()
    }

    fn has_control(&self) -> bool {
        let p = self.pending;
        p.request || p.response || p.shutdown || p.credit_update || p.rst
    }

    /// Whether [`Connection::next_packet`] may produce something now.
    pub fn wants_rx(&self) -> bool {
        self.has_control()
            || (self.state == ConnState::Established
                && self.host_readable
                && self.peer_credit() > 0)
    }

    /// The RESPONSE arrived for a host-initiated connection: tell the host its port.
    pub fn accept_response(&mut self) -> Result<(), ConnError> {
        self.state = ConnState::Established;
        self.host_readable = true;
        let line = format!("OK {}\n", self.host_port);
        // The OK line is ours, not guest payload: it does not count as forwarded credit.
        self.uncounted += line.len();
        self.queue_to_host(line.as_bytes())
    }

    /// Guest payload for the host. The guest may not exceed the credit we advertised.
    pub fn from_guest(&mut self, payload: &[u8]) -> Result<(), ConnError> {
        let buffered = self.to_host.len();
        if buffered + payload.len() > CONN_BUF_SIZE as usize {
            return Err(ConnError::CreditOverflow { got: payload.len() });
        }
        self.queue_to_host(payload)
    }

    fn queue_to_host(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        let mut rest = bytes;
        if self.to_host.is_empty() {
            match self.stream.write(rest) {
                Ok(n) => {
                    self.forwarded(n);
                    rest = &rest[n..];
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.to_host.extend(rest);
        Ok(())
    }

    fn forwarded(&mut self, n: usize) {
        let skip = n.min(self.uncounted);
        self.uncounted -= skip;
        let n = n - skip;
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        if self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            self.pending.credit_update = true;
        }
    }

    /// Writes buffered guest bytes to the host; `true` once nothing is left.
    pub fn flush_to_host(&mut self) -> Result<bool, ConnError> {
        while !self.to_host.is_empty() {
            let (a, _) = self.to_host.as_slices();
            match self.stream.write(a) {
                Ok(0) => return Err(ConnError::Io(ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.forwarded(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        if self.peer_done_sending {
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Ok(true)
    }

    /// The guest sent SHUTDOWN with `flags`.
    pub fn peer_shutdown(&mut self, flags: u32) {
        if flags & SHUTDOWN_SEND != 0 {
            self.peer_done_sending = true;
        }
        if flags & (SHUTDOWN_SEND | SHUTDOWN_RCV) == SHUTDOWN_SEND | SHUTDOWN_RCV {
            self.state = ConnState::PeerClosing;
        }
        if self.to_host.is_empty() && self.peer_done_sending {
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        if self.state == ConnState::PeerClosing && self.to_host.is_empty() {
            self.pending.rst = true;
        }
    }

    /// The header of a packet to the guest.
    pub fn header(&mut self, op: u16, flags: u32, len: u32) -> Header {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.host_port,
            dst_port: self.guest_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// The next packet for the guest, with up to `buf.len()` payload bytes read from the host
    /// into `buf`. `None` when there is nothing to send now.
    pub fn next_packet(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        if self.pending.rst {
            self.pending = PendingOps::default();
            return Some((self.header(OP_RST, 0, 0), 0));
        }
        if self.pending.request {
            self.pending.request = false;
            return Some((self.header(OP_REQUEST, 0, 0), 0));
        }
        if self.pending.response {
            self.pending.response = false;
            return Some((self.header(OP_RESPONSE, 0, 0), 0));
        }
        if self.pending.shutdown {
            self.pending.shutdown = false;
            return Some((self.header(OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND, 0), 0));
        }
        if self.state == ConnState::Established && self.host_readable && !self.host_eof {
            let max = (self.peer_credit() as usize).min(buf.len());
            if max > 0 {
                match self.stream.read(&mut buf[..max]) {
                    Ok(0) => {
                        // The host finished sending: tell the guest. It may still send to
                        // the host (which may still read) until one side closes.
                        self.host_readable = false;
                        self.host_eof = true;
                        return Some((self.header(OP_SHUTDOWN, SHUTDOWN_SEND, 0), 0));
                    }
                    Ok(n) => {
                        self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
                        return Some((self.header(OP_RW, 0, n as u32), n));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => self.host_readable = false,
                    Err(_) => {
                        self.host_readable = false;
                        return Some((self.header(OP_RST, 0, 0), 0));
                    }
                }
            }
        }
        if self.pending.credit_update {
            self.pending.credit_update = false;
            return Some((self.header(OP_CREDIT_UPDATE, 0, 0), 0));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let req = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1000,
            dst_port: 2000,
            buf_alloc: 8,
            ..Default::default()
        };
        (Connection::guest_initiated(a, &req, 3), b)
    }

    #[test]
    fn response_then_data_within_credit() {
        let (mut c, mut host) = pair();
        let mut buf = [0u8; 64];
        let (h, _) = c.next_packet(&mut buf).unwrap();
        assert_eq!(h.op, OP_RESPONSE);
        assert_eq!((h.src_port, h.dst_port), (2000, 1000));
        host.write_all(b"0123456789abc").unwrap();
        let (h, n) = c.next_packet(&mut buf).unwrap();
        // Only 8 bytes of credit.
        assert_eq!((h.op, n), (OP_RW, 8));
        assert_eq!(&buf[..8], b"01234567");
        assert_eq!(c.peer_credit(), 0);
        assert!(c.next_packet(&mut buf).is_none());
        // The guest frees its buffer.
        c.update_peer_credit(&Header {
            buf_alloc: 8,
            fwd_cnt: 8,
            ..Default::default()
        });
        let (_, n) = c.next_packet(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"89abc");
        // Nothing more: the host socket would block.
        assert!(c.next_packet(&mut buf).is_none());
        assert!(!c.host_readable);
        drop(host);
        c.host_readable = true;
        let (h, _) = c.next_packet(&mut buf).unwrap();
        assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
        assert!(c.host_eof);
        assert!(!c.wants_rx());
    }

    #[test]
    fn guest_bytes_reach_host_and_credit_is_bounded() {
        let (mut c, mut host) = pair();
        c.from_guest(b"hello").unwrap();
        let mut got = [0u8; 5];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        // The host stops reading: the socket buffer fills, then our buffer, then the guest
        // is cut off instead of growing memory.
        let chunk = vec![0u8; 64 * 1024];
        let mut overflowed = false;
        for _ in 0..64 {
            if c.from_guest(&chunk).is_err() {
                overflowed = true;
                break;
            }
        }
        assert!(overflowed);
        assert!(c.to_host.len() <= CONN_BUF_SIZE as usize);
    }

    #[test]
    fn credit_update_after_threshold() {
        let (mut c, mut host) = pair();
        let mut buf = [0u8; 16];
        let _ = c.next_packet(&mut buf); // RESPONSE
        c.host_readable = false;
        let chunk = vec![1u8; CREDIT_UPDATE_THRESHOLD as usize];
        let reader = std::thread::spawn(move || {
            let mut sink = vec![0u8; CREDIT_UPDATE_THRESHOLD as usize];
            host.read_exact(&mut sink).unwrap();
        });
        c.from_guest(&chunk).unwrap();
        while !c.flush_to_host().unwrap() {}
        reader.join().unwrap();
        let (h, _) = c.next_packet(&mut buf).unwrap();
        assert_eq!(h.op, OP_CREDIT_UPDATE);
        assert_eq!(h.fwd_cnt, CREDIT_UPDATE_THRESHOLD);
    }

    #[test]
    fn peer_shutdown_both_resets_once_flushed() {
        let (mut c, _host) = pair();
        c.peer_shutdown(SHUTDOWN_RCV | SHUTDOWN_SEND);
        assert_eq!(c.state, ConnState::PeerClosing);
        let mut buf = [0u8; 4];
        let (h, _) = c.next_packet(&mut buf).unwrap();
        assert_eq!(h.op, OP_RST);
    }

    #[test]
    fn credit_math_survives_wrapping_and_lies() {
        let (mut c, _host) = pair();
        c.tx_cnt = 5;
        c.update_peer_credit(&Header {
            buf_alloc: 100,
            fwd_cnt: u32::MAX - 10,
            ..Default::default()
        });
        assert_eq!(c.peer_credit(), 100 - 16);
        // A peer claiming to have consumed more than we sent gets no extra credit.
        c.update_peer_credit(&Header {
            buf_alloc: 100,
            fwd_cnt: 50,
            ..Default::default()
        });
        assert_eq!(c.peer_credit(), 0);
    }
}
