//! The pod's network inside the guest (issue 6). The shim sends the identity of the pod's
//! veth on the host (MAC, MTU, addresses, routes); [`plan`] validates the request into a
//! [`NetworkPlan`] (malformed input is refused, never a panic), [`netlink`] applies it to
//! the guest's root network namespace, which every container of the pod shares, and
//! [`files`] renders /etc/hosts and /etc/resolv.conf.

pub mod files;
pub mod netlink;
pub mod plan;

pub use plan::{parse, IfacePlan, IpNet, NetworkPlan, RoutePlan};

/// Errors of the network configuration.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The request is malformed.
    #[error("network request: {0}")]
    Invalid(String),
    /// No guest device has the MAC the request names.
    #[error("no guest network device with MAC {0}")]
    NoDevice(String),
    /// A netlink request failed.
    #[error("netlink {what}: {msg}")]
    Netlink {
        /// What was asked.
        what: String,
        /// Why it failed.
        msg: String,
    },
    /// Writing a file failed.
    #[error("{path}: {msg}")]
    File {
        /// The file.
        path: String,
        /// Why.
        msg: String,
    },
}
