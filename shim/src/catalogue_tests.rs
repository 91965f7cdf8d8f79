//! Reliability catalogue cases (`../shared/docs/reliability-catalogue.md`) that span
//! several of the shim's modules. Cases that need root say so and skip with a message
//! when not root.

use std::path::{Path, PathBuf};

use crate::mount::{HostMounts, MountShare};
use crate::share::{RootfsMount, RootfsShare};
use crate::spec::BundleSpec;
use crate::testutil::TempDir;

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

macro_rules! require_root {
    ($case:expr) => {
        if !is_root() {
            eprintln!("SKIPPED {}: needs root (real mounts)", $case);
            return;
        }
    };
}

/// Mount points at or below `dir` (from /proc/self/mountinfo).
fn mounts_below(dir: &Path) -> Vec<String> {
    let want = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m == &want || m.starts_with(&format!("{want}/")))
        .collect()
}

fn write_error(path: &Path) -> Option<i32> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"guest root was here\n"))
        .err()
        .map(|e| e.raw_os_error().unwrap_or(-1))
}

fn spec_json(root: &Path, mounts: &[(&str, &Path, &[&str])], readonly_root: bool) -> String {
    let m: Vec<serde_json::Value> = mounts
        .iter()
        .map(|(dst, src, opts)| {
            serde_json::json!({"destination": dst, "type": "bind", "source": src, "options": opts})
        })
        .collect();
    serde_json::json!({"root": {"path": root, "readonly": readonly_root}, "mounts": m}).to_string()
}

/// A pod directory shared with real mounts; unshared and cleaned up on drop.
struct RealPod {
    share: MountShare<HostMounts>,
    dir: TempDir,
    pod: PathBuf,
    bundle: PathBuf,
}

impl RealPod {
    fn new(tag: &str) -> RealPod {
        let dir = TempDir::new(tag);
        let pod = dir.path().join("state/p1");
        std::fs::create_dir_all(&pod).unwrap();
        let bundle = dir.path().join("bundle");
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        RealPod {
            share: MountShare::new(HostMounts),
            dir,
            pod,
            bundle,
        }
    }
    fn share(
        &self,
        id: &str,
        spec: &str,
        rootfs: &[RootfsMount],
    ) -> crate::error::Result<BundleSpec> {
        let mut s =
            BundleSpec::from_slice(spec.as_bytes(), self.bundle.join("config.json")).unwrap();
        self.share
            .share(&self.pod, id, &self.bundle, rootfs, &mut s)?;
        Ok(s)
    }
}

impl Drop for RealPod {
    fn drop(&mut self) {
        for id in ["c1", "c2"] {
            let _ = self.share.unshare(&self.pod, id, &self.bundle);
        }
        let _ = self.share.cleanup_pod(&self.pod);
        for m in mounts_below(self.dir.path()).iter().rev() {
            let _ = nix::mount::umount2(Path::new(m), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[test]
fn case_24_read_only_volumes_are_read_only_on_the_side_virtiofsd_exports() {
    require_root!("case 24");
    let p = RealPod::new("case24");
    let shared = p.share.prepare_pod(&p.pod).unwrap();
    // A read-only volume with a mount inside it (a hostPath over a directory that has a
    // mount below it), a read-write volume, and a read-only rootfs.
    let vol = p.dir.path().join("vol");
    std::fs::create_dir_all(vol.join("sub")).unwrap();
    std::fs::write(vol.join("f"), "host data\n").unwrap();
    let sub_src = p.dir.path().join("sub-src");
    std::fs::create_dir_all(&sub_src).unwrap();
    std::fs::write(sub_src.join("g"), "host data\n").unwrap();
    nix::mount::mount(
        Some(&sub_src),
        &vol.join("sub"),
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let rw = p.dir.path().join("rw");
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::write(rw.join("f"), "").unwrap();
    let root = p.dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("etc-passwd"), "root:x:0:0\n").unwrap();
    let ro_file = p.dir.path().join("ro-file");
    std::fs::write(&ro_file, "host data\n").unwrap();
    let spec = spec_json(
        &root,
        &[
            ("/ro", &vol, &["rbind", "ro"]),
            ("/rw", &rw, &["rbind", "rw"]),
            ("/etc/config", &ro_file, &["rbind", "ro"]),
        ],
        true,
    );
    p.share("c1", &spec, &[]).unwrap();
    let guest = shared.join("c1");
    // What virtiofsd serves: guest root's writes must fail there (EROFS), on the volume,
    // on the mount inside it, and on the read-only rootfs ...
    for f in [
        "mounts/0/f",
        "mounts/0/sub/g",
        "rootfs/etc-passwd",
        "mounts/2",
    ] {
        assert_eq!(
            write_error(&guest.join(f)),
            Some(libc::EROFS),
            "{f} is writable from the guest"
        );
    }
    // ... while the read-write volume takes them (the check above is not vacuous).
    assert_eq!(write_error(&guest.join("mounts/1/f")), None);
    assert_eq!(
        std::fs::read_to_string(vol.join("f")).unwrap(),
        "host data\n"
    );
    assert_eq!(
        std::fs::read_to_string(sub_src.join("g")).unwrap(),
        "host data\n"
    );
    p.share.unshare(&p.pod, "c1", &p.bundle).unwrap();
    p.share.cleanup_pod(&p.pod).unwrap();
    let left: Vec<_> = mounts_below(&p.pod);
    assert!(left.is_empty(), "mounts left: {left:?}");
    nix::mount::umount2(&vol.join("sub"), nix::mount::MntFlags::MNT_DETACH).unwrap();
}

/// A directory standing in for /etc, with a file standing in for /etc/shadow.
fn victim(d: &Path) -> PathBuf {
    let v = d.join("etc");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(v.join("shadow"), "root:secret\n").unwrap();
    std::fs::write(v.join("0"), "named like a mount index\n").unwrap();
    v
}

fn victim_untouched(v: &Path) {
    assert_eq!(
        std::fs::read_to_string(v.join("shadow")).unwrap(),
        "root:secret\n"
    );
    assert!(v.join("0").exists(), "a file of the victim was removed");
    assert!(
        mounts_below(v).is_empty(),
        "something was mounted on {}",
        v.display()
    );
}

#[test]
fn case_33_a_symlinked_mounts_or_shared_dir_is_refused() {
    require_root!("case 33");
    for planted in ["mounts", "shared"] {
        let p = RealPod::new("case33a");
        let v = victim(p.dir.path());
        std::os::unix::fs::symlink(&v, p.pod.join(planted)).unwrap();
        let e = p.share.prepare_pod(&p.pod).unwrap_err().to_string();
        assert!(
            e.contains("not a directory the shim made"),
            "{planted}: {e}"
        );
        p.share.cleanup_pod(&p.pod).unwrap();
        victim_untouched(&v);
        assert!(
            std::fs::symlink_metadata(p.pod.join(planted)).is_err(),
            "the link goes"
        );
    }
}

#[test]
fn case_33_a_symlinked_container_dir_is_never_mounted_on_or_emptied() {
    require_root!("case 33");
    let p = RealPod::new("case33b");
    let v = victim(p.dir.path());
    p.share.prepare_pod(&p.pod).unwrap();
    let root = p.dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let vol = p.dir.path().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    let spec = spec_json(&root, &[("/v", &vol, &["rbind"])], false);
    // mounts/c1/rootfs planted as a symlink: the rootfs is not bound over the victim.
    std::fs::create_dir_all(p.pod.join("mounts/c1")).unwrap();
    std::os::unix::fs::symlink(&v, p.pod.join("mounts/c1/rootfs")).unwrap();
    let e = p.share("c1", &spec, &[]).unwrap_err().to_string();
    assert!(e.contains("not a directory the shim made"), "{e}");
    victim_untouched(&v);
    // mounts/c1/mounts planted as a symlink: the volume is not bound below the victim
    // either, and unsharing neither unmounts nor removes anything through it.
    std::fs::remove_file(p.pod.join("mounts/c1/rootfs")).unwrap();
    std::os::unix::fs::symlink(&v, p.pod.join("mounts/c1/mounts")).unwrap();
    assert!(p.share("c1", &spec, &[]).is_err());
    victim_untouched(&v);
    p.share.unshare(&p.pod, "c1", &p.bundle).unwrap();
    victim_untouched(&v);
    assert!(
        std::fs::symlink_metadata(p.pod.join("mounts/c1")).is_err(),
        "unsharing removed the container's dir (and unlinked the planted link)"
    );
    // the whole container dir as a symlink
    std::os::unix::fs::symlink(&v, p.pod.join("mounts/c2")).unwrap();
    assert!(p.share("c2", &spec, &[]).is_err());
    p.share.unshare(&p.pod, "c2", &p.bundle).unwrap();
    victim_untouched(&v);
}

// ---- the pod service against the fakes -------------------------------------------

mod pod {
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
        std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
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
}

/// A hostile agent on the ttrpc channel: answers every request with `reply(stream id)`.
/// A reply to the request on one stream.
type Reply = fn(u32) -> Vec<u8>;

async fn hostile_agent(path: &Path, reply: Reply) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut h = [0u8; 10];
        if s.read_exact(&mut h).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let stream = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let mut body = vec![0u8; len];
        if s.read_exact(&mut body).await.is_ok() {
            // ... and the connection ends there
            let _ = s.write_all(&reply(stream)).await;
        }
    })
}

fn response_header(len: u32, stream: u32) -> Vec<u8> {
    let mut h = len.to_be_bytes().to_vec();
    h.extend_from_slice(&stream.to_be_bytes());
    h.extend_from_slice(&[2, 0]);
    h
}

#[tokio::test]
async fn case_18_agent_replies_over_the_size_cap_or_garbage_are_errors_not_allocations() {
    let rss = || -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    let replies: [(&str, Reply); 3] = [
        // a 4 GiB reply, of which 1 MiB comes
        ("over the cap", |s| {
            let mut r = response_header(u32::MAX, s);
            r.extend(std::iter::repeat_n(0xffu8, 1 << 20));
            r
        }),
        // at the cap, then the connection ends
        ("truncated at the cap", |s| {
            let mut r = response_header(4 << 20, s);
            r.extend_from_slice(&[0xab; 100]);
            r
        }),
        // a frame that is no protobuf
        ("garbage", |s| {
            let mut r = response_header(64, s);
            r.extend_from_slice(&[0xff; 64]);
            r
        }),
    ];
    for (what, reply) in replies {
        let d = TempDir::new("hostile-agent");
        let sock = d.path().join("agent.sock");
        let server = hostile_agent(&sock, reply).await;
        let before = rss();
        let agent = crate::agent_client::TtrpcAgent::new(
            tokio::net::UnixStream::connect(&sock).await.unwrap(),
        );
        use crate::agent::AgentClient;
        let t = std::time::Instant::now();
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            agent.stats_container("c1"),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: the call hung"));
        assert!(r.is_err(), "{what}: a hostile reply was taken: {r:?}");
        let grew = rss().saturating_sub(before) / 1024;
        assert!(grew < 32, "{what}: RSS grew by {grew} MiB");
        eprintln!(
            "case 18 {what}: {:?} in {} ms",
            r.unwrap_err(),
            t.elapsed().as_millis()
        );
        server.abort();
    }
}

#[test]
fn case_23_an_image_with_no_layers_or_a_rootfs_that_is_no_directory_never_mounts_a_device() {
    require_root!("case 23");
    let p = RealPod::new("case23");
    p.share.prepare_pod(&p.pod).unwrap();
    // No layers: containerd hands over no rootfs mounts and the bundle's rootfs is an
    // empty directory: it is shared as that (the container then fails in the guest).
    let empty = p.bundle.join("rootfs");
    let spec = spec_json(&empty, &[], false);
    p.share("c1", &spec, &[]).unwrap();
    assert_eq!(mounts_below(&p.pod.join("mounts/c1")).len(), 1);
    p.share.unshare(&p.pod, "c1", &p.bundle).unwrap();
    // A root that is a device node or missing, or a rootfs mount of a block device.
    for (root, rootfs) in [
        ("/dev/null", vec![]),
        ("/nonexistent/rootfs", vec![]),
        (
            "rootfs",
            vec![RootfsMount {
                kind: "ext4".into(),
                source: "/dev/vda".into(),
                options: vec![],
            }],
        ),
    ] {
        let spec = spec_json(Path::new(root), &[], false);
        assert!(p.share("c2", &spec, &rootfs).is_err(), "{root} {rootfs:?}");
        p.share.unshare(&p.pod, "c2", &p.bundle).unwrap();
        let left = mounts_below(&p.pod.join("mounts"));
        assert_eq!(left.len(), 1, "only mounts/ itself is left: {left:?}");
        assert!(mounts_below(&p.bundle).is_empty());
    }
}

#[test]
fn case_18_what_the_guest_can_write_in_the_share_never_steers_the_host() {
    require_root!("case 18");
    let p = RealPod::new("case18");
    let v = victim(p.dir.path());
    let shared = p.share.prepare_pod(&p.pod).unwrap();
    let root = p.dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let vol = p.dir.path().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    let spec = spec_json(&root, &[("/v", &vol, &["rbind"])], false);
    p.share("c1", &spec, &[]).unwrap();
    let guest = shared.join("c1");
    // Guest root, through virtiofsd, can write below a read-write rootfs or volume but
    // cannot create, replace or remove anything at the levels the host walks.
    for (at, what) in [
        (shared.join("c2"), "a container dir of its own"),
        (guest.join("mounts/1"), "a mount index"),
        (guest.join("evil"), "an entry beside rootfs"),
    ] {
        let e = std::os::unix::fs::symlink(&v, &at).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}");
    }
    assert_eq!(
        std::fs::remove_dir(guest.join("rootfs"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EROFS)
    );
    // What it may write (symlinks and files in its rootfs and volume, named like the
    // host's own entries) is never followed when the pod goes.
    for dir in [guest.join("rootfs"), guest.join("mounts/0")] {
        std::os::unix::fs::symlink(&v, dir.join("mounts")).unwrap();
        std::os::unix::fs::symlink(v.join("shadow"), dir.join("0")).unwrap();
        std::os::unix::fs::symlink(&v, dir.join("rootfs")).unwrap();
    }
    p.share.unshare(&p.pod, "c1", &p.bundle).unwrap();
    p.share.cleanup_pod(&p.pod).unwrap();
    victim_untouched(&v);
    assert!(mounts_below(&p.pod).is_empty());
    // the guest's files stayed in the guest's rootfs, the volume's in the volume
    assert!(std::fs::symlink_metadata(root.join("mounts")).is_ok());
    assert!(std::fs::symlink_metadata(vol.join("0")).is_ok());
}
