//! virtio-vsock rounds: connection floods (catalogue case 14), malformed packets (case 16),
//! and the health exchange the host starts with `CONNECT <port>` on the vmm's socket.

use crate::hw::{read16, read32, read64, write16, write32, write64};
use crate::timer;
use crate::virtio::{Dev, Vq, F_WRITE};

const Q: u64 = 0x0300_0000;
const RXBUF: u64 = 0x0310_0000;
const TXBUF: u64 = 0x0320_0000;
const RX_BUFS: u16 = 128;
const RX_LEN: u32 = 4096;
const HDR_LEN: u64 = 44;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_RW: u16 = 5;
const TYPE_STREAM: u16 = 1;
const HOST_CID: u64 = 2;

#[derive(Clone, Copy)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Hdr {
    fn write(&self, at: u64) {
        write64(at, self.src_cid);
        write64(at + 8, self.dst_cid);
        write32(at + 16, self.src_port);
        write32(at + 20, self.dst_port);
        write32(at + 24, self.len);
        write16(at + 28, self.type_);
        write16(at + 30, self.op);
        write32(at + 32, self.flags);
        write32(at + 36, self.buf_alloc);
        write32(at + 40, self.fwd_cnt);
    }
    fn read(at: u64) -> Hdr {
        Hdr {
            src_cid: read64(at),
            dst_cid: read64(at + 8),
            src_port: read32(at + 16),
            dst_port: read32(at + 20),
            len: read32(at + 24),
            type_: read16(at + 28),
            op: read16(at + 30),
            flags: read32(at + 32),
            buf_alloc: read32(at + 36),
            fwd_cnt: read32(at + 40),
        }
    }
}

/// Counts of the packets the device sent us, by op.
#[derive(Default, Clone, Copy)]
pub struct Rx {
    pub responses: u32,
    pub rsts: u32,
    pub rws: u32,
    pub requests: u32,
    pub other: u32,
}

pub struct Vsock {
    pub dev: Dev,
    pub guest_cid: u64,
    rx: Vq,
    tx: Vq,
    pub seen: Rx,
}

impl Vsock {
    /// Resets and brings the device up with RX_BUFS receive buffers posted.
    pub fn bring_up(dev: Dev) -> Option<Vsock> {
        if !dev.begin_init() {
            return None;
        }
        let guest_cid = u64::from(dev.r(crate::virtio::REG_CONFIG))
            | (u64::from(dev.r(crate::virtio::REG_CONFIG + 4)) << 32);
        let mut rx = dev.setup_queue(0, 256, Q);
        let tx = dev.setup_queue(1, 256, Q + 0x4000);
        let _ev = dev.setup_queue(2, 16, Q + 0x8000);
        dev.driver_ok();
        for i in 0..RX_BUFS {
            rx.set_desc(
                i,
                RXBUF + u64::from(i) * u64::from(RX_LEN),
                RX_LEN,
                F_WRITE,
                0,
            );
            rx.push(i);
        }
        dev.kick(0);
        Some(Vsock {
            dev,
            guest_cid,
            rx,
            tx,
            seen: Rx::default(),
        })
    }

    pub fn hdr(&self, op: u16, src_port: u32, dst_port: u32, len: u32) -> Hdr {
        Hdr {
            src_cid: self.guest_cid,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 256 * 1024,
            fwd_cnt: 0,
        }
    }

    /// Sends one packet in one descriptor: the header, then `payload`; `desc_len` overrides
    /// the descriptor's length and `flags` its flags (for the malformed ones).
    pub fn send_raw(&mut self, h: &Hdr, payload: &[u8], desc_len: Option<u32>, flags: u16) {
        let slot = self.tx.avail_idx % self.tx.size;
        let at = TXBUF + u64::from(slot) * 256;
        h.write(at);
        for (i, b) in payload.iter().take(200).enumerate() {
            crate::hw::write8(at + HDR_LEN + i as u64, *b);
        }
        let len = desc_len.unwrap_or(HDR_LEN as u32 + payload.len().min(200) as u32);
        self.tx.set_desc(slot, at, len, flags, 0);
        self.tx.push(slot);
        self.dev.kick(1);
        let _ = self.tx.wait_used(200);
        self.tx.last_used = self.tx.used_idx();
    }

    pub fn send(&mut self, h: &Hdr, payload: &[u8]) {
        self.send_raw(h, payload, None, 0);
    }

    /// A header split over two descriptors (22 + 22 bytes).
    pub fn send_split(&mut self, h: &Hdr) {
        let slot = self.tx.avail_idx % self.tx.size;
        let next = (slot + 1) % self.tx.size;
        let at = TXBUF + u64::from(slot) * 256;
        h.write(at);
        self.tx.set_desc(slot, at, 22, crate::virtio::F_NEXT, next);
        self.tx.set_desc(next, at + 22, 22, 0, 0);
        self.tx.push(slot);
        self.dev.kick(1);
        let _ = self.tx.wait_used(200);
        self.tx.last_used = self.tx.used_idx();
    }

    /// Takes what the device delivered, counts it, gives the buffers back; returns the
    /// last packet seen.
    pub fn drain(&mut self) -> Option<(Hdr, u64)> {
        let mut last = None;
        let mut reposted = false;
        while let Some((id, _len)) = self.rx.pop_used() {
            let id = (id as u16) % RX_BUFS;
            let at = RXBUF + u64::from(id) * u64::from(RX_LEN);
            let h = Hdr::read(at);
            match h.op {
                OP_RESPONSE => self.seen.responses += 1,
                OP_RST => self.seen.rsts += 1,
                OP_RW => self.seen.rws += 1,
                OP_REQUEST => self.seen.requests += 1,
                _ => self.seen.other += 1,
            }
            last = Some((h, at));
            self.rx.push(id);
            reposted = true;
        }
        if reposted {
            self.dev.kick(0);
        }
        last
    }

    /// Waits up to `ms` for a packet with op `op`.
    pub fn wait_op(&mut self, op: u16, ms: u64) -> Option<(Hdr, u64)> {
        let t0 = timer::now();
        while timer::ms_since(t0) < ms {
            let mut found = None;
            while let Some((id, _)) = self.rx.pop_used() {
                let id = (id as u16) % RX_BUFS;
                let at = RXBUF + u64::from(id) * u64::from(RX_LEN);
                let h = Hdr::read(at);
                if h.op == op && found.is_none() {
                    found = Some((h, at));
                }
                self.rx.push(id);
                self.dev.kick(0);
            }
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// Lets the device deliver what is pending (drains until quiet for `quiet_ms`).
    pub fn settle(&mut self, quiet_ms: u64) {
        let mut t = timer::now();
        while timer::ms_since(t) < quiet_ms {
            if self.drain().is_some() {
                t = timer::now();
            }
        }
    }
}

/// The idle window: halts in 500 ms steps (a few exits per second) until the host ends it
/// with a connection to `port`, which is refused. False if none came within `ms`.
pub fn idle_until_request(v: &mut Vsock, port: u32, ms: u64) -> bool {
    let mut waited = 0;
    while waited < ms {
        timer::halt_ms(500);
        waited += 500;
        if v.rx.used_idx() != v.rx.last_used {
            if let Some((h, _)) = v.wait_op(OP_REQUEST, 10) {
                let rst = v.hdr(OP_RST, port, h.src_port, 0);
                v.send(&rst, &[]);
                return true;
            }
        }
    }
    false
}

/// Case 14: REQUEST floods: `n` ports nobody listens on, then `n_listen` connections to
/// the host's listening port `listen_port` (more than the vmm's cap), then RSTs for all.
/// Returns (responses, rsts) for the listening port's flood.
pub fn flood(v: &mut Vsock, n: u32, listen_port: u32, n_listen: u32) -> (u32, u32) {
    for i in 0..n {
        let h = v.hdr(OP_REQUEST, 10_000 + i, 20_000 + i, 0);
        v.send(&h, &[]);
        if i % 16 == 15 {
            v.drain();
        }
    }
    v.settle(50);
    let before = v.seen;
    for i in 0..n_listen {
        let h = v.hdr(OP_REQUEST, 40_000 + i, listen_port, 0);
        v.send(&h, &[]);
        if i % 16 == 15 {
            v.drain();
        }
    }
    v.settle(100);
    let got = (
        v.seen.responses - before.responses,
        v.seen.rsts - before.rsts,
    );
    for i in 0..n_listen {
        let h = v.hdr(OP_RST, 40_000 + i, listen_port, 0);
        v.send(&h, &[]);
        if i % 16 == 15 {
            v.drain();
        }
    }
    v.settle(50);
    got
}

/// REQUESTs to a host port whose listener never accepts (its backlog fills).
pub fn backlog(v: &mut Vsock, port: u32, n: u32) {
    for i in 0..n {
        let h = v.hdr(OP_REQUEST, 60_000 + i, port, 0);
        v.send(&h, &[]);
        if i % 16 == 15 {
            v.drain();
        }
    }
    v.settle(50);
    for i in 0..n {
        let h = v.hdr(OP_RST, 60_000 + i, port, 0);
        v.send(&h, &[]);
    }
    v.settle(50);
}

/// Case 16: malformed packets on an established connection and without one.
pub fn bad_packets(v: &mut Vsock, listen_port: u32) {
    let sp = 50_000;
    let h = v.hdr(OP_REQUEST, sp, listen_port, 0);
    v.send(&h, &[]);
    let _ = v.wait_op(OP_RESPONSE, 500);
    let payload = *b"0123456789abcdef";
    // Unknown ops, on the connection and off it.
    for op in [0u16, 8, 99, 0xffff] {
        let h = v.hdr(op, sp, listen_port, 0);
        v.send(&h, &[]);
        let h = v.hdr(op, sp + 100, listen_port, 0);
        v.send(&h, &[]);
    }
    let h = v.hdr(OP_REQUEST, sp + 1, listen_port, 0);
    v.send(&h, &[]);
    let _ = v.wait_op(OP_RESPONSE, 500);
    // len larger than the descriptor, and len u32::MAX.
    for len in [60_000u32, 64 * 1024 + 1, u32::MAX] {
        let h = v.hdr(OP_RW, sp + 1, listen_port, len);
        v.send(&h, &payload);
    }
    // Descriptor shorter than a header; a zero-length one; a device-writable one.
    let h = v.hdr(OP_RW, sp + 1, listen_port, 16);
    v.send_raw(&h, &payload, Some(20), 0);
    v.send_raw(&h, &payload, Some(0), 0);
    v.send_raw(&h, &payload, None, F_WRITE);
    // Spoofed source CIDs and a wrong destination CID.
    for (src, dst) in [(HOST_CID, HOST_CID), (u64::MAX, HOST_CID), (v.guest_cid, 7)] {
        let mut h = v.hdr(OP_REQUEST, sp + 2, listen_port, 0);
        h.src_cid = src;
        h.dst_cid = dst;
        v.send(&h, &[]);
        let mut h = v.hdr(OP_RW, sp, listen_port, 16);
        h.src_cid = src;
        h.dst_cid = dst;
        v.send(&h, &payload);
    }
    // Packets for connections that do not exist.
    for op in [OP_RW, OP_RESPONSE, 4, 6, 7] {
        let h = v.hdr(op, sp + 200, listen_port + 1, 16);
        v.send(&h, &payload);
    }
    // A wrong socket type, and a header split over two descriptors.
    let mut h = v.hdr(OP_REQUEST, sp + 3, listen_port, 0);
    h.type_ = 2;
    v.send(&h, &[]);
    let h = v.hdr(OP_REQUEST, sp + 4, listen_port, 0);
    v.send_split(&h);
    v.settle(100);
    for p in [sp, sp + 1, sp + 2, sp + 3, sp + 4] {
        let h = v.hdr(OP_RST, p, listen_port, 0);
        v.send(&h, &[]);
    }
    v.settle(50);
}

/// The health exchange: wait for the host's connection (a REQUEST to `port`), accept it,
/// expect `ping\n`, answer `pong\n`.
pub fn health(v: &mut Vsock, port: u32, ms: u64) -> Result<(), &'static str> {
    crate::println!(
        "hostile: vsock listening on {}",
        crate::hw::Dec(port.into())
    );
    let (req, _) = v
        .wait_op(OP_REQUEST, ms)
        .ok_or("vsock: no connection from the host")?;
    if req.dst_port != port {
        return Err("vsock: connection to an unexpected port");
    }
    let h = v.hdr(OP_RESPONSE, port, req.src_port, 0);
    v.send(&h, &[]);
    let (rw, at) = v.wait_op(OP_RW, ms).ok_or("vsock: no data from the host")?;
    let ping = b"ping\n";
    if rw.len as usize != ping.len()
        || ping
            .iter()
            .enumerate()
            .any(|(i, c)| crate::hw::read8(at + HDR_LEN + i as u64) != *c)
    {
        return Err("vsock: the host's data is not ping");
    }
    let mut h = v.hdr(OP_RW, port, req.src_port, 5);
    h.fwd_cnt = 5;
    v.send(&h, b"pong\n");
    v.settle(50);
    Ok(())
}
