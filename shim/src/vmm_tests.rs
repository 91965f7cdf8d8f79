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
async fn silent_vmm_times_out_and_is_reaped() {
    let (_d, vmm, req) = setup("#!/bin/sh\necho booting\nexec sleep 1000\n", FAKE_VIRTIOFSD);
    let e = vmm.launch(&req).await.unwrap_err().to_string();
    assert!(e.contains("the agent did not answer within 2 s"), "{e}");
    assert!(e.contains("booting"), "{e}");
    assert!(gone(recorded_pid(&req.pod_dir, VMM_PID_FILE)));
    assert!(gone(recorded_pid(&req.pod_dir, VIRTIOFSD_PID_FILE)));
}

#[tokio::test]
async fn vmm_that_dies_is_reported_with_its_log() {
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
async fn missing_vmm_binary() {
    let (_d, mut vmm, req) = setup(FAKE_VMM, FAKE_VIRTIOFSD);
    vmm.cfg.vmm = "/nonexistent/husk-vmm".into();
    let e = vmm.launch(&req).await.unwrap_err().to_string();
    assert!(e.contains("spawning /nonexistent/husk-vmm"), "{e}");
    assert!(gone(recorded_pid(&req.pod_dir, VIRTIOFSD_PID_FILE)));
}

#[tokio::test]
async fn virtiofsd_death_ends_the_vm() {
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
    let (d, vmm, _req) = setup("exit 0", "exit 0");
    let log = d.path().join("ns.log");
    let want = std::fs::read_link("/proc/self/ns/net").unwrap();
    let args = ["-c".to_string(), "readlink /proc/self/ns/net".to_string()];
    let r = vmm.spawn_in(
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
    assert!(vmm
        .spawn_in(
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
