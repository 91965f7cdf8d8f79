use super::*;
use crate::engine::syscall::{Call, DevInfo, RecordingSyscall};
use oci_spec::runtime::MountBuilder;

fn opts(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn options_map_to_flags_propagation_and_data() {
    let m = parse_options(
        "/x",
        &opts(&["rbind", "ro", "nosuid", "rprivate", "mode=755", "size=64k"]),
    )
    .unwrap();
    assert!(m
        .flags
        .contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY));
    assert!(m.flags.contains(MsFlags::MS_NOSUID));
    assert_eq!(m.propagation, vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
    assert_eq!(m.data, "mode=755,size=64k");
    let m = parse_options("/x", &opts(&["ro", "rw"])).unwrap();
    assert!(!m.flags.contains(MsFlags::MS_RDONLY));
    assert!(parse_options("/x", &opts(&["idmap"])).is_err());
}

fn plan(mounts: Vec<Mount>) -> RootfsPlan {
    RootfsPlan {
        root: "/b/rootfs".into(),
        propagation: MsFlags::MS_SLAVE | MsFlags::MS_REC,
        mounts,
        devices: default_devices(),
        masked: vec!["/proc/kcore".into(), "/proc/acpi".into(), "/nope".into()],
        readonly_paths: vec!["/proc/sys".into()],
        readonly: true,
        ..Default::default()
    }
}

#[test]
fn setup_mounts_inside_root_then_pivots_then_masks() {
    let proc_ = MountBuilder::default()
        .destination("/proc")
        .typ("proc")
        .source("proc")
        .build()
        .unwrap();
    let bind = MountBuilder::default()
        .destination("/data")
        .typ("bind")
        .source("/srv")
        .options(opts(&["rbind", "ro"]))
        .build()
        .unwrap();
    let sys = RecordingSyscall {
        existing: vec![
            ("/srv".into(), true),
            ("/proc/kcore".into(), false),
            ("/proc/acpi".into(), true),
            ("/proc/sys".into(), true),
        ],
        devices: vec![(
            "/dev/null".into(),
            DevInfo {
                is_char: true,
                rdev: nix::sys::stat::makedev(1, 3),
            },
        )],
        ..Default::default()
    };
    setup(&sys, &plan(vec![proc_, bind])).unwrap();
    finish(&sys, &plan(vec![])).unwrap();
    let calls = sys.take();
    assert_eq!(
        calls[0],
        Call::Mount(
            None,
            "/".into(),
            None,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None
        )
    );
    assert!(calls.contains(&Call::Mount(
        Some("proc".into()),
        "/b/rootfs/proc".into(),
        Some("proc".into()),
        MsFlags::empty(),
        None
    )));
    assert!(calls.contains(&Call::Mount(
        None,
        "/b/rootfs/data".into(),
        None,
        MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
        None
    )));
    assert!(calls.contains(&Call::Mknod(
        "/b/rootfs/dev/null".into(),
        true,
        0o666,
        nix::sys::stat::makedev(1, 3)
    )));
    let pivot = calls
        .iter()
        .position(|c| *c == Call::PivotRoot("/b/rootfs".into()))
        .unwrap();
    let masked_file = calls
        .iter()
        .position(|c| {
            *c == Call::Mount(
                Some("/dev/null".into()),
                "/proc/kcore".into(),
                None,
                MsFlags::MS_BIND,
                None,
            )
        })
        .unwrap();
    assert!(masked_file > pivot);
    assert!(calls.contains(&Call::Mount(
        Some("tmpfs".into()),
        "/proc/acpi".into(),
        Some("tmpfs".into()),
        MsFlags::MS_RDONLY,
        None
    )));
    assert!(!calls
        .iter()
        .any(|c| matches!(c, Call::Mount(_, t, ..) if t == Path::new("/nope"))));
    assert!(calls.contains(&Call::RemountRo("/proc/sys".into())));
    assert_eq!(calls.last(), Some(&Call::RemountRo("/".into())));
}

#[test]
fn masking_refuses_a_fake_null_device() {
    let sys = RecordingSyscall {
        existing: vec![("/proc/kcore".into(), false)],
        devices: vec![(
            "/dev/null".into(),
            DevInfo {
                is_char: false,
                rdev: nix::sys::stat::makedev(8, 0),
            },
        )],
        ..Default::default()
    };
    setup(&sys, &plan(vec![])).unwrap();
    let err = finish(&sys, &plan(vec![])).unwrap_err();
    assert!(matches!(err, RootfsError::NotNullDevice(_)), "{err}");
}

#[test]
fn user_namespace_binds_devices_instead_of_mknod() {
    let sys = RecordingSyscall::default();
    let mut p = plan(vec![]);
    p.bind_devices = true;
    p.masked.clear();
    setup(&sys, &p).unwrap();
    let calls = sys.take();
    assert!(!calls.iter().any(|c| matches!(c, Call::Mknod(..))));
    assert!(calls.contains(&Call::Mount(
        Some("/dev/null".into()),
        "/b/rootfs/dev/null".into(),
        None,
        MsFlags::MS_BIND,
        None
    )));
}
