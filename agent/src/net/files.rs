//! /etc/hosts and /etc/resolv.conf of the pod, as the guest writes them.

use std::net::IpAddr;

use super::NetworkPlan;

/// /etc/hosts: localhost, and the pod's hostname on each of its addresses.
pub fn hosts(hostname: &str, plan: &NetworkPlan) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if !hostname.is_empty() {
        for i in &plan.interfaces {
            for a in &i.addresses {
                s.push_str(&format!("{}\t{hostname}\n", a.addr));
            }
        }
    }
    s
}

/// /etc/resolv.conf, None when the request named no DNS server.
pub fn resolv_conf(plan: &NetworkPlan) -> Option<String> {
    if plan.dns.is_empty() {
        return None;
    }
    let mut s: String = plan
        .dns
        .iter()
        .map(|d: &IpAddr| format!("nameserver {d}\n"))
        .collect();
    if !plan.dns_search.is_empty() {
        s.push_str(&format!("search {}\n", plan.dns_search.join(" ")));
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{IfacePlan, IpNet};

    fn plan() -> NetworkPlan {
        NetworkPlan {
            interfaces: vec![IfacePlan {
                mac: [2, 0, 0, 0, 0, 1],
                mtu: 1500,
                addresses: vec![IpNet {
                    addr: "10.88.77.5".parse().expect("ip"),
                    prefix_len: 24,
                }],
                routes: vec![],
            }],
            dns: vec!["10.88.77.1".parse().expect("ip")],
            dns_search: vec!["example.test".into()],
        }
    }

    #[test]
    fn hosts_names_the_pod() {
        let h = hosts("web", &plan());
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.88.77.5\tweb\n"), "{h}");
        assert!(!hosts("", &plan()).contains("10.88.77.5"));
    }

    #[test]
    fn resolv_conf_lists_servers_and_search() {
        assert_eq!(
            resolv_conf(&plan()).as_deref(),
            Some("nameserver 10.88.77.1\nsearch example.test\n")
        );
        let mut p = plan();
        p.dns.clear();
        assert_eq!(resolv_conf(&p), None);
    }
}
