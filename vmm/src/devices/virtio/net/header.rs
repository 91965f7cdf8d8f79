//! `struct virtio_net_hdr_v1` on frames the guest transmits: parsed and checked before the
//! frame goes to the tap. The tap's kernel side validates the header too; checking here
//! keeps a hostile header (a GSO type the driver did not negotiate, gso_size 0, offsets past
//! the frame) from ever reaching the host's stack, and costs a few comparisons per frame.

use super::features::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
};
use super::HDR_LEN;

pub const F_NEEDS_CSUM: u8 = 1;
pub const F_DATA_VALID: u8 = 2;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_ECN: u8 = 0x80;

/// The header's fields (little-endian on the wire: virtio 1.x).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HdrError {
    #[error("frame of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown header flags {0:#x}")]
    Flags(u8),
    #[error("checksum offload not negotiated")]
    CsumNotNegotiated,
    #[error("checksum at {start}+{offset} outside the {len}-byte frame")]
    CsumOutside { start: u16, offset: u16, len: usize },
    #[error("GSO type {0:#x} not negotiated")]
    GsoType(u8),
    #[error("GSO without a partial checksum")]
    GsoWithoutCsum,
    #[error("GSO with segment size 0")]
    GsoSizeZero,
    #[error("header length {hdr_len} past the {len}-byte frame")]
    HdrLen { hdr_len: u16, len: usize },
}

impl NetHdr {
    /// Reads the header at the start of `frame` (header plus Ethernet frame).
    pub fn parse(frame: &[u8]) -> Result<NetHdr, HdrError> {
        let Some(h) = frame.get(..HDR_LEN) else {
            return Err(HdrError::Short(frame.len()));
        };
        let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
        Ok(NetHdr {
            flags: h[0],
            gso_type: h[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        })
    }

    /// Checks a transmitted frame's header against the negotiated features; `frame_len` is
    /// the Ethernet frame's length (after the header).
    pub fn check_tx(&self, acked: u64, frame_len: usize) -> Result<(), HdrError> {
        if self.flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
            return Err(HdrError::Flags(self.flags));
        }
        let needs_csum = self.flags & F_NEEDS_CSUM != 0;
        if needs_csum {
            if acked & VIRTIO_NET_F_CSUM == 0 {
                return Err(HdrError::CsumNotNegotiated);
            }
            // The 16-bit checksum field must lie inside the frame.
            let end = usize::from(self.csum_start) + usize::from(self.csum_offset) + 2;
            if end > frame_len {
                return Err(HdrError::CsumOutside {
                    start: self.csum_start,
                    offset: self.csum_offset,
                    len: frame_len,
                });
            }
        }
        let ecn = self.gso_type & GSO_ECN != 0;
        let needed = match self.gso_type & !GSO_ECN {
            GSO_NONE if !ecn => return Ok(()),
            GSO_TCPV4 => VIRTIO_NET_F_HOST_TSO4,
            GSO_TCPV6 => VIRTIO_NET_F_HOST_TSO6,
            _ => return Err(HdrError::GsoType(self.gso_type)),
        };
        let needed = if ecn {
            needed | VIRTIO_NET_F_HOST_ECN
        } else {
            needed
        };
        if acked & needed != needed {
            return Err(HdrError::GsoType(self.gso_type));
        }
        if !needs_csum {
            return Err(HdrError::GsoWithoutCsum);
        }
        if self.gso_size == 0 {
            return Err(HdrError::GsoSizeZero);
        }
        if usize::from(self.hdr_len) > frame_len {
            return Err(HdrError::HdrLen {
                hdr_len: self.hdr_len,
                len: frame_len,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::net::features::OFFERED;

    fn hdr(flags: u8, gso_type: u8, hdr_len: u16, gso_size: u16, start: u16, off: u16) -> NetHdr {
        NetHdr {
            flags,
            gso_type,
            hdr_len,
            gso_size,
            csum_start: start,
            csum_offset: off,
            num_buffers: 0,
        }
    }

    #[test]
    fn parses_little_endian_fields() {
        let mut b = [0u8; HDR_LEN + 2];
        b[..HDR_LEN].copy_from_slice(&[1, 4, 66, 0, 0xa8, 5, 34, 0, 16, 0, 1, 0]);
        let h = NetHdr::parse(&b).unwrap();
        let want = NetHdr {
            num_buffers: 1,
            ..hdr(1, 4, 66, 1448, 34, 16)
        };
        assert_eq!(h, want);
        assert_eq!(NetHdr::parse(&b[..11]), Err(HdrError::Short(11)));
    }

    #[test]
    fn plain_and_offloaded_frames_pass() {
        assert!(hdr(0, 0, 0, 0, 0, 0).check_tx(0, 60).is_ok());
        assert!(hdr(F_NEEDS_CSUM, 0, 0, 0, 34, 16)
            .check_tx(OFFERED, 60)
            .is_ok());
        let tso4 = hdr(F_NEEDS_CSUM, GSO_TCPV4, 66, 1448, 34, 16);
        assert!(tso4.check_tx(OFFERED, 65000).is_ok());
        let tso6_ecn = hdr(F_NEEDS_CSUM, GSO_TCPV6 | GSO_ECN, 86, 1428, 54, 16);
        assert!(tso6_ecn.check_tx(OFFERED, 65000).is_ok());
    }

    #[test]
    fn hostile_headers_are_refused() {
        let ok = hdr(F_NEEDS_CSUM, GSO_TCPV4, 66, 1448, 34, 16);
        let cases = [
            (NetHdr { gso_size: 0, ..ok }, HdrError::GsoSizeZero),
            (
                NetHdr {
                    hdr_len: 9000,
                    ..ok
                },
                HdrError::HdrLen {
                    hdr_len: 9000,
                    len: 1500,
                },
            ),
            (NetHdr { gso_type: 3, ..ok }, HdrError::GsoType(3)), // UFO
            (
                NetHdr {
                    gso_type: 0x7f,
                    ..ok
                },
                HdrError::GsoType(0x7f),
            ),
            (
                NetHdr {
                    gso_type: GSO_ECN,
                    ..ok
                },
                HdrError::GsoType(GSO_ECN),
            ),
            (NetHdr { flags: 0, ..ok }, HdrError::GsoWithoutCsum),
            (NetHdr { flags: 0x10, ..ok }, HdrError::Flags(0x10)),
            (
                NetHdr {
                    csum_start: u16::MAX,
                    csum_offset: u16::MAX,
                    ..ok
                },
                HdrError::CsumOutside {
                    start: u16::MAX,
                    offset: u16::MAX,
                    len: 1500,
                },
            ),
        ];
        for (h, e) in cases {
            assert_eq!(h.check_tx(OFFERED, 1500), Err(e), "{h:?}");
        }
    }

    #[test]
    fn offloads_need_their_feature() {
        let tso4 = hdr(F_NEEDS_CSUM, GSO_TCPV4, 66, 1448, 34, 16);
        assert_eq!(
            tso4.check_tx(VIRTIO_NET_F_CSUM, 1500),
            Err(HdrError::GsoType(GSO_TCPV4))
        );
        let ecn = hdr(F_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 66, 1448, 34, 16);
        assert!(ecn
            .check_tx(VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4, 1500)
            .is_err());
        let csum = hdr(F_NEEDS_CSUM, 0, 0, 0, 34, 16);
        assert_eq!(csum.check_tx(0, 1500), Err(HdrError::CsumNotNegotiated));
    }
}
