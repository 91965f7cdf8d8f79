//! The launcher against fake vmm and virtiofsd programs (shell and python scripts).

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use super::*;
use crate::pod::VmSize;
use crate::testutil::{FakeAgent, TempDir};

struct FakeConnector;

#[async_trait]
impl AgentConnector for FakeConnector {
    async fn connect(&self, _stream: UnixStream) -> AgentResult<Arc<dyn AgentClient>> {
        Ok(Arc::new(FakeAgent::default()))
    }
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// virtiofsd stand-in: creates its socket path, then idles.
const FAKE_VIRTIOFSD: &str = "#!/bin/sh\nfor a; do case $a in --socket-path=*) : > \"${a#--socket-path=}\";; esac; done\nexec sleep 1000\n";

/// vmm stand-in: serves the vsock handshake on the socket its config names.
const FAKE_VMM: &str = r#"#!/usr/bin/env python3
import json, socket, sys, time
cfg = json.load(open(sys.argv[3]))
assert sys.argv[1:3] == ["run", "--config"], sys.argv
s = socket.socket(socket.AF_UNIX)
s.bind(cfg["vsock"]["socket"])
s.listen(4)
conns = []
while True:
    c, _ = s.accept()
    line = c.recv(64)
    assert line == b"CONNECT 1024\n", line
    c.sendall(b"OK 1073741824\n")
    conns.append(c)
"#;

fn setup(vmm: &str, virtiofsd: &str) -> (TempDir, HuskVmm, VmRequest) {
    let d = TempDir::new("vmm");
    let cfg = Config {
        vmm: script(d.path(), "vmm", vmm),
        virtiofsd: script(d.path(), "virtiofsd", virtiofsd),
        boot_timeout_secs: 2,
        // ram.rs's own tests cover the tmpfs; these fake vmms need no guest RAM.
        huge_pages: false,
        // Templates are tested on their own below (`with_templates`).
        vm_template: false,
        template_dir: d.path().join("templates"),
        ..Config::default()
    };
    let req = VmRequest {
        pod_id: "p1".into(),
        size: VmSize {
            vcpus: 2,
            memory_mib: 320,
        },
        pod_dir: d.path().join("pod"),
        shared_dir: d.path().join("pod/shared"),
        netns: None,
    };
    (d, HuskVmm::new(cfg, Arc::new(FakeConnector)), req)
}

fn recorded_pid(pod_dir: &Path, file: &str) -> i32 {
    let text = std::fs::read_to_string(pod_dir.join(file)).unwrap();
    text.split_whitespace().next().unwrap().parse().unwrap()
}

/// A reaped child is gone: signal 0 fails with ESRCH.
fn gone(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None) == Err(nix::errno::Errno::ESRCH)
}

#[test]
fn vm_config_is_husk_vmms_format() {
    let (_d, vmm, req) = setup("", "");
    let c = vmm.vm_config(&req);
    assert_eq!(c["vcpus"], 2);
    assert_eq!(c["mem_mib"], 320);
    assert_eq!(c["kernel"], "/usr/local/share/husk/vmlinux");
    assert_eq!(c["initrd"], "/usr/local/share/husk/rootfs.cpio");
    assert_eq!(c["serial"], "none");
    assert_eq!(c["vsock"]["guest_cid"], 3);
    assert!(c["vsock"]["socket"]
        .as_str()
        .unwrap()
        .ends_with("/pod/vsock.sock"));
    assert_eq!(c["fs"][0]["tag"], SHARED_FS_TAG);
    assert!(c["cmdline"].as_str().unwrap().starts_with(BASE_CMDLINE));
    // Free page reporting is on by default: the device, and the guest's block size.
    assert_eq!(c["free_page_reporting"], true);
    assert!(c["cmdline"]
        .as_str()
        .unwrap()
        .contains(PAGE_REPORTING_PARAM));
}

#[test]
fn a_kept_console_gets_the_kernel_and_agent_lines() {
    let (_d, mut vmm, req) = setup("", "");
    let quiet = " quiet HUSK_AGENT_QUIET=1";
    assert!(vmm.vm_config(&req)["cmdline"]
        .as_str()
        .unwrap()
        .contains(quiet));
    vmm.cfg.debug_console = true;
    let c = vmm.vm_config(&req);
    assert!(c["serial"]["file"]
        .as_str()
        .unwrap()
        .ends_with("console.log"));
    let cmdline = c["cmdline"].as_str().unwrap();
    assert!(!cmdline.contains("quiet"), "{cmdline}");
}

#[test]
fn free_page_reporting_can_be_turned_off() {
    let (_d, mut vmm, req) = setup("", "");
    vmm.cfg.free_page_reporting = false;
    let c = vmm.vm_config(&req);
    assert_eq!(c["free_page_reporting"], false);
    assert!(!c["cmdline"].as_str().unwrap().contains("page_reporting"));
}

#[tokio::test]
async fn boots_when_the_agent_answers_and_stops() {
    let (_d, vmm, req) = setup(FAKE_VMM, FAKE_VIRTIOFSD);
    let vm = vmm.launch(&req).await.unwrap();
    let pid = recorded_pid(&req.pod_dir, VMM_PID_FILE);
    let fsd = recorded_pid(&req.pod_dir, VIRTIOFSD_PID_FILE);
    assert_eq!(vm.process.pid() as i32, pid);
    vm.agent.health_check().await.unwrap();
    vm.process.stop().await;
    assert_eq!(
        vm.process.exited().await.description,
        "was killed by signal 15"
    );
    assert!(gone(pid) && gone(fsd), "vmm and virtiofsd reaped");
}

/// [`FAKE_VMM`] whose agent says when it serves: 0.3 s after it listens it connects to the
/// ready socket (`<vsock socket>_1025`), then serves the handshake.
fn fake_vmm_that_signals_ready() -> String {
    const LISTEN: &str = "s.listen(4)\n";
    assert!(FAKE_VMM.contains(LISTEN));
    let signal = concat!(
        "time.sleep(0.3)\n",
        "r = socket.socket(socket.AF_UNIX)\n",
        "r.connect(cfg[\"vsock\"][\"socket\"] + \"_1025\")\n",
        "r.close()\n",
    );
    FAKE_VMM.replacen(LISTEN, &format!("{LISTEN}{signal}"), 1)
}

#[tokio::test]
async fn the_agents_ready_signal_ends_the_wait_at_once() {
    let (_d, mut vmm, req) = setup(&fake_vmm_that_signals_ready(), FAKE_VIRTIOFSD);
    // Without the signal the first poll would come after the boot timeout (2 s).
    vmm.poll_before_ready = Duration::from_secs(60);
    let t = Instant::now();
    let vm = vmm.launch(&req).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert!(
        !ready_socket(&req.pod_dir).exists(),
        "the ready socket is removed"
    );
    vm.process.stop().await;
}

#[tokio::test]
async fn case_47_silent_vmm_times_out_and_is_reaped() {
    let (_d, vmm, req) = setup("#!/bin/sh\necho booting\nexec sleep 1000\n", FAKE_VIRTIOFSD);
    let e = vmm.launch(&req).await.unwrap_err().to_string();
    assert!(e.contains("the agent did not answer within 2 s"), "{e}");
    assert!(e.contains("booting"), "{e}");
    assert!(gone(recorded_pid(&req.pod_dir, VMM_PID_FILE)));
    assert!(gone(recorded_pid(&req.pod_dir, VIRTIOFSD_PID_FILE)));
}

#[tokio::test]
async fn case_47_vmm_that_dies_is_reported_with_its_log() {
    let (_d, vmm, req) = setup(
        "#!/bin/sh\necho 'husk-vmm: /dev/kvm is PVM' >&2\nexit 1\n",
        FAKE_VIRTIOFSD,
    );
    let e = vmm.launch(&req).await.unwrap_err().to_string();
    assert!(e.contains("husk-vmm exited with status 1"), "{e}");
    assert!(e.contains("/dev/kvm is PVM"), "{e}");
    assert!(gone(recorded_pid(&req.pod_dir, VIRTIOFSD_PID_FILE)));
}

/// A vmm stand-in that triple-faults (exit 3) on its first `n` runs, then serves the
/// handshake; the runs are counted in a file beside its config.
fn flaky_vmm(n: u32) -> String {
    fake_vmm_after(&format!(
        "f=\"$(dirname \"$3\")/runs\"\necho x >> \"$f\"\n\
         [ \"$(wc -l < \"$f\")\" -le {n} ] && {{ echo 'husk-vmm: triple fault on vCPU 0' >&2; exit 3; }}\n"
    ))
}

/// A shell script that runs `prelude`, then becomes [`FAKE_VMM`].
fn fake_vmm_after(prelude: &str) -> String {
    format!(
        "#!/bin/sh\n{prelude}exec python3 - \"$@\" <<'EOF'\n{}\nEOF\n",
        FAKE_VMM.trim_start_matches("#!/usr/bin/env python3\n")
    )
}

/// How many lines the run-counting stand-ins wrote to `name` in the pod directory.
fn runs(req: &VmRequest, name: &str) -> usize {
    std::fs::read_to_string(req.pod_dir.join(name))
        .unwrap()
        .lines()
        .count()
}

#[tokio::test]
async fn a_guest_that_triple_faults_at_boot_is_booted_again_once() {
    let (_d, vmm, req) = setup(&flaky_vmm(1), FAKE_VIRTIOFSD);
    let vm = vmm.launch(&req).await.unwrap();
    vm.agent.health_check().await.unwrap();
    assert_eq!(runs(&req, "runs"), 2);
    vm.process.stop().await;
}

#[tokio::test]
async fn a_second_triple_fault_fails_the_launch() {
    let (_d, vmm, req) = setup(&flaky_vmm(2), FAKE_VIRTIOFSD);
    let e = vmm.launch(&req).await.unwrap_err().to_string();
    assert!(e.contains("husk-vmm exited with status 3"), "{e}");
    assert!(e.contains("triple fault"), "{e}");
    assert_eq!(runs(&req, "runs"), BOOT_ATTEMPTS as usize);
    assert!(gone(recorded_pid(&req.pod_dir, VIRTIOFSD_PID_FILE)));
}

#[tokio::test]
async fn a_virtiofsd_that_ends_during_boot_is_started_again_once() {
    // virtiofsd ends right after listening on its first run; the vmm answers late, so
    // the first boot is still waiting when it goes.
    let fsd = "#!/bin/sh\nfor a; do case $a in --socket-path=*) s=\"${a#--socket-path=}\"; : > \"$s\";; esac; done\n\
               f=\"$(dirname \"$s\")/fsd-runs\"; echo x >> \"$f\"\n\
               [ \"$(wc -l < \"$f\")\" -le 1 ] && exit 0\nexec sleep 1000\n";
    let slow_vmm = fake_vmm_after("sleep 1\n");
    let (_d, vmm, req) = setup(&slow_vmm, fsd);
    let vm = vmm.launch(&req).await.unwrap();
    vm.agent.health_check().await.unwrap();
    assert_eq!(runs(&req, "fsd-runs"), 2);
    vm.process.stop().await;
}

#[tokio::test]
async fn other_boot_failures_are_not_retried() {
    let (_d, vmm, req) = setup(
        "#!/bin/sh\necho x >> \"$(dirname \"$3\")/runs\"\nexit 1\n",
        FAKE_VIRTIOFSD,
    );
    assert!(vmm.launch(&req).await.is_err());
    assert_eq!(runs(&req, "runs"), 1);
}

#[tokio::test]
async fn virtiofsd_that_fails_stops_the_launch() {
    let (_d, vmm, req) = setup(FAKE_VMM, "#!/bin/sh\necho 'no such dir' >&2\nexit 1\n");
    let e = vmm.launch(&req).await.unwrap_err().to_string();
    assert!(e.contains("virtiofsd did not create"), "{e}");
    assert!(e.contains("no such dir"), "{e}");
    assert!(
        !req.pod_dir.join(VMM_PID_FILE).exists(),
        "the vmm never started"
    );
}

#[tokio::test]
async fn case_47_missing_vmm_binary() {
    let (_d, mut vmm, req) = setup(FAKE_VMM, FAKE_VIRTIOFSD);
    vmm.cfg.vmm = "/nonexistent/husk-vmm".into();
    let e = vmm.launch(&req).await.unwrap_err().to_string();
    assert!(e.contains("spawning /nonexistent/husk-vmm"), "{e}");
    assert!(gone(recorded_pid(&req.pod_dir, VIRTIOFSD_PID_FILE)));
}

#[tokio::test]
async fn case_43_virtiofsd_death_ends_the_vm() {
    let (d, vmm, req) = setup(FAKE_VMM, FAKE_VIRTIOFSD);
    let vm = vmm.launch(&req).await.unwrap();
    let fsd = recorded_pid(&req.pod_dir, VIRTIOFSD_PID_FILE);
    let _ = kill(Pid::from_raw(fsd), Signal::SIGKILL);
    let exit = tokio::time::timeout(Duration::from_secs(10), vm.process.exited()).await;
    // The VM's end names what ended it: virtiofsd, how, and its log's last line.
    assert_eq!(
        exit.unwrap().description,
        "was killed by signal 9 after virtiofsd was killed by signal 9; its log ends: (empty)"
    );
    vm.process.stop().await;
    drop(d);
}

#[tokio::test]
async fn spawn_in_a_netns_runs_the_program_there() {
    let (d, _vmm, _req) = setup("exit 0", "exit 0");
    let log = d.path().join("ns.log");
    let want = std::fs::read_link("/proc/self/ns/net").unwrap();
    let args = ["-c".to_string(), "readlink /proc/self/ns/net".to_string()];
    let r = spawn_logged(
        Path::new("/bin/sh"),
        &args,
        &log,
        Some(Path::new("/proc/self/ns/net")),
    );
    let mut child = r.unwrap();
    let status = child.wait().await.unwrap();
    let out = std::fs::read_to_string(&log).unwrap();
    // Joining a namespace needs CAP_SYS_ADMIN: without it the child fails, never crashes.
    if status.success() {
        assert_eq!(out.trim(), want.display().to_string());
    } else {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), None, "{out}");
    }
    assert!(spawn_logged(
        Path::new("/bin/sh"),
        &args,
        &log,
        Some(Path::new("/nonexistent/ns"))
    )
    .is_err());
}

#[test]
fn host_nameservers_skip_loopback_and_junk() {
    let text = "# c\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch x\nnameserver bogus\nnameserver 2001:db8::35\n";
    assert_eq!(
        host_nameservers(text),
        vec!["192.0.2.53".to_string(), "2001:db8::35".to_string()]
    );
    assert!(host_nameservers("").is_empty());
}

/// [`setup`] with VM templates on and the kernel and initrd as files (the template key
/// reads their identity).
fn with_templates(vmm: &str) -> (TempDir, HuskVmm, VmRequest) {
    let (d, mut h, req) = setup(vmm, FAKE_VIRTIOFSD);
    for (f, p) in [
        ("vmlinux", &mut h.cfg.kernel),
        ("rootfs.cpio", &mut h.cfg.rootfs),
    ] {
        *p = d.path().join(f);
        std::fs::write(&*p, f).unwrap();
    }
    h.cfg.vm_template = true;
    (d, h, req)
}

fn pod(req: &VmRequest, id: &str) -> VmRequest {
    let dir = req.pod_dir.with_file_name(id);
    VmRequest {
        pod_id: id.into(),
        shared_dir: dir.join("shared"),
        pod_dir: dir,
        ..req.clone()
    }
}

/// The vm.json the pod's vmm got.
fn pod_config(req: &VmRequest) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(req.pod_dir.join("vm.json")).unwrap()).unwrap()
}

/// A vmm stand-in for templates: with `snapshot_to` it runs `snapshot` (Python: `cfg`,
/// `here` the script's directory, `count(name)` appends a line to `here/<name>`), with
/// `restore_from` it runs `restore`, then it is [`FAKE_VMM`].
fn template_vmm(snapshot: &str, restore: &str) -> String {
    let body = FAKE_VMM.trim_start_matches("#!/usr/bin/env python3\n");
    format!(
        "#!/usr/bin/env python3\nimport json, os, socket, sys, time\n\
         cfg = json.load(open(sys.argv[3]))\n\
         here = os.path.dirname(os.path.abspath(sys.argv[0]))\n\
         def count(name):\n    open(os.path.join(here, name), 'a').write('x\\n')\n\
         count('vmm-runs')\n\
         if 'snapshot_to' in cfg:\n    count('template-runs')\n{}\n\
         if 'restore_from' in cfg:\n{}\n{body}",
        indent(snapshot),
        indent(restore)
    )
}

fn indent(code: &str) -> String {
    let lines: Vec<String> = code.lines().map(|l| format!("    {l}")).collect();
    if lines.is_empty() {
        "    pass".into()
    } else {
        lines.join("\n")
    }
}

/// husk-vmm's template mode: a sparse guest RAM, the state last, exit 0.
const MAKES_SNAPSHOT: &str = "d = cfg['snapshot_to']\nos.makedirs(d)\n\
    open(os.path.join(d, 'ram'), 'wb').truncate(cfg['mem_mib'] << 20)\n\
    open(os.path.join(d, 'state.json'), 'w').write('{}')\n\
    print('husk-vmm: snapshot written to ' + d, file=sys.stderr)\nsys.exit(0)";

/// How many lines a template stand-in wrote to `name` beside its script.
fn vmm_runs(h: &HuskVmm, name: &str) -> usize {
    std::fs::read_to_string(h.cfg.vmm.with_file_name(name))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_first_pod_makes_the_template_and_every_pod_is_restored_from_it() {
    let logs = crate::testutil::capture_logs();
    let (_d, mut h, req) = with_templates(&template_vmm(MAKES_SNAPSHOT, ""));
    // A restored agent sends no ready signal: waiting for one would take the boot timeout.
    h.poll_before_ready = Duration::from_secs(60);
    let key = crate::template::key(&h.vm_config(&req), &h.cfg.vmm).unwrap();
    let dir = h.cfg.template_dir.join(&key);
    let t = Instant::now();
    let vm = h.launch(&req).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(pod_config(&req)["restore_from"], json!(dir));
    assert!(dir.join("state.json").is_file() && dir.join("ram").is_file());
    assert!(!h.cfg.template_dir.join(format!("{key}.tmp")).exists());
    let info = logs.at(log::Level::Info);
    assert!(
        info.iter()
            .any(|m| m.starts_with(&format!("template {key} made in "))),
        "{info:?}"
    );
    assert!(
        info.iter()
            .any(|m| m.contains(&format!("(restored from template {key})"))),
        "{info:?}"
    );
    // The next pods of the same shape use it as it is.
    let req2 = pod(&req, "p2");
    let vm2 = h.launch(&req2).await.unwrap();
    assert_eq!(pod_config(&req2)["restore_from"], json!(dir));
    assert_eq!(vmm_runs(&h, "template-runs"), 1);
    // Only the sockets differ from the template's config (and the pod has no snapshot_to).
    let c = pod_config(&req2);
    assert!(c.get("snapshot_to").is_none());
    assert!(c["vsock"]["socket"]
        .as_str()
        .unwrap()
        .ends_with("/p2/vsock.sock"));
    vm.process.stop().await;
    vm2.process.stop().await;
}

#[tokio::test]
async fn pods_starting_together_make_one_template() {
    let (_d, h, req) = with_templates(&template_vmm(
        &format!("time.sleep(0.3)\n{MAKES_SNAPSHOT}"),
        "",
    ));
    let (r2, r3) = (pod(&req, "p2"), pod(&req, "p3"));
    let (a, b, c) = tokio::join!(h.launch(&req), h.launch(&r2), h.launch(&r3));
    assert_eq!(vmm_runs(&h, "template-runs"), 1);
    for (vm, r) in [(a, &req), (b, &r2), (c, &r3)] {
        assert!(pod_config(r)["restore_from"].is_string());
        vm.unwrap().process.stop().await;
    }
}

#[tokio::test]
async fn templates_beyond_the_most_kept_go_least_recently_used_first() {
    let (_d, mut h, req) = with_templates(&template_vmm(MAKES_SNAPSHOT, ""));
    h.cfg.max_templates = 2;
    // Three shapes (memory sizes); shape 0 is used again before shape 2 is made.
    let shape = |i: u64| {
        let mut r = pod(&req, &format!("s{i}"));
        r.size.memory_mib = 128 + 64 * i;
        r
    };
    let key = |r: &VmRequest| crate::template::key(&h.vm_config(r), &h.cfg.vmm).unwrap();
    let (s0, s1, s2) = (shape(0), shape(1), shape(2));
    for r in [&s0, &s1, &s0, &s2] {
        let vm = h.launch(r).await.unwrap();
        assert!(pod_config(r)["restore_from"].is_string());
        vm.process.stop().await;
        // Directory times are nanoseconds on tmpfs; keep the uses apart anyway.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(vmm_runs(&h, "template-runs"), 3);
    let kept = |r: &VmRequest| h.cfg.template_dir.join(key(r)).join("state.json").exists();
    assert!(kept(&s0) && kept(&s2), "the used and the new one stay");
    assert!(!kept(&s1), "the least recently used goes");
}

#[tokio::test]
async fn a_template_that_cannot_be_made_leaves_pods_booting() {
    let logs = crate::testutil::capture_logs();
    let fails = "print('husk-vmm: error: saving MSRs: EINVAL', file=sys.stderr)\nsys.exit(1)";
    let (_d, h, req) = with_templates(&template_vmm(fails, ""));
    let key = crate::template::key(&h.vm_config(&req), &h.cfg.vmm).unwrap();
    let vm = h.launch(&req).await.unwrap();
    assert!(pod_config(&req).get("restore_from").is_none());
    let warn = logs.at(log::Level::Warn);
    assert!(
        warn.iter().any(
            |m| m.starts_with(&format!("template {key} could not be made"))
                && m.contains("exited with status 1")
                && m.contains("saving MSRs: EINVAL")
        ),
        "{warn:?}"
    );
    let td = &h.cfg.template_dir;
    assert!(!td.join(&key).exists() && !td.join(format!("{key}.tmp")).exists());
    // The failure is remembered: the next pod does not try again at once.
    let req2 = pod(&req, "p2");
    let vm2 = h.launch(&req2).await.unwrap();
    assert!(pod_config(&req2).get("restore_from").is_none());
    assert_eq!(vmm_runs(&h, "template-runs"), 1);
    assert!(logs
        .at(log::Level::Info)
        .iter()
        .any(|m| m.contains("not trying again")));
    vm.process.stop().await;
    vm2.process.stop().await;
}

#[tokio::test]
async fn a_template_vmm_that_never_snapshots_is_stopped_at_the_boot_timeout() {
    let logs = crate::testutil::capture_logs();
    let (_d, h, req) = with_templates(&template_vmm(
        "print('booting', file=sys.stderr)\nsys.stderr.flush()\ntime.sleep(1000)",
        "",
    ));
    let vm = h.launch(&req).await.unwrap();
    assert!(pod_config(&req).get("restore_from").is_none());
    let warn = logs.at(log::Level::Warn);
    assert!(
        warn.iter()
            .any(|m| m.contains("wrote no snapshot within 2 s") && m.contains("booting")),
        "{warn:?}"
    );
    vm.process.stop().await;
}

#[tokio::test]
async fn a_template_a_vm_cannot_be_restored_from_is_removed_and_the_pod_boots() {
    let logs = crate::testutil::capture_logs();
    let bad = "print('husk-vmm: error: snapshot format 9, this vmm reads 1', file=sys.stderr)\nsys.exit(1)";
    let (_d, h, req) = with_templates(&template_vmm(MAKES_SNAPSHOT, bad));
    let key = crate::template::key(&h.vm_config(&req), &h.cfg.vmm).unwrap();
    let vm = h.launch(&req).await.unwrap();
    vm.agent.health_check().await.unwrap();
    // The template, the failed restore, the boot.
    assert_eq!(vmm_runs(&h, "vmm-runs"), 3);
    assert!(pod_config(&req).get("restore_from").is_none());
    assert!(!h.cfg.template_dir.join(&key).exists());
    let warn = logs.at(log::Level::Warn);
    assert!(
        warn.iter().any(
            |m| m.contains(&format!("restored from template {key} failed"))
                && m.contains("snapshot format 9")
        ),
        "{warn:?}"
    );
    assert!(logs
        .at(log::Level::Info)
        .iter()
        .any(|m| m.contains("(cold-booted, boot attempt 1)")));
    vm.process.stop().await;
}

#[tokio::test]
async fn a_pod_whose_network_cannot_be_attached_makes_no_template() {
    let (_d, h, mut req) = with_templates(&template_vmm(MAKES_SNAPSHOT, ""));
    req.netns = Some(h.cfg.template_dir.with_file_name("no-such-netns"));
    // The namespace does not exist: the launch fails attaching it, before the pod's VM.
    assert!(h.launch(&req).await.is_err());
    assert!(!req.pod_dir.join("vm.json").exists());
    // The template (of a pod with one NIC) was made first; the next such pod uses it.
    assert_eq!(vmm_runs(&h, "vmm-runs"), 1);
    assert_eq!(vmm_runs(&h, "template-runs"), 1);
    let key = crate::template::key(&h.template_shape(&req), &h.cfg.vmm).unwrap();
    assert_ne!(
        key,
        crate::template::key(&h.vm_config(&req), &h.cfg.vmm).unwrap(),
        "a pod with a NIC and one without share a template"
    );
    assert!(h.cfg.template_dir.join(&key).join("state.json").exists());
}

#[tokio::test]
async fn a_template_gets_guest_ram_on_a_huge_page_tmpfs_that_goes_with_it() {
    let record = format!(
        "open(os.path.join(here, 'mem_dir'), 'w').write(str(cfg.get('mem_dir')))\n{MAKES_SNAPSHOT}"
    );
    let (_d, mut h, req) = with_templates(&template_vmm(&record, ""));
    h.cfg.huge_pages = true;
    let vm = h.launch(&req).await.unwrap();
    let mem_dir = std::fs::read_to_string(h.cfg.vmm.with_file_name("mem_dir")).unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let td = h.cfg.template_dir.display().to_string();
    assert!(!mounts.contains(&td), "{mounts}");
    if nix::unistd::Uid::effective().is_root() {
        assert!(mem_dir.ends_with(".tmp/ram"), "{mem_dir}");
    } else {
        // Without CAP_SYS_ADMIN there is no tmpfs: the vmm uses a memfd.
        assert_eq!(mem_dir, "None");
    }
    vm.process.stop().await;
    // The pod's own RAM tmpfs is the pod's (cleanup_pod unmounts it).
    let _ = nix::mount::umount2(
        &req.pod_dir.join(crate::ram::RAM_DIR),
        nix::mount::MntFlags::MNT_DETACH,
    );
}

/// [`FAKE_VMM`] that exits with `code` once the agent has been connected to (after the
/// handshake's first connection), as husk-vmm does when its guest ends.
fn vmm_that_ends_after_serving(code: i32) -> String {
    const ACCEPT: &str = "    conns.append(c)\n";
    assert!(FAKE_VMM.contains(ACCEPT));
    FAKE_VMM.replacen(
        ACCEPT,
        &format!("{ACCEPT}    time.sleep(0.3)\n    sys.exit({code})\n"),
        1,
    )
}

#[tokio::test]
async fn case_45_a_guest_panic_or_the_agent_exiting_is_reported_as_such() {
    for (code, meaning) in [
        (4, "guest kernel panic"),
        (
            0,
            "the guest reset or halted: its init, the agent, exited or rebooted it",
        ),
    ] {
        let (_d, vmm, req) = setup(&vmm_that_ends_after_serving(code), FAKE_VIRTIOFSD);
        let vm = vmm.launch(&req).await.unwrap();
        let fsd = recorded_pid(&req.pod_dir, VIRTIOFSD_PID_FILE);
        let exit = tokio::time::timeout(Duration::from_secs(10), vm.process.exited())
            .await
            .unwrap();
        assert_eq!(exit.code, Some(code));
        assert_eq!(
            exit.description,
            format!("exited with status {code} ({meaning})")
        );
        vm.process.stop().await;
        assert!(gone(fsd), "virtiofsd reaped after the vmm ended");
    }
}

#[tokio::test]
async fn case_45_a_guest_that_panics_before_the_agent_answers_fails_the_boot_once() {
    let (_d, vmm, req) = setup(
        "#!/bin/sh\necho x >> \"$(dirname \"$3\")/runs\"\necho 'husk-vmm: guest kernel panic' >&2\nexit 4\n",
        FAKE_VIRTIOFSD,
    );
    let e = vmm.launch(&req).await.unwrap_err().to_string();
    assert!(
        e.contains("exited with status 4 (guest kernel panic)"),
        "{e}"
    );
    assert_eq!(
        runs(&req, "runs"),
        1,
        "a panicking guest is not booted again"
    );
    assert!(gone(recorded_pid(&req.pod_dir, VIRTIOFSD_PID_FILE)));
}

/// The pod around the real launcher with stand-in programs: what a failed boot leaves.
fn pod_with(
    vmm: HuskVmm,
) -> (
    Arc<crate::service::PodService>,
    Arc<crate::testutil::FakeShare>,
) {
    let share = Arc::new(crate::testutil::FakeShare::default());
    let cfg = vmm.config().clone();
    let svc = crate::service::PodService::new(
        cfg,
        crate::service::Deps {
            launcher: Arc::new(vmm),
            events: Arc::new(crate::testutil::RecordingEvents::default()),
            share: share.clone(),
        },
    );
    (svc, share)
}

#[tokio::test]
async fn case_47_a_failure_after_the_vmm_is_spawned_reaps_every_pid_and_leaves_no_dir() {
    // Each stand-in records its pid beside itself (the pod dir's pid files go with it).
    const RECORD: &str = "echo $$ >> \"$(dirname \"$0\")/pids\"\n";
    let fsd = FAKE_VIRTIOFSD.replacen("#!/bin/sh\n", &format!("#!/bin/sh\n{RECORD}"), 1);
    // the agent never connects; the vmm refuses its config (a bad memory size)
    for vmm_script in [
        format!("#!/bin/sh\n{RECORD}echo booting\nexec sleep 1000\n"),
        format!("#!/bin/sh\n{RECORD}echo 'husk-vmm: mem_mib 0 is too small' >&2\nexit 1\n"),
    ] {
        let (d, mut vmm, _) = setup(&vmm_script, &fsd);
        vmm.config_mut().state_dir = d.path().join("state");
        let (svc, share) = pod_with(vmm);
        let bundle = d.path().join("bundle");
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(bundle.join("config.json"), "{}").unwrap();
        let req = crate::service::CreateRequest {
            id: "c1".into(),
            bundle,
            ..Default::default()
        };
        let e = svc.create(req).await.unwrap_err();
        assert_eq!(
            e.code(),
            containerd_shim_protos::ttrpc::Code::INTERNAL,
            "{e}"
        );
        let pids: Vec<i32> = std::fs::read_to_string(d.path().join("pids"))
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        assert_eq!(
            pids.len(),
            2,
            "the vmm and virtiofsd were spawned: {pids:?}"
        );
        for p in pids {
            assert!(gone(p), "pid {p} left behind");
        }
        let pod_dir = d.path().join("state/c1");
        assert!(
            !pod_dir.exists(),
            "the pod dir (sockets, logs, vm.json) is left"
        );
        assert_eq!(*share.calls.lock().unwrap(), ["prepare_pod", "cleanup_pod"]);
    }
}

#[tokio::test]
async fn case_43_a_vmm_killed_with_sigkill_ends_the_vm_and_its_virtiofsd_is_reaped() {
    let (_d, vmm, req) = setup(FAKE_VMM, FAKE_VIRTIOFSD);
    let vm = vmm.launch(&req).await.unwrap();
    let (pid, fsd) = (
        recorded_pid(&req.pod_dir, VMM_PID_FILE),
        recorded_pid(&req.pod_dir, VIRTIOFSD_PID_FILE),
    );
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), vm.process.exited())
        .await
        .unwrap();
    assert_eq!(exit.description, "was killed by signal 9");
    assert_eq!(exit.code, None);
    // what the pod's watcher does next (service.rs): stop() reaps the helpers
    vm.process.stop().await;
    assert!(gone(pid) && gone(fsd), "vmm and virtiofsd reaped");
}

#[test]
fn net_rate_limit_puts_a_bucket_on_each_direction() {
    let plain = net_entry("tap0", "02:00:00:00:00:01", 0);
    assert_eq!(plain, json!({"tap": "tap0", "mac": "02:00:00:00:00:01"}));
    let limited = net_entry("tap0", "02:00:00:00:00:01", 100);
    // 100 Mbit/s is 12.5 MB/s: 1.25 MB per 100 ms refill.
    let bucket = json!({"bandwidth": {"size": 1_250_000, "refill_time_ms": 100}});
    assert_eq!(limited["rx_rate_limiter"], bucket);
    assert_eq!(limited["tx_rate_limiter"], bucket);
}
