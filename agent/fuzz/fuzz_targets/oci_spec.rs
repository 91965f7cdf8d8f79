//! OCI spec handling on arbitrary config.json text: validation, the rootfs plan run
//! against the recording fake kernel, capabilities, the seccomp compiler, cgroup
//! resource conversion and the API's resources parser. Errors are fine; panics are not.
#![no_main]

use husk_agent::engine::{caps, cgroups, rootfs, seccomp, spec, syscall};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = serde_json::from_str::<oci_spec::runtime::LinuxResources>(text) {
        let _ = cgroups::resource_files(&r);
    }
    let Ok(s) = spec::parse(text) else {
        return;
    };
    let _ = spec::rootfs(&s, std::path::Path::new("/bundle"));
    if let Ok(plan) = rootfs::RootfsPlan::from_spec(&s, "/bundle/rootfs".into(), false) {
        let sys = syscall::RecordingSyscall::default();
        let _ = rootfs::setup(&sys, &plan);
        let _ = rootfs::finish(&sys, &plan);
    }
    let p = s.process().clone().unwrap_or_default();
    let _ = caps::CapSets::from_spec(p.capabilities().as_ref());
    if let Some(l) = s.linux() {
        if let Some(sc) = l.seccomp() {
            if let Ok(prog) = seccomp::compile(sc) {
                assert!(prog.len() <= 4096);
            }
        }
        if let Some(r) = l.resources() {
            let _ = cgroups::resource_files(r);
        }
    }
});
