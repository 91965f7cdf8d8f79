use std::sync::Arc;

use super::*;
use crate::agent::{AgentError, ProcessRef};
use crate::events::Event;
use crate::testutil::*;
use containerd_shim_protos::ttrpc::Code;

struct Pod {
    svc: Arc<PodService>,
    launcher: Arc<FakeLauncher>,
    events: Arc<RecordingEvents>,
    share: Arc<FakeShare>,
    dir: TempDir,
}

fn pod() -> Pod {
    let dir = TempDir::new("svc");
    let launcher = Arc::new(FakeLauncher::default());
    let events = Arc::new(RecordingEvents::default());
    let share = Arc::new(FakeShare::default());
    let cfg = Config {
        state_dir: dir.path().join("state"),
        ..Config::default()
    };
    let svc = PodService::new(
        cfg,
        Deps {
            launcher: launcher.clone(),
            events: events.clone(),
            share: share.clone(),
        },
    );
    Pod {
        svc,
        launcher,
        events,
        share,
        dir,
    }
}

impl Pod {
    /// A bundle with `spec` as its config.json.
    fn bundle(&self, id: &str, spec: &str) -> CreateRequest {
        let b = self.dir.path().join(id);
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("config.json"), spec).unwrap();
        CreateRequest {
            id: id.into(),
            bundle: b,
            ..Default::default()
        }
    }
    fn agent(&self) -> &FakeAgent {
        &self.launcher.agent
    }
}

fn cri(kind: &str, sandbox: &str) -> String {
    format!(
        r#"{{"annotations":{{"io.kubernetes.cri.container-type":"{kind}","io.kubernetes.cri.sandbox-id":"{sandbox}"}}}}"#
    )
}

fn code(e: ShimError) -> Code {
    e.code()
}

#[tokio::test]
async fn ctr_run_lifecycle() {
    let p = pod();
    let spec = r#"{"linux":{"resources":{"cpu":{"quota":200000,"period":100000},"memory":{"limit":134217728}}}}"#;
    let pid = p.svc.create(p.bundle("c1", spec)).await.unwrap();
    assert_eq!(pid, 4242);
    let req = p.launcher.requests.lock().unwrap()[0].clone();
    assert_eq!(req.pod_id, "c1");
    assert_eq!((req.size.vcpus, req.size.memory_mib), (2, 128 + 64));
    assert_eq!(req.pod_dir, p.dir.path().join("state/c1"));
    assert_eq!(p.svc.state("c1", "").await.unwrap().status, Status::Created);

    assert_eq!(p.svc.start("c1", "").await.unwrap(), 4242);
    assert_eq!(p.svc.state("c1", "").await.unwrap().status, Status::Running);
    // a second start is refused
    assert_eq!(
        code(p.svc.start("c1", "").await.unwrap_err()),
        Code::FAILED_PRECONDITION
    );
    // a running container cannot be deleted
    assert_eq!(
        code(p.svc.delete("c1", "").await.unwrap_err()),
        Code::FAILED_PRECONDITION
    );

    p.agent().exit(&ProcessRef::init("c1"), 3);
    assert_eq!(p.svc.wait("c1", "").await.unwrap().0, 3);
    let exit = p.events.wait_for(|e| matches!(e, Event::Exit { .. })).await;
    assert!(matches!(exit, Event::Exit { ref id, exit_status: 3, pid: 4242, .. } if id == "c1"));
    // kill after exit: NotFound, as runc's shim answers
    assert_eq!(
        code(p.svc.kill("c1", "", 15, false).await.unwrap_err()),
        Code::NOT_FOUND
    );

    let (pid, status, _) = p.svc.delete("c1", "").await.unwrap();
    assert_eq!((pid, status), (4242, 3));
    assert!(
        !p.launcher.vm.is_running(),
        "deleting a one-container pod stops its vm"
    );
    assert_eq!(
        p.events.topics(),
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete"
        ]
    );
    assert_eq!(
        *p.share.calls.lock().unwrap(),
        ["prepare_pod", "share c1", "unshare c1", "cleanup_pod"]
    );
    assert_eq!(
        code(p.svc.state("c1", "").await.unwrap_err()),
        Code::NOT_FOUND
    );
    assert!(p.svc.shutdown().await);
    p.svc.wait_exit().await;
}

#[tokio::test]
async fn kill_reaches_the_agent_and_exit_follows() {
    let p = pod();
    p.svc.create(p.bundle("c1", "{}")).await.unwrap();
    p.svc.start("c1", "").await.unwrap();
    p.svc.kill("c1", "", 9, true).await.unwrap();
    assert!(p
        .agent()
        .calls()
        .contains(&"signal_process c1 9".to_string()));
    assert_eq!(p.svc.wait("c1", "").await.unwrap().0, 137);
}

#[tokio::test]
async fn exec_lifecycle() {
    let p = pod();
    p.svc.create(p.bundle("c1", "{}")).await.unwrap();
    // no exec before the container runs
    let e = p
        .svc
        .exec("c1", "e1", StdioPaths::default(), b"{}".to_vec())
        .await;
    assert_eq!(code(e.unwrap_err()), Code::FAILED_PRECONDITION);
    p.svc.start("c1", "").await.unwrap();
    p.svc
        .exec("c1", "e1", StdioPaths::default(), b"{}".to_vec())
        .await
        .unwrap();
    let e = p
        .svc
        .exec("c1", "e1", StdioPaths::default(), b"{}".to_vec())
        .await;
    assert_eq!(code(e.unwrap_err()), Code::ALREADY_EXISTS);
    assert_eq!(
        p.svc.state("c1", "e1").await.unwrap().status,
        Status::Created
    );
    p.svc.start("c1", "e1").await.unwrap();
    p.svc.resize_pty("c1", "e1", 80, 24).await.unwrap();
    p.agent().exit(&ProcessRef::exec("c1", "e1"), 0);
    assert_eq!(p.svc.wait("c1", "e1").await.unwrap().0, 0);
    p.events
        .wait_for(|e| matches!(e, Event::Exit { id, .. } if id == "e1"))
        .await;
    p.svc.delete("c1", "e1").await.unwrap();
    assert_eq!(
        code(p.svc.state("c1", "e1").await.unwrap_err()),
        Code::NOT_FOUND
    );
    // the container itself is still running
    assert_eq!(p.svc.state("c1", "").await.unwrap().status, Status::Running);
    let topics = p.events.topics();
    assert!(topics.contains(&"/tasks/exec-added") && topics.contains(&"/tasks/exec-started"));
    assert!(p.agent().calls().contains(&"exec_process e1".to_string()));
}

#[tokio::test]
async fn pause_resume_and_inspection() {
    let p = pod();
    p.svc.create(p.bundle("c1", "{}")).await.unwrap();
    assert_eq!(
        code(p.svc.pause("c1").await.unwrap_err()),
        Code::FAILED_PRECONDITION
    );
    p.svc.start("c1", "").await.unwrap();
    p.svc.pause("c1").await.unwrap();
    assert_eq!(p.svc.state("c1", "").await.unwrap().status, Status::Paused);
    let e = p.svc.exec("c1", "e1", StdioPaths::default(), vec![]).await;
    assert_eq!(code(e.unwrap_err()), Code::FAILED_PRECONDITION);
    p.svc.resume("c1").await.unwrap();
    assert_eq!(p.svc.state("c1", "").await.unwrap().status, Status::Running);
    assert_eq!(p.svc.pids("c1").await.unwrap(), vec![1, 7]);
    assert_eq!(p.svc.stats("c1").await.unwrap().memory_usage, 4096);
    p.svc.update("c1", b"{}").await.unwrap();
    let topics = p.events.topics();
    assert!(topics.contains(&"/tasks/paused") && topics.contains(&"/tasks/resumed"));
    assert_eq!(p.svc.connect("c1").await.unwrap().1, 4242);
}

#[tokio::test]
async fn agent_errors_keep_their_code() {
    let p = pod();
    p.svc.create(p.bundle("c1", "{}")).await.unwrap();
    p.agent().fail(
        "start_container c1",
        AgentError::Status {
            code: Code::INVALID_ARGUMENT,
            message: "exec: \"nope\": not found".into(),
        },
    );
    let e = p.svc.start("c1", "").await.unwrap_err();
    assert_eq!(code(e), Code::INVALID_ARGUMENT);
    assert_eq!(p.svc.state("c1", "").await.unwrap().status, Status::Created);
    // a container that never started can be deleted
    p.svc.delete("c1", "").await.unwrap();
}

#[tokio::test]
async fn case_43_pod_with_two_containers_and_vm_death() {
    let p = pod();
    p.svc
        .create(p.bundle("p1", &cri("sandbox", "p1")))
        .await
        .unwrap();
    p.svc.start("p1", "").await.unwrap();
    p.svc
        .create(p.bundle("c2", &cri("container", "p1")))
        .await
        .unwrap();
    p.svc.start("c2", "").await.unwrap();
    assert_eq!(
        p.launcher.requests.lock().unwrap().len(),
        1,
        "one vm per pod"
    );
    // a container of another pod is refused
    let e = p.svc.create(p.bundle("c3", &cri("container", "p2"))).await;
    assert_eq!(code(e.unwrap_err()), Code::INVALID_ARGUMENT);
    // duplicate ids too
    let e = p.svc.create(p.bundle("c2", &cri("container", "p1"))).await;
    assert_eq!(code(e.unwrap_err()), Code::ALREADY_EXISTS);

    p.launcher.vm.crash();
    for id in ["p1", "c2"] {
        assert_eq!(p.svc.wait(id, "").await.unwrap().0, VM_DIED_EXIT_STATUS);
        p.events
            .wait_for(|e| matches!(e, Event::Exit { id: i, exit_status: 255, .. } if i == id))
            .await;
    }
    let exits = p
        .events
        .topics()
        .iter()
        .filter(|t| **t == "/tasks/exit")
        .count();
    assert_eq!(exits, 2, "one TaskExit per container, no duplicates");
    // afterwards: kill says finished, exec says vm gone, delete still cleans up
    assert_eq!(
        code(p.svc.kill("c2", "", 9, false).await.unwrap_err()),
        Code::NOT_FOUND
    );
    p.svc.delete("c2", "").await.unwrap();
    p.svc.delete("p1", "").await.unwrap();
    assert!(p.svc.shutdown().await);
}

#[tokio::test]
async fn member_without_its_sandbox_is_refused() {
    let p = pod();
    let e = p
        .svc
        .create(p.bundle("c2", &cri("container", "p1")))
        .await
        .unwrap_err();
    assert_eq!(code(e), Code::FAILED_PRECONDITION);
    assert!(p.launcher.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn case_47_failed_boot_and_failed_first_container_leave_nothing() {
    let p = pod();
    *p.launcher.fail.lock().unwrap() = Some("kvm said no".into());
    let e = p.svc.create(p.bundle("c1", "{}")).await.unwrap_err();
    assert_eq!(e.to_string(), "starting the vm: kvm said no");
    assert_eq!(
        code(p.svc.state("c1", "").await.unwrap_err()),
        Code::NOT_FOUND
    );
    assert_eq!(
        *p.share.calls.lock().unwrap(),
        ["prepare_pod", "cleanup_pod"]
    );

    let p = pod();
    p.agent().fail(
        "create_container c1",
        AgentError::Status {
            code: Code::INTERNAL,
            message: "mount failed".into(),
        },
    );
    assert!(p.svc.create(p.bundle("c1", "{}")).await.is_err());
    assert!(
        !p.launcher.vm.is_running(),
        "the vm of a pod that never got a container is stopped"
    );
    assert!(p.events.topics().is_empty());
}

#[tokio::test]
async fn case_22_missing_bundle_is_invalid_argument() {
    let p = pod();
    let req = CreateRequest {
        id: "c1".into(),
        bundle: p.dir.path().join("nope"),
        ..Default::default()
    };
    assert_eq!(
        code(p.svc.create(req).await.unwrap_err()),
        Code::INVALID_ARGUMENT
    );
}

#[tokio::test]
async fn oom_events_are_forwarded() {
    let p = pod();
    p.svc.create(p.bundle("c1", "{}")).await.unwrap();
    p.svc.start("c1", "").await.unwrap();
    p.agent().oom("c1");
    p.events
        .wait_for(|e| matches!(e, Event::Oom { container_id } if container_id == "c1"))
        .await;
}

#[tokio::test]
async fn shutdown_waits_for_containers() {
    let p = pod();
    p.svc.create(p.bundle("c1", "{}")).await.unwrap();
    assert!(!p.svc.shutdown().await);
    p.svc.delete("c1", "").await.unwrap();
    assert!(p.svc.shutdown().await);
}

#[tokio::test]
async fn stdio_reaches_the_fifos_before_the_exit() {
    let p = pod();
    let fifo = |n: &str| {
        let path = p.dir.path().join(n);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        path.display().to_string()
    };
    let stdio = StdioPaths {
        stdin: fifo("in"),
        stdout: fifo("out"),
        stderr: String::new(),
        terminal: false,
    };
    // containerd's ends: a reader on stdout, a writer on stdin
    let out_path = stdio.stdout.clone();
    let reader = tokio::task::spawn_blocking(move || std::fs::read(out_path).unwrap());
    let in_path = stdio.stdin.clone();
    let writer = tokio::task::spawn_blocking(move || std::fs::write(in_path, b"ping\n").unwrap());
    let mut req = p.bundle("c1", "{}");
    req.stdio = stdio;
    p.svc.create(req).await.unwrap();
    p.svc.start("c1", "").await.unwrap();
    writer.await.unwrap();
    let init = ProcessRef::init("c1");
    let big = vec![b'x'; 1 << 20];
    p.agent().output(&init, b"hello ");
    p.agent().output(&init, &big);
    p.agent().exit(&init, 0);
    p.events.wait_for(|e| matches!(e, Event::Exit { .. })).await;
    let got = reader.await.unwrap();
    assert_eq!(got.len(), 6 + big.len(), "all output arrives, then EOF");
    assert!(got.starts_with(b"hello x"));
    for _ in 0..500 {
        if p.agent().stdin(&init).1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert_eq!(p.agent().stdin(&init), (b"ping\n".to_vec(), true));
}

#[tokio::test]
async fn state_answers_while_a_vm_boots() {
    let p = pod();
    *p.launcher.boot_time.lock().unwrap() = std::time::Duration::from_millis(500);
    let svc = p.svc.clone();
    let req = p.bundle("c1", "{}");
    let create = tokio::spawn(async move { svc.create(req).await });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let t0 = std::time::Instant::now();
    assert_eq!(
        code(p.svc.state("c1", "").await.unwrap_err()),
        Code::NOT_FOUND
    );
    assert!(
        t0.elapsed() < std::time::Duration::from_millis(200),
        "State waited for the boot"
    );
    create.await.unwrap().unwrap();
    assert_eq!(p.svc.state("c1", "").await.unwrap().status, Status::Created);
}
