//! The host side of vsock: the listening Unix socket for host-initiated connections, the
//! live connections keyed by (host port, guest port), and the queue of connections that
//! have something for the guest. Runs on the event-loop thread only.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::EventSet;

use super::connection::{ConnState, Connection, Origin};
use super::packet::{
    Header, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, TYPE_STREAM,
};
use super::{VsockError, HOST_CID, MAX_CONNECTIONS, MAX_HOST_CONNECTIONS, MAX_PENDING_RSTS};
use crate::devices::virtio::EventRegistry;

/// Event token of the listening socket; connection tokens start above it.
pub const TOKEN_LISTENER: u32 = 0;
/// Longest `CONNECT <port>\n` line accepted.
const CONNECT_LINE_MAX: usize = 32;
/// Host ports handed out to host-initiated connections start here.
const HOST_PORT_BASE: u32 = 1 << 30;

type Key = (u32, u32);

enum Target {
    /// A host connection that has not finished its CONNECT line.
    Handshake,
    Conn(Key),
}

struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

pub struct Muxer {
    path: PathBuf,
    guest_cid: u64,
    listener: UnixListener,
    conns: HashMap<Key, Connection>,
    /// How many of `conns` the guest opened.
    guest_conns: usize,
    /// Connections allowed each way: [`MAX_CONNECTIONS`] and [`MAX_HOST_CONNECTIONS`],
    /// or less where RLIMIT_NOFILE would not hold them (see [`caps_for`]).
    guest_cap: usize,
    host_cap: usize,
    handshakes: HashMap<u32, Handshake>,
    tokens: HashMap<u32, Target>,
    conn_tokens: HashMap<Key, u32>,
    /// Current epoll interest per token; `None` once detached from epoll (the host hung up:
    /// EPOLLHUP cannot be masked and would spin the loop).
    interest: HashMap<u32, Option<EventSet>>,
    hung_up: HashSet<Key>,
    rx_ready: VecDeque<Key>,
    rx_set: HashSet<Key>,
    rsts: VecDeque<Header>,
    next_token: u32,
    next_host_port: u32,
    /// Template mode: the host port whose guest connection is refused and reported here
    /// instead of forwarded (see `snapshot`).
    trap: Option<(u32, Box<dyn FnMut() + Send>)>,
}

impl std::fmt::Debug for Muxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Muxer")
            .field("path", &self.path)
            .field("conns", &self.conns.len())
            .finish()
    }
}

impl Muxer {
    /// Binds the host socket at `path` (replacing a stale one).
    pub fn new(path: &Path, guest_cid: u64) -> Result<Muxer, VsockError> {
        Self::with_fd_limit(path, guest_cid, nofile_limit())
    }

    /// A muxer for a process that may hold `nofile` fds.
    pub fn with_fd_limit(path: &Path, guest_cid: u64, nofile: u64) -> Result<Muxer, VsockError> {
        let (guest_cap, host_cap) = caps_for(nofile);
        let bind = |err| VsockError::Bind {
            path: path.into(),
            err,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(bind(e)),
        }
        let listener = UnixListener::bind(path).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        Ok(Muxer {
            path: path.into(),
            guest_cid,
            listener,
            conns: HashMap::new(),
            guest_conns: 0,
            guest_cap,
            host_cap,
            handshakes: HashMap::new(),
            tokens: HashMap::new(),
            conn_tokens: HashMap::new(),
            interest: HashMap::new(),
            hung_up: HashSet::new(),
            rx_ready: VecDeque::new(),
            rx_set: HashSet::new(),
            rsts: VecDeque::new(),
            next_token: TOKEN_LISTENER + 1,
            next_host_port: HOST_PORT_BASE,
            trap: None,
        })
    }

    /// Refuses every guest connection to host port `port` and calls `hit` for each.
    pub fn trap_port(&mut self, port: u32, hit: Box<dyn FnMut() + Send>) {
        self.trap = Some((port, hit));
    }

    pub fn init_events(&mut self, reg: &mut dyn EventRegistry) {
        reg.add(self.listener.as_raw_fd(), TOKEN_LISTENER, EventSet::IN);
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len() + self.handshakes.len()
    }

    /// Connections the host opened, handshakes included.
    fn host_connection_count(&self) -> usize {
        self.connection_count() - self.guest_conns
    }

    /// Whether a packet may be waiting for the guest.
    pub fn has_rx(&self) -> bool {
        !self.rsts.is_empty() || !self.rx_ready.is_empty()
    }

    fn alloc_token(&mut self) -> u32 {
        loop {
            let t = self.next_token;
            self.next_token = self.next_token.wrapping_add(1) % super::super::QUEUE_TOKEN_BASE;
            if t != TOKEN_LISTENER && !self.tokens.contains_key(&t) {
                return t;
            }
        }
    }

    fn alloc_host_port(&mut self, guest_port: u32) -> u32 {
        loop {
            let p = self.next_host_port;
            self.next_host_port = self.next_host_port.wrapping_add(1).max(HOST_PORT_BASE);
            if !self.conns.contains_key(&(p, guest_port)) {
                return p;
            }
        }
    }

    fn mark_rx(&mut self, key: Key) {
        if self.rx_set.insert(key) {
            self.rx_ready.push_back(key);
        }
    }

    fn reset_for(&mut self, h: &Header) {
        if h.op == OP_RST || self.rsts.len() >= MAX_PENDING_RSTS {
            return;
        }
        self.rsts.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            len: 0,
            type_: TYPE_STREAM,
            op: OP_RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
    }

    /// Re-arms a connection's epoll interest: IN while it has not seen its socket readable,
    /// OUT while guest bytes wait for the host.
    fn rearm(&mut self, key: Key, reg: &mut dyn EventRegistry) {
        let (Some(conn), Some(&token)) = (self.conns.get(&key), self.conn_tokens.get(&key)) else {
            return;
        };
        let fd = conn.stream().as_raw_fd();
        if self.hung_up.contains(&key) && !conn.has_buffered() {
            if self.interest.get(&token) != Some(&None) {
                reg.remove(fd);
                self.interest.insert(token, None);
            }
            return;
        }
        let mut want = EventSet::empty();
        if !conn.host_readable && !conn.host_eof {
            want |= EventSet::IN;
        }
        if conn.has_buffered() {
            want |= EventSet::OUT;
        }
        if self.interest.get(&token) != Some(&Some(want)) {
            reg.modify(fd, token, want);
            self.interest.insert(token, Some(want));
        }
    }

    fn add_conn(&mut self, conn: Connection, reg: &mut dyn EventRegistry) {
        let key = (conn.host_port, conn.guest_port);
        let token = self.alloc_token();
        let want = if conn.host_readable {
            EventSet::empty()
        } else {
            EventSet::IN
        };
        reg.add(conn.stream().as_raw_fd(), token, want);
        self.interest.insert(token, Some(want));
        self.tokens.insert(token, Target::Conn(key));
        self.conn_tokens.insert(key, token);
        if conn.origin == Origin::Guest {
            self.guest_conns += 1;
        }
        self.conns.insert(key, conn);
        self.mark_rx(key);
    }

    fn remove_conn(&mut self, key: Key, reg: &mut dyn EventRegistry) {
        if let Some(conn) = self.conns.remove(&key) {
            if conn.origin == Origin::Guest {
                self.guest_conns -= 1;
            }
            let token = self.conn_tokens.get(&key).copied();
            if token.and_then(|t| self.interest.get(&t)) != Some(&None) {
                reg.remove(conn.stream().as_raw_fd());
            }
        }
        self.hung_up.remove(&key);
        if let Some(t) = self.conn_tokens.remove(&key) {
            self.tokens.remove(&t);
            self.interest.remove(&t);
        }
        self.rx_set.remove(&key);
    }

    /// Closes every connection and forgets every packet owed to the guest: a driver that
    /// reset the device has forgotten its connections, so their host peers get EOF
    /// instead of waiting on a guest that will never answer, and nothing of theirs is put
    /// into the rings of the next initialization. Host connections still sending their
    /// CONNECT line are kept.
    pub fn drop_connections(&mut self, reg: &mut dyn EventRegistry) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove_conn(key, reg);
        }
        self.rx_ready.clear();
        self.rx_set.clear();
        self.rsts.clear();
    }

    /// A packet from the guest (already validated against the guest CID and lengths).
    pub fn from_guest(&mut self, h: &Header, payload: &[u8], reg: &mut dyn EventRegistry) {
        let key = (h.dst_port, h.src_port);
        if h.op == OP_REQUEST {
            if let Some((port, hit)) = &mut self.trap {
                if h.dst_port == *port {
                    hit();
                    self.reset_for(h);
                    return;
                }
            }
            if self.conns.contains_key(&key) || self.guest_conns >= self.guest_cap {
                self.reset_for(h);
                return;
            }
            let target = format!("{}_{}", self.path.display(), h.dst_port);
            match connect_nonblocking(Path::new(&target)) {
                Ok(stream) => {
                    let conn = Connection::guest_initiated(stream, h, self.guest_cid);
                    self.add_conn(conn, reg);
                }
                Err(_) => self.reset_for(h),
            }
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            self.reset_for(h);
            return;
        };
        conn.update_peer_credit(h);
        let mut kill = false;
        match (h.op, conn.state) {
            (OP_RST, _) => {
                self.remove_conn(key, reg);
                return;
            }
            (OP_RESPONSE, ConnState::LocalInit) => kill = conn.accept_response().is_err(),
            (OP_RW, ConnState::Established) => kill = conn.from_guest(payload).is_err(),
            (OP_SHUTDOWN, _) => conn.peer_shutdown(h.flags),
            (OP_CREDIT_UPDATE, _) => {}
            (OP_CREDIT_REQUEST, _) => conn.pending.credit_update = true,
            _ => kill = true,
        }
        if kill {
            conn.pending.rst = true;
        }
        if conn.wants_rx() {
            self.mark_rx(key);
        }
        self.rearm(key, reg);
    }

    /// The next packet for the guest, payload read into `buf`.
    pub fn next_rx(
        &mut self,
        buf: &mut [u8],
        reg: &mut dyn EventRegistry,
    ) -> Option<(Header, usize)> {
        if let Some(h) = self.rsts.pop_front() {
            return Some((h, 0));
        }
        while let Some(key) = self.rx_ready.pop_front() {
            self.rx_set.remove(&key);
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let pkt = conn.next_packet(buf);
            let more = conn.wants_rx();
            match pkt {
                Some((h, n)) if h.op == OP_RST => {
                    self.remove_conn(key, reg);
                    return Some((h, n));
                }
                Some(p) => {
                    if more {
                        self.mark_rx(key);
                    }
                    self.rearm(key, reg);
                    return Some(p);
                }
                None => self.rearm(key, reg),
            }
        }
        None
    }

    /// A host socket (or the listener) is ready.
    pub fn process_event(&mut self, token: u32, events: EventSet, reg: &mut dyn EventRegistry) {
        if token == TOKEN_LISTENER {
            self.accept(reg);
            return;
        }
        match self.tokens.get(&token) {
            Some(Target::Handshake) => self.handshake(token, reg),
            Some(Target::Conn(key)) => {
                let key = *key;
                self.conn_event(key, events, reg);
            }
            None => {}
        }
    }

    fn accept(&mut self, reg: &mut dyn EventRegistry) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.host_connection_count() >= self.host_cap
                        || stream.set_nonblocking(true).is_err()
                    {
                        continue;
                    }
                    let token = self.alloc_token();
                    reg.add(stream.as_raw_fd(), token, EventSet::IN);
                    self.tokens.insert(token, Target::Handshake);
                    self.handshakes.insert(
                        token,
                        Handshake {
                            stream,
                            line: Vec::with_capacity(CONNECT_LINE_MAX),
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    /// Reads the `CONNECT <port>\n` line one byte at a time, so no payload is consumed.
    fn handshake(&mut self, token: u32, reg: &mut dyn EventRegistry) {
        let Some(hs) = self.handshakes.get_mut(&token) else {
            return;
        };
        let mut byte = [0u8; 1];
        let outcome = loop {
            match hs.stream.read(&mut byte) {
                Ok(0) => break Err(()),
                Ok(_) if byte[0] == b'\n' => break parse_connect(&hs.line).ok_or(()).map(Some),
                Ok(_) if hs.line.len() >= CONNECT_LINE_MAX => break Err(()),
                Ok(_) => hs.line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break Err(()),
            }
        };
        match outcome {
            Ok(None) => {}
            Ok(Some(guest_port)) => {
                let Some(hs) = self.handshakes.remove(&token) else {
                    return;
                };
                reg.remove(hs.stream.as_raw_fd());
                self.tokens.remove(&token);
                let host_port = self.alloc_host_port(guest_port);
                let conn =
                    Connection::host_initiated(hs.stream, host_port, guest_port, self.guest_cid);
                self.add_conn(conn, reg);
            }
            Err(()) => {
                if let Some(hs) = self.handshakes.remove(&token) {
                    reg.remove(hs.stream.as_raw_fd());
                }
                self.tokens.remove(&token);
            }
        }
    }

    fn conn_event(&mut self, key: Key, events: EventSet, reg: &mut dyn EventRegistry) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if events
            .intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR)
            && !conn.host_eof
        {
            conn.host_readable = true;
        }
        if events.contains(EventSet::OUT) || conn.has_buffered() {
            match conn.flush_to_host() {
                Ok(true) if conn.state == ConnState::PeerClosing => conn.pending.rst = true,
                Ok(_) => {}
                Err(_) => conn.pending.rst = true,
            }
        }
        if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            // EOF is read (and reported to the guest) when RX buffers allow.
            self.hung_up.insert(key);
        }
        if conn.wants_rx() {
            self.mark_rx(key);
        }
        self.rearm(key, reg);
    }
}

/// fds the vmm keeps for itself (KVM, vCPUs, eventfds, disks, taps, logs) out of its
/// RLIMIT_NOFILE before vsock connections get a share.
const RESERVED_FDS: u64 = 128;

/// The (guest, host) connection caps for a process that may hold `nofile` fds: the
/// constants, or half each of what is left after [`RESERVED_FDS`], so a flood of
/// connections is refused (RST) before the vmm runs out of fds (EMFILE would fail its
/// other work, and a listener it cannot accept from stays readable).
pub fn caps_for(nofile: u64) -> (usize, usize) {
    let half = usize::try_from(nofile.saturating_sub(RESERVED_FDS) / 2).unwrap_or(usize::MAX);
    (half.min(MAX_CONNECTIONS), half.min(MAX_HOST_CONNECTIONS))
}

/// This process's soft RLIMIT_NOFILE (unlimited when it cannot be read).
fn nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only fills the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return u64::MAX;
    }
    r.rlim_cur
}

/// Parses `CONNECT <port>` (the newline already stripped).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let port = s.strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

/// Connects to the host service at `path` without blocking. A blocking connect(2) to a
/// listener whose backlog is full waits until it accepts, and it ran on the event loop: a
/// guest that opened connections to a slow host service stopped every device and the
/// vmm's own exit. Non-blocking, a full backlog fails at once (EAGAIN) and the guest gets
/// an RST; a Unix stream connect never returns EINPROGRESS.
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket(2) has no memory effects; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket just created and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un and `len` does not exceed its size.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
#[path = "muxer_tests.rs"]
mod tests;
