//! Guest vsock packets straight into the host side: each record is a flags byte, a
//! 44-byte header and its payload. The header round-trips through its wire form and is
//! validated as the device does; valid packets go to the connection muxer (whose host
//! socket has a listener on port 5000, so guest connections to it are accepted), and the
//! muxer's answers are drained after each one. Checked: what the host sends is addressed
//! host -> guest, a stream packet with a known op, its length what was read and within
//! the buffer; the muxer holds at most MAX_CONNECTIONS connections.
#![no_main]

use std::os::unix::net::UnixListener;
use std::sync::OnceLock;

use husk_vmm::devices::virtio::vsock::muxer::{parse_connect, Muxer};
use husk_vmm::devices::virtio::vsock::packet::{
    validate, Header, HDR_LEN, OP_CREDIT_REQUEST, OP_REQUEST, OP_RW, TYPE_STREAM,
};
use husk_vmm::devices::virtio::vsock::{HOST_CID, MAX_CONNECTIONS, MAX_PKT_LEN};
use husk_vmm::devices::virtio::NoRegistry;
use libfuzzer_sys::fuzz_target;

const GUEST_CID: u64 = 3;

fn paths() -> &'static (std::path::PathBuf, UnixListener) {
    static P: OnceLock<(std::path::PathBuf, UnixListener)> = OnceLock::new();
    P.get_or_init(|| {
        let sock = std::env::temp_dir().join(format!("husk-fuzz-vpkt-{}.sock", std::process::id()));
        let port = std::path::PathBuf::from(format!("{}_5000", sock.display()));
        let _ = std::fs::remove_file(&port);
        let l = UnixListener::bind(&port).unwrap();
        l.set_nonblocking(true).unwrap();
        (sock, l)
    })
}

fn check_out(h: &Header, n: usize, buf_len: usize) {
    assert_eq!(h.src_cid, HOST_CID);
    assert_eq!(h.dst_cid, GUEST_CID);
    assert_eq!(h.type_, TYPE_STREAM);
    assert!(
        (OP_REQUEST..=OP_CREDIT_REQUEST).contains(&h.op),
        "op {}",
        h.op
    );
    assert_eq!(h.len as usize, n);
    assert!(n <= buf_len);
    assert!(n == 0 || h.op == OP_RW);
}

fuzz_target!(|data: &[u8]| {
    let (sock, listener) = paths();
    let mut mux = Muxer::new(sock, GUEST_CID).unwrap();
    let mut rest = data;
    let mut buf = vec![0u8; MAX_PKT_LEN];
    while rest.len() > HDR_LEN {
        let flags = rest[0];
        let mut b = [0u8; HDR_LEN];
        b.copy_from_slice(&rest[1..=HDR_LEN]);
        rest = &rest[HDR_LEN + 1..];
        let mut h = Header::from_bytes(&b);
        assert_eq!(h.to_bytes(), b, "the header's wire form round-trips");
        if flags & 1 != 0 {
            // Addressed as a guest would, so the fuzzer spends its time past the checks.
            h.src_cid = GUEST_CID;
            h.dst_cid = HOST_CID;
            h.type_ = TYPE_STREAM;
            h.len = h.len.min(rest.len() as u32);
        }
        let avail = rest.len().min(usize::from(flags >> 4) * 256);
        let payload = &rest[..avail];
        rest = &rest[avail..];
        if validate(&h, GUEST_CID, payload.len()).is_err() {
            continue;
        }
        assert!(h.len as usize <= payload.len() && h.len as usize <= MAX_PKT_LEN);
        let payload = &payload[..h.len as usize];
        if let Some(port) = parse_connect(payload) {
            assert_eq!(
                parse_connect(format!("CONNECT {port}").as_bytes()),
                Some(port)
            );
        }
        mux.from_guest(&h, payload, &mut NoRegistry);
        assert!(mux.connection_count() <= MAX_CONNECTIONS);
        // Host ends of accepted connections: dropped, so the guest sees them close.
        while let Ok((s, _)) = listener.accept() {
            drop(s);
        }
        let room = 1 + usize::from(flags & 0x0e) * 512;
        for _ in 0..8 {
            match mux.next_rx(&mut buf[..room], &mut NoRegistry) {
                Some((out, n)) => check_out(&out, n, room),
                None => break,
            }
        }
    }
});
