//! The pod network attach and detach against a real network namespace: a veth pair made
//! with ip(8), one end in a new namespace as eth0 with an address, MTU 1400 and a default
//! route. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2; elsewhere it says so
//! and returns.

use std::path::Path;
use std::process::Command;

use husk_shim::network::{attach, detach, detach_leftover, TAP_NAME};

fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("running sh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

struct Netns(String, String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&format!(
            "ip netns del {}; ip link del {} 2>/dev/null",
            self.0, self.1
        ));
    }
}

/// A new namespace with eth0 (one end of a veth) at 10.123.0.2/24, MTU 1400 and a default
/// route; None (and a message) where that cannot be made. The guard removes it all.
fn veth_netns(tag: &str) -> Option<(Netns, String, String)> {
    if !nix::unistd::geteuid().is_root() || !sh("command -v ip && command -v tc").0 {
        eprintln!("skipped: needs root and iproute2");
        return None;
    }
    let ns = format!("husk-{tag}{}", std::process::id());
    let host_end = format!("hk{tag}{}", std::process::id() % 100000);
    if !sh(&format!("ip netns add {ns}")).0 {
        eprintln!("skipped: cannot create a network namespace here");
        return None;
    }
    let guard = Netns(ns.clone(), host_end.clone());
    let (ok, out) = sh(&format!(
        "ip link add {host_end} type veth peer name eth0 netns {ns} && \
         ip -n {ns} link set eth0 mtu 1400 up && ip -n {ns} addr add 10.123.0.2/24 dev eth0 && \
         ip link set {host_end} up && ip -n {ns} route add default via 10.123.0.1"
    ));
    assert!(ok, "setting up the veth: {out}");
    let path = format!("/var/run/netns/{ns}");
    Some((guard, ns, path))
}

#[test]
fn attach_then_detach_leaves_the_namespace_as_it_was() {
    let Some((_guard, ns, path)) = veth_netns("t") else {
        return;
    };
    let net = attach(Path::new(&path)).expect("attach");
    assert_eq!(net.interface.name, "eth0");
    assert_eq!(net.interface.mtu, 1400);
    assert_eq!(net.interface.addresses.len(), 1);
    assert_eq!(net.interface.addresses[0].to_string(), "10.123.0.2/24");
    assert_eq!(net.interface.routes.len(), 1, "{:?}", net.interface.routes);
    assert_eq!(net.interface.routes[0].destination, None);
    let (_, mac) = sh(&format!("ip -n {ns} -o link show eth0"));
    assert!(mac.contains(&net.interface.mac_string()), "{mac}");

    let (_, tap) = sh(&format!("ip -n {ns} -o link show {TAP_NAME}"));
    assert!(tap.contains("mtu 1400") && tap.contains("UP"), "{tap}");
    let (_, f) = sh(&format!("tc -n {ns} filter show dev eth0 ingress"));
    assert!(
        f.contains("protocol all") && f.contains("Egress Redirect") && f.contains(TAP_NAME),
        "{f}"
    );
    let (_, f) = sh(&format!("tc -n {ns} filter show dev {TAP_NAME} ingress"));
    assert!(f.contains("Egress Redirect") && f.contains("eth0"), "{f}");

    detach(&net).expect("detach");
    let (exists, _) = sh(&format!("ip -n {ns} link show {TAP_NAME}"));
    assert!(!exists, "the tap is left");
    let (_, q) = sh(&format!("tc -n {ns} qdisc show dev eth0"));
    assert!(!q.contains("ingress"), "{q}");
    // A second attach works (nothing stale), and detach is idempotent for the tap.
    let net = attach(Path::new(&path)).expect("attach again");
    detach(&net).expect("detach again");
}

#[test]
fn a_killed_shims_tap_and_redirects_go_with_the_namespace_alone() {
    let Some((_guard, ns, path)) = veth_netns("k") else {
        return;
    };
    // The shim is killed after its attach: what it knew is gone.
    drop(attach(Path::new(&path)).expect("attach"));
    detach_leftover(Path::new(&path)).expect("detach what was left");
    let (exists, _) = sh(&format!("ip -n {ns} link show {TAP_NAME}"));
    assert!(!exists, "the tap is left");
    let (_, q) = sh(&format!("tc -n {ns} qdisc show dev eth0"));
    assert!(!q.contains("ingress"), "{q}");
    // Without a tap husk never attached: an ingress qdisc there is someone else's and stays.
    let (ok, out) = sh(&format!("tc -n {ns} qdisc add dev eth0 ingress"));
    assert!(ok, "{out}");
    detach_leftover(Path::new(&path)).expect("nothing to detach");
    let (_, q) = sh(&format!("tc -n {ns} qdisc show dev eth0"));
    assert!(q.contains("ingress"), "{q}");
}
