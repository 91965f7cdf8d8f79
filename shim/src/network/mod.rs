//! Pod networking on the host side (issue 6): which network namespace a pod has, what is
//! in it, and how its veth reaches the VM (Kata's "tcfilter" model).
//!
//! A CNI plugin gives the pod a network namespace with one veth (address, MAC, routes,
//! MTU). The shim, inside that namespace, creates a tap, and redirects every frame between
//! the veth and the tap in both directions with a tc ingress qdisc and a u32 match-all
//! filter whose action is `mirred egress redirect`. husk-vmm attaches virtio-net to the
//! tap (it runs inside the namespace: [`netns`]), and the agent gives the guest's eth0 the
//! veth's MAC, addresses, routes and MTU, so the pod's IP answers from inside the VM.
//!
//! - [`namespaces`]: the spec's namespaces as the guest must see them.
//! - [`netns`]: running code inside a network namespace (a thread of its own).
//! - [`discover`]: the veth's address, MAC, MTU and routes, over rtnetlink.
//! - [`tap`]: the tap device (`/dev/net/tun` ioctls: netlink cannot create one).
//! - [`tc`]: the ingress qdiscs and redirect filters (rtnetlink's tc requests).
//! - [`attach`]: all of it for one pod, and its teardown.

pub mod attach;
pub mod discover;
pub mod namespaces;
pub mod netns;
pub mod tap;
pub mod tc;

use std::net::IpAddr;
use std::path::PathBuf;

pub use attach::{attach, detach, detach_leftover};

/// The tap's name inside the pod's namespace (one per namespace, so a fixed name).
pub const TAP_NAME: &str = "husk_tap0";

/// Errors of pod networking.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network namespace {path}: {msg}")]
    Netns { path: PathBuf, msg: String },
    #[error("netlink {what}: {msg}")]
    Netlink { what: String, msg: String },
    #[error("tap {name}: {msg}")]
    Tap { name: String, msg: String },
    #[error("no interface to attach in the pod's network namespace (only loopback)")]
    NoInterface,
}

/// An IP address with its prefix length (`10.88.0.5/16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// A route of the pod's interface, as the guest must install it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// None: the default route.
    pub destination: Option<IpNet>,
    /// None: on-link.
    pub gateway: Option<IpAddr>,
}

/// The pod's interface: what the guest's eth0 must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
    pub routes: Vec<Route>,
}

impl Interface {
    /// The MAC as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> String {
        mac_string(&self.mac)
    }
}

pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A pod's network as attached: what teardown needs, and what the guest gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    pub netns: PathBuf,
    pub interface: Interface,
    pub tap: String,
    pub tap_index: u32,
}
