//! The task service over a real ttrpc connection (both API names), and `shim delete`.

use std::sync::Arc;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim_async::TaskClient;
use containerd_shim_protos::ttrpc::context::Context;
use containerd_shim_protos::ttrpc::{Code, Request, Response};

use super::*;
use crate::agent::ProcessRef;
use crate::testutil::*;

async fn serve_fake(dir: &Path) -> (Server, Arc<FakeLauncher>, String) {
    let launcher = Arc::new(FakeLauncher::default());
    let cfg = Config {
        state_dir: dir.join("state"),
        ..Config::default()
    };
    let pod = PodService::new(
        cfg,
        Deps {
            launcher: launcher.clone(),
            events: Arc::new(RecordingEvents::default()),
            share: Arc::new(FakeShare::default()),
        },
    );
    let address = format!("unix://{}", dir.join("shim.sock").display());
    let listener = bind(&address).await.unwrap().unwrap();
    let task: Arc<dyn Task + Send + Sync> = Arc::new(TaskService::new(pod));
    let mut server = Server::new()
        .add_listener(Listener::from(listener))
        .register_service(task_services(task));
    server.start().await.unwrap();
    (server, launcher, address)
}

#[tokio::test]
async fn ctr_run_over_ttrpc() {
    let d = TempDir::new("ttrpc");
    let (mut server, launcher, address) = serve_fake(d.path()).await;
    let bundle = d.path().join("c1");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("config.json"), "{}").unwrap();

    let client = Client::connect(&address).await.unwrap();
    let task = TaskClient::new(client.clone());
    let ctx = Context::default;
    let created = task
        .create(
            ctx(),
            &api::CreateTaskRequest {
                id: "c1".into(),
                bundle: bundle.display().to_string(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(created.pid, 4242);
    let start = api::StartRequest {
        id: "c1".into(),
        ..Default::default()
    };
    task.start(ctx(), &start).await.unwrap();
    // errors arrive with their codes
    let e = task.start(ctx(), &start).await.unwrap_err();
    assert!(
        matches!(e, containerd_shim_protos::ttrpc::Error::RpcStatus(ref s) if s.code() == Code::FAILED_PRECONDITION),
        "{e:?}"
    );
    let e = task
        .checkpoint(ctx(), &api::CheckpointTaskRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e, containerd_shim_protos::ttrpc::Error::RpcStatus(ref s) if s.code() == Code::UNIMPLEMENTED)
    );

    // containerd 1.6 speaks containerd.task.v2.Task: the same service answers
    let state = api::StateRequest {
        id: "c1".into(),
        ..Default::default()
    };
    let resp: Response = client
        .request(Request {
            service: TASK_V2.into(),
            method: "State".into(),
            payload: state.write_to_bytes().unwrap(),
            timeout_nano: 5_000_000_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let st = api::StateResponse::parse_from_bytes(&resp.payload).unwrap();
    assert_eq!(st.status.enum_value(), Ok(api::Status::RUNNING));

    let stats = task
        .stats(
            ctx(),
            &api::StatsRequest {
                id: "c1".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(stats.stats.type_url, crate::task::METRICS_V2_TYPE_URL);

    launcher.agent.exit(&ProcessRef::init("c1"), 7);
    let w = task
        .wait(
            ctx(),
            &api::WaitRequest {
                id: "c1".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(w.exit_status, 7);
    let del = task
        .delete(
            ctx(),
            &api::DeleteRequest {
                id: "c1".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(del.exit_status, 7);
    task.shutdown(ctx(), &api::ShutdownRequest::default())
        .await
        .unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_second_server_for_the_same_pod_defers_to_the_first() {
    let d = TempDir::new("bind");
    let (mut server, _l, address) = serve_fake(d.path()).await;
    assert!(bind(&address).await.unwrap().is_none());
    server.shutdown().await.unwrap();
    drop(server);
    // a stale socket (its shim is gone) is replaced
    let stale = d.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(bind(&format!("unix://{}", stale.display()))
        .await
        .unwrap()
        .is_some());
}

#[test]
fn delete_after_kill_9_kills_the_vmm_and_cleans_up() {
    let d = TempDir::new("delete");
    let cfg = Config {
        state_dir: d.path().join("state"),
        ..Config::default()
    };
    let bundle = d.path().join("c1");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("config.json"), "{}").unwrap();
    let pod_dir = cfg.state_dir.join("c1");
    std::fs::create_dir_all(&pod_dir).unwrap();
    let mut vmm = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    pidfile::record(&pod_dir.join(VMM_PID_FILE), vmm.id()).unwrap();
    std::fs::write(pod_dir.join("vm.json"), "{}").unwrap();
    let flags = Flags {
        id: "c1".into(),
        bundle: bundle.display().to_string(),
        ..Default::default()
    };
    let resp = delete_with(&flags, &cfg).unwrap();
    assert_eq!(resp.exit_status, 137);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(vmm.wait().unwrap().signal(), Some(9));
    assert!(!pod_dir.exists(), "pod directory removed");
    // a second delete (containerd retries) is fine
    delete_with(&flags, &cfg).unwrap();
}

#[test]
fn case_33_delete_after_kill_9_never_acts_through_a_symlinked_pod_dir() {
    let d = TempDir::new("delete33");
    let cfg = Config {
        state_dir: d.path().join("state"),
        ..Config::default()
    };
    let bundle = d.path().join("c1");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("config.json"), "{}").unwrap();
    // /etc stand-in, with a live process's pid file and files named like the pod's
    let etc = d.path().join("etc");
    std::fs::create_dir_all(etc.join("mounts/c1/mounts")).unwrap();
    std::fs::write(etc.join("mounts/c1/mounts/0"), "x").unwrap();
    std::fs::write(etc.join("shadow"), "root:secret").unwrap();
    std::fs::write(etc.join("ram"), "x").unwrap();
    let mut sleeper = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    pidfile::record(&etc.join(VMM_PID_FILE), sleeper.id()).unwrap();
    std::fs::create_dir_all(&cfg.state_dir).unwrap();
    std::os::unix::fs::symlink(&etc, cfg.state_dir.join("c1")).unwrap();
    let flags = Flags {
        id: "c1".into(),
        bundle: bundle.display().to_string(),
        ..Default::default()
    };
    delete_with(&flags, &cfg).unwrap();
    for f in ["shadow", "ram", VMM_PID_FILE, "mounts/c1/mounts/0"] {
        assert!(etc.join(f).exists(), "{f} was removed through the link");
    }
    assert!(
        sleeper.try_wait().unwrap().is_none(),
        "a pid file found through the link was acted on"
    );
    assert!(
        std::fs::symlink_metadata(cfg.state_dir.join("c1")).is_err(),
        "the link goes"
    );
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    // an id that would name another directory is refused outright
    let sneaky = Flags {
        id: "c1".into(),
        bundle: bundle.display().to_string(),
        ..Default::default()
    };
    std::fs::write(
        bundle.join("config.json"),
        r#"{"annotations":{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-id":"../etc"}}"#,
    )
    .unwrap();
    assert!(delete_with(&sneaky, &cfg).is_err());
    assert!(etc.join("shadow").exists());
}

#[tokio::test]
async fn case_22_a_hostile_config_json_is_invalid_argument_over_ttrpc_and_the_shim_serves_on() {
    let d = TempDir::new("ttrpc22");
    let (mut server, launcher, address) = serve_fake(d.path()).await;
    let task = TaskClient::new(Client::connect(&address).await.unwrap());
    for (id, spec) in [
        ("c1", "{\"root\": "),
        ("c2", "[]"),
        (
            "c3",
            r#"{"mounts":[{"type":"bind","source":"x","destination":"/x"}]}"#,
        ),
    ] {
        let bundle = d.path().join(id);
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(bundle.join("config.json"), spec).unwrap();
        let req = api::CreateTaskRequest {
            id: id.into(),
            bundle: bundle.display().to_string(),
            ..Default::default()
        };
        match task.create(Context::default(), &req).await {
            Err(containerd_shim_protos::ttrpc::Error::RpcStatus(s)) => {
                assert_eq!(s.code(), Code::INVALID_ARGUMENT, "{id}: {}", s.message)
            }
            other => panic!("{id}: {other:?}"),
        }
    }
    assert!(
        launcher.requests.lock().unwrap().is_empty(),
        "a vm was booted"
    );
    // ... and a good one after them works
    let bundle = d.path().join("ok");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("config.json"), "{}").unwrap();
    let req = api::CreateTaskRequest {
        id: "ok".into(),
        bundle: bundle.display().to_string(),
        ..Default::default()
    };
    task.create(Context::default(), &req).await.unwrap();
    server.shutdown().await.unwrap();
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// A ttrpc frame header: length, stream id, type (1 request), flags.
fn frame_header(len: u32, stream: u32) -> Vec<u8> {
    let mut h = len.to_be_bytes().to_vec();
    h.extend_from_slice(&stream.to_be_bytes());
    h.extend_from_slice(&[1, 0]);
    h
}

/// Catalogue case 41 (the shim's part): containerd's side of the shim is its ttrpc
/// socket. ttrpc 0.10 caps a frame at 4 MiB (a larger one is read and discarded in
/// pages, never allocated) and allocates a frame's buffer untouched (calloc) until its
/// bytes arrive, so memory follows what clients actually send; each connection is its
/// own task, so a stalled one holds up no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_41_connection_floods_slowloris_and_oversized_frames_leave_state_answering() {
    use tokio::io::AsyncWriteExt;
    // what serve() does first (without it this test saw RSS grow by 1.1 GiB when run
    // after tests that had freed large buffers)
    bound_frame_memory();
    let d = TempDir::new("bombs");
    let (mut server, _launcher, address) = serve_fake(d.path()).await;
    let bundle = d.path().join("c1");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("config.json"), "{}").unwrap();
    let client = Client::connect(&address).await.unwrap();
    let task = TaskClient::new(client);
    let create = api::CreateTaskRequest {
        id: "c1".into(),
        bundle: bundle.display().to_string(),
        ..Default::default()
    };
    task.create(Context::default(), &create).await.unwrap();

    let path = socket_path(&address).to_string();
    let before = rss_kib();
    let mut held = Vec::new();
    for i in 0..1200u32 {
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        match i % 4 {
            // idle
            0 => {}
            // slowloris: half a header, then nothing
            1 => s.write_all(&frame_header(100, 1)[..5]).await.unwrap(),
            // a frame at the 4 MiB cap whose body trickles in
            2 => {
                s.write_all(&frame_header(4 << 20, 1)).await.unwrap();
                s.write_all(&[0u8; 100]).await.unwrap();
            }
            // a frame far over the cap
            _ => {
                s.write_all(&frame_header(u32::MAX - 7, 1)).await.unwrap();
                s.write_all(&[0u8; 4096]).await.unwrap();
            }
        }
        held.push(s);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Another client still gets State at once.
    let t = std::time::Instant::now();
    let other = TaskClient::new(Client::connect(&address).await.unwrap());
    let state = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        other.state(
            Context::default(),
            &api::StateRequest {
                id: "c1".into(),
                ..Default::default()
            },
        ),
    )
    .await
    .expect("State did not answer within 2 s")
    .unwrap();
    assert_eq!(state.id, "c1");
    let grew_mib = rss_kib().saturating_sub(before) / 1024;
    eprintln!(
        "case 41: 1200 hostile connections, State in {} ms, RSS +{grew_mib} MiB",
        t.elapsed().as_millis()
    );
    // 300 frames declared at 4 MiB would be 1.2 GiB if their buffers were touched.
    assert!(grew_mib < 128, "RSS grew by {grew_mib} MiB");
    drop(held);
    server.shutdown().await.unwrap();
}
