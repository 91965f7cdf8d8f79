//! The ConfigureNetwork request, validated into a typed plan.

use std::net::IpAddr;

use husk_protocol::agent::ConfigureNetworkRequest;

use super::NetError;

/// Most interfaces, addresses and routes a request may carry.
pub const MAX_INTERFACES: usize = 8;
pub const MAX_ADDRESSES: usize = 32;
pub const MAX_ROUTES: usize = 128;
pub const MAX_DNS: usize = 8;
/// The smallest MTU IPv4 allows, and the largest an Ethernet device takes.
pub const MIN_MTU: u32 = 68;
pub const MAX_MTU: u32 = 65535;

/// An address or network with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// A route: None destination is the default route, None gateway is on-link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutePlan {
    pub destination: Option<IpNet>,
    pub gateway: Option<IpAddr>,
}

/// One guest interface, found by its MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfacePlan {
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
    pub routes: Vec<RoutePlan>,
}

/// The whole request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    pub interfaces: Vec<IfacePlan>,
    pub dns: Vec<IpAddr>,
    pub dns_search: Vec<String>,
}

fn invalid(m: String) -> NetError {
    NetError::Invalid(m)
}

/// `aa:bb:cc:dd:ee:ff`, unicast.
pub fn parse_mac(s: &str) -> Result<[u8; 6], NetError> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(invalid(format!("MAC {s:?}")));
    }
    for (b, p) in mac.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(invalid(format!("MAC {s:?}")));
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| invalid(format!("MAC {s:?}")))?;
    }
    if mac[0] & 1 == 1 || mac == [0; 6] {
        return Err(invalid(format!("MAC {s:?} is not a unicast address")));
    }
    Ok(mac)
}

fn parse_net(addr: &str, prefix_len: u32, what: &str) -> Result<IpNet, NetError> {
    let a: IpAddr = addr
        .parse()
        .map_err(|_| invalid(format!("{what} {addr:?}")))?;
    let max = if a.is_ipv4() { 32 } else { 128 };
    if prefix_len > max {
        return Err(invalid(format!("{what} {addr}/{prefix_len}")));
    }
    Ok(IpNet {
        addr: a,
        prefix_len: prefix_len as u8,
    })
}

/// DNS search domain: a hostname-like word.
fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Validates the request.
pub fn parse(r: &ConfigureNetworkRequest) -> Result<NetworkPlan, NetError> {
    if r.interfaces.len() > MAX_INTERFACES {
        return Err(invalid(format!("{} interfaces", r.interfaces.len())));
    }
    if r.dns.len() > MAX_DNS || r.dns_search.len() > MAX_DNS {
        return Err(invalid("too many DNS servers or search domains".into()));
    }
    let mut interfaces = Vec::with_capacity(r.interfaces.len());
    for i in &r.interfaces {
        let mac = parse_mac(&i.mac)?;
        if interfaces.iter().any(|p: &IfacePlan| p.mac == mac) {
            return Err(invalid(format!("MAC {} named twice", i.mac)));
        }
        if !(MIN_MTU..=MAX_MTU).contains(&i.mtu) {
            return Err(invalid(format!("MTU {}", i.mtu)));
        }
        if i.addresses.len() > MAX_ADDRESSES || i.routes.len() > MAX_ROUTES {
            return Err(invalid("too many addresses or routes".into()));
        }
        let addresses = i
            .addresses
            .iter()
            .map(|a| parse_net(&a.address, a.prefix_len, "address"))
            .collect::<Result<Vec<_>, _>>()?;
        let mut routes = Vec::with_capacity(i.routes.len());
        for rt in &i.routes {
            let destination = if rt.destination.is_empty() {
                if rt.destination_prefix_len != 0 {
                    return Err(invalid("a default route with a prefix length".into()));
                }
                None
            } else {
                Some(parse_net(
                    &rt.destination,
                    rt.destination_prefix_len,
                    "route destination",
                )?)
            };
            let gateway = if rt.gateway.is_empty() {
                None
            } else {
                Some(
                    rt.gateway
                        .parse::<IpAddr>()
                        .map_err(|_| invalid(format!("gateway {:?}", rt.gateway)))?,
                )
            };
            if destination.is_none() && gateway.is_none() {
                return Err(invalid("a default route needs a gateway".into()));
            }
            if let (Some(d), Some(g)) = (destination, gateway) {
                if d.addr.is_ipv4() != g.is_ipv4() {
                    return Err(invalid(format!(
                        "route {}: gateway {g} of another family",
                        d.addr
                    )));
                }
            }
            routes.push(RoutePlan {
                destination,
                gateway,
            });
        }
        interfaces.push(IfacePlan {
            mac,
            mtu: i.mtu,
            addresses,
            routes,
        });
    }
    let dns = r
        .dns
        .iter()
        .map(|d| {
            d.parse::<IpAddr>()
                .map_err(|_| invalid(format!("DNS server {d:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for d in &r.dns_search {
        if !valid_domain(d) {
            return Err(invalid(format!("DNS search domain {d:?}")));
        }
    }
    Ok(NetworkPlan {
        interfaces,
        dns,
        dns_search: r.dns_search.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_protocol::agent::{IpAddress, NetworkInterface, Route};

    fn request() -> ConfigureNetworkRequest {
        let mut r = ConfigureNetworkRequest::new();
        let mut i = NetworkInterface::new();
        i.mac = "0a:58:0a:58:4d:05".into();
        i.mtu = 1450;
        let mut a = IpAddress::new();
        a.address = "10.88.77.5".into();
        a.prefix_len = 24;
        i.addresses.push(a);
        let mut rt = Route::new();
        rt.gateway = "10.88.77.1".into();
        i.routes.push(rt);
        let mut rt = Route::new();
        rt.destination = "10.1.0.0".into();
        rt.destination_prefix_len = 16;
        rt.gateway = "10.88.77.1".into();
        i.routes.push(rt);
        r.interfaces.push(i);
        r.dns.push("10.88.77.1".into());
        r.dns_search.push("svc.cluster.local".into());
        r
    }

    #[test]
    fn good_request_is_planned() {
        let p = parse(&request()).expect("valid");
        assert_eq!(p.interfaces.len(), 1);
        let i = &p.interfaces[0];
        assert_eq!(i.mac, [0x0a, 0x58, 0x0a, 0x58, 0x4d, 0x05]);
        assert_eq!(i.mtu, 1450);
        assert_eq!(i.addresses[0].prefix_len, 24);
        assert_eq!(i.routes[0].destination, None);
        assert_eq!(i.routes[1].destination.map(|d| d.prefix_len), Some(16));
        assert_eq!(p.dns.len(), 1);
    }

    #[test]
    fn malformed_requests_are_refused() {
        type Edit = Box<dyn Fn(&mut ConfigureNetworkRequest)>;
        let cases: Vec<Edit> = vec![
            Box::new(|r| r.interfaces[0].mac = "0a:58:0a:58:4d".into()),
            Box::new(|r| r.interfaces[0].mac = "0a:58:0a:58:4d:zz".into()),
            Box::new(|r| r.interfaces[0].mac = "01:00:5e:00:00:01".into()),
            Box::new(|r| r.interfaces[0].mac = "00:00:00:00:00:00".into()),
            Box::new(|r| r.interfaces[0].mac = "0a:58:0a:58:4d:005".into()),
            Box::new(|r| r.interfaces[0].mtu = 0),
            Box::new(|r| r.interfaces[0].mtu = 70000),
            Box::new(|r| r.interfaces[0].addresses[0].address = "10.88.77".into()),
            Box::new(|r| r.interfaces[0].addresses[0].prefix_len = 33),
            Box::new(|r| r.interfaces[0].routes[0].gateway = String::new()),
            Box::new(|r| r.interfaces[0].routes[0].destination_prefix_len = 8),
            Box::new(|r| r.interfaces[0].routes[1].gateway = "fd00::1".into()),
            Box::new(|r| r.interfaces[0].routes[1].destination = "x".into()),
            Box::new(|r| r.dns.push("not-an-ip".into())),
            Box::new(|r| r.dns_search.push("bad domain".into())),
            Box::new(|r| {
                let i = r.interfaces[0].clone();
                r.interfaces.push(i)
            }),
            Box::new(|r| {
                let i = r.interfaces[0].clone();
                r.interfaces = vec![i; MAX_INTERFACES + 1]
            }),
        ];
        for (n, f) in cases.iter().enumerate() {
            let mut r = request();
            f(&mut r);
            assert!(parse(&r).is_err(), "case {n} was accepted");
        }
    }

    #[test]
    fn empty_request_is_an_empty_plan() {
        let p = parse(&ConfigureNetworkRequest::new()).expect("valid");
        assert!(p.interfaces.is_empty() && p.dns.is_empty());
    }
}
