//! The ConfigureNetwork request from arbitrary bytes through the agent's validation
//! (`husk_agent::net::parse`): never a panic; whatever is accepted is within the limits.
#![no_main]

use husk_agent::net::{parse, plan};
use husk_protocol::agent::ConfigureNetworkRequest;
use libfuzzer_sys::fuzz_target;
use protobuf::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = ConfigureNetworkRequest::parse_from_bytes(data) else {
        return;
    };
    if let Ok(p) = parse(&req) {
        assert!(p.interfaces.len() <= plan::MAX_INTERFACES);
        for i in &p.interfaces {
            assert!((plan::MIN_MTU..=plan::MAX_MTU).contains(&i.mtu));
            assert!(i.addresses.iter().all(|a| a.prefix_len <= 128));
            assert!(i
                .routes
                .iter()
                .all(|r| r.destination.is_some() || r.gateway.is_some()));
        }
        let _ = husk_agent::net::files::hosts("pod", &p);
        let _ = husk_agent::net::files::resolv_conf(&p);
    }
});
