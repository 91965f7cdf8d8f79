//! The agent API end to end over a Unix socket: a real `husk-agent serve` process and the
//! generated ttrpc client. Request validation runs everywhere; the container parts need
//! root and a static busybox (`apt install busybox-static`) and say SKIP otherwise.

#![allow(clippy::unwrap_used)] // a test crate: helpers panic on setup failure

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;

use common::*;
use husk_protocol::agent::*;

#[test]
fn health_details_and_malformed_requests() {
    let (srv, c) = start_server("basic");
    let h = c.check(ctx(), &Empty::new()).unwrap();
    assert!(h.serving);
    let d = c.get_guest_details(ctx(), &Empty::new()).unwrap();
    assert!(d.cpus >= 1 && d.mem_total_bytes > 0 && !d.kernel_version.is_empty());

    use ttrpc::Code;
    assert_eq!(
        code(c.create_container(ctx(), &creq("../x", b"{}"))),
        Code::INVALID_ARGUMENT
    );
    assert_eq!(
        code(c.create_container(ctx(), &creq("ok", b"not json"))),
        Code::INVALID_ARGUMENT
    );
    assert_eq!(
        code(c.create_container(ctx(), &creq("ok", &[0xff, 0xfe]))),
        Code::INVALID_ARGUMENT
    );
    let mut start = ContainerRequest::new();
    start.container_id = "nope".into();
    assert_eq!(code(c.start_container(ctx(), &start)), Code::NOT_FOUND);
    start.container_id = String::new();
    assert_eq!(
        code(c.start_container(ctx(), &start)),
        Code::INVALID_ARGUMENT
    );
    let mut sig = SignalProcessRequest::new();
    sig.container_id = "nope".into();
    sig.signal = 9;
    assert_eq!(code(c.signal_process(ctx(), &sig)), Code::NOT_FOUND);
    let mut sb = CreateSandboxRequest::new();
    sb.hostname = "bad host".into();
    assert_eq!(code(c.create_sandbox(ctx(), &sb)), Code::INVALID_ARGUMENT);

    // Garbage on the wire: the connection may drop, the server must keep serving.
    for junk in [
        &b"\x00\x00\x00\x10\x00\x00\x00\x01\x01\x00garbage-garbage"[..],
        &[0xff; 64],
        &[0; 3],
    ] {
        let mut s = UnixStream::connect(&srv.sock).unwrap();
        let _ = s.write_all(junk);
        drop(s);
    }
    let c2 = connect(&srv);
    assert!(c2.check(ctx(), &Empty::new()).unwrap().serving);
}

#[test]
fn container_lifecycle_with_stdio_exec_and_signals() {
    let Some(bb) = can_run_containers() else {
        return;
    };
    let (srv, c) = start_server("life");
    let root = rootfs(&srv.dir, &bb);

    // 1. stdin in, stdout and stderr out, exit code back.
    let mut r = creq(
        "c1",
        &spec(
            &root,
            &[
                "sh",
                "-c",
                "read x; echo got $x; hostname; echo err >&2; exit 7",
            ],
        ),
    );
    r.stdio = stdio(true);
    c.create_container(ctx(), &r).unwrap();
    let mut cr = ContainerRequest::new();
    cr.container_id = "c1".into();
    assert_eq!(
        code(c.create_container(ctx(), &r)),
        ttrpc::Code::ALREADY_EXISTS
    );
    let pid = c.start_container(ctx(), &cr).unwrap().pid;
    assert!(pid > 1);
    let mut w = WriteStdinRequest::new();
    w.container_id = "c1".into();
    w.data = b"hello\n".to_vec();
    c.write_stdin(ctx(), &w).unwrap();
    c.close_stdin(ctx(), &proc_req("c1", "")).unwrap();
    assert_eq!(
        read_all(&c, "c1", "", OutputStream::STDOUT),
        b"got hello\napi-test\n"
    );
    assert_eq!(read_all(&c, "c1", "", OutputStream::STDERR), b"err\n");
    assert_eq!(
        c.wait_process(ctx(), &proc_req("c1", "")).unwrap().status,
        7
    );
    c.remove_container(ctx(), &cr).unwrap();
    assert_eq!(code(c.start_container(ctx(), &cr)), ttrpc::Code::NOT_FOUND);

    // A create that fails in the engine (here: no such program, which runc also reports
    // at create) is an error naming the cause, and leaves nothing behind.
    let r = creq("bad", &spec(&root, &["/no/such/program"]));
    let err = c.create_container(ctx(), &r).unwrap_err().to_string();
    assert!(
        err.contains("/no/such/program") && err.contains("not found"),
        "{err}"
    );
    cr.container_id = "bad".into();
    assert_eq!(code(c.start_container(ctx(), &cr)), ttrpc::Code::NOT_FOUND);

    // 2. a long-running container: exec into it, then kill it.
    c.create_container(ctx(), &creq_out("c2", &spec(&root, &["sleep", "100"])))
        .unwrap();
    cr.container_id = "c2".into();
    c.start_container(ctx(), &cr).unwrap();
    let mut e = ExecProcessRequest::new();
    e.container_id = "c2".into();
    e.exec_id = "e1".into();
    e.process_json = br#"{"cwd":"/","args":["sh","-c","echo $$ $(hostname) $(ulimit -n); exit 3"],"env":["PATH=/bin"],"user":{"uid":0,"gid":0},"rlimits":[{"type":"RLIMIT_NOFILE","hard":123,"soft":99}]}"#.to_vec();
    e.stdio = stdio(false);
    c.exec_process(ctx(), &e).unwrap();
    let out = String::from_utf8(read_all(&c, "c2", "e1", OutputStream::STDOUT)).unwrap();
    let f: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(f.get(1), Some(&"api-test"), "{out}");
    assert_ne!(f.first(), Some(&"1"), "exec is not the init: {out}");
    assert_eq!(f.get(2), Some(&"99"), "exec rlimits: {out}");
    assert_eq!(
        c.wait_process(ctx(), &proc_req("c2", "e1")).unwrap().status,
        3
    );
    assert_eq!(
        code(c.remove_container(ctx(), &cr)),
        ttrpc::Code::FAILED_PRECONDITION
    );
    assert_eq!(kill9(&c, "c2"), 137);
    c.remove_container(ctx(), &cr).unwrap();
    drop(srv);
}

#[test]
fn terminal_container_gets_a_pty_with_its_size() {
    let Some(bb) = can_run_containers() else {
        return;
    };
    let (srv, c) = start_server("tty");
    let root = rootfs(&srv.dir, &bb);
    let mut sp: serde_json::Value = serde_json::from_slice(&spec(
        &root,
        &["sh", "-c", "test -t 0 && echo isatty; stty size"],
    ))
    .unwrap();
    sp["process"]["terminal"] = true.into();
    let mut r = creq("t1", &serde_json::to_vec(&sp).unwrap());
    let mut s = Stdio::new();
    s.terminal = true;
    s.stdin = true;
    s.stdout = true;
    r.stdio = protobuf::MessageField::some(s);
    c.create_container(ctx(), &r).unwrap();
    let mut rs = ResizeTtyRequest::new();
    rs.container_id = "t1".into();
    rs.width = 100;
    rs.height = 30;
    c.resize_tty(ctx(), &rs).unwrap();
    let mut cr = ContainerRequest::new();
    cr.container_id = "t1".into();
    c.start_container(ctx(), &cr).unwrap();
    let out = String::from_utf8(read_all(&c, "t1", "", OutputStream::STDOUT)).unwrap();
    assert_eq!(out, "isatty\r\n30 100\r\n");
    // exec with a terminal of its own, into a container that is still running
    c.create_container(ctx(), &creq_out("t2", &spec(&root, &["sleep", "100"])))
        .unwrap();
    let cr2 = container_req("t2");
    c.start_container(ctx(), &cr2).unwrap();
    let mut e = ExecProcessRequest::new();
    e.container_id = "t2".into();
    e.exec_id = "x".into();
    e.process_json = br#"{"terminal":true,"cwd":"/","args":["sh","-c","test -t 1 && echo exec-tty"],"env":["PATH=/bin"],"user":{"uid":0,"gid":0}}"#.to_vec();
    let mut s = Stdio::new();
    s.terminal = true;
    s.stdout = true;
    e.stdio = protobuf::MessageField::some(s);
    c.exec_process(ctx(), &e).unwrap();
    assert_eq!(
        read_all(&c, "t2", "x", OutputStream::STDOUT),
        b"exec-tty\r\n"
    );
    assert_eq!(
        c.wait_process(ctx(), &proc_req("t2", "x")).unwrap().status,
        0
    );
    kill9(&c, "t2");
    c.remove_container(ctx(), &cr2).unwrap();
    assert_eq!(
        c.wait_process(ctx(), &proc_req("t1", "")).unwrap().status,
        0
    );
    c.remove_container(ctx(), &cr).unwrap();
}

#[test]
fn a_container_joins_another_ones_pid_namespace_through_the_agents_handle() {
    let Some(bb) = can_run_containers() else {
        return;
    };
    let (srv, c) = start_server("pidns");
    let root = rootfs(&srv.dir, &bb);
    let r = creq_out("pns-sandbox", &spec(&root, &["sleep", "100"]));
    c.create_container(ctx(), &r).unwrap();
    let sandbox = container_req("pns-sandbox");
    c.start_container(ctx(), &sandbox).unwrap();
    // What the shim sends for a pod member with shareProcessNamespace.
    let handle = husk_protocol::shared_pid_ns_path("pns-sandbox");
    // A stale handle of that name (an earlier agent's, here naming the test's own pid
    // namespace) is replaced, never joined.
    std::fs::create_dir_all(husk_protocol::SHARED_PID_NS_DIR).unwrap();
    std::fs::write(&handle, b"").unwrap();
    let bound = Command::new("mount")
        .args(["--bind", "/proc/self/ns/pid", &handle])
        .status()
        .unwrap();
    assert!(bound.success());
    let mut sp: serde_json::Value = serde_json::from_slice(&spec(
        &root,
        &["sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline"],
    ))
    .unwrap();
    sp["linux"]["namespaces"][0] = serde_json::json!({"type": "pid", "path": handle});
    let r = creq_out("pns-member", &serde_json::to_vec(&sp).unwrap());
    c.create_container(ctx(), &r).unwrap();
    assert!(Path::new(&handle).exists(), "no handle at {handle}");
    let member = container_req("pns-member");
    c.start_container(ctx(), &member).unwrap();
    let out = String::from_utf8(read_all(&c, "pns-member", "", OutputStream::STDOUT)).unwrap();
    assert_eq!(
        out, "sleep 100 ",
        "the member's pid 1 is the sandbox's init"
    );
    c.wait_process(ctx(), &proc_req("pns-member", "")).unwrap();
    c.remove_container(ctx(), &member).unwrap();
    // A handle naming a container that does not exist is refused.
    sp["linux"]["namespaces"][0] = serde_json::json!({"type": "pid",
        "path": husk_protocol::shared_pid_ns_path("pns-nobody")});
    let r = creq_out("pns-orphan", &serde_json::to_vec(&sp).unwrap());
    assert_eq!(code(c.create_container(ctx(), &r)), ttrpc::Code::NOT_FOUND);
    kill9(&c, "pns-sandbox");
    c.remove_container(ctx(), &sandbox).unwrap();
    assert!(
        !Path::new(&handle).exists(),
        "the handle outlived its container"
    );
    drop(srv);
}
