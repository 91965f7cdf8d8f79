//! A client's config.json through what the shim does with it before the agent sees it:
//! parsing (`BundleSpec::from_slice`), the pod role and id checks, VM sizing from the
//! limits and annotations, the hostname, the rewrite to guest paths (`share::rewrite_spec`)
//! and the namespace rewrite for each pod role (`network::namespaces::rewrite_for_guest`).
//! Errors are fine; a panic is not, and each step's promises are checked.
#![no_main]

use husk_shim::config::Config;
use husk_shim::network::namespaces::rewrite_for_guest;
use husk_shim::pod::{self, PodRole};
use husk_shim::share;
use husk_shim::spec::BundleSpec;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const ID: &str = "c1";

fn namespaces(s: &BundleSpec) -> Option<&Vec<Value>> {
    s.raw().get("linux")?.get("namespaces")?.as_array()
}

fn ns_type(ns: &Value) -> Option<&str> {
    ns.get("type").and_then(Value::as_str)
}

fn ns_path(ns: &Value) -> Option<&str> {
    ns.get("path")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
}

fn check_namespaces(role: &PodRole, spec: &BundleSpec) {
    let mut s = spec.clone();
    let had = namespaces(&s).is_some();
    let found = rewrite_for_guest(role, &mut s);
    let member = matches!(role, PodRole::Member { .. });
    if member {
        assert_eq!(
            found.host_netns, None,
            "a member never names the pod's netns"
        );
    }
    let Some(list) = namespaces(&s) else {
        assert!(!had, "the namespace list went away");
        return;
    };
    if member {
        assert!(s.hostname().is_none(), "a member's hostname is the pod's");
    }
    assert!(
        list.iter().any(|ns| ns_type(ns) == Some("pid")),
        "no pid namespace after the rewrite: the container would see the agent"
    );
    let shared = husk_protocol_path(role);
    for ns in list {
        let (kind, path) = (ns_type(ns), ns_path(ns));
        if member {
            assert!(
                !matches!(kind, Some("network" | "ipc" | "uts")),
                "a member keeps {kind:?}"
            );
        }
        // No host path survives: the only path left is the agent's shared pid handle.
        if let Some(p) = path {
            assert!(
                member && kind == Some("pid") && Some(p) == shared.as_deref(),
                "host namespace path {p:?} ({kind:?}) reaches the guest"
            );
        }
    }
    // The rewritten spec is still what the agent can parse.
    let bytes = s.to_bytes();
    assert!(BundleSpec::from_slice(&bytes, "/b/config.json".into()).is_ok());
}

/// The path a member's shared pid namespace is rewritten to, read back from a rewrite of
/// a minimal spec (the fuzz crate does not depend on husk-protocol for one function).
fn husk_protocol_path(role: &PodRole) -> Option<String> {
    let mut s = BundleSpec::from_slice(
        br#"{"linux":{"namespaces":[{"type":"pid","path":"/proc/1/ns/pid"}]}}"#,
        "/b/config.json".into(),
    )
    .ok()?;
    rewrite_for_guest(role, &mut s);
    namespaces(&s)?
        .first()
        .and_then(ns_path)
        .map(str::to_string)
}

/// JSON equality, floats within a relative 1e-15.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x == y || (x - y).abs() <= x.abs().max(y.abs()) * 1e-15
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = BundleSpec::from_slice(data, "/b/config.json".into()) else {
        return;
    };
    assert!(spec.raw().is_object());
    // What goes to the agent parses back to the same document (numbers beyond i64/u64
    // are f64 in serde_json and may come back one ulp off; husk reads none of those).
    let again = BundleSpec::from_slice(&spec.to_bytes(), "/b/config.json".into())
        .expect("the shim's own bytes parse");
    assert!(
        same(again.raw(), spec.raw()),
        "{:?} != {:?}",
        again.raw(),
        spec.raw()
    );

    if let Ok(role) = PodRole::checked(ID, &spec) {
        assert!(pod::valid_id(role.pod_id()));
        check_namespaces(&role, &spec);
    }
    for role in [
        PodRole::Sandbox {
            pod_id: "p1".into(),
        },
        PodRole::Member {
            pod_id: "p1".into(),
        },
        PodRole::Single { pod_id: ID.into() },
    ] {
        check_namespaces(&role, &spec);
    }

    let cfg = Config::default();
    let size = pod::vm_size(&spec, &cfg);
    assert!(size.vcpus >= 1);
    assert!(size.vcpus <= cfg.max_vcpus.max(cfg.default_vcpus));
    assert!(size.memory_mib >= cfg.memory_overhead_mib.min(cfg.default_memory_mib));

    let host = pod::pod_hostname(&spec, || Some("host".into()));
    assert!(host.len() <= 64);
    assert!(host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));

    let _ = spec.annotations();
    let _ = (
        spec.terminal(),
        spec.root_readonly(),
        spec.cpu_quota_period(),
    );

    let mut s = spec.clone();
    let binds_before = s.mounts().iter().filter(|m| m.is_bind()).count();
    if let Ok(binds) = share::rewrite_spec(ID, &mut s) {
        assert_eq!(binds.len(), binds_before);
        assert_eq!(
            s.raw()
                .get("root")
                .and_then(|r| r.get("path"))
                .and_then(Value::as_str),
            Some(share::guest_rootfs(ID).as_str())
        );
        let mounts = s.mounts();
        for (i, host_src, _) in &binds {
            assert!(host_src.is_absolute());
            assert_eq!(mounts[*i].source, share::guest_mount(ID, *i));
        }
        // No bind mount keeps a host path.
        for m in mounts.iter().filter(|m| m.is_bind()) {
            assert!(
                m.source.starts_with(share::GUEST_SHARED_DIR),
                "{:?}",
                m.source
            );
        }
    }
});
