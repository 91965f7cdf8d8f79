//! Reliability catalogue cases for the guest agent and its engine (see
//! `../shared/docs/reliability-catalogue.md`), each test named `case_NN_...` and checking that
//! case's pass criterion against a real `husk-agent serve` on a Unix socket. The wire-level
//! cases are in `catalogue_wire.rs`; these need root and a static busybox and say SKIP
//! otherwise; the cgroup-limit cases also need cgroup2 with their controller at
//! /sys/fs/cgroup (the nested test host) and say SKIP elsewhere.

#![allow(clippy::unwrap_used)] // a test crate: helpers panic on setup failure

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use husk_protocol::agent::*;
use husk_protocol::agent_ttrpc::AgentClient;

/// What a finished container left: exit status, stdout, stderr.
struct Ran {
    status: u32,
    out: String,
    err: String,
}

/// Creates, starts and waits for container `id`, then removes it.
fn run(c: &AgentClient, id: &str, spec: &[u8]) -> Result<Ran, String> {
    c.create_container(ctx(), &creq_out(id, spec))
        .map_err(|e| e.to_string())?;
    c.start_container(ctx(), &container_req(id)).unwrap();
    let out = String::from_utf8_lossy(&read_all(c, id, "", OutputStream::STDOUT)).into_owned();
    let err = String::from_utf8_lossy(&read_all(c, id, "", OutputStream::STDERR)).into_owned();
    let status = c.wait_process(ctx(), &proc_req(id, "")).unwrap().status;
    c.remove_container(ctx(), &container_req(id)).unwrap();
    Ok(Ran { status, out, err })
}

/// A spec edited by `f` (over the JSON of [`spec`]).
fn spec_with(root: &Path, args: &[&str], f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&spec(root, args)).unwrap();
    f(&mut v);
    serde_json::to_vec(&v).unwrap()
}

/// Host mount count, and what the agent keeps per container (state dirs, bundles,
/// cgroups): all must be back to their baseline after a failed or removed container.
fn leftovers(srv: &Server) -> (usize, Vec<String>) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count();
    let mut names = Vec::new();
    for d in [
        srv.dir.join("root/state"),
        srv.dir.join("root/bundles"),
        PathBuf::from("/sys/fs/cgroup/husk"),
    ] {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                names.push(e.path().display().to_string());
            }
        }
    }
    (mounts, names)
}

/// Catalogue case 22 (agent part): hostile config.json at CreateContainer. Missing root or
/// process, absurd mounts, 1 MB of environment, invalid uid/gid, cwd=/proc/self/fd/N and
/// odd rlimits: each a clean error (at create, or for what only exec can tell, a failed
/// start with the reason), never a panic; no mount, state dir, bundle or cgroup is left.
#[test]
fn case_22_hostile_oci_config() {
    let Some(bb) = can_run_containers() else {
        return;
    };
    let (mut srv, c) = start_server("c22");
    let root = rootfs(&srv.dir, &bb);
    let base = leftovers(&srv);
    let refused: Vec<(&str, Vec<u8>)> = vec![
        (
            "noroot",
            spec_with(&root, &["true"], |s| {
                s.as_object_mut().unwrap().remove("root");
            }),
        ),
        (
            "noproc",
            spec_with(&root, &["true"], |s| {
                s.as_object_mut().unwrap().remove("process");
            }),
        ),
        (
            "relroot",
            spec_with(&root, &["true"], |s| s["root"]["path"] = "rootfs".into()),
        ),
        (
            "fstype",
            spec_with(&root, &["true"], |s| {
                s["mounts"].as_array_mut().unwrap().push(serde_json::json!(
                {"destination": "/x", "type": "nosuchfs", "source": "none"}))
            }),
        ),
        (
            "bindsrc",
            spec_with(&root, &["true"], |s| {
                s["mounts"].as_array_mut().unwrap().push(serde_json::json!(
                {"destination": "/x", "type": "bind", "source": "/no/such/dir", "options": ["rbind"]}))
            }),
        ),
        (
            "reldest",
            spec_with(&root, &["true"], |s| {
                s["mounts"].as_array_mut().unwrap().push(serde_json::json!(
                {"destination": "../../../x", "type": "tmpfs", "source": "tmpfs"}))
            }),
        ),
        (
            "mountopt",
            spec_with(&root, &["true"], |s| {
                s["mounts"].as_array_mut().unwrap().push(serde_json::json!(
                {"destination": "/x", "type": "tmpfs", "source": "tmpfs", "options": ["size=-1x"]}))
            }),
        ),
        (
            "uidmax",
            spec_with(&root, &["true"], |s| {
                s["process"]["user"]["uid"] = u32::MAX.into()
            }),
        ),
        (
            "gidmax",
            spec_with(&root, &["true"], |s| {
                s["process"]["user"]["gid"] = u32::MAX.into()
            }),
        ),
        (
            "uidneg",
            spec_with(&root, &["true"], |s| {
                s["process"]["user"]["uid"] = (-1).into()
            }),
        ),
        (
            "groupmax",
            spec_with(&root, &["true"], |s| {
                s["process"]["user"]["additionalGids"] = serde_json::json!([u32::MAX])
            }),
        ),
        (
            "rlsoft",
            spec_with(
                &root,
                &["true"],
                |s| {
                    s["process"]["rlimits"] =
                        serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 10}])
                },
            ),
        ),
        (
            "rlhuge",
            spec_with(
                &root,
                &["true"],
                |s| s["process"]["rlimits"] = serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 1u64 << 40, "hard": 1u64 << 40}]),
            ),
        ),
        (
            "rltype",
            spec_with(
                &root,
                &["true"],
                |s| {
                    s["process"]["rlimits"] =
                        serde_json::json!([{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}])
                },
            ),
        ),
        (
            "envnul",
            spec_with(&root, &["true"], |s| {
                s["process"]["env"] = serde_json::json!(["A=b\u{0}c"])
            }),
        ),
    ];
    for (id, sp) in &refused {
        let r = c.create_container(ctx(), &creq_out(id, sp));
        let e = r.expect_err(id).to_string();
        assert!(!e.contains("panick"), "{id}: {e}");
        assert_eq!(leftovers(&srv), base, "{id} left something: {e}");
        eprintln!("case 22: {id}: {e:.160}");
    }

    // What only exec can tell: the process never runs, the reason is on its stderr.
    let big_var = format!("BIG={}", "x".repeat(1 << 20));
    let failing_start: Vec<(&str, Vec<u8>)> = vec![(
        "env1m",
        spec_with(&root, &["echo", "ran"], |s| {
            s["process"]["env"] = serde_json::json!(["PATH=/bin", big_var])
        }),
    )];
    let mut cwd_cases = Vec::new();
    for n in 3..10 {
        cwd_cases.push((
            format!("cwdfd{n}"),
            spec_with(&root, &["sh", "-c", "echo ran; pwd"], |s| {
                s["process"]["cwd"] = format!("/proc/self/fd/{n}").into()
            }),
        ));
    }
    for (id, sp) in failing_start
        .iter()
        .map(|(i, s)| (i.to_string(), s.clone()))
        .chain(cwd_cases)
    {
        match run(&c, &id, &sp) {
            Err(e) => eprintln!("case 22: {id}: refused at create: {e:.160}"),
            Ok(r) => {
                assert!(
                    r.status != 0 && !r.out.contains("ran"),
                    "{id}: ran (status {}): {} {}",
                    r.status,
                    r.out,
                    r.err
                );
                eprintln!("case 22: {id}: status {}: {:.160}", r.status, r.err.trim());
            }
        }
        assert_eq!(leftovers(&srv), base, "{id} left something");
    }

    // Absurd but legal: 2,000 tmpfs mounts are all made, and all go with the container.
    let sp = spec_with(
        &root,
        &["sh", "-c", "grep -c ' /m/' /proc/self/mountinfo"],
        |s| {
            let m = s["mounts"].as_array_mut().unwrap();
            for i in 0..2000 {
                m.push(serde_json::json!({"destination": format!("/m/{i}"), "type": "tmpfs", "source": "tmpfs"}));
            }
        },
    );
    let t = Instant::now();
    let r = run(&c, "mounts2k", &sp).unwrap();
    assert_eq!((r.status, r.out.trim()), (0, "2000"), "{}", r.err);
    assert_eq!(leftovers(&srv), base);
    eprintln!("case 22: 2,000 mounts in {:?}", t.elapsed());

    // Large but legal: 1 MB of environment in 16,384 variables runs and sees them all.
    let many: Vec<String> = (0..16384)
        .map(|i| format!("V{i:05}={}", "v".repeat(56)))
        .collect();
    let sp = spec_with(&root, &["sh", "-c", "env | grep -c ^V"], |s| {
        let mut env = vec![serde_json::Value::from("PATH=/bin")];
        env.extend(many.iter().map(|v| serde_json::Value::from(v.as_str())));
        s["process"]["env"] = env.into();
    });
    let r = run(&c, "env16k", &sp).unwrap();
    assert_eq!((r.status, r.out.trim()), (0, "16384"), "{}", r.err);
    assert_eq!(leftovers(&srv), base);
    assert_alive(&mut srv);
    assert!(answers_check(&srv, Duration::from_secs(5)));
}

/// The OCI process of an exec request.
fn exec_req(id: &str, exec_id: &str, process: serde_json::Value) -> ExecProcessRequest {
    let mut e = ExecProcessRequest::new();
    e.container_id = id.into();
    e.exec_id = exec_id.into();
    e.process_json = serde_json::to_vec(&process).unwrap();
    e.stdio = stdio(false);
    e
}

/// Runs `sh -c script` as an exec in container `id`; returns its status and stdout.
fn exec_sh(c: &AgentClient, id: &str, exec_id: &str, script: &str) -> (u32, String) {
    let p = serde_json::json!({"cwd": "/", "args": ["sh", "-c", script], "env": ["PATH=/bin"],
                               "user": {"uid": 0, "gid": 0}});
    c.exec_process(ctx(), &exec_req(id, exec_id, p)).unwrap();
    let out = String::from_utf8_lossy(&read_all(c, id, exec_id, OutputStream::STDOUT)).into_owned();
    let st = c
        .wait_process(ctx(), &proc_req(id, exec_id))
        .unwrap()
        .status;
    (st, out)
}

/// Catalogue case 27: fd leaks and cwd escapes (runc CVE-2024-21626). The container's first
/// process and exec'd processes see only stdio; a cwd of /proc/self/fd/N is refused for
/// both, and a cwd through a symlink is refused or lands inside the root.
#[test]
fn case_27_fd_leak_and_cwd_escape() {
    let Some(bb) = can_run_containers() else {
        return;
    };
    let (srv, c) = start_server("c27");
    let root = rootfs(&srv.dir, &bb);
    std::os::unix::fs::symlink("bin", root.join("link")).unwrap();
    std::os::unix::fs::symlink("../../../../../tmp", root.join("uplink")).unwrap();
    for t in ["ls", "readlink"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(t)).unwrap();
    }
    // The shell lists its own fds (not those of ls, which has its directory open): no pipe
    // (whose ends the shell would hold) and no exec of the last command (`; true`).
    let fds = "ls /proc/$$/fd; true";
    let r = run(&c, "fds", &spec(&root, &["sh", "-c", fds])).unwrap();
    assert_eq!((r.status, r.out.as_str()), (0, "0\n1\n2\n"), "{}", r.err);

    c.create_container(ctx(), &creq_out("c27", &spec(&root, &["sleep", "100"])))
        .unwrap();
    c.start_container(ctx(), &container_req("c27")).unwrap();
    let (st, out) = exec_sh(&c, "c27", "fds", fds);
    assert_eq!((st, out.as_str()), (0, "0\n1\n2\n"));
    // The first process's fds, seen from an exec in the same container.
    // Once it has exec'd: start returns when init has left exec.fifo, not after execve.
    let (_, out) = exec_sh(
        &c,
        "c27",
        "fds1",
        "while [ \"$(readlink /proc/1/exe)\" != /bin/busybox ]; do sleep 0.01; done; \
         ls -l /proc/1/fd; true",
    );
    let fds: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(8))
        .collect();
    assert_eq!(fds, ["0", "1", "2"], "{out}");
    for n in 3..10 {
        let p = serde_json::json!({"cwd": format!("/proc/self/fd/{n}"), "args": ["sh", "-c", "echo ran; pwd"],
                                   "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}});
        let id = format!("cwd{n}");
        let refused = match c.exec_process(ctx(), &exec_req("c27", &id, p)) {
            Err(_) => true,
            Ok(_) => {
                let out = read_all(&c, "c27", &id, OutputStream::STDOUT);
                let st = c.wait_process(ctx(), &proc_req("c27", &id)).unwrap().status;
                st != 0 && !String::from_utf8_lossy(&out).contains("ran")
            }
        };
        assert!(refused, "exec ran with cwd /proc/self/fd/{n}");
    }
    for cwd in ["/link", "/uplink"] {
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        let r = run(
            &c,
            "cwdlink",
            &spec_with(&root, &["sh", "-c", "pwd -P"], |s| {
                s["process"]["cwd"] = cwd.into()
            }),
        )
        .unwrap();
        if r.status == 0 {
            let real = r.out.trim();
            assert!(
                real == "/bin" || real == "/tmp",
                "cwd {cwd} landed at {real}"
            );
        } else {
            assert!(
                r.err.contains("cwd") || r.err.contains("chdir"),
                "{}",
                r.err
            );
        }
    }
    kill9(&c, "c27");
    c.remove_container(ctx(), &container_req("c27")).unwrap();
}

/// Whether a write open of `/proc/<pid>/exe` from a shell in a container worked; the shell
/// prints `WROTE <pid> <exe>` for each that did and `AGENT <pid>` for each process whose
/// exe it could read and that was this binary.
const EXE_PROBE: &str = r#"for p in /proc/[0-9]*; do
  n=${p#/proc/}; l=$(readlink $p/exe 2>/dev/null)
  case "$l" in *husk-agent*) echo "AGENT $n";; esac
  if (: >> $p/exe) 2>/dev/null; then echo "WROTE $n $l"; fi
done"#;

/// Catalogue case 28: agent binary overwrite (runc CVE-2019-5736). From a container with
/// CAP_SYS_PTRACE and CAP_DAC_OVERRIDE, every `/proc/<pid>/exe` write open fails: that of a
/// container init still running the agent's code before its execve (a member of a shared
/// pid namespace, created and not started), and those of processes exec'd meanwhile
/// (probed in a loop while execs run); the binary is unchanged and, once started, no
/// process of the containers runs the agent binary.
#[test]
fn case_28_agent_binary_overwrite() {
    let Some(bb) = can_run_containers() else {
        return;
    };
    let (srv, c) = start_server("c28");
    let root = rootfs(&srv.dir, &bb);
    for t in ["readlink", "ls", "tr", "grep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(t)).unwrap();
    }
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_husk-agent"));
    let meta = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.len(), m.modified().unwrap())
    };
    let before = meta(&agent);
    let caps = serde_json::json!([
        "CAP_SYS_PTRACE",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_KILL"
    ]);
    let with_caps = |args: &[&str]| {
        spec_with(&root, args, |s| {
            s["process"]["capabilities"] = serde_json::json!({"bounding": caps, "effective": caps,
                "permitted": caps, "inheritable": caps, "ambient": caps});
            s["process"]["noNewPrivileges"] = false.into();
        })
    };
    c.create_container(ctx(), &creq_out("c28a", &with_caps(&["sleep", "100"])))
        .unwrap();
    c.start_container(ctx(), &container_req("c28a")).unwrap();
    let member = spec_with(&root, &["sleep", "100"], |s| {
        s["linux"]["namespaces"][0] =
            serde_json::json!({"type": "pid", "path": husk_protocol::shared_pid_ns_path("c28a")});
    });
    c.create_container(ctx(), &creq_out("c28b", &member))
        .unwrap();
    // c28b's init now waits on exec.fifo, a clone of the agent, visible in c28a.
    // Without CAP_SYS_PTRACE the clone's exe cannot even be read (it is non-dumpable).
    let (st, out) = exec_sh(&c, "c28a", "probe", EXE_PROBE);
    assert_eq!(st, 0);
    assert!(
        !out.contains("WROTE"),
        "a write open of an exe worked:\n{out}"
    );
    assert!(
        !out.contains("AGENT"),
        "the agent's clone was readable from the container:\n{out}"
    );
    // With it, the exe can be read, but never opened for writing.
    let p = serde_json::json!({"cwd": "/", "args": ["sh", "-c", EXE_PROBE], "env": ["PATH=/bin"],
                               "user": {"uid": 0, "gid": 0}, "capabilities": {"bounding": caps,
                               "effective": caps, "permitted": caps, "ambient": caps, "inheritable": caps}});
    c.exec_process(ctx(), &exec_req("c28a", "probe2", p))
        .unwrap();
    let out =
        String::from_utf8_lossy(&read_all(&c, "c28a", "probe2", OutputStream::STDOUT)).into_owned();
    let err = read_all(&c, "c28a", "probe2", OutputStream::STDERR);
    eprintln!(
        "probe2 {:?} {}",
        c.wait_process(ctx(), &proc_req("c28a", "probe2")).unwrap(),
        String::from_utf8_lossy(&err)
    );
    assert!(
        !out.contains("WROTE"),
        "a write open of an exe worked:\n{out}"
    );
    assert!(
        out.contains("AGENT"),
        "the created member's init is not visible:\n{out}"
    );
    let (_, pids) = exec_sh(&c, "c28a", "pids", "ls -d /proc/[0-9]* | tr '\\n' ' '");
    assert!(
        pids.split_whitespace().count() >= 3,
        "c28b's init not visible: {pids}"
    );

    // Exec'd processes: probe in a loop while execs come and go.
    let looped =
        format!("end=$(( $(date +%s) + 3 )); while [ $(date +%s) -lt $end ]; do {EXE_PROBE}; done");
    let p = serde_json::json!({"cwd": "/", "args": ["sh", "-c", looped], "env": ["PATH=/bin"],
                               "user": {"uid": 0, "gid": 0}, "capabilities": {"bounding": caps,
                               "effective": caps, "permitted": caps, "ambient": caps, "inheritable": caps}});
    c.exec_process(ctx(), &exec_req("c28a", "loop", p)).unwrap();
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed() < Duration::from_millis(2500) {
        exec_sh(&c, "c28a", &format!("x{n}"), "true");
        n += 1;
    }
    let out =
        String::from_utf8_lossy(&read_all(&c, "c28a", "loop", OutputStream::STDOUT)).into_owned();
    c.wait_process(ctx(), &proc_req("c28a", "loop")).unwrap();
    assert!(
        !out.contains("WROTE"),
        "a write open of an exe worked:\n{out}"
    );
    let mut seen: Vec<&str> = out.lines().filter(|l| l.starts_with("AGENT")).collect();
    seen.sort();
    seen.dedup();
    eprintln!("case 28: {n} execs while probing; agent binary seen (CAP_SYS_PTRACE) as {seen:?}");

    c.start_container(ctx(), &container_req("c28b")).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let (_, out) = exec_sh(
        &c,
        "c28a",
        "after",
        "for p in /proc/[0-9]*; do readlink $p/exe; done",
    );
    assert!(
        !out.contains("husk-agent"),
        "a container process runs the agent:\n{out}"
    );
    assert_eq!(meta(&agent), before, "the agent binary changed");
    for id in ["c28b", "c28a"] {
        kill9(&c, id);
        c.remove_container(ctx(), &container_req(id)).unwrap();
    }
}

/// Catalogue case 29: masked paths and procfs writes (runc CVE-2025-31133/52565/52881). A
/// rootfs whose /dev/null is a symlink, a regular file or another device (and no /dev
/// tmpfs over it) cannot be used to mask: create fails cleanly. A sysctl whose
/// /proc/sys file is the image's own (no proc mount) is refused, the file untouched.
#[test]
fn case_29_masked_paths_and_procfs() {
    let Some(bb) = can_run_containers() else {
        return;
    };
    let (mut srv, c) = start_server("c29");
    let root = rootfs(&srv.dir, &bb);
    std::fs::write(root.join("etc/secret"), "secret\n").unwrap();
    let masked = |s: &mut serde_json::Value| {
        s["linux"]["maskedPaths"] = serde_json::json!(["/etc/secret"]);
    };
    // The control: a real /dev/null masks the file.
    let r = run(
        &c,
        "mask-ok",
        &spec_with(&root, &["cat", "/etc/secret"], masked),
    )
    .unwrap();
    assert_eq!((r.status, r.out.as_str()), (0, ""), "{}", r.err);

    // Without the /dev tmpfs the image's own /dev/null is what masking would bind.
    let no_dev_tmpfs = |s: &mut serde_json::Value| {
        masked(s);
        s["mounts"]
            .as_array_mut()
            .unwrap()
            .retain(|m| m["destination"] != "/dev" && m["destination"] != "/dev/pts");
    };
    let base = leftovers(&srv);
    let null = root.join("dev/null");
    type Plant = Box<dyn Fn(&Path)>;
    let plants: Vec<(&str, Plant)> = vec![
        (
            "symlink",
            Box::new(|p| std::os::unix::fs::symlink("/etc/secret", p).unwrap()),
        ),
        ("file", Box::new(|p| std::fs::write(p, "").unwrap())),
        (
            "zero",
            Box::new(|p| {
                let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
                // SAFETY: a valid path; makes a 1:5 character device node.
                let rc =
                    unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 5)) };
                assert_eq!(rc, 0);
            }),
        ),
    ];
    for (what, plant) in plants {
        let _ = std::fs::remove_file(&null);
        plant(&null);
        let sp = spec_with(&root, &["cat", "/etc/secret"], no_dev_tmpfs);
        let e = c
            .create_container(ctx(), &creq_out("mask", &sp))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not the null device"), "{what}: {e}");
        assert_eq!(leftovers(&srv), base, "{what}");
    }
    let _ = std::fs::remove_file(&null);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/secret")).unwrap(),
        "secret\n"
    );

    // A sysctl with no procfs under /proc/sys: the image's file must not be written.
    let knob = root.join("proc/sys/kernel/domainname");
    std::fs::create_dir_all(knob.parent().unwrap()).unwrap();
    std::fs::write(&knob, "image\n").unwrap();
    let sp = spec_with(&root, &["true"], |s| {
        s["mounts"]
            .as_array_mut()
            .unwrap()
            .retain(|m| m["destination"] != "/proc");
        s["linux"]["sysctl"] = serde_json::json!({"kernel.domainname": "evil"});
    });
    let e = c
        .create_container(ctx(), &creq_out("sysctl", &sp))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not on procfs"), "{e}");
    assert_eq!(std::fs::read_to_string(&knob).unwrap(), "image\n");
    assert_eq!(leftovers(&srv), base);
    // With procfs there, the same sysctl reaches the kernel (the container's UTS namespace).
    std::fs::remove_dir_all(root.join("proc/sys")).unwrap();
    let sp = spec_with(
        &root,
        &["sh", "-c", "cat /proc/sys/kernel/domainname"],
        |s| {
            s["linux"]["sysctl"] = serde_json::json!({"kernel.domainname": "pod.example"});
        },
    );
    let r = run(&c, "sysctl-ok", &sp).unwrap();
    assert_eq!((r.status, r.out.trim()), (0, "pod.example"), "{}", r.err);
    assert_alive(&mut srv);
}

/// Swaps `a` and `b` (a directory and a symlink) with renameat2(RENAME_EXCHANGE) until
/// `stop`; returns how many swaps it made.
fn exchanger(
    a: PathBuf,
    b: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let ca = std::ffi::CString::new(a.as_os_str().as_encoded_bytes()).unwrap();
        let cb = std::ffi::CString::new(b.as_os_str().as_encoded_bytes()).unwrap();
        let mut n = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            // SAFETY: valid NUL-terminated paths; renameat2 only renames.
            let rc = unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    ca.as_ptr(),
                    libc::AT_FDCWD,
                    cb.as_ptr(),
                    libc::RENAME_EXCHANGE,
                )
            };
            assert_eq!(rc, 0, "renameat2: {}", std::io::Error::last_os_error());
            n += 1;
        }
        n
    })
}

/// A volume whose `d` is a directory and `l` a symlink to `target` (absolute, outside).
fn racing_volume(dir: &Path, target: &Path) -> PathBuf {
    let vol = dir.join("vol");
    std::fs::create_dir_all(vol.join("d")).unwrap();
    std::os::unix::fs::symlink(target, vol.join("l")).unwrap();
    std::fs::create_dir_all(target).unwrap();
    vol
}

fn iterations(default: usize) -> usize {
    std::env::var("HUSK_CASE26_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Catalogue case 26, the primitive: every mount destination is resolved by
/// `paths::open_in_root`. 10,000 resolutions of a nested destination inside a directory
/// that another thread keeps exchanging with a symlink to an absolute path outside the
/// root: each one names a place inside the root, and nothing is created outside.
#[test]
fn case_26_symlink_exchange_race_resolution() {
    use husk_agent::engine::{paths, syscall::Create};
    use std::os::fd::AsRawFd;
    let dir = std::env::temp_dir().join(format!("husk-c26r-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let root = dir.join("rootfs");
    let outside = dir.join("outside");
    racing_volume(&root, &outside);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = exchanger(root.join("vol/d"), root.join("vol/l"), stop.clone());
    let n = iterations(10_000).max(10_000);
    let t = Instant::now();
    for i in 0..n {
        let dest = format!("/vol/d/inner{}", i % 16);
        // Err: a component swapped between the create and the open: refused, fine.
        if let Ok(fd) = paths::open_in_root(&root, Path::new(&dest), Create::Dir) {
            let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
            assert!(
                real.starts_with(&root),
                "{dest} resolved to {}",
                real.display()
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    let escaped: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(escaped.is_empty(), "created outside the root: {escaped:?}");
    eprintln!(
        "case 26 (resolution): {n} resolutions, {swaps} exchanges, {:?}",
        t.elapsed()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Catalogue case 26 (CVE-2021-30465): a shared volume in which a directory and a symlink
/// to an absolute host path are exchanged (renameat2 RENAME_EXCHANGE) in a tight loop,
/// while a container is created, again and again, with the volume at /vol and a tmpfs at
/// the nested destination /vol/d/inner. The swapping runs in this process on the volume's
/// directory, not in a second container: busybox has no renameat2, and the inodes are the
/// ones a container sees through its bind mount. Every time, the tmpfs is in the new
/// container's mountinfo (it landed inside its root: a mount outside would have gone with
/// the old root) or the create was refused, and nothing appears at the host path. 150
/// creations here; HUSK_CASE26_ITERATIONS=10000 for the soak run.
#[test]
fn case_26_symlink_exchange_race_on_mount_destinations() {
    let Some(bb) = can_run_containers() else {
        return;
    };
    let (srv, c) = start_server("c26");
    let root = rootfs(&srv.dir, &bb);
    let outside = srv.dir.join("outside");
    let vol = racing_volume(&srv.dir, &outside);
    let vol_mount = serde_json::json!({"destination": "/vol", "type": "bind",
                                       "source": vol, "options": ["rbind", "rw"]});
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = exchanger(vol.join("d"), vol.join("l"), stop.clone());
    let sp = spec_with(&root, &["true"], |s| {
        let m = s["mounts"].as_array_mut().unwrap();
        m.push(vol_mount.clone());
        m.push(
            serde_json::json!({"destination": "/vol/d/inner", "type": "tmpfs", "source": "tmpfs"}),
        );
    });
    let n = iterations(150);
    let t = Instant::now();
    let mut landed = std::collections::BTreeMap::<String, usize>::new();
    let mut refused = 0;
    for i in 0..n {
        let id = format!("r{i}");
        if c.create_container(ctx(), &creq_out(&id, &sp)).is_err() {
            refused += 1; // a component swapped mid-resolution: refused, fine
            continue;
        }
        let pid = c.list_processes(ctx(), &container_req(&id)).unwrap().pids[0];
        let mi = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let tmpfs: Vec<&str> = mi
            .lines()
            .filter(|l| l.contains(" - tmpfs ") && l.contains("/inner "))
            .map(|l| l.split(' ').nth(4).unwrap())
            .collect();
        assert_eq!(
            tmpfs.len(),
            1,
            "iteration {i}: the nested tmpfs is not inside the root:\n{mi}"
        );
        *landed.entry(tmpfs[0].to_string()).or_default() += 1;
        c.remove_container(ctx(), &container_req(&id)).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    let escaped: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(escaped.is_empty(), "created at the host path: {escaped:?}");
    eprintln!(
        "case 26: {n} creations in {:?} ({refused} refused mid-swap), {swaps} exchanges; tmpfs landed at {landed:?}",
        t.elapsed()
    );
}

/// Catalogue case 20 (mount destinations; the /etc files are unit-tested in
/// `net::files`): CreateContainer mounts whose destinations go through an absolute
/// symlink, a `..` symlink, a symlink to a host path and a `..` destination all land
/// inside the container's root, and nothing is created on the host.
#[test]
fn case_20_mount_destinations_through_symlinks_stay_in_root() {
    let Some(bb) = can_run_containers() else {
        return;
    };
    let (srv, c) = start_server("c20");
    let root = rootfs(&srv.dir, &bb);
    let host = srv.dir.join("hostdir");
    std::fs::create_dir_all(&host).unwrap();
    let vol = srv.dir.join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("f"), "vol\n").unwrap();
    std::os::unix::fs::symlink("/", root.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../../../..", root.join("up")).unwrap();
    std::os::unix::fs::symlink(&host, root.join("hostlink")).unwrap();
    let bind = |dest: &str| serde_json::json!({"destination": dest, "type": "bind", "source": vol, "options": ["rbind", "ro"]});
    let script = "cat /m1/f /m2/f; grep -c ' /m4 ' /proc/self/mountinfo";
    let sp = spec_with(&root, &["sh", "-c", script], |s| {
        let m = s["mounts"].as_array_mut().unwrap();
        m.push(bind("/abs/m1"));
        m.push(bind("/up/m2"));
        m.push(
            serde_json::json!({"destination": "/../../../m4", "type": "tmpfs", "source": "tmpfs"}),
        );
    });
    let r = run(&c, "c20", &sp).unwrap();
    assert_eq!(
        (r.status, r.out.as_str()),
        (0, "vol\nvol\n1\n"),
        "{}",
        r.err
    );
    assert!(root.join("m1/f").exists() || root.join("m1").is_dir());
    // A link to a host path names that path inside the root, where it does not exist:
    // refused (the link dangles there), never followed to the host's directory.
    let base = leftovers(&srv);
    let sp = spec_with(&root, &["true"], |s| {
        s["mounts"]
            .as_array_mut()
            .unwrap()
            .push(bind("/hostlink/m3"));
    });
    let e = c
        .create_container(ctx(), &creq_out("c20h", &sp))
        .unwrap_err()
        .to_string();
    assert!(e.contains("hostlink"), "{e}");
    assert_eq!(leftovers(&srv), base);
    for d in ["m1", "m2", "m3", "m4"] {
        assert!(!Path::new("/").join(d).exists(), "/{d} made on the host");
    }
    assert_eq!(
        std::fs::read_dir(&host).unwrap().count(),
        0,
        "made in the host dir"
    );
}

/// Each of these device nodes made with mknod in /tmp, then opened for reading: prints
/// `<name> ok` or `<name> denied`.
const DEVICE_PROBE: &str = r#"for d in "blk b 254 0" "mem c 1 1" "fuse c 10 229" "null2 c 1 3"; do
  set -- $d; mknod /tmp/$1 $2 $3 $4 || echo "$1 mknod-failed"
  if (exec 3< /tmp/$1) 2>/dev/null; then echo "$1 ok"; else echo "$1 denied"; fi
done"#;

fn device_probe_spec(root: &Path) -> Vec<u8> {
    let caps = serde_json::json!(["CAP_MKNOD", "CAP_DAC_OVERRIDE"]);
    spec_with(root, &["sh", "-c", DEVICE_PROBE], |s| {
        s["process"]["capabilities"] = serde_json::json!({"bounding": caps, "effective": caps,
            "permitted": caps, "inheritable": caps, "ambient": caps});
        s["process"]["noNewPrivileges"] = false.into();
        // A tmpfs that allows device nodes, so only the device cgroup stands in the way.
        s["mounts"].as_array_mut().unwrap().push(serde_json::json!(
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["mode=1777"]}));
    })
}

/// Catalogue case 25 (a): a container with CAP_MKNOD makes device nodes that are not in
/// its allowed list (a block device: 254:0, the first virtio disk; /dev/mem; /dev/fuse) and
/// opens them: denied by the device cgroup (agent/src/engine/devices.rs, an eBPF program on
/// the container's cgroup2 directory); /dev/null's 1:3 still opens. The same container
/// without a cgroup (the control) opens /dev/fuse, so the cgroup is what denies it. Runs where
/// cgroup2 is mounted, alone or as the hybrid layout's `unified` (the agent then runs in a
/// mount namespace of its own with that hierarchy at /sys/fs/cgroup).
/// (b) and (c) do not apply as tests here: the guest root is an initramfs unpacked into
/// guest RAM from a cpio the vmm reads with a read-only open on the host; there is no root
/// block device or pmem/DAX range to write to, and nothing is written back.
#[test]
fn case_25_mknod_devices_denied_by_device_cgroup() {
    let Some(bb) = can_run_containers() else {
        return;
    };
    let Some(cg) = cgroup2_mount() else {
        eprintln!("SKIP case 25: no cgroup2 hierarchy on this host");
        return;
    };
    let subtree = std::fs::read_to_string(cg.join("cgroup.subtree_control")).unwrap();
    let had_husk = cg.join("husk").exists();
    let (srv, c) = start_server_with("c25", Launch::Cgroup2);
    let root = rootfs(&srv.dir, &bb);
    let r = run(&c, "c25", &device_probe_spec(&root)).unwrap();
    drop(srv);
    assert!(
        !cg.join("husk/c25").exists(),
        "the container's cgroup is left"
    );
    if cg != Path::new("/sys/fs/cgroup") && subtree.trim().is_empty() && !had_husk {
        // The agent made husk/ and enabled the hierarchy's controllers; put both back.
        let _ = std::fs::remove_dir(cg.join("husk"));
        for ctl in std::fs::read_to_string(cg.join("cgroup.subtree_control"))
            .unwrap()
            .split_whitespace()
        {
            let _ = std::fs::write(cg.join("cgroup.subtree_control"), format!("-{ctl}"));
        }
    }
    let want = "blk denied\nmem denied\nfuse denied\nnull2 ok\n";
    assert_eq!((r.status, r.out.as_str()), (0, want), "{}", r.err);
    assert!(
        !cg.join("husk/c25").exists(),
        "the container's cgroup is left"
    );

    // The control: no cgroup, no device program: /dev/kmsg opens.
    let (srv, c) = start_server("c25-control");
    let root = rootfs(&srv.dir, &bb);
    let r = run(&c, "c25ctl", &device_probe_spec(&root)).unwrap();
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        return; // cgroup2 at /sys/fs/cgroup: the control has a cgroup too
    }
    assert!(r.out.contains("fuse ok\nnull2 ok"), "control: {}", r.out);
    eprintln!("case 25: control without a cgroup: {:?}", r.out);
}

/// Catalogue case 36: a fork bomb in a container with a pids limit of 64. The limit holds
/// (pids.current never above it), the agent answers Check within 2 s throughout, and after
/// the kill the container's cgroup is empty and removed. Needs the pids controller in
/// cgroup2 at /sys/fs/cgroup (the nested test host); SKIP elsewhere.
#[test]
fn case_36_fork_bomb_with_pids_limit() {
    let Some(bb) = can_run_containers() else {
        return;
    };
    if !cgroup2_has("pids") {
        eprintln!("SKIP case 36: no pids controller in cgroup2 at /sys/fs/cgroup (run it in the nested test host)");
        return;
    }
    let (mut srv, c) = start_server("c36");
    let root = rootfs(&srv.dir, &bb);
    let sp = spec_with(&root, &["sh", "-c", "b() { b | b & }; b; sleep 100"], |s| {
        s["linux"]["resources"] = serde_json::json!({"pids": {"limit": 64}});
    });
    c.create_container(ctx(), &creq_out("c36", &sp)).unwrap();
    c.start_container(ctx(), &container_req("c36")).unwrap();
    let t = Instant::now();
    let mut peak = 0;
    while t.elapsed() < Duration::from_secs(3) {
        assert!(
            answers_check(&srv, Duration::from_secs(2)),
            "no Check answer during the bomb"
        );
        let st = c.stats_container(ctx(), &container_req("c36")).unwrap();
        assert_eq!(st.pids_limit, 64);
        peak = peak.max(st.pids_current);
        assert!(st.pids_current <= 64, "pids.current {}", st.pids_current);
    }
    assert!(peak > 32, "the bomb never forked (peak {peak})");
    // Freeze, kill everything, thaw: nothing forks between the listing and the kill.
    c.pause_container(ctx(), &container_req("c36")).unwrap();
    let mut sig = SignalProcessRequest::new();
    sig.container_id = "c36".into();
    sig.signal = 9;
    sig.all = true;
    c.signal_process(ctx(), &sig).unwrap();
    c.resume_container(ctx(), &container_req("c36")).unwrap();
    assert_eq!(
        c.wait_process(ctx(), &proc_req("c36", "")).unwrap().status,
        137
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c
        .list_processes(ctx(), &container_req("c36"))
        .unwrap()
        .pids
        .is_empty()
    {
        assert!(Instant::now() < deadline, "processes left in the cgroup");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.remove_container(ctx(), &container_req("c36")).unwrap();
    assert!(
        !Path::new("/sys/fs/cgroup/husk/c36").exists(),
        "cgroup left"
    );
    assert_alive(&mut srv);
    assert!(answers_check(&srv, Duration::from_secs(2)));
    eprintln!("case 36: pids peak {peak} of 64");
}

/// Catalogue case 37 (agent part): a container allocating past its 32 MiB memory limit
/// (no swap) is OOM-killed; GetOomEvent reports its id and the agent keeps serving. Needs
/// the memory controller in cgroup2 at /sys/fs/cgroup (the nested test host); SKIP
/// elsewhere.
#[test]
fn case_37_oom_reported_through_the_api() {
    let Some(bb) = can_run_containers() else {
        return;
    };
    if !cgroup2_has("memory") {
        eprintln!("SKIP case 37: no memory controller in cgroup2 at /sys/fs/cgroup (run it in the nested test host)");
        return;
    }
    let (mut srv, c) = start_server("c37");
    let root = rootfs(&srv.dir, &bb);
    std::os::unix::fs::symlink("busybox", root.join("bin/tail")).unwrap();
    let sp = spec_with(&root, &["tail", "/dev/zero"], |s| {
        s["linux"]["resources"] =
            serde_json::json!({"memory": {"limit": 32 << 20, "swap": 32 << 20}});
    });
    c.create_container(ctx(), &creq_out("c37", &sp)).unwrap();
    c.start_container(ctx(), &container_req("c37")).unwrap();
    let oom = connect(&srv).get_oom_event(ctx(), &Empty::new()).unwrap();
    assert_eq!(oom.container_id, "c37");
    assert_eq!(
        c.wait_process(ctx(), &proc_req("c37", "")).unwrap().status,
        137
    );
    c.remove_container(ctx(), &container_req("c37")).unwrap();
    assert_alive(&mut srv);
    assert!(answers_check(&srv, Duration::from_secs(2)));
}
