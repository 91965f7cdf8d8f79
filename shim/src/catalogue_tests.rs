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

#[test]
fn read_only_rootfs_gets_its_mount_points_made_inside_it() {
    require_root!("read-only rootfs mount points");
    let p = RealPod::new("romp");
    let shared = p.share.prepare_pod(&p.pod).unwrap();
    // containerd's CRI sandbox: a read-only root, /etc/resolv.conf bound from a host file,
    // a /dev tmpfs with /dev/shm below it; the image has no /etc and no /dev.
    let root = p.dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let resolv = p.dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 10.0.0.1\n").unwrap();
    let spec = serde_json::json!({"root": {"path": &root, "readonly": true}, "mounts": [
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
        {"destination": "/dev/shm", "type": "bind", "source": p.dir.path(), "options": ["rbind"]},
        {"destination": "/etc/resolv.conf", "type": "bind", "source": &resolv, "options": ["rbind", "ro"]},
    ]})
    .to_string();
    p.share("c1", &spec, &[]).unwrap();
    assert!(root.join("etc/resolv.conf").is_file());
    assert!(root.join("dev").is_dir());
    assert!(
        !root.join("dev/shm").exists(),
        "made below another mount's destination"
    );
    // What virtiofsd serves has them, and is still read-only.
    let guest_root = shared.join("c1/rootfs");
    assert!(guest_root.join("etc/resolv.conf").is_file());
    let made = std::fs::write(guest_root.join("etc/new"), "");
    assert_eq!(made.unwrap_err().raw_os_error(), Some(libc::EROFS));
    p.share.unshare(&p.pod, "c1", &p.bundle).unwrap();
    p.share.cleanup_pod(&p.pod).unwrap();
}

#[test]
fn read_only_rootfs_mount_points_never_follow_the_images_links_out() {
    require_root!("read-only rootfs mount points");
    let p = RealPod::new("romp-link");
    p.share.prepare_pod(&p.pod).unwrap();
    let outside = p.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let root = p.dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    // A hostile image: /etc climbs out of the rootfs, /var points at a host path.
    std::os::unix::fs::symlink("../outside", root.join("etc")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("var")).unwrap();
    let host_file = p.dir.path().join("hosts");
    std::fs::write(&host_file, "").unwrap();
    let spec = spec_json(
        &root,
        &[
            ("/etc/hosts", &host_file, &["rbind", "ro"]),
            ("/var/run/x", p.dir.path(), &["rbind", "ro"]),
        ],
        true,
    );
    // Inside the root, `..` stops at the root and an absolute link starts from it: both
    // links dangle there, and a dangling link is refused, never created through.
    let e = p.share("c1", &spec, &[]).unwrap_err().to_string();
    assert!(e.contains("mount point /etc/hosts"), "{e}");
    let outside_is_empty = || std::fs::read_dir(&outside).unwrap().count() == 0;
    assert!(
        outside_is_empty(),
        "a mount point was made outside the rootfs"
    );
    p.share.unshare(&p.pod, "c1", &p.bundle).unwrap();
    // Once their targets exist inside the root, the mount points are made there.
    let inside_var = root.join(outside.strip_prefix("/").unwrap());
    std::fs::create_dir_all(root.join("outside")).unwrap();
    std::fs::create_dir_all(&inside_var).unwrap();
    p.share("c1", &spec, &[]).unwrap();
    assert!(
        outside_is_empty(),
        "a mount point was made outside the rootfs"
    );
    assert!(root.join("outside/hosts").is_file());
    assert!(inside_var.join("run/x").is_dir());
    p.share.unshare(&p.pod, "c1", &p.bundle).unwrap();
    p.share.cleanup_pod(&p.pod).unwrap();
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

mod pod;

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
