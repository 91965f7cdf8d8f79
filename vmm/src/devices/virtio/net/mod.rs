//! virtio-net (virtio 1.2, section 5.1) on a host tap device with checksum and TSO
//! offloads both ways and mergeable RX buffers: each frame crosses with its 12-byte
//! `virtio_net_hdr_v1`, which the tap (IFF_VNET_HDR) reads and writes; the tap's offloads
//! follow the features the driver accepted.
//!
//! - `features.rs`: the offered features and the tap offloads they imply.
//! - `header.rs`: the header of transmitted frames, checked before the tap sees it.
//! - `rx.rs`: a received frame into one or several RX chains.
//! - `tap.rs`: opening the tap, setting its offloads.
//! - `device.rs`: the device model and the RX/TX queue handlers.

pub mod device;
pub mod features;
pub mod header;
pub mod rx;
pub mod tap;

pub use device::Net;

/// `struct virtio_net_hdr_v1`.
pub const HDR_LEN: usize = 12;
/// Largest frame (with header) moved in either direction: the header, an Ethernet header
/// with a VLAN tag and the largest IP packet (65535 bytes, what a TSO frame can carry).
pub const MAX_FRAME: usize = HDR_LEN + 14 + 4 + 65535;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("opening tap {name}: {err}")]
    Tap { name: String, err: std::io::Error },
    #[error("invalid MAC address {0:?}")]
    Mac(String),
    #[error("creating a detached NIC's socket: {0}")]
    Detached(std::io::Error),
    #[error("net {name}: {err}")]
    RateLimiter {
        name: String,
        err: crate::rate_limiter::RateLimiterError,
    },
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], NetError> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(NetError::Mac(s.into()));
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| NetError::Mac(s.into()))?;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("02:00:00:0a:0b:ff").unwrap(),
            [2, 0, 0, 10, 11, 255]
        );
        assert!(parse_mac("02:00:00:0a:0b").is_err());
        assert!(parse_mac("zz:00:00:0a:0b:ff").is_err());
    }
}
