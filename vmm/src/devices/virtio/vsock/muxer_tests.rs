use super::*;

#[test]
fn connect_line_parsing() {
    assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
    assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
    assert_eq!(parse_connect(b"CONNECT"), None);
    assert_eq!(parse_connect(b"CONNECT -1"), None);
    assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
    assert_eq!(parse_connect(b"connect 1"), None);
    assert_eq!(parse_connect(&[0xff, 0xfe]), None);
}

#[test]
fn bind_replaces_stale_socket() {
    let p = std::env::temp_dir().join(format!("husk-mux-{}.sock", std::process::id()));
    let a = Muxer::new(&p, 3).unwrap();
    drop(a);
    let b = Muxer::new(&p, 3).unwrap();
    assert_eq!(b.connection_count(), 0);
    assert!(!b.has_rx());
    let _ = std::fs::remove_file(p);
}

fn request(src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op: OP_REQUEST,
        flags: 0,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
    }
}

/// Catalogue case 14: a host service that does not accept (its backlog is full) must not
/// hold the event loop in connect(2): the guest's REQUESTs beyond the backlog are refused
/// with RST at once. A blocking connect here hung every device of the VM, and the vmm's
/// exit after the guest's reset (found by the hostile guest, vmm/tests/hostile_guest.rs).
#[test]
fn case_14_request_to_a_listener_with_a_full_backlog_is_refused_without_blocking() {
    let p = std::env::temp_dir().join(format!("husk-mux-stuck-{}.sock", std::process::id()));
    let mut m = Muxer::new(&p, 3).unwrap();
    let svc_path = PathBuf::from(format!("{}_77", p.display()));
    let _ = std::fs::remove_file(&svc_path);
    let svc = UnixListener::bind(&svc_path).unwrap();
    // SAFETY: listen on our own listening socket only changes its backlog.
    assert_eq!(unsafe { libc::listen(svc.as_raw_fd(), 0) }, 0);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reg = crate::devices::virtio::NoRegistry;
        for port in 0..8 {
            m.from_guest(&request(100 + port, 77), &[], &mut reg);
        }
        let mut buf = [0u8; 64];
        let mut rsts = 0;
        while let Some((h, _)) = m.next_rx(&mut buf, &mut reg) {
            if h.op == OP_RST {
                rsts += 1;
            }
        }
        let _ = tx.send((m.connection_count(), rsts));
    });
    let (conns, rsts) = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("a REQUEST to a listener with a full backlog blocked the event loop");
    assert!(conns < 8, "{conns} connections through a backlog of 0");
    assert_eq!(conns + rsts, 8, "every refused REQUEST gets an RST");
    drop(svc);
    let _ = std::fs::remove_file(&svc_path);
    let _ = std::fs::remove_file(&p);
}
