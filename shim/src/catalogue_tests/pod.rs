//! Catalogue cases of the pod service against the fakes (`testutil.rs`): hostile agent
//! replies, ids and specs, and the VM ending (cases 18, 21, 22, 23, 43-45).

use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_shim_protos::ttrpc::Code;

use crate::agent::{AgentError, ContainerStats, ProcessRef};
use crate::config::Config;
use crate::events::{Event, StdioPaths};
use crate::process::Status;
use crate::service::{CreateRequest, Deps, HealthPolicy, PodService, VM_DIED_EXIT_STATUS};
use crate::share::RootfsMount;
use crate::testutil::*;

pub(super) struct Pod {
    pub svc: Arc<PodService>,
    pub launcher: Arc<FakeLauncher>,
    pub events: Arc<RecordingEvents>,
    pub share: Arc<FakeShare>,
    pub dir: TempDir,
}

const NO_HEALTH_CHECKS: HealthPolicy = HealthPolicy {
    interval: Duration::ZERO,
    timeout: Duration::from_secs(1),
    failures: 1,
};

pub(super) fn pod_with(health: HealthPolicy) -> Pod {
    let dir = TempDir::new("catalogue");
    let launcher = Arc::new(FakeLauncher::default());
    let events = Arc::new(RecordingEvents::default());
    let share = Arc::new(FakeShare::default());
    let cfg = Config {
        state_dir: dir.path().join("state"),
        ..Config::default()
    };
    let deps = Deps {
        launcher: launcher.clone(),
        events: events.clone(),
        share: share.clone(),
    };
    Pod {
        svc: PodService::with_health(cfg, deps, health),
        launcher,
        events,
        share,
        dir,
    }
}

pub(super) fn pod() -> Pod {
    pod_with(NO_HEALTH_CHECKS)
}

impl Pod {
    pub fn bundle(&self, id: &str, spec: &str) -> CreateRequest {
        let b = self.dir.path().join("bundles").join(id);
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("config.json"), spec).unwrap();
        CreateRequest {
            id: id.into(),
            bundle: b,
            ..Default::default()
        }
    }
    pub fn agent(&self) -> &FakeAgent {
        &self.launcher.agent
    }
    fn share_calls(&self) -> Vec<String> {
        self.share.calls.lock().unwrap().clone()
    }
    fn pod_dir(&self, pod: &str) -> std::path::PathBuf {
        self.dir.path().join("state").join(pod)
    }
    /// A CRI pod: sandbox p1 and member c2, both running, and exec e1 in c2.
    async fn running_cri_pod(&self) {
        self.svc
            .create(self.bundle("p1", &cri("sandbox", "p1")))
            .await
            .unwrap();
        self.svc.start("p1", "").await.unwrap();
        self.svc
            .create(self.bundle("c2", &cri("container", "p1")))
            .await
            .unwrap();
        self.svc.start("c2", "").await.unwrap();
        self.svc
            .exec("c2", "e1", StdioPaths::default(), b"{}".to_vec())
            .await
            .unwrap();
        self.svc.start("c2", "e1").await.unwrap();
    }
    fn exits(&self) -> Vec<(String, u32)> {
        self.events
            .events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::Exit {
                    id, exit_status, ..
                } => Some((id.clone(), *exit_status)),
                _ => None,
            })
            .collect()
    }
    /// Waits (at most 5 s) until every process of [`Pod::running_cri_pod`] exited.
    async fn wait_all_exited(&self) {
        for (id, exec) in [("p1", ""), ("c2", ""), ("c2", "e1")] {
            let w = tokio::time::timeout(Duration::from_secs(5), self.svc.wait(id, exec));
            assert_eq!(
                w.await.unwrap().unwrap().0,
                VM_DIED_EXIT_STATUS,
                "{id} {exec}"
            );
        }
        let mut exits = self.exits();
        for _ in 0..500 {
            if exits.len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            exits = self.exits();
        }
        exits.sort();
        assert_eq!(
            exits,
            [("c2".into(), 255), ("e1".into(), 255), ("p1".into(), 255)],
            "one TaskExit per process, no duplicates"
        );
    }
    /// Waits (at most 5 s) until the pod's mounts and directory are gone.
    async fn wait_cleaned_up(&self) {
        for _ in 0..2500 {
            if self.share_calls().contains(&"cleanup_pod".to_string())
                && !self.pod_dir("p1").exists()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!(
            "not cleaned up: share calls {:?}, pod dir there: {}",
            self.share_calls(),
            self.pod_dir("p1").exists()
        );
    }
}

pub(super) fn cri(kind: &str, sandbox: &str) -> String {
    format!(
        r#"{{"annotations":{{"io.kubernetes.cri.container-type":"{kind}","io.kubernetes.cri.sandbox-id":"{sandbox}"}}}}"#
    )
}

#[tokio::test]
async fn case_18_forged_ids_and_absurd_replies_touch_nothing_else() {
    let p = pod();
    p.running_cri_pod().await;
    // OOM kills the guest makes up: another pod's container, a path, a huge id
    for forged in ["c-of-another-pod", "../../etc/shadow", &"x".repeat(1 << 20)] {
        p.agent().oom(forged);
    }
    p.agent().oom("c2");
    p.events
        .wait_for(|e| matches!(e, Event::Oom { container_id } if container_id == "c2"))
        .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let ooms: Vec<_> = p
        .events
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::Oom { .. }))
        .cloned()
        .collect();
    assert_eq!(
        ooms.len(),
        1,
        "TaskOOM only for a container of this pod: {ooms:?}"
    );
    // absurd statistics and process lists are passed on without a panic
    p.agent().hostile.lock().unwrap().stats = Some(ContainerStats {
        cpu_usage_usec: u64::MAX,
        cpu_user_usec: u64::MAX,
        cpu_system_usec: u64::MAX,
        memory_usage: u64::MAX,
        memory_limit: 0,
        pids_current: u64::MAX,
        pids_limit: 1,
        oom_kills: u64::MAX,
    });
    let s = p.svc.stats("c2").await.unwrap();
    crate::task::metrics_any(&s).unwrap();
    p.agent().hostile.lock().unwrap().pids = Some((0..200_000).collect());
    assert_eq!(p.svc.pids("c2").await.unwrap().len(), 200_000);
    // an exit status no process can have is reported as 255, for that process only
    p.agent().exit(&ProcessRef::exec("c2", "e1"), u32::MAX);
    assert_eq!(p.svc.wait("c2", "e1").await.unwrap().0, 255);
    // an exit of a process the shim does not know (or the guest invents) changes nothing
    p.agent().exit(&ProcessRef::init("p9"), 0);
    p.agent().exit(&ProcessRef::exec("c2", "../e1"), 0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    for id in ["p1", "c2"] {
        assert_eq!(
            p.svc.state(id, "").await.unwrap().status,
            Status::Running,
            "{id}"
        );
    }
    assert_eq!(p.exits(), [("e1".to_string(), 255)]);
    // the host side only ever saw the pod's own ids
    assert_eq!(p.share_calls(), ["prepare_pod", "share p1", "share c2"]);
}

#[tokio::test]
async fn case_21_annotations_choose_no_vmm_path_argument_kernel_param_or_config() {
    let hostile = serde_json::json!({
        "annotations": {
            "io.katacontainers.config.hypervisor.path": "/tmp/evil-vmm",
            "io.katacontainers.config.hypervisor.kernel_params": "init=/bin/sh --flag=x",
            "io.katacontainers.config.hypervisor.virtio_fs_daemon": "/tmp/evil --sandbox=none",
            "io.katacontainers.config.hypervisor.virtio_fs_extra_args": "[\"--x\"]",
            "io.katacontainers.config_path": "../../../etc/husk/evil.toml",
            "io.husk.vmm": "/tmp/evil-vmm",
            "io.husk.kernel_params": "init=/bin/sh",
            "io.husk.config": "/tmp/evil.toml",
            "io.kubernetes.cri.sandbox-memory": "1 --mem=9999",
            "io.kubernetes.cri.sandbox-cpu-quota": "../1",
        }
    });
    let (plain, evil) = (pod(), pod());
    plain.svc.create(plain.bundle("c1", "{}")).await.unwrap();
    evil.svc
        .create(evil.bundle("c1", &hostile.to_string()))
        .await
        .unwrap();
    let req = |p: &Pod| {
        let mut r = p.launcher.requests.lock().unwrap()[0].clone();
        // the two pods' temporary directories differ, nothing else may
        r.pod_dir = r.pod_dir.strip_prefix(p.dir.path()).unwrap().into();
        r.shared_dir = r.shared_dir.strip_prefix(p.dir.path()).unwrap().into();
        r
    };
    assert_eq!(
        req(&plain),
        req(&evil),
        "an annotation changed the VM request"
    );
    // What the VM is started with comes from the request and the admin's config only.
    let cfg = Config::default();
    let vmm = crate::vmm::HuskVmm::new(cfg, Arc::new(crate::agent_client::TtrpcConnector));
    let launched = evil.launcher.requests.lock().unwrap()[0].clone();
    let config = vmm.vm_config(&launched).to_string();
    for word in ["evil", "init=/bin/sh", "--flag", "9999", "--mem"] {
        assert!(!config.contains(word), "{word} reached vm.json: {config}");
    }
    // The annotations reach the container's spec unchanged: they are the guest's
    // business there, not the host's.
    let sent: serde_json::Value =
        serde_json::from_slice(&evil.agent().specs.lock().unwrap()[0]).unwrap();
    assert_eq!(sent["annotations"], hostile["annotations"]);
}

#[tokio::test]
async fn case_21_the_hosts_own_network_namespace_is_refused_as_a_pods() {
    for path in ["/proc/self/ns/net", "/proc/1/ns/net"] {
        let own = crate::network::netns::is_own(std::path::Path::new(path));
        if path == "/proc/1/ns/net" && !own {
            continue; // this test runs in a namespace of its own
        }
        let p = pod();
        let spec =
            serde_json::json!({"linux": {"namespaces": [{"type": "network", "path": path}]}});
        let e = p
            .svc
            .create(p.bundle("c1", &spec.to_string()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::INVALID_ARGUMENT, "{path}: {e}");
        assert!(p.launcher.requests.lock().unwrap().is_empty());
    }
    // another namespace is the pod's, as CRI gives it
    assert!(!crate::network::netns::is_own(std::path::Path::new(
        "/nonexistent/netns"
    )));
}

#[test]
fn case_21_helper_arguments_are_argv_elements_never_split_from_a_string() {
    let dir = std::path::Path::new("/run/husk/p 1 --sandbox=none/shared");
    let args = crate::vmm::virtiofsd_args(
        std::path::Path::new("/run/husk/p 1/virtiofsd.sock --x"),
        dir,
        crate::config::FsCache::Auto,
    );
    assert_eq!(args.len(), 5, "{args:?}");
    assert_eq!(args[1], format!("--shared-dir={}", dir.display()));
    assert_eq!(
        args.iter().filter(|a| a.starts_with("--sandbox")).count(),
        1
    );
    // and the spawn passes each as one argument
    let d = TempDir::new("argv");
    let prog = d.path().join("count-args");
    std::fs::write(
        &prog,
        "#!/bin/sh\necho \"$#\"\nfor a; do echo \"[$a]\"; done\n",
    )
    .unwrap();
    std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let log = d.path().join("out");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut child = crate::vmm::spawn_logged(&prog, &args, &log, None).unwrap();
        child.wait().await.unwrap();
    });
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(out.starts_with("5\n"), "{out}");
    assert!(
        out.contains(&format!("[--shared-dir={}]", dir.display())),
        "{out}"
    );
}

/// The pod left nothing: no VM, no share, no pod dir.
fn nothing_left(p: &Pod, pod: &str) {
    assert!(!p.launcher.vm.is_running() || p.launcher.requests.lock().unwrap().is_empty());
    let calls = p.share_calls();
    let prepared = calls.iter().filter(|c| *c == "prepare_pod").count();
    let cleaned = calls.iter().filter(|c| *c == "cleanup_pod").count();
    assert!(cleaned >= prepared, "share not cleaned up: {calls:?}");
    let shared = calls.iter().filter(|c| c.starts_with("share ")).count();
    let unshared = calls.iter().filter(|c| c.starts_with("unshare ")).count();
    assert!(unshared >= shared, "container not unshared: {calls:?}");
    assert!(!p.pod_dir(pod).exists(), "pod dir left");
}

#[tokio::test]
async fn case_22_hostile_config_json_is_a_clean_error_before_any_vm() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let huge = format!(
        r#"{{"x":"{}"}}"#,
        "a".repeat(crate::spec::MAX_SPEC_BYTES as usize)
    );
    for (what, spec) in [
        ("garbage", "{\"process\": \u{1}"),
        ("not an object", "[1, 2]"),
        ("empty", ""),
        ("deeply nested", deep.as_str()),
        ("larger than the cap", huge.as_str()),
        (
            "relative bind source",
            r#"{"mounts":[{"destination":"/d","type":"bind","source":"../../etc"}]}"#,
        ),
        (
            "bind with no source",
            r#"{"mounts":[{"destination":"/d","type":"none","options":["rbind"]}]}"#,
        ),
    ] {
        let p = pod();
        let t = Instant::now();
        let e = p.svc.create(p.bundle("c1", spec)).await.unwrap_err();
        assert_eq!(e.code(), Code::INVALID_ARGUMENT, "{what}: {e}");
        assert!(t.elapsed() < Duration::from_secs(2), "{what}");
        assert!(
            p.launcher.requests.lock().unwrap().is_empty(),
            "{what}: a vm booted"
        );
        assert!(p.share_calls().is_empty(), "{what}");
        nothing_left(&p, "c1");
    }
    let p = pod();
    let req = CreateRequest {
        id: "c1".into(),
        bundle: p.dir.path().join("no-such-bundle"),
        ..Default::default()
    };
    assert_eq!(
        p.svc.create(req).await.unwrap_err().code(),
        Code::INVALID_ARGUMENT
    );
}

#[tokio::test]
async fn case_22_specs_the_agent_refuses_leave_no_vm_share_or_pod_dir() {
    let env: Vec<String> = (0..16_384)
        .map(|i| format!("V{i}={}", "e".repeat(56)))
        .collect();
    let big_env = serde_json::json!({"process": {"args": ["sh"], "env": env}}).to_string();
    assert!(big_env.len() > 1 << 20);
    for (what, spec) in [
        ("no root, no process", "{}".to_string()),
        ("1 MiB of env", big_env),
        ("uid -1", r#"{"process":{"user":{"uid":-1,"gid":4294967296}}}"#.into()),
        (
            "odd rlimits",
            r#"{"process":{"rlimits":[{"type":"RLIMIT_NOFILE","hard":1,"soft":18446744073709551615},{"type":"NOPE"}]}}"#.into(),
        ),
        ("cwd in /proc", r#"{"process":{"cwd":"/proc/self/fd/7"}}"#.into()),
        (
            "absurd mounts",
            r#"{"mounts":[{"destination":"../../..","type":"proc","source":"/"},{"destination":"","type":"sysfs"},{"type":17}]}"#.into(),
        ),
    ] {
        let p = pod();
        p.agent().fail(
            "create_container c1",
            AgentError::Status {
                code: Code::INVALID_ARGUMENT,
                message: format!("{what}: refused"),
            },
        );
        let e = p.svc.create(p.bundle("c1", &spec)).await.unwrap_err();
        assert_eq!(e.code(), Code::INVALID_ARGUMENT, "{what}: {e}");
        // the spec went to the agent whole (the agent is the one that judges it)
        let sent = p.agent().specs.lock().unwrap()[0].clone();
        let sent: serde_json::Value = serde_json::from_slice(&sent).unwrap();
        let orig: serde_json::Value = serde_json::from_str(&spec).unwrap();
        assert_eq!(sent["process"], orig["process"], "{what}");
        assert!(!p.launcher.vm.is_running(), "{what}: the vm was left running");
        nothing_left(&p, "c1");
        assert!(p.events.topics().is_empty(), "{what}");
    }
}

#[tokio::test]
async fn case_23_a_rootfs_that_is_not_a_directory_share_is_refused_before_any_vm() {
    let m = |kind: &str, source: &str| RootfsMount {
        kind: kind.into(),
        source: source.into(),
        options: vec![],
    };
    for (what, rootfs) in [
        ("a block device", vec![m("ext4", "/dev/vda")]),
        ("no type", vec![m("", "")]),
        ("overlay without source", vec![m("overlay", "")]),
        ("relative bind", vec![m("bind", "snapshots/1/fs")]),
        (
            "a good one then a block device",
            vec![m("overlay", "overlay"), m("xfs", "/dev/sda1")],
        ),
    ] {
        let p = pod();
        let mut req = p.bundle("c1", "{}");
        req.rootfs = rootfs;
        let e = p.svc.create(req).await.unwrap_err();
        assert_eq!(e.code(), Code::INVALID_ARGUMENT, "{what}: {e}");
        assert!(
            p.launcher.requests.lock().unwrap().is_empty(),
            "{what}: a vm booted"
        );
        assert!(p.share_calls().is_empty(), "{what}: {:?}", p.share_calls());
        nothing_left(&p, "c1");
    }
}

#[tokio::test]
async fn case_43_the_vm_dying_ends_every_process_and_cleans_up_without_a_delete() {
    let p = pod();
    p.running_cri_pod().await;
    assert!(p.pod_dir("p1").is_dir());
    p.launcher.vm.crash();
    p.wait_all_exited().await;
    p.wait_cleaned_up().await;
    // later calls say why; Delete still works
    let e = p
        .svc
        .exec("c2", "e2", StdioPaths::default(), vec![])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FAILED_PRECONDITION);
    let e = p.svc.pause("c2").await.unwrap_err();
    assert_eq!(e.code(), Code::FAILED_PRECONDITION);
    p.svc.delete("c2", "e1").await.unwrap();
    p.svc.delete("c2", "").await.unwrap();
    p.svc.delete("p1", "").await.unwrap();
    assert!(p.svc.shutdown().await);
}

const FAST: HealthPolicy = HealthPolicy {
    interval: Duration::from_millis(20),
    timeout: Duration::from_millis(50),
    failures: 3,
};

async fn agent_declared_dead(p: &Pod, logs: &LogCapture) {
    let t = Instant::now();
    p.wait_all_exited().await;
    // failures * (interval + timeout) = 210 ms, plus the scheduler's slack
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(!p.launcher.vm.is_running(), "the vm was not stopped");
    p.wait_cleaned_up().await;
    let errors = logs.at(log::Level::Error);
    assert!(
        errors
            .iter()
            .any(|m| m.contains("the agent failed 3 health checks in a row")),
        "{errors:?}"
    );
    // a container that would join the pod is told why it cannot
    let e = p
        .svc
        .create(p.bundle("c3", &cri("container", "p1")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FAILED_PRECONDITION);
    assert!(e.to_string().contains("health checks in a row"), "{e}");
}

#[tokio::test]
async fn case_44_a_hung_agent_fails_its_health_checks_and_the_vm_is_stopped() {
    let logs = capture_logs();
    let p = pod_with(FAST);
    p.running_cri_pod().await;
    p.agent().hostile.lock().unwrap().health_hangs = true;
    agent_declared_dead(&p, &logs).await;
    let warns = logs.at(log::Level::Warn);
    assert!(
        warns.iter().any(|m| m.contains("no answer within 50 ms")),
        "{warns:?}"
    );
}

#[tokio::test]
async fn case_44_a_crashed_agent_fails_its_health_checks_and_the_vm_is_stopped() {
    let logs = capture_logs();
    let p = pod_with(FAST);
    p.running_cri_pod().await;
    p.agent().hostile.lock().unwrap().health_fails = true;
    agent_declared_dead(&p, &logs).await;
}

#[tokio::test]
async fn case_44_failures_must_be_in_a_row() {
    let p = pod_with(FAST);
    p.running_cri_pod().await;
    let checks = |p: &Pod| {
        p.agent()
            .calls()
            .iter()
            .filter(|c| *c == "health_check")
            .count()
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(checks(&p) >= 2, "the agent is checked every interval");
    // two failures, then the agent answers again
    let before = checks(&p);
    p.agent().hostile.lock().unwrap().health_fails = true;
    while checks(&p) < before + 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    p.agent().hostile.lock().unwrap().health_fails = false;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(p.launcher.vm.is_running());
    assert_eq!(p.svc.state("c2", "").await.unwrap().status, Status::Running);
    assert!(p.exits().is_empty());
}

#[tokio::test]
async fn case_44_no_checks_when_turned_off() {
    let p = pod();
    p.running_cri_pod().await;
    p.agent().hostile.lock().unwrap().health_hangs = true;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!p.agent().calls().contains(&"health_check".to_string()));
    assert!(p.launcher.vm.is_running());
    let c = Config::default();
    assert_eq!(
        HealthPolicy::of(&c),
        HealthPolicy {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            failures: 3
        }
    );
}

#[tokio::test]
async fn case_45_a_guest_panic_is_the_reason_later_calls_give() {
    let p = pod();
    p.running_cri_pod().await;
    p.launcher
        .vm
        .end("exited with status 4 (guest kernel panic)", 4);
    p.wait_all_exited().await;
    p.wait_cleaned_up().await;
    let e = p
        .svc
        .create(p.bundle("c3", &cri("container", "p1")))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("guest kernel panic"), "{e}");
}
