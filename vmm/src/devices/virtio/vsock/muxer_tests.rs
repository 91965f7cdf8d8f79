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
