//! The pod's interface, read over rtnetlink inside its namespace: the veth's MAC, MTU,
//! addresses and the routes through it. The conversion from netlink messages is a pure
//! function ([`interface_from`]) so it is unit-tested with built messages.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::stream::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::{Interface, IpNet, NetError, Route};

const RT_TABLE_MAIN: u32 = 254;

fn nl(what: &str) -> impl FnOnce(rtnetlink::Error) -> NetError + '_ {
    move |e| NetError::Netlink {
        what: what.into(),
        msg: e.to_string(),
    }
}

/// Reads the namespace's links, addresses and routes and picks the pod's interface.
pub async fn discover(handle: &Handle, skip: &str) -> Result<Interface, NetError> {
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl("dumping links"))?;
    let addrs: Vec<AddressMessage> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl("dumping addresses"))?;
    let mut routes: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("dumping IPv4 routes"))?;
    let v6: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("dumping IPv6 routes"))?;
    routes.extend(v6);
    pick(&links, &addrs, &routes, skip)
}

/// The pod's interface among `links`: the first Ethernet link that is not loopback nor
/// `skip` (the tap), preferring one with an address.
pub fn pick(
    links: &[LinkMessage],
    addrs: &[AddressMessage],
    routes: &[RouteMessage],
    skip: &str,
) -> Result<Interface, NetError> {
    let candidates: Vec<Interface> = links
        .iter()
        .filter_map(|l| interface_from(l, addrs, routes))
        .filter(|i| i.name != skip)
        .collect();
    candidates
        .iter()
        .find(|i| !i.addresses.is_empty())
        .or_else(|| candidates.first())
        .cloned()
        .ok_or(NetError::NoInterface)
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// One link as the pod's interface (None for loopback and non-Ethernet links).
pub fn interface_from(
    link: &LinkMessage,
    addrs: &[AddressMessage],
    routes: &[RouteMessage],
) -> Option<Interface> {
    if link.header.flags.contains(LinkFlags::Loopback)
        || link.header.link_layer_type != LinkLayerType::Ether
    {
        return None;
    }
    let index = link.header.index;
    let mut name = None;
    let mut mac = None;
    let mut mtu = 1500;
    for a in &link.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(m) => mac = <[u8; 6]>::try_from(m.as_slice()).ok(),
            LinkAttribute::Mtu(m) => mtu = *m,
            _ => {}
        }
    }
    let addresses = addrs
        .iter()
        .filter(|a| a.header.index == index)
        .filter_map(|a| {
            // IFA_LOCAL is the interface's own address where IFA_ADDRESS is the peer's.
            let local = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            })?;
            // Link-local IPv6 addresses are the kernel's own, made again in the guest.
            if let IpAddr::V6(v6) = addr {
                if v6.segments()[0] & 0xffc0 == 0xfe80 {
                    return None;
                }
            }
            Some(IpNet {
                addr,
                prefix_len: a.header.prefix_len,
            })
        })
        .collect();
    let routes = routes.iter().filter_map(|r| route_from(r, index)).collect();
    Some(Interface {
        name: name?,
        index,
        mac: mac?,
        mtu,
        addresses,
        routes,
    })
}

/// A main-table unicast route through link `index` that the guest must add itself (the
/// kernel's own routes for an address's subnet come with the address).
fn route_from(r: &RouteMessage, index: u32) -> Option<Route> {
    let h = &r.header;
    if h.kind != RouteType::Unicast || h.protocol == RouteProtocol::Kernel {
        return None;
    }
    let mut oif = None;
    let mut table = u32::from(h.table);
    let mut dest = None;
    let mut gateway = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dest = route_ip(d),
            RouteAttribute::Gateway(g) => gateway = route_ip(g),
            _ => {}
        }
    }
    if oif != Some(index) || table != RT_TABLE_MAIN {
        return None;
    }
    let destination = match (dest, h.destination_prefix_length) {
        (_, 0) => None,
        (Some(addr), prefix_len) => Some(IpNet { addr, prefix_len }),
        (None, _) => return None,
    };
    Some(Route {
        destination,
        gateway,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::route::RouteScope;
    use rtnetlink::packet_route::AddressFamily;

    fn link(index: u32, name: &str, mac: &[u8], loopback: bool) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.header.index = index;
        l.header.link_layer_type = if loopback {
            LinkLayerType::Loopback
        } else {
            LinkLayerType::Ether
        };
        if loopback {
            l.header.flags = LinkFlags::Loopback;
        }
        l.attributes = vec![
            LinkAttribute::IfName(name.into()),
            LinkAttribute::Address(mac.to_vec()),
            LinkAttribute::Mtu(1450),
        ];
        l
    }

    fn addr(index: u32, ip: IpAddr, prefix: u8) -> AddressMessage {
        let mut a = AddressMessage::default();
        a.header.index = index;
        a.header.prefix_len = prefix;
        a.attributes = vec![AddressAttribute::Address(ip), AddressAttribute::Local(ip)];
        a
    }

    fn route(
        index: u32,
        dest: Option<(Ipv4Addr, u8)>,
        gw: Option<Ipv4Addr>,
        proto: RouteProtocol,
    ) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        r.header.kind = RouteType::Unicast;
        r.header.protocol = proto;
        r.header.scope = RouteScope::Universe;
        r.header.table = RT_TABLE_MAIN as u8;
        r.attributes.push(RouteAttribute::Oif(index));
        if let Some((d, p)) = dest {
            r.header.destination_prefix_length = p;
            r.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(d)));
        }
        if let Some(g) = gw {
            r.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(g)));
        }
        r
    }

    #[test]
    fn picks_the_veth_with_its_addresses_and_routes() {
        let mac = [0x0a, 0x58, 0x0a, 0x58, 0x4d, 0x05];
        let links = [
            link(1, "lo", &[0; 6], true),
            link(3, "eth0", &mac, false),
            link(4, "husk_tap0", &[2, 0, 0, 0, 0, 1], false),
        ];
        let ip: IpAddr = "10.88.77.5".parse().expect("ip");
        let ll: IpAddr = "fe80::1".parse().expect("ip");
        let addrs = [
            addr(1, "127.0.0.1".parse().expect("ip"), 8),
            addr(3, ip, 24),
            addr(3, ll, 64),
        ];
        let gw: Ipv4Addr = "10.88.77.1".parse().expect("ip");
        let routes = [
            route(3, None, Some(gw), RouteProtocol::Boot),
            route(
                3,
                Some(("10.88.77.0".parse().expect("ip"), 24)),
                None,
                RouteProtocol::Kernel,
            ),
            route(
                3,
                Some(("10.1.0.0".parse().expect("ip"), 16)),
                Some(gw),
                RouteProtocol::Static,
            ),
            route(
                1,
                Some(("127.0.0.0".parse().expect("ip"), 8)),
                None,
                RouteProtocol::Boot,
            ),
        ];
        let i = pick(&links, &addrs, &routes, "husk_tap0").expect("interface");
        assert_eq!(i.name, "eth0");
        assert_eq!(i.index, 3);
        assert_eq!(i.mac_string(), "0a:58:0a:58:4d:05");
        assert_eq!(i.mtu, 1450);
        assert_eq!(
            i.addresses,
            vec![IpNet {
                addr: ip,
                prefix_len: 24
            }]
        );
        assert_eq!(
            i.routes,
            vec![
                Route {
                    destination: None,
                    gateway: Some(IpAddr::V4(gw))
                },
                Route {
                    destination: Some(IpNet {
                        addr: "10.1.0.0".parse().expect("ip"),
                        prefix_len: 16
                    }),
                    gateway: Some(IpAddr::V4(gw)),
                },
            ]
        );
    }

    #[test]
    fn loopback_only_namespace_has_no_interface() {
        let links = [link(1, "lo", &[0; 6], true)];
        assert!(matches!(
            pick(&links, &[], &[], "husk_tap0"),
            Err(NetError::NoInterface)
        ));
        // the tap alone is not the pod's interface either
        let links = [link(4, "husk_tap0", &[2, 0, 0, 0, 0, 1], false)];
        assert!(matches!(
            pick(&links, &[], &[], "husk_tap0"),
            Err(NetError::NoInterface)
        ));
    }

    #[test]
    fn link_without_a_mac_is_skipped() {
        let mut l = link(5, "odd", &[1, 2, 3], false);
        l.attributes.push(LinkAttribute::Mtu(9000));
        assert_eq!(interface_from(&l, &[], &[]), None);
    }
}
