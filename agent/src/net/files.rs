//! /etc/hosts and /etc/resolv.conf of the pod, as the guest writes them.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

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

/// Writes a guest file the agent owns (/etc/hosts, /etc/resolv.conf) in place, never
/// through a symlink at its path: containers bind these files, so the inode stays the
/// same (no rename), and a link planted there is refused rather than followed
/// (catalogue case 20).
pub fn write_no_follow(path: &Path, text: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(text.as_bytes())
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
    fn case_20_etc_files_are_not_written_through_symlinks() {
        let d = std::env::temp_dir().join(format!("husk-etc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        let target = d.join("outside");
        std::fs::write(&target, "keep\n").expect("w");
        for link in ["hosts", "resolv.conf"] {
            std::os::unix::fs::symlink(&target, d.join(link)).expect("link");
            assert!(write_no_follow(&d.join(link), "evil\n").is_err(), "{link}");
        }
        // A relative link out of the directory is refused the same way.
        std::os::unix::fs::symlink("../../../../etc/passwd", d.join("up")).expect("link");
        assert!(write_no_follow(&d.join("up"), "evil\n").is_err());
        assert_eq!(std::fs::read_to_string(&target).expect("r"), "keep\n");
        // A regular file is rewritten in place (same inode: bind mounts of it see it).
        let f = d.join("plain");
        std::fs::write(&f, "old old old\n").expect("w");
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&f).expect("m"));
        write_no_follow(&f, "new\n").expect("write");
        assert_eq!(std::fs::read_to_string(&f).expect("r"), "new\n");
        let ino2 = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&f).expect("m"));
        assert_eq!(ino, ino2);
        std::fs::remove_dir_all(&d).expect("rm");
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
