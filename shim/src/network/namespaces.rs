//! The spec's Linux namespaces, rewritten for the guest.
//!
//! A namespace path in the spec is a host path (`/var/run/netns/cni-...` for a CRI pod's
//! network, `/proc/<sandbox pid>/ns/...` for its members, where the pid is the vmm's as the
//! shim reports it). None of them means anything inside the VM. One VM serves one pod, so
//! the guest's root namespaces *are* the pod's:
//! - `network` with a path (the pod's host netns) is removed: the container runs in the
//!   guest's root network namespace, which the agent configures like the host netns. The
//!   path is returned so the shim can wire that netns to the VM. A `network` entry without
//!   a path (a `ctr run` container) stays: a new, loopback-only namespace, as under runc.
//! - a CRI member's `network`, `ipc` and `uts` entries (all paths to the sandbox) are
//!   removed: it shares the guest's root ones, whose hostname is the pod's.
//! - a CRI member's `pid` path (a pod that shares its process namespace, Kubernetes'
//!   `shareProcessNamespace`) names the sandbox's pid namespace: it becomes the agent's
//!   handle on the sandbox container's pid namespace in the guest
//!   ([`husk_protocol::shared_pid_ns_path`]), which the member then joins. Any other
//!   `pid` path becomes a new pid namespace (logged).
//! - a spec with no `pid` entry (hostPID) gets a new pid namespace (logged): the guest's
//!   root pid namespace is the agent's, and no container may see or signal the agent. In a
//!   hostPID pod that is the sandbox; containerd points its members at the sandbox's pid
//!   namespace, which the rule above then shares.

use std::path::PathBuf;

use serde_json::Value;

use crate::pod::PodRole;
use crate::spec::BundleSpec;

/// What the rewrite found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestNamespaces {
    /// The host network namespace the spec named (a sandbox or a single container).
    pub host_netns: Option<PathBuf>,
}

/// Rewrites `spec`'s `linux.namespaces` for the guest (see the module documentation).
pub fn rewrite_for_guest(role: &PodRole, spec: &mut BundleSpec) -> GuestNamespaces {
    let mut found = GuestNamespaces::default();
    let member = matches!(role, PodRole::Member { .. });
    let Some(list) = spec.namespaces_mut() else {
        return found;
    };
    let mut kept = Vec::with_capacity(list.len());
    for mut ns in list.drain(..) {
        let kind = ns
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let path = ns
            .get("path")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        match (kind.as_str(), path) {
            ("network", Some(p)) => {
                if !member {
                    found.host_netns = Some(p);
                }
            }
            ("network" | "ipc" | "uts", _) if member => {}
            ("pid", Some(_)) if member => {
                if let Some(o) = ns.as_object_mut() {
                    o.insert(
                        "path".into(),
                        husk_protocol::shared_pid_ns_path(role.pod_id()).into(),
                    );
                }
                kept.push(ns);
            }
            ("pid", Some(p)) => {
                log::warn!(
                    "pid namespace {} is not shared inside the VM: the container gets its own",
                    p.display()
                );
                if let Some(o) = ns.as_object_mut() {
                    o.remove("path");
                }
                kept.push(ns);
            }
            (_, Some(p)) => {
                log::warn!(
                    "{kind} namespace path {} has no meaning in the guest: the container gets a new one",
                    p.display()
                );
                if let Some(o) = ns.as_object_mut() {
                    o.remove("path");
                }
                kept.push(ns);
            }
            _ => kept.push(ns),
        }
    }
    if !kept
        .iter()
        .any(|ns| ns.get("type").and_then(Value::as_str) == Some("pid"))
    {
        log::warn!(
            "the spec shares the host's pid namespace (hostPID): inside the VM that would be \
             the agent's, so the container gets a pid namespace of its own"
        );
        kept.push(serde_json::json!({"type": "pid"}));
    }
    *list = kept;
    if member {
        // Without a UTS namespace of its own a hostname cannot be set (the pod's is the
        // guest's).
        spec.clear_hostname();
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> BundleSpec {
        BundleSpec::from_slice(json.as_bytes(), "/b/config.json".into()).expect("spec")
    }

    fn kinds(s: &BundleSpec) -> Vec<String> {
        s.raw()["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .map(|n| match n.get("path") {
                Some(p) => format!(
                    "{}={}",
                    n["type"].as_str().unwrap_or(""),
                    p.as_str().unwrap_or("")
                ),
                None => n["type"].as_str().unwrap_or("").to_string(),
            })
            .collect()
    }

    #[test]
    fn sandbox_gives_up_its_netns_path() {
        let mut s = spec(
            r#"{"hostname":"web","linux":{"namespaces":[{"type":"pid"},{"type":"ipc"},{"type":"uts"},
                {"type":"mount"},{"type":"network","path":"/var/run/netns/cni-1"}]}}"#,
        );
        let role = PodRole::Sandbox { pod_id: "p".into() };
        let g = rewrite_for_guest(&role, &mut s);
        assert_eq!(g.host_netns, Some(PathBuf::from("/var/run/netns/cni-1")));
        assert_eq!(kinds(&s), ["pid", "ipc", "uts", "mount"]);
        assert_eq!(s.raw()["hostname"], "web");
    }

    #[test]
    fn member_joins_the_guest_root_namespaces() {
        let mut s = spec(
            r#"{"hostname":"x","linux":{"namespaces":[{"type":"pid"},{"type":"ipc","path":"/proc/77/ns/ipc"},
                {"type":"uts","path":"/proc/77/ns/uts"},{"type":"mount"},
                {"type":"network","path":"/proc/77/ns/net"}]}}"#,
        );
        let role = PodRole::Member { pod_id: "p".into() };
        let g = rewrite_for_guest(&role, &mut s);
        assert_eq!(g.host_netns, None);
        assert_eq!(kinds(&s), ["pid", "mount"]);
        assert!(s.raw().get("hostname").is_none());
    }

    #[test]
    fn a_member_sharing_the_pods_pid_namespace_joins_the_sandboxs_in_the_guest() {
        let mut s = spec(
            r#"{"linux":{"namespaces":[{"type":"pid","path":"/proc/77/ns/pid"},{"type":"cgroup","path":"/proc/1/ns/cgroup"}]}}"#,
        );
        let role = PodRole::Member { pod_id: "p".into() };
        rewrite_for_guest(&role, &mut s);
        assert_eq!(kinds(&s), ["pid=/run/husk-agent/pidns/p", "cgroup"]);
    }

    #[test]
    fn host_pid_becomes_a_pid_namespace_of_its_own() {
        let mut s = spec(r#"{"linux":{"namespaces":[{"type":"mount"},{"type":"network"}]}}"#);
        let role = PodRole::Single { pod_id: "c".into() };
        rewrite_for_guest(&role, &mut s);
        assert_eq!(kinds(&s), ["mount", "network", "pid"]);
        let mut s = spec(r#"{"linux":{"namespaces":[{"type":"mount"}]}}"#);
        let role = PodRole::Member { pod_id: "p".into() };
        rewrite_for_guest(&role, &mut s);
        assert_eq!(kinds(&s), ["mount", "pid"]);
    }

    #[test]
    fn another_pid_path_becomes_a_new_pid_namespace() {
        let mut s = spec(r#"{"linux":{"namespaces":[{"type":"pid","path":"/proc/77/ns/pid"}]}}"#);
        let role = PodRole::Single { pod_id: "c".into() };
        rewrite_for_guest(&role, &mut s);
        assert_eq!(kinds(&s), ["pid"]);
    }

    #[test]
    fn single_container_keeps_a_new_netns_and_reports_a_named_one() {
        let mut s = spec(r#"{"linux":{"namespaces":[{"type":"network"},{"type":"mount"}]}}"#);
        let role = PodRole::Single { pod_id: "c".into() };
        assert_eq!(rewrite_for_guest(&role, &mut s), GuestNamespaces::default());
        assert_eq!(kinds(&s), ["network", "mount", "pid"]);
        let mut s = spec(r#"{"linux":{"namespaces":[{"type":"network","path":"/run/netns/n"}]}}"#);
        let g = rewrite_for_guest(&role, &mut s);
        assert_eq!(g.host_netns, Some(PathBuf::from("/run/netns/n")));
        assert_eq!(kinds(&s), ["pid"]);
    }

    #[test]
    fn spec_without_namespaces_is_left_alone() {
        let mut s = spec(r#"{"process":{}}"#);
        let role = PodRole::Sandbox { pod_id: "p".into() };
        assert_eq!(rewrite_for_guest(&role, &mut s), GuestNamespaces::default());
        assert_eq!(s.raw(), &serde_json::json!({"process":{}}));
    }
}
