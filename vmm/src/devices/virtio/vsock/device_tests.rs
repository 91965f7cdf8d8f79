use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use super::*;
use crate::devices::virtio::test_utils::{desc, mem, used, RecordingRegistry, F_NEXT, F_WRITE};
use crate::devices::virtio::vsock::muxer::TOKEN_LISTENER;
use crate::devices::virtio::vsock::packet::*;
use crate::devices::virtio::vsock::HOST_CID;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x20_0000;

struct Harness<'a> {
    dev: Vsock,
    m: &'a GuestMemory,
    rxq: MockSplitQueue<'a, GuestMemory>,
    txq: MockSplitQueue<'a, GuestMemory>,
    reg: RecordingRegistry,
    rx_next: u16,
    tx_next: u16,
    rx_seen: usize,
}

fn sock_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("husk-vsock-{}-{name}.sock", std::process::id()))
}

impl<'a> Harness<'a> {
    fn new(m: &'a GuestMemory, path: &std::path::Path) -> Self {
        let mut dev = Vsock::new(&VsockConfig {
            guest_cid: 3,
            socket: path.into(),
        })
        .unwrap();
        let rxq = MockSplitQueue::create(m, GuestAddress(0), 64);
        let txq = MockSplitQueue::create(m, GuestAddress(0x8000), 64);
        let evq = MockSplitQueue::create(m, GuestAddress(0x10000), 64);
        let mut reg = RecordingRegistry::default();
        dev.init_events(&mut reg);
        dev.activate(
            Activation {
                mem: m.clone(),
                queues: vec![
                    rxq.create_queue().unwrap(),
                    txq.create_queue().unwrap(),
                    evq.create_queue().unwrap(),
                ],
                interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
                queue_evts: Vec::new(),
                acked_features: 0,
            },
            &mut reg,
        )
        .unwrap();
        Harness {
            dev,
            m,
            rxq,
            txq,
            reg,
            rx_next: 0,
            tx_next: 0,
            rx_seen: 0,
        }
    }

    /// The driver resets the device and initializes it again with rings at `base`.
    fn reinit(&mut self, base: u64) {
        self.dev.reset(&mut self.reg);
        self.pump();
        self.rxq = MockSplitQueue::create(self.m, GuestAddress(base), 64);
        self.txq = MockSplitQueue::create(self.m, GuestAddress(base + 0x8000), 64);
        let evq = MockSplitQueue::create(self.m, GuestAddress(base + 0x10000), 64);
        self.dev
            .activate(
                Activation {
                    mem: self.m.clone(),
                    queues: vec![
                        self.rxq.create_queue().unwrap(),
                        self.txq.create_queue().unwrap(),
                        evq.create_queue().unwrap(),
                    ],
                    interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
                    queue_evts: Vec::new(),
                    acked_features: 0,
                },
                &mut self.reg,
            )
            .unwrap();
        self.rx_next = 0;
        self.tx_next = 0;
        self.rx_seen = 0;
    }

    /// Offers one 4 KiB RX buffer (header and payload in one descriptor, as Linux does).
    fn give_rx(&mut self) {
        let addr = RX_BUFS + u64::from(self.rx_next) * 0x1000;
        self.rxq
            .add_desc_chains(&[desc(addr, 0x1000, F_WRITE, 0)], self.rx_next)
            .unwrap();
        self.rx_next += 1;
    }

    /// Packets delivered to the guest since the last call.
    fn take_rx(&mut self) -> Vec<(Header, Vec<u8>)> {
        let all = used(&self.rxq);
        let mut out = Vec::new();
        for (id, len) in &all[self.rx_seen..] {
            let addr = RX_BUFS + u64::from(*id) * 0x1000;
            let mut hb = [0u8; HDR_LEN];
            self.m.read_slice(&mut hb, GuestAddress(addr)).unwrap();
            let h = Header::from_bytes(&hb);
            let mut p = vec![0u8; *len as usize - HDR_LEN];
            self.m
                .read_slice(&mut p, GuestAddress(addr + HDR_LEN as u64))
                .unwrap();
            out.push((h, p));
        }
        self.rx_seen = all.len();
        out
    }

    /// Sends one packet from the guest: header and payload in two descriptors.
    fn send(&mut self, h: Header, payload: &[u8]) {
        let addr = TX_BUFS + u64::from(self.tx_next) * 0x2000;
        self.m
            .write_slice(&h.to_bytes(), GuestAddress(addr))
            .unwrap();
        self.m
            .write_slice(payload, GuestAddress(addr + 0x100))
            .unwrap();
        let descs = if payload.is_empty() {
            vec![desc(addr, HDR_LEN as u32, 0, 0)]
        } else {
            vec![
                desc(addr, HDR_LEN as u32, F_NEXT, self.tx_next + 1),
                desc(addr + 0x100, payload.len() as u32, 0, 0),
            ]
        };
        let n = descs.len() as u16;
        self.txq.add_desc_chains(&descs, self.tx_next).unwrap();
        self.tx_next += n;
        self.dev.queue_notify(TXQ, &mut self.reg);
    }

    fn send_raw(&mut self, descs: &[virtio_queue::desc::RawDescriptor]) {
        self.txq.add_desc_chains(descs, self.tx_next).unwrap();
        self.tx_next += descs.len() as u16;
        self.dev.queue_notify(TXQ, &mut self.reg);
    }

    /// Delivers every event the registry has watched, as if epoll had reported IN.
    fn pump(&mut self) {
        for _ in 0..4 {
            let watched: Vec<_> = self.reg.added.clone();
            for (_, token, ev) in watched {
                let ev = if ev.is_empty() { EventSet::IN } else { ev };
                self.dev.process_event(token, ev, &mut self.reg);
            }
        }
    }
}

fn guest_hdr(op: u16, src_port: u32, dst_port: u32, len: u32) -> Header {
    Header {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
    }
}

#[test]
fn config_space_is_the_guest_cid() {
    let p = sock_path("cfg");
    let d = Vsock::new(&VsockConfig {
        guest_cid: 42,
        socket: p.clone(),
    })
    .unwrap();
    let mut b = [0u8; 8];
    d.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), 42);
    let _ = std::fs::remove_file(p);
}

#[test]
fn host_initiated_connect_ok_and_data_both_ways() {
    let m = mem();
    let p = sock_path("host");
    let mut h = Harness::new(&m, &p);
    for _ in 0..8 {
        h.give_rx();
    }
    let mut host = UnixStream::connect(&p).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    h.dev
        .process_event(TOKEN_LISTENER, EventSet::IN, &mut h.reg);
    h.pump();
    let pkts = h.take_rx();
    assert_eq!(pkts.len(), 1);
    let req = pkts[0].0;
    assert_eq!((req.op, req.dst_port, req.dst_cid), (OP_REQUEST, 1024, 3));
    let host_port = req.src_port;

    // The guest accepts.
    h.send(guest_hdr(OP_RESPONSE, 1024, host_port, 0), &[]);
    let mut line = [0u8; 64];
    let n = host.read(&mut line).unwrap();
    assert_eq!(&line[..n], format!("OK {host_port}\n").as_bytes());

    // Host to guest.
    host.write_all(b"ping from host").unwrap();
    h.pump();
    let pkts = h.take_rx();
    let rw: Vec<_> = pkts.iter().filter(|(h, _)| h.op == OP_RW).collect();
    assert_eq!(rw.len(), 1);
    assert_eq!(rw[0].1, b"ping from host");

    // Guest to host.
    h.send(guest_hdr(OP_RW, 1024, host_port, 5), b"pong!");
    let mut got = [0u8; 5];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong!");

    // The host hangs up: the guest is told, then resets.
    drop(host);
    h.give_rx();
    h.pump();
    let pkts = h.take_rx();
    assert!(pkts.iter().any(|(h, _)| h.op == OP_SHUTDOWN));
    h.send(guest_hdr(OP_RST, 1024, host_port, 0), &[]);
    assert_eq!(h.dev.muxer().connection_count(), 0);
    let _ = std::fs::remove_file(p);
}

#[test]
fn guest_initiated_goes_to_port_socket() {
    let m = mem();
    let p = sock_path("guest");
    let port_path = PathBuf::from(format!("{}_5000", p.display()));
    let _ = std::fs::remove_file(&port_path);
    let listener = UnixListener::bind(&port_path).unwrap();
    let mut h = Harness::new(&m, &p);
    h.give_rx();
    h.give_rx();
    h.send(guest_hdr(OP_REQUEST, 777, 5000, 0), &[]);
    let pkts = h.take_rx();
    assert_eq!(pkts[0].0.op, OP_RESPONSE);
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (5000, 777));
    let (mut s, _) = listener.accept().unwrap();
    h.send(guest_hdr(OP_RW, 777, 5000, 3), b"abc");
    let mut got = [0u8; 3];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"abc");
    // Nobody listens on port 6000: the guest gets a reset.
    h.send(guest_hdr(OP_REQUEST, 778, 6000, 0), &[]);
    let pkts = h.take_rx();
    assert_eq!(pkts[0].0.op, OP_RST);
    let _ = std::fs::remove_file(port_path);
    let _ = std::fs::remove_file(p);
}

#[test]
fn bad_connect_lines_are_dropped() {
    let m = mem();
    let p = sock_path("badline");
    let mut h = Harness::new(&m, &p);
    h.give_rx();
    let mut a = UnixStream::connect(&p).unwrap();
    a.write_all(b"HELLO 1\n").unwrap();
    let mut b = UnixStream::connect(&p).unwrap();
    b.write_all(&[b'x'; 100]).unwrap();
    h.dev
        .process_event(TOKEN_LISTENER, EventSet::IN, &mut h.reg);
    h.pump();
    assert!(h.take_rx().is_empty());
    assert_eq!(h.dev.muxer().connection_count(), 0);
    let mut buf = [0u8; 1];
    assert_eq!(a.read(&mut buf).unwrap(), 0);
    let _ = std::fs::remove_file(p);
}

#[test]
fn case_16_malformed_tx_chains_are_consumed_without_effect() {
    let m = mem();
    let p = sock_path("malformed");
    let mut h = Harness::new(&m, &p);
    h.give_rx();
    // Header shorter than 44 bytes.
    h.send_raw(&[desc(TX_BUFS, 10, 0, 0)]);
    // Header outside guest memory.
    h.send_raw(&[desc(1 << 40, HDR_LEN as u32, 0, 0)]);
    // Huge declared length with a small chain.
    let big = guest_hdr(OP_RW, 1, 2, u32::MAX);
    m.write_slice(&big.to_bytes(), GuestAddress(TX_BUFS))
        .unwrap();
    h.send_raw(&[desc(TX_BUFS, HDR_LEN as u32, 0, 0)]);
    // Huge descriptor length.
    h.send_raw(&[desc(TX_BUFS, u32::MAX, 0, 0)]);
    // Wrong source CID.
    let spoof = Header {
        src_cid: 99,
        ..guest_hdr(OP_REQUEST, 1, 2, 0)
    };
    m.write_slice(&spoof.to_bytes(), GuestAddress(TX_BUFS))
        .unwrap();
    h.send_raw(&[desc(TX_BUFS, HDR_LEN as u32, 0, 0)]);
    // Writable-only chain on the TX queue.
    h.send_raw(&[desc(TX_BUFS, 64, F_WRITE, 0)]);
    assert_eq!(used(&h.txq).len(), 6);
    assert_eq!(h.dev.muxer().connection_count(), 0);
    // A packet for a connection that does not exist gets a reset.
    h.send(guest_hdr(OP_RW, 1, 2, 1), b"x");
    assert_eq!(h.take_rx()[0].0.op, OP_RST);

    // Unknown ops, a datagram, another destination CID, and a len beyond the descriptor
    // holding the payload: dropped, no connection, no packet back.
    let before = used(&h.txq).len();
    for bad in [
        guest_hdr(0, 1, 2, 0),
        guest_hdr(8, 1, 2, 0),
        guest_hdr(u16::MAX, 1, 2, 0),
        Header {
            type_: 2,
            ..guest_hdr(OP_REQUEST, 1, 2, 0)
        },
        Header {
            dst_cid: 3,
            ..guest_hdr(OP_REQUEST, 1, 2, 0)
        },
        Header {
            dst_cid: u64::MAX,
            src_cid: u64::MAX,
            ..guest_hdr(OP_REQUEST, 1, 2, 0)
        },
    ] {
        h.send(bad, &[]);
    }
    h.send(guest_hdr(OP_RW, 1, 2, 100), &[7u8; 10]);
    assert_eq!(used(&h.txq).len(), before + 7);
    assert_eq!(h.dev.muxer().connection_count(), 0);
    assert!(h.take_rx().is_empty());
    let _ = std::fs::remove_file(p);
}

#[test]
fn case_16_split_headers_and_wrong_state_packets() {
    let m = mem();
    let p = sock_path("split");
    let port_path = PathBuf::from(format!("{}_5000", p.display()));
    let _ = std::fs::remove_file(&port_path);
    let listener = UnixListener::bind(&port_path).unwrap();
    let mut h = Harness::new(&m, &p);
    for _ in 0..8 {
        h.give_rx();
    }
    // A header split across three descriptors, the payload in a fourth: read as one
    // packet (the spec does not tie the header to a descriptor).
    let req = guest_hdr(OP_REQUEST, 900, 5000, 0).to_bytes();
    m.write_slice(&req, GuestAddress(TX_BUFS)).unwrap();
    h.send_raw(&[
        desc(TX_BUFS, 10, F_NEXT, h.tx_next + 1),
        desc(TX_BUFS + 10, 30, F_NEXT, h.tx_next + 2),
        desc(TX_BUFS + 40, 4, 0, 0),
    ]);
    assert_eq!(h.take_rx()[0].0.op, OP_RESPONSE);
    let (mut svc, _) = listener.accept().unwrap();
    let rw = guest_hdr(OP_RW, 900, 5000, 5).to_bytes();
    m.write_slice(&rw, GuestAddress(TX_BUFS + 0x1000)).unwrap();
    m.write_slice(b"split", GuestAddress(TX_BUFS + 0x1100))
        .unwrap();
    h.send_raw(&[
        desc(TX_BUFS + 0x1000, 43, F_NEXT, h.tx_next + 1),
        desc(TX_BUFS + 0x1000 + 43, 1, F_NEXT, h.tx_next + 2),
        desc(TX_BUFS + 0x1100, 5, 0, 0),
    ]);
    let mut got = [0u8; 5];
    svc.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"split");
    // A header cut short by the chain's end: dropped.
    h.send_raw(&[
        desc(TX_BUFS, 10, F_NEXT, h.tx_next + 1),
        desc(TX_BUFS + 10, 30, 0, 0),
    ]);
    assert!(h.take_rx().is_empty());
    assert_eq!(h.dev.muxer().connection_count(), 1);
    // A RESPONSE on an established connection: it is reset.
    h.send(guest_hdr(OP_RESPONSE, 900, 5000, 0), &[]);
    assert_eq!(h.take_rx()[0].0.op, OP_RST);
    assert_eq!(h.dev.muxer().connection_count(), 0);
    let _ = std::fs::remove_file(port_path);
    let _ = std::fs::remove_file(p);
}

#[test]
fn tiny_rx_buffers_are_consumed_not_spun_on() {
    let m = mem();
    let p = sock_path("tinyrx");
    let mut h = Harness::new(&m, &p);
    h.rxq
        .add_desc_chains(&[desc(RX_BUFS, 8, F_WRITE, 0)], 0)
        .unwrap();
    h.send(guest_hdr(OP_RW, 1, 2, 0), &[]);
    assert_eq!(used(&h.rxq), vec![(0, 0)]);
    let _ = std::fs::remove_file(p);
}

/// A host-initiated connection to guest port 1024, accepted by the guest; returns the host
/// stream (its OK line read) and the host port.
fn connect_from_host(h: &mut Harness<'_>, p: &std::path::Path) -> (UnixStream, u32) {
    let mut host = UnixStream::connect(p).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    h.dev
        .process_event(TOKEN_LISTENER, EventSet::IN, &mut h.reg);
    h.pump();
    let pkts = h.take_rx();
    let req = pkts.iter().find(|(h, _)| h.op == OP_REQUEST).unwrap().0;
    let host_port = req.src_port;
    h.send(guest_hdr(OP_RESPONSE, 1024, host_port, 0), &[]);
    let mut line = [0u8; 32];
    let n = host.read(&mut line).unwrap();
    assert_eq!(&line[..n], format!("OK {host_port}\n").as_bytes());
    (host, host_port)
}

#[test]
fn case_09_reset_closes_connections_and_fills_no_old_ring() {
    let m = mem();
    let p = sock_path("reset");
    let port_path = PathBuf::from(format!("{}_5000", p.display()));
    let _ = std::fs::remove_file(&port_path);
    let listener = UnixListener::bind(&port_path).unwrap();
    let mut h = Harness::new(&m, &p);
    for _ in 0..8 {
        h.give_rx();
    }
    let (mut host, _) = connect_from_host(&mut h, &p);
    h.send(guest_hdr(OP_REQUEST, 777, 5000, 0), &[]);
    let (mut served, _) = listener.accept().unwrap();
    assert_eq!(h.dev.muxer().connection_count(), 2);
    let old_used = h.rxq.used().idx().load();
    let old_rxq_addr = h.rxq.used_addr();

    // Host data in flight when the driver resets, and more after.
    host.write_all(b"in flight").unwrap();
    served.write_all(b"also in flight").unwrap();
    h.dev.reset(&mut h.reg);
    host.write_all(b"after the reset").unwrap();
    h.pump();
    h.reinit(0x40_0000);
    for _ in 0..8 {
        h.give_rx();
    }
    h.pump();
    // The old ring got nothing after the reset, the new one nothing of the old connections.
    let old_idx: u16 = m.read_obj(GuestAddress(old_rxq_addr.0 + 2)).unwrap();
    assert_eq!(old_idx, old_used);
    assert!(h.take_rx().is_empty());
    assert_eq!(h.dev.muxer().connection_count(), 0);
    // Both host peers see the connection end.
    host.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    served
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    // (EOF, or a reset where the vmm closed its end with the peer's bytes unread.)
    for s in [&mut host, &mut served] {
        let mut b = [0u8; 64];
        match s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("the connection is still open: {other:?}"),
        }
    }
    // The device works on its new rings.
    let (_host2, _) = connect_from_host(&mut h, &p);
    assert_eq!(h.dev.muxer().connection_count(), 1);
    let _ = std::fs::remove_file(port_path);
    let _ = std::fs::remove_file(p);
}

/// Drains every packet the muxer has for the guest; returns them.
fn drain(
    mux: &mut crate::devices::virtio::vsock::muxer::Muxer,
    reg: &mut RecordingRegistry,
) -> Vec<Header> {
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::new();
    while let Some((h, _)) = mux.next_rx(&mut buf, reg) {
        out.push(h);
    }
    out
}

/// A host service at `<socket>_<port>` that accepts (and keeps) every connection.
fn service(
    p: &std::path::Path,
    port: u32,
) -> (PathBuf, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let path = PathBuf::from(format!("{}_{port}", p.display()));
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).unwrap();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = n.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            let Ok(s) = s else { break };
            held.push(s);
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    (path, n)
}

#[test]
fn case_14_connection_flood_is_capped_and_the_host_still_gets_in() {
    use crate::devices::virtio::vsock::{MAX_CONNECTIONS, MAX_HOST_CONNECTIONS};
    // Both ends of ~2,400 sockets live in this process.
    if !enough_fds(6000) {
        return;
    }
    let p = sock_path("flood");
    let (svc_path, accepted) = service(&p, 5000);
    let mut mux = crate::devices::virtio::vsock::muxer::Muxer::new(&p, 3).unwrap();
    let mut reg = RecordingRegistry::default();
    mux.init_events(&mut reg);

    // 5000 guest REQUESTs, the guest reading its RX as it goes.
    let (mut responses, mut rsts) = (0usize, Vec::new());
    for i in 0..5000u32 {
        mux.from_guest(&guest_hdr(OP_REQUEST, 10_000 + i, 5000, 0), &[], &mut reg);
        if i % 64 == 63 {
            for h in drain(&mut mux, &mut reg) {
                match h.op {
                    OP_RESPONSE => responses += 1,
                    OP_RST => rsts.push(h.dst_port),
                    op => panic!("op {op}"),
                }
            }
        }
    }
    for h in drain(&mut mux, &mut reg) {
        match h.op {
            OP_RESPONSE => responses += 1,
            OP_RST => rsts.push(h.dst_port),
            op => panic!("op {op}"),
        }
    }
    assert_eq!(responses, MAX_CONNECTIONS);
    assert_eq!(rsts.len(), 5000 - MAX_CONNECTIONS);
    assert!(rsts
        .iter()
        .all(|&port| port >= 10_000 + MAX_CONNECTIONS as u32));
    assert_eq!(mux.connection_count(), MAX_CONNECTIONS);

    // Half-open from the host side too: connections that never finish CONNECT, and
    // host-initiated ones the guest never answers.
    let mut host_side = Vec::new();
    for i in 0..200u32 {
        let mut s = UnixStream::connect(&p).unwrap();
        if i % 2 == 0 {
            s.write_all(format!("CONNECT {}\n", 2000 + i).as_bytes())
                .unwrap();
        }
        host_side.push(s);
    }
    mux.process_event(TOKEN_LISTENER, EventSet::IN, &mut reg);
    let watched: Vec<_> = reg.added.clone();
    for (_, token, _) in watched {
        mux.process_event(token, EventSet::IN, &mut reg);
    }
    let _ = drain(&mut mux, &mut reg);

    // The shim's control connection is still taken: the guest is asked for port 1024.
    let mut control = UnixStream::connect(&p).unwrap();
    control.write_all(b"CONNECT 1024\n").unwrap();
    mux.process_event(TOKEN_LISTENER, EventSet::IN, &mut reg);
    let watched: Vec<_> = reg.added.clone();
    for (_, token, _) in watched {
        mux.process_event(token, EventSet::IN, &mut reg);
    }
    let asked = drain(&mut mux, &mut reg);
    assert!(
        asked
            .iter()
            .any(|h| h.op == OP_REQUEST && h.dst_port == 1024),
        "{asked:?}"
    );
    // Bounded: every fd the muxer holds is registered with the event loop, and there are
    // at most the two caps of them (plus the listener).
    assert!(reg.added.len() <= MAX_CONNECTIONS + MAX_HOST_CONNECTIONS + 1);
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) <= MAX_CONNECTIONS);

    // The guest closes its connections: the cap is free again.
    for i in 0..MAX_CONNECTIONS as u32 {
        mux.from_guest(&guest_hdr(OP_RST, 10_000 + i, 5000, 0), &[], &mut reg);
    }
    mux.from_guest(&guest_hdr(OP_REQUEST, 60_000, 5000, 0), &[], &mut reg);
    assert_eq!(
        drain(&mut mux, &mut reg).last().map(|h| h.op),
        Some(OP_RESPONSE)
    );
    drop(host_side);
    let _ = std::fs::remove_file(svc_path);
    let _ = std::fs::remove_file(p);
}

#[test]
fn case_15_data_flood_to_a_paused_reader_is_bounded_by_credit_and_intact() {
    use crate::devices::virtio::test_utils::allocated_during;
    use crate::devices::virtio::vsock::CONN_BUF_SIZE;
    const TOTAL: usize = 32 << 20;
    let p = sock_path("dataflood");
    let svc_path = PathBuf::from(format!("{}_6000", p.display()));
    let _ = std::fs::remove_file(&svc_path);
    let listener = UnixListener::bind(&svc_path).unwrap();
    // The host reader: paused for 300 ms, then 5 ms per MiB; checks the counting sequence.
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0usize;
        while at < TOTAL {
            let n = s.read(&mut buf).unwrap();
            assert_ne!(n, 0, "EOF after {at} bytes");
            for (i, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, ((at + i) % 251) as u8, "byte {} is wrong", at + i);
            }
            at += n;
            if at % (1 << 20) < n {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        at
    });
    let mut mux = crate::devices::virtio::vsock::muxer::Muxer::new(&p, 3).unwrap();
    let mut reg = RecordingRegistry::default();
    mux.init_events(&mut reg);
    let mut buf = vec![0u8; 4096];
    let payload: Vec<u8> = (0..TOTAL + 65536).map(|i| (i % 251) as u8).collect();
    let (mut peer_buf, mut peer_fwd, mut sent) = (0u32, 0u32, 0usize);
    let mut max_in_flight = 0u32;
    let mut resets = 0;
    let t0 = std::time::Instant::now();
    let ((), allocated) = allocated_during(|| {
        mux.from_guest(&guest_hdr(OP_REQUEST, 700, 6000, 0), &[], &mut reg);
        while sent < TOTAL {
            let in_flight = (sent as u32).wrapping_sub(peer_fwd);
            max_in_flight = max_in_flight.max(in_flight);
            let credit = peer_buf.saturating_sub(in_flight) as usize;
            if credit > 0 {
                let n = credit.min(64 << 10).min(TOTAL - sent);
                let h = guest_hdr(OP_RW, 700, 6000, n as u32);
                mux.from_guest(&h, &payload[sent..sent + n], &mut reg);
                sent += n;
            } else {
                // Out of credit: the guest waits (asking once) while epoll reports the
                // host socket writable now and then.
                mux.from_guest(&guest_hdr(OP_CREDIT_REQUEST, 700, 6000, 0), &[], &mut reg);
                std::thread::sleep(std::time::Duration::from_millis(1));
                for i in 0..reg.added.len() {
                    let (_, token, ev) = reg.added[i];
                    if ev.contains(EventSet::OUT) {
                        mux.process_event(token, EventSet::OUT, &mut reg);
                    }
                }
            }
            while let Some((h, _)) = mux.next_rx(&mut buf, &mut reg) {
                if h.dst_port == 700 {
                    peer_buf = h.buf_alloc;
                    peer_fwd = h.fwd_cnt;
                    resets += usize::from(h.op == OP_RST);
                }
            }
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(60),
                "stuck at {sent}"
            );
        }
        // Let the rest reach the host.
        while mux.connection_count() == 1 && t0.elapsed() < std::time::Duration::from_secs(60) {
            let watched = reg.added.clone();
            let mut busy = false;
            for (_, token, ev) in watched {
                if ev.contains(EventSet::OUT) {
                    busy = true;
                    mux.process_event(token, EventSet::OUT, &mut reg);
                }
            }
            if !busy {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    });
    assert_eq!(reader.join().unwrap(), TOTAL);
    assert_eq!(resets, 0);
    assert!(max_in_flight <= CONN_BUF_SIZE, "{max_in_flight}");
    // What the vmm allocated while 32 MiB went through: its buffer, not the stream.
    assert!(
        allocated < 2 << 20,
        "{allocated} bytes allocated for a {TOTAL}-byte stream"
    );
    eprintln!(
        "case 15: {} MiB in {:?}, {allocated} bytes allocated, at most {max_in_flight} bytes in flight",
        TOTAL >> 20,
        t0.elapsed()
    );

    // A guest that ignores its credit towards a reader that never reads: reset once it
    // passes the buffer, and the vmm holds no more than the buffer.
    let stalled_path = PathBuf::from(format!("{}_6001", p.display()));
    let _ = std::fs::remove_file(&stalled_path);
    let stalled = UnixListener::bind(&stalled_path).unwrap();
    mux.from_guest(&guest_hdr(OP_REQUEST, 701, 6001, 0), &[], &mut reg);
    let (_held, _) = stalled.accept().unwrap();
    let ((), allocated) = allocated_during(|| {
        for i in 0..200 {
            let h = guest_hdr(OP_RW, 701, 6001, 64 << 10);
            mux.from_guest(&h, &payload[i << 16..(i + 1) << 16], &mut reg);
        }
    });
    let mut reset = false;
    while let Some((h, _)) = mux.next_rx(&mut buf, &mut reg) {
        reset |= h.dst_port == 701 && h.op == OP_RST;
    }
    assert!(reset, "12.5 MiB past the credit and no reset");
    assert!(
        allocated < 2 << 20,
        "{allocated} bytes held for a reader that never reads"
    );
    let _ = std::fs::remove_file(stalled_path);
    let _ = std::fs::remove_file(svc_path);
    let _ = std::fs::remove_file(p);
}

#[test]
fn case_03_rx_buffers_straddling_the_end_of_memory_are_not_written() {
    // The vsock side of case 3 (CVE-2019-18960: a vsock buffer past a region's end). No
    // ASan on stable: the check is that the guest bytes before the end stay as they were
    // and the buffer is consumed empty, vm-memory having refused the range.
    let m = mem();
    let p = sock_path("straddle");
    let port_path = PathBuf::from(format!("{}_5000", p.display()));
    let _ = std::fs::remove_file(&port_path);
    let listener = UnixListener::bind(&port_path).unwrap();
    let mut h = Harness::new(&m, &p);
    let end = 16u64 << 20;
    m.write_slice(&[0x5c; 100], GuestAddress(end - 100))
        .unwrap();
    h.rxq
        .add_desc_chains(&[desc(end - 100, 0x1000, F_WRITE, 0)], 0)
        .unwrap();
    h.rxq
        .add_desc_chains(&[desc(u64::MAX - 10, 0x1000, F_WRITE, 0)], 1)
        .unwrap();
    h.send(guest_hdr(OP_REQUEST, 900, 5000, 0), &[]);
    let _svc = listener.accept().unwrap();
    assert_eq!(used(&h.rxq), vec![(0, 0), (1, 0)]);
    let mut tail = [0u8; 100];
    m.read_slice(&mut tail, GuestAddress(end - 100)).unwrap();
    assert_eq!(tail, [0x5c; 100]);
    let _ = std::fs::remove_file(port_path);
    let _ = std::fs::remove_file(p);
}

/// Whether this process may hold `n` fds (raising its soft limit if it must); says why not.
fn enough_fds(n: u64) -> bool {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return false;
    }
    if r.rlim_cur >= n {
        return true;
    }
    if r.rlim_max >= n {
        r.rlim_cur = n;
        // SAFETY: setrlimit reads the struct we own; raising the soft limit to at most
        // the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } == 0 {
            return true;
        }
    }
    eprintln!(
        "skipped: RLIMIT_NOFILE {} is below the {n} fds this test needs",
        r.rlim_max
    );
    false
}

#[test]
fn case_14_connection_caps_fit_rlimit_nofile() {
    use crate::devices::virtio::vsock::muxer::{caps_for, Muxer};
    use crate::devices::virtio::vsock::{MAX_CONNECTIONS, MAX_HOST_CONNECTIONS};
    assert_eq!(caps_for(1 << 20), (MAX_CONNECTIONS, MAX_HOST_CONNECTIONS));
    assert_eq!(caps_for(u64::MAX), (MAX_CONNECTIONS, MAX_HOST_CONNECTIONS));
    // The common default of 1024: both directions together stay well under it.
    let (g, h) = caps_for(1024);
    assert!(g + h + 128 <= 1024 && g >= 256, "{g} {h}");
    assert_eq!(caps_for(10), (0, 0));
    // A vmm limited to 600 fds refuses the guest's connections beyond its share.
    let p = sock_path("nofile");
    let (svc_path, _accepted) = service(&p, 5000);
    let mut mux = Muxer::with_fd_limit(&p, 3, 600).unwrap();
    let mut reg = RecordingRegistry::default();
    let mut responses = 0;
    for i in 0..1000u32 {
        mux.from_guest(&guest_hdr(OP_REQUEST, 10_000 + i, 5000, 0), &[], &mut reg);
        responses += drain(&mut mux, &mut reg)
            .iter()
            .filter(|h| h.op == OP_RESPONSE)
            .count();
    }
    assert_eq!(responses, caps_for(600).0);
    assert_eq!(mux.connection_count(), caps_for(600).0);
    let _ = std::fs::remove_file(svc_path);
    let _ = std::fs::remove_file(p);
}
