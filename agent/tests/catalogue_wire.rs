//! Reliability catalogue cases on the agent's wire (see
//! `../shared/docs/reliability-catalogue.md`): hostile ttrpc frames and control-plane bombs
//! against a real `husk-agent serve` on a Unix socket. They need neither root nor
//! containers. The container cases are in `catalogue.rs`.

#![allow(clippy::unwrap_used)] // a test crate: helpers panic on setup failure

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use husk_protocol::agent::*;
use husk_protocol::agent_ttrpc::AgentClient;
use protobuf::Message;

const SERVICE: &str = "husk.agent.v1.Agent";
/// ttrpc's frame-size cap (`ttrpc::proto::MESSAGE_LENGTH_MAX`): 4 MiB.
const FRAME_MAX: u32 = 4 << 20;

/// A ttrpc frame: big-endian length and stream id, type, flags, then the payload.
fn frame(len: u32, stream: u32, typ: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(10 + payload.len());
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&stream.to_be_bytes());
    f.push(typ);
    f.push(0);
    f.extend_from_slice(payload);
    f
}

/// A request frame calling `service/method` with `payload`.
fn request(stream: u32, service: &str, method: &str, payload: &[u8]) -> Vec<u8> {
    let mut r = ttrpc::Request::new();
    r.service = service.into();
    r.method = method.into();
    r.payload = payload.to_vec();
    let body = r.write_to_bytes().unwrap();
    frame(body.len() as u32, stream, 1, &body)
}

/// Sends `bytes` on a new connection and reads one response frame; None when the server
/// closes the connection (or says nothing within 10 s).
fn exchange(sock: &Path, bytes: &[u8]) -> Option<ttrpc::Response> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    read_response(&mut s)
}

/// As [`exchange`], then ends our side of the connection: a server that drops a request
/// without answering then closes at once instead of at the timeout.
fn exchange_then_eof(sock: &Path, bytes: &[u8]) -> Option<ttrpc::Response> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    read_response(&mut s)
}

fn read_response(s: &mut UnixStream) -> Option<ttrpc::Response> {
    let mut h = [0u8; 10];
    s.read_exact(&mut h).ok()?;
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    assert_eq!(h[8], 2, "not a response frame: {h:?}");
    assert!(len <= FRAME_MAX as usize, "response of {len} bytes");
    let mut body = vec![0; len];
    s.read_exact(&mut body).ok()?;
    Some(ttrpc::Response::parse_from_bytes(&body).unwrap())
}

fn status_of(r: &ttrpc::Response) -> (ttrpc::Code, String) {
    (
        r.status.code.enum_value_or_default(),
        r.status.message.clone(),
    )
}

fn check_request(stream: u32) -> Vec<u8> {
    request(
        stream,
        SERVICE,
        "Check",
        &Empty::new().write_to_bytes().unwrap(),
    )
}

/// Catalogue case 17: malformed frames, length prefixes up to 4 GiB, unknown methods,
/// deeply nested and huge protobufs, missing required fields. Each is refused (an error
/// status or a closed connection), the agent never aborts, keeps answering, and its memory
/// stays bounded by the frame-size cap (ttrpc's 4 MiB: a larger length is discarded in
/// 4 KiB pages, never allocated) and does not grow from round to round.
#[test]
fn case_17_agent_ttrpc_fuzzing() {
    let (mut srv, c) = start_server("c17");
    let pid = srv.child.id();
    assert!(c.check(ctx(), &Empty::new()).unwrap().serving);
    let rss0 = proc_status(pid, "VmRSS");

    // Length prefixes up to 4 GiB that are never followed by their body: the server must
    // not allocate what the header claims. Connections held open while we measure.
    let mut held = Vec::new();
    for len in [u32::MAX, 1 << 31, FRAME_MAX + 1, FRAME_MAX, FRAME_MAX - 1] {
        let mut s = UnixStream::connect(&srv.sock).unwrap();
        s.write_all(&frame(len, 1, 1, b"\x0a\x03abc")).unwrap();
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(answers_check(&srv, Duration::from_secs(5)));
    let rss_held = proc_status(pid, "VmRSS");
    assert!(
        rss_held < rss0 + 16 * 1024,
        "agent RSS {rss0} kB -> {rss_held} kB with 4 GiB length prefixes pending"
    );
    drop(held);

    // Everything below three times: memory after the first round is what the allocator
    // keeps; later rounds must not add to it (no per-request leak).
    let mut rss = Vec::new();
    let rounds: usize = std::env::var("R")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for _ in 0..rounds {
        hostile_round(&mut srv, &c);
        rss.push(proc_status(pid, "VmRSS"));
    }
    assert!(
        rss[2] <= rss[0] + 4 * 1024,
        "agent RSS grows per round of hostile requests: {rss:?} kB threads {}",
        proc_status(pid, "Threads")
    );
    assert_alive(&mut srv);
    assert!(answers_check(&srv, Duration::from_secs(5)));
    let rss1 = proc_status(pid, "VmRSS");
    assert!(
        rss1 < rss0 + 16 * 1024,
        "agent RSS grew from {rss0} kB to {rss1} kB"
    );
    eprintln!(
        "case 17: agent RSS {rss0} kB before, {rss_held} kB with 4 GiB prefixes held, \
         {rss:?} kB after each round"
    );
}

/// One round of case 17's refused requests.
fn hostile_round(srv: &mut Server, c: &AgentClient) {
    use ttrpc::Code;
    // A body just over the cap, sent in full: discarded, refused with INVALID_ARGUMENT.
    let over = FRAME_MAX as usize + 1;
    let mut big = frame(over as u32, 3, 1, &[]);
    big.resize(10 + over, 0x41);
    let r = exchange(&srv.sock, &big).expect("a status for an oversized frame");
    let (st, msg) = status_of(&r);
    assert_eq!(st, Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("exceed maximum message size"), "{msg}");

    // Unknown methods and services.
    for (svc, m) in [
        (SERVICE, "NoSuchMethod"),
        ("no.such.Service", "Check"),
        ("", ""),
        (SERVICE, &"M".repeat(64 << 10)),
    ] {
        let r = exchange(&srv.sock, &request(5, svc, m, &[])).expect("a status");
        let (st, msg) = status_of(&r);
        assert_eq!(st, Code::INVALID_ARGUMENT, "{svc}/{m:.20}: {msg:.80}");
        assert!(msg.contains("does not exist"), "{msg:.80}");
    }

    // Malformed frames: an envelope that is not a ttrpc Request gets INVALID_ARGUMENT; a
    // truncated frame, a frame of another type or a garbage header at worst closes that
    // connection.
    let r = exchange(&srv.sock, &frame(4, 7, 1, &[0xff, 0xff, 0xff, 0xff])).expect("a status");
    assert_eq!(status_of(&r).0, Code::INVALID_ARGUMENT);
    for junk in [
        frame(100, 9, 1, b"short"),
        frame(3, 9, 2, b"abc"),
        frame(3, 9, 0x7f, b"abc"),
        vec![0xff; 64],
        vec![0; 9],
    ] {
        let mut s = UnixStream::connect(&srv.sock).unwrap();
        s.write_all(&junk).unwrap();
        // End our side: the server sees EOF where it waits for more and drops us.
        s.shutdown(std::net::Shutdown::Write).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.read_to_end(&mut Vec::new());
    }
    // A frame of an unknown type is skipped: the same connection still answers.
    let mut s = UnixStream::connect(&srv.sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&frame(3, 11, 0x7f, b"abc")).unwrap();
    s.write_all(&check_request(13)).unwrap();
    let r = read_response(&mut s).expect("Check after an unknown frame type");
    assert_eq!(status_of(&r).0, Code::OK);
    drop(s);

    // Payloads that do not decode as the method's message: deeply nested unknown groups
    // (a recursion bomb for a naive parser), a length field claiming 2 GiB, a truncated
    // varint. Refused: an error status or the connection closed, never a crash.
    let mut nested = vec![0x7b_u8; 1 << 20]; // field 15, start group, a million deep
    nested.extend(std::iter::repeat_n(0x7c_u8, 1 << 20));
    let huge_len = [0x12, 0xff, 0xff, 0xff, 0xff, 0x07];
    let truncated = [0x0a, 0x80];
    for p in [&nested[..], &huge_len, &truncated] {
        if let Some(r) = exchange_then_eof(&srv.sock, &request(15, SERVICE, "CreateContainer", p)) {
            assert_ne!(status_of(&r).0, Code::OK);
        }
        assert_alive(srv);
    }

    // Huge but well-formed: a spec of nearly 4 MiB that is not JSON.
    let mut cr = CreateContainerRequest::new();
    cr.container_id = "huge".into();
    cr.spec_json = vec![b'['; FRAME_MAX as usize - 4096];
    assert_eq!(code(c.create_container(ctx(), &cr)), Code::INVALID_ARGUMENT);

    // Missing required fields: no spec at all (Kata agent #125), a spec without root or
    // process, an empty id, empty resources or process JSON.
    for (id, spec) in [
        ("nospec", &b""[..]),
        ("noroot", br#"{"ociVersion":"1.0.2","process":{"cwd":"/","args":["sh"]},"linux":{"namespaces":[{"type":"mount"}]}}"#),
        ("noproc", br#"{"ociVersion":"1.0.2","root":{"path":"/"},"linux":{"namespaces":[{"type":"mount"}]}}"#),
        ("", br#"{}"#),
    ] {
        let r = c.create_container(ctx(), &creq(id, spec));
        assert_eq!(code(r), Code::INVALID_ARGUMENT, "{id}");
    }
    let mut ur = UpdateContainerRequest::new();
    ur.container_id = "nospec".into();
    assert_eq!(code(c.update_container(ctx(), &ur)), Code::INVALID_ARGUMENT);
    let mut er = ExecProcessRequest::new();
    er.container_id = "nospec".into();
    er.exec_id = "e".into();
    assert_eq!(code(c.exec_process(ctx(), &er)), Code::NOT_FOUND);
    // A raw CreateContainer whose payload is empty: every field missing.
    let r = exchange(&srv.sock, &request(17, SERVICE, "CreateContainer", &[])).expect("a status");
    assert_eq!(status_of(&r).0, Code::INVALID_ARGUMENT);
}

/// Catalogue case 41 (agent part): control-plane bombs on the agent's socket. Hundreds of
/// connections held open at once (idle, mid-header, mid-body of a 4 MiB frame: slowloris)
/// and oversized bodies in parallel: another client is still answered at once, memory
/// stays bounded (a partial body costs what was sent, not what its header claims), and
/// every thread the connections took is gone once they close.
#[test]
fn case_41_control_plane_bombs() {
    let (mut srv, c) = start_server("c41");
    let pid = srv.child.id();
    assert!(c.check(ctx(), &Empty::new()).unwrap().serving);
    let (threads0, rss0) = (proc_status(pid, "Threads"), proc_status(pid, "VmRSS"));
    const EACH: usize = 100;
    let mut held = Vec::new();
    for i in 0..3 * EACH {
        let mut s = UnixStream::connect(&srv.sock).unwrap();
        match i % 3 {
            0 => {}
            1 => s.write_all(&frame(64, 1, 1, &[])[..5]).unwrap(),
            _ => s
                .write_all(&frame(FRAME_MAX, 1, 1, &[0x0a; 64 << 10]))
                .unwrap(),
        }
        held.push(s);
    }
    // Oversized bodies on four connections at once, while the others hang.
    let sock = srv.sock.clone();
    let big: Vec<_> = (0..4)
        .map(|_| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let mut f = frame(FRAME_MAX + 1, 3, 1, &[]);
                f.resize(10 + FRAME_MAX as usize + 1, 0);
                let mut s = UnixStream::connect(&sock).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                if let Err(e) = s.write_all(&f) {
                    panic!("writing an oversized body: {e}");
                }
                read_response(&mut s).map(|r| status_of(&r).0)
            })
        })
        .collect();
    let t = Instant::now();
    assert!(
        answers_check(&srv, Duration::from_secs(5)),
        "no answer with {} connections held",
        held.len()
    );
    let check_ms = t.elapsed().as_millis();
    for b in big {
        assert_eq!(b.join().unwrap(), Some(ttrpc::Code::INVALID_ARGUMENT));
    }
    let (threads1, rss1) = (proc_status(pid, "Threads"), proc_status(pid, "VmRSS"));
    assert!(
        rss1 < rss0 + 64 * 1024,
        "agent RSS {rss0} kB -> {rss1} kB with {} connections held",
        held.len()
    );
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let threads2 = loop {
        let n = proc_status(pid, "Threads");
        if n <= threads0 + 2 || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        threads2 <= threads0 + 2,
        "threads {threads0} -> {threads1} held -> {threads2} after closing"
    );
    assert_alive(&mut srv);
    assert!(answers_check(&srv, Duration::from_secs(2)));
    eprintln!(
        "case 41: {} connections held: Check answered in {check_ms} ms; threads {threads0} -> \
         {threads1} -> {threads2}; RSS {rss0} kB -> {rss1} kB -> {} kB",
        3 * EACH,
        proc_status(pid, "VmRSS")
    );
}
