//! Template keys and configs. Making and using templates through the launcher is tested
//! with fake vmms in `vmm_tests.rs`.

use std::sync::Arc;

use super::*;
use crate::pod::VmSize;
use crate::testutil::TempDir;
use crate::vmm::HuskVmm;

/// A launcher whose kernel, initrd and vmm are files in `d`, and a pod in `d/<pod>`.
fn launcher(d: &Path) -> HuskVmm {
    let cfg = Config {
        kernel: d.join("vmlinux"),
        rootfs: d.join("rootfs.cpio"),
        vmm: d.join("husk-vmm"),
        template_dir: d.join("templates"),
        ..Config::default()
    };
    for f in [&cfg.kernel, &cfg.rootfs, &cfg.vmm] {
        std::fs::write(f, f.display().to_string()).unwrap();
    }
    HuskVmm::new(cfg, Arc::new(crate::agent_client::TtrpcConnector))
}

fn request(d: &Path, pod: &str) -> VmRequest {
    VmRequest {
        pod_id: pod.into(),
        size: VmSize {
            vcpus: 2,
            memory_mib: 320,
        },
        pod_dir: d.join(pod),
        shared_dir: d.join(pod).join("shared"),
        netns: None,
    }
}

fn key_of(h: &HuskVmm, req: &VmRequest) -> String {
    key(&h.vm_config(req), &h.config().vmm).unwrap()
}

#[test]
fn the_key_of_a_shape_is_fixed_across_builds() {
    let vm = json!({
        "kernel": "/k", "initrd": "/i", "cmdline": "console=ttyS0", "vcpus": 1,
        "mem_mib": 256, "vsock": { "guest_cid": 3, "socket": "/x" },
        "fs": [{ "tag": "husk-shared", "socket": "/y" }], "free_page_reporting": true,
    });
    let f = |n: u64| FileId {
        len: n,
        mtime_ns: 1_700_000_000_123_456_789,
        ino: n + 1,
    };
    let k = key_from(&vm, &[f(1), f(2), f(3)]).unwrap();
    // SHA-256 of the key text (checked with Python's hashlib), first 128 bits.
    assert_eq!(k, "5048c5c94d6051d5cd3ae5d9ab91eb1e");
    assert_eq!(key_from(&vm, &[f(1), f(2), f(3)]).unwrap(), k);
}

#[test]
fn the_key_follows_the_guest_and_the_binaries_not_the_pod() {
    let d = TempDir::new("tkey");
    let mut h = launcher(d.path());
    let req = request(d.path(), "p1");
    let k = key_of(&h, &req);
    assert_eq!(k.len(), 32);
    assert!(k.chars().all(|c| c.is_ascii_hexdigit()));
    // Another pod of the same shape: other socket paths, same key.
    assert_eq!(key_of(&h, &request(d.path(), "p2")), k);
    // Where guest RAM lives is not the guest's business.
    h.config_mut().huge_pages = false;
    assert_eq!(key_of(&h, &req), k);
    // The guest's shape.
    let mut other = req.clone();
    other.size.memory_mib = 512;
    assert_ne!(key_of(&h, &other), k);
    other = req.clone();
    other.size.vcpus = 1;
    assert_ne!(key_of(&h, &other), k);
    h.config_mut().kernel_params = "loglevel=1".into();
    assert_ne!(key_of(&h, &req), k);
    h.config_mut().kernel_params = String::new();
    h.config_mut().free_page_reporting = false;
    assert_ne!(key_of(&h, &req), k);
    h.config_mut().free_page_reporting = true;
    assert_eq!(key_of(&h, &req), k);
    // A NIC: the template needs one too; its tap and MAC are the pod's, not in the key.
    let mut vm = h.vm_config(&req);
    let files = [
        FileId::of(&h.config().kernel).unwrap(),
        FileId::of(&h.config().rootfs).unwrap(),
        FileId::of(&h.config().vmm).unwrap(),
    ];
    assert_eq!(key_from(&vm, &files).unwrap(), k);
    vm["net"] = json!([{ "tap": "husk_tap0", "mac": "02:00:00:00:00:01" }]);
    let with_nic = key_from(&vm, &files).unwrap();
    assert_ne!(with_nic, k);
    vm["net"] = json!([{ "tap": "husk_tap0", "mac": "0a:58:0a:58:00:07" }]);
    assert_eq!(key_from(&vm, &files).unwrap(), with_nic);
    // The files: a kernel touched, an initrd replaced, a new vmm binary.
    let kernel = h.config().kernel.clone();
    let f = std::fs::File::options().write(true).open(&kernel).unwrap();
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
        .unwrap();
    let touched = key_of(&h, &req);
    assert_ne!(touched, k);
    let initrd = h.config().rootfs.clone();
    let new = d.path().join("new.cpio");
    std::fs::copy(&initrd, &new).unwrap();
    std::fs::rename(&new, &initrd).unwrap();
    let replaced = key_of(&h, &req);
    assert_ne!(replaced, touched);
    std::fs::write(&h.config().vmm, "a newer husk-vmm").unwrap();
    assert_ne!(key_of(&h, &req), replaced);
}

#[test]
fn no_key_without_the_files() {
    let d = TempDir::new("tkey");
    let h = launcher(d.path());
    let req = request(d.path(), "p1");
    std::fs::remove_file(&h.config().kernel).unwrap();
    let e = key(&h.vm_config(&req), &h.config().vmm).unwrap_err();
    assert!(e.starts_with("kernel ") && e.contains("vmlinux"), "{e}");
    assert!(key(&json!({}), &h.config().vmm).is_err());
}

#[test]
fn the_template_vm_has_its_own_sockets_and_snapshots() {
    let d = TempDir::new("tcfg");
    let h = launcher(d.path());
    let req = request(d.path(), "p1");
    let mut vm = h.vm_config(&req);
    vm["net"] = json!([{ "tap": "husk_tap0", "mac": "02:00:00:00:00:01" }]);
    vm["mem_dir"] = json!(req.pod_dir.join("ram"));
    let tmp = d.path().join("templates/k.tmp");
    let t = template_config(h.config(), "k", &vm, &tmp, None);
    assert_eq!(t["vsock"]["socket"], json!(tmp.join("vsock.sock")));
    assert_eq!(t["fs"][0]["socket"], json!(tmp.join("virtiofsd.sock")));
    assert_eq!(t["fs"][0]["tag"], vm["fs"][0]["tag"]);
    assert_eq!(t["snapshot_to"], json!(tmp.join("snap")));
    assert_eq!(t["serial"], "none");
    assert!(t.get("mem_dir").is_none());
    // The pod's NIC becomes a detached one with the template MAC (no tap, no pod MAC).
    assert_eq!(
        t["net"],
        json!([{ "detached": true, "mac": "02:68:75:73:6b:00" }])
    );
    for k in [
        "kernel",
        "initrd",
        "cmdline",
        "vcpus",
        "mem_mib",
        "free_page_reporting",
    ] {
        assert_eq!(t[k], vm[k], "{k}");
    }
    assert_eq!(t["vsock"]["guest_cid"], vm["vsock"]["guest_cid"]);
    let ram = tmp.join("ram");
    let t = template_config(h.config(), "k", &vm, &tmp, Some(&ram));
    assert_eq!(t["mem_dir"], json!(ram));
    let mut cfg = h.config().clone();
    cfg.debug_console = true;
    let t = template_config(&cfg, "k", &vm, &tmp, None);
    assert_eq!(
        t["serial"]["file"],
        json!(cfg.template_dir.join("k.console.log"))
    );
}

#[test]
fn pods_use_templates_unless_turned_off() {
    let d = TempDir::new("tapp");
    let mut cfg = Config::default();
    let mut req = request(d.path(), "p1");
    assert!(applies(&cfg, &req));
    req.netns = Some("/var/run/netns/cni-1".into());
    assert!(applies(&cfg, &req));
    cfg.vm_template = false;
    assert!(!applies(&cfg, &req));
}

#[test]
fn a_failure_is_remembered_for_a_while() {
    let d = TempDir::new("tfail");
    let marker = d.path().join("k.failed");
    assert_eq!(failed_recently(&marker), None);
    std::fs::write(&marker, "x").unwrap();
    assert!(failed_recently(&marker).is_some());
    let f = std::fs::File::options().write(true).open(&marker).unwrap();
    f.set_modified(SystemTime::now() - RETRY_AFTER - Duration::from_secs(1))
        .unwrap();
    assert_eq!(failed_recently(&marker), None);
}
