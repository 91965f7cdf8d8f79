//! Applying a [`NetworkPlan`] to the guest with rtnetlink: a blocking socket (the agent
//! serves from plain threads, no async runtime), messages built with
//! netlink-packet-route, one request at a time, each acknowledged.

use std::net::IpAddr;
use std::path::Path;

use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::{files, IfacePlan, NetError, NetworkPlan};

fn nl_err(what: &str, e: impl std::fmt::Display) -> NetError {
    NetError::Netlink {
        what: what.into(),
        msg: e.to_string(),
    }
}

/// A blocking rtnetlink socket.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    /// Opens a NETLINK_ROUTE socket in the caller's network namespace.
    pub fn open() -> Result<Rtnl, NetError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(|e| nl_err("socket", e))?;
        sock.bind_auto().map_err(|e| nl_err("bind", e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| nl_err("connect", e))?;
        Ok(Rtnl { sock, seq: 0 })
    }

    /// Sends one request and waits for its acknowledgement.
    pub fn request(
        &mut self,
        what: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), NetError> {
        self.seq = self.seq.wrapping_add(1);
        let mut m = NetlinkMessage::from(msg);
        m.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        m.header.sequence_number = self.seq;
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        self.sock.send(&buf, 0).map_err(|e| nl_err(what, e))?;
        loop {
            let (data, _) = self.sock.recv_from_full().map_err(|e| nl_err(what, e))?;
            let mut off = 0;
            while off < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                    .map_err(|e| nl_err(what, e))?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number == self.seq {
                    match reply.payload {
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(()),
                                Some(_) => Err(nl_err(what, e.to_io())),
                            };
                        }
                        NetlinkPayload::Done(_) => return Ok(()),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }
}

/// The guest device with `mac`: (index, current MAC), from sysfs.
pub fn find_device(sys_class_net: &Path, mac: &[u8; 6]) -> Result<u32, NetError> {
    let want = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let entries = std::fs::read_dir(sys_class_net).map_err(|e| NetError::File {
        path: sys_class_net.display().to_string(),
        msg: e.to_string(),
    })?;
    for e in entries.flatten() {
        let dir = e.path();
        let addr = std::fs::read_to_string(dir.join("address")).unwrap_or_default();
        if addr.trim() == want {
            let index = std::fs::read_to_string(dir.join("ifindex")).unwrap_or_default();
            if let Ok(i) = index.trim().parse::<u32>() {
                return Ok(i);
            }
        }
    }
    Err(NetError::NoDevice(want))
}

fn family(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// The link message that sets `index`'s MTU and brings it up.
pub fn link_up(index: u32, mtu: u32) -> LinkMessage {
    let mut l = LinkMessage::default();
    l.header.index = index;
    l.header.flags = LinkFlags::Up;
    l.header.change_mask = LinkFlags::Up;
    l.attributes.push(LinkAttribute::Mtu(mtu));
    l
}

/// The address message for `a` on `index`.
pub fn address(index: u32, a: &super::IpNet) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = family(&a.addr);
    m.header.prefix_len = a.prefix_len;
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(a.addr));
    m.attributes.push(AddressAttribute::Address(a.addr));
    m
}

/// The route message for `r` through `index`, or None when the route has neither
/// destination nor gateway (the plan never has one).
pub fn route(index: u32, r: &super::RoutePlan) -> Option<RouteMessage> {
    let fam_ip = r.destination.map(|d| d.addr).or(r.gateway)?;
    let mut m = RouteMessage::default();
    m.header.address_family = family(&fam_ip);
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.kind = RouteType::Unicast;
    m.header.scope = if r.gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    if let Some(d) = r.destination {
        m.header.destination_prefix_length = d.prefix_len;
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(d.addr)));
    }
    if let Some(g) = r.gateway {
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(g)));
    }
    m.attributes.push(RouteAttribute::Oif(index));
    Some(m)
}

fn apply_iface(rtnl: &mut Rtnl, index: u32, i: &IfacePlan) -> Result<(), NetError> {
    rtnl.request(
        "setting MTU and up",
        RouteNetlinkMessage::SetLink(link_up(index, i.mtu)),
        0,
    )?;
    for a in &i.addresses {
        rtnl.request(
            &format!("adding address {}/{}", a.addr, a.prefix_len),
            RouteNetlinkMessage::NewAddress(address(index, a)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )?;
    }
    for r in &i.routes {
        if let Some(m) = route(index, r) {
            rtnl.request(
                "adding a route",
                RouteNetlinkMessage::NewRoute(m),
                NLM_F_CREATE | NLM_F_REPLACE,
            )?;
        }
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<(), NetError> {
    super::files::write_no_follow(path, text).map_err(|e| NetError::File {
        path: path.display().to_string(),
        msg: e.to_string(),
    })
}

/// The link message that gives `index` the MAC `mac` (the link must be down).
pub fn link_mac(index: u32, mac: &[u8; 6]) -> LinkMessage {
    let mut l = LinkMessage::default();
    l.header.index = index;
    l.attributes.push(LinkAttribute::Address(mac.to_vec()));
    l
}

/// The device of the plan's interface number `n`: the one with its MAC or, in a VM
/// restored from a template, the one with the template's MAC for that NIC
/// ([`husk_protocol::template_mac`]), which then gets the interface's MAC. Only that MAC
/// is ever rewritten, and only while the link is still down (before `apply_iface`), so the
/// IPv6 link-local address the kernel makes at link-up comes from the pod's MAC.
fn device_for(
    rtnl: &mut Rtnl,
    sys_class_net: &Path,
    n: usize,
    mac: &[u8; 6],
) -> Result<u32, NetError> {
    match find_device(sys_class_net, mac) {
        Err(NetError::NoDevice(want)) => {
            let Ok(n) = u8::try_from(n) else {
                return Err(NetError::NoDevice(want));
            };
            let index = find_device(sys_class_net, &husk_protocol::template_mac(n))
                .map_err(|_| NetError::NoDevice(want))?;
            rtnl.request(
                "setting the MAC of a template's NIC",
                RouteNetlinkMessage::SetLink(link_mac(index, mac)),
                0,
            )?;
            Ok(index)
        }
        found => found,
    }
}

/// Configures every interface of the plan (its device found by MAC under
/// `sys_class_net`, see [`device_for`]), then writes `etc`/hosts and `etc`/resolv.conf.
pub fn apply(plan: &NetworkPlan, sys_class_net: &Path, etc: &Path) -> Result<(), NetError> {
    if !plan.interfaces.is_empty() {
        let mut rtnl = Rtnl::open()?;
        for (n, i) in plan.interfaces.iter().enumerate() {
            let index = device_for(&mut rtnl, sys_class_net, n, &i.mac)?;
            apply_iface(&mut rtnl, index, i)?;
        }
    }
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    write(&etc.join("hosts"), &files::hosts(&hostname, plan))?;
    if let Some(r) = files::resolv_conf(plan) {
        write(&etc.join("resolv.conf"), &r)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{IpNet, RoutePlan};

    #[test]
    fn device_is_found_by_mac() {
        let d = std::env::temp_dir().join(format!("husk-net-{}", std::process::id()));
        let eth = d.join("eth0");
        std::fs::create_dir_all(&eth).expect("dir");
        std::fs::write(eth.join("address"), "0a:58:0a:58:4d:05\n").expect("w");
        std::fs::write(eth.join("ifindex"), "2\n").expect("w");
        assert_eq!(
            find_device(&d, &[0x0a, 0x58, 0x0a, 0x58, 0x4d, 0x05]).expect("found"),
            2
        );
        assert!(matches!(
            find_device(&d, &[2, 0, 0, 0, 0, 9]),
            Err(NetError::NoDevice(_))
        ));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn template_mac_message() {
        let l = link_mac(4, &[0x0a, 0x58, 0, 0, 0, 5]);
        assert_eq!(l.header.index, 4);
        assert!(l
            .attributes
            .contains(&LinkAttribute::Address(vec![0x0a, 0x58, 0, 0, 0, 5])));
        // Only the address changes: the link's flags are left alone.
        assert_eq!(l.header.change_mask, LinkFlags::empty());
        assert_eq!(husk_protocol::template_mac_string(1), "02:68:75:73:6b:01");
    }

    #[test]
    fn messages_carry_the_plan() {
        let l = link_up(3, 1450);
        assert_eq!(l.header.index, 3);
        assert!(l.attributes.contains(&LinkAttribute::Mtu(1450)));
        let a = address(
            3,
            &IpNet {
                addr: "10.88.77.5".parse().expect("ip"),
                prefix_len: 24,
            },
        );
        assert_eq!(a.header.family, AddressFamily::Inet);
        assert_eq!(a.header.prefix_len, 24);
        let gw: IpAddr = "10.88.77.1".parse().expect("ip");
        let r = route(
            3,
            &RoutePlan {
                destination: None,
                gateway: Some(gw),
            },
        )
        .expect("route");
        assert_eq!(r.header.destination_prefix_length, 0);
        assert_eq!(r.header.scope, RouteScope::Universe);
        assert!(r.attributes.contains(&RouteAttribute::Oif(3)));
        let on_link = route(
            3,
            &RoutePlan {
                destination: Some(IpNet {
                    addr: "10.2.0.0".parse().expect("ip"),
                    prefix_len: 16,
                }),
                gateway: None,
            },
        )
        .expect("route");
        assert_eq!(on_link.header.scope, RouteScope::Link);
        assert!(route(
            3,
            &RoutePlan {
                destination: None,
                gateway: None
            }
        )
        .is_none());
    }
}
