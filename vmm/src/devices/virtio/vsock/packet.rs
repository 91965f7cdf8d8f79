//! The virtio-vsock packet header (`struct virtio_vsock_hdr`, 44 bytes, little-endian).

pub const HDR_LEN: usize = 44;

pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the peer will receive / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn u16_at(b: &[u8; HDR_LEN], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8; HDR_LEN], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8; HDR_LEN], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

impl Header {
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Header {
        Header {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            type_: u16_at(b, 28),
            op: u16_at(b, 30),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Why a packet from the guest was dropped before reaching a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("descriptor chain too short for a header")]
    Short,
    #[error("source CID {0} is not the guest's")]
    BadSrcCid(u64),
    #[error("destination CID {0} is not the host")]
    BadDstCid(u64),
    #[error("packet type {0} is not a stream")]
    BadType(u16),
    #[error("payload length {len} exceeds the {avail} bytes in the chain or the limit")]
    BadLen { len: u32, avail: usize },
    #[error("unknown op {0}")]
    BadOp(u16),
}

/// Checks a header from the guest whose chain holds `avail` payload bytes.
pub fn validate(h: &Header, guest_cid: u64, avail: usize) -> Result<(), PacketError> {
    if h.src_cid != guest_cid {
        return Err(PacketError::BadSrcCid(h.src_cid));
    }
    if h.dst_cid != super::HOST_CID {
        return Err(PacketError::BadDstCid(h.dst_cid));
    }
    if h.type_ != TYPE_STREAM {
        return Err(PacketError::BadType(h.type_));
    }
    if !(OP_REQUEST..=OP_CREDIT_REQUEST).contains(&h.op) {
        return Err(PacketError::BadOp(h.op));
    }
    let len = h.len as usize;
    if len > avail || len > super::MAX_PKT_LEN || (h.op != OP_RW && len != 0) {
        return Err(PacketError::BadLen { len: h.len, avail });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr() -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1024,
            dst_port: 5000,
            len: 10,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 7,
        }
    }

    #[test]
    fn round_trip() {
        let h = hdr();
        assert_eq!(Header::from_bytes(&h.to_bytes()), h);
        let b = h.to_bytes();
        assert_eq!(&b[24..28], &10u32.to_le_bytes());
        assert_eq!(&b[30..32], &OP_RW.to_le_bytes());
    }

    #[test]
    fn validation() {
        let h = hdr();
        assert!(validate(&h, 3, 10).is_ok());
        assert_eq!(validate(&h, 4, 10), Err(PacketError::BadSrcCid(3)));
        assert!(matches!(
            validate(&h, 3, 9),
            Err(PacketError::BadLen { .. })
        ));
        let huge = Header { len: u32::MAX, ..h };
        assert!(matches!(
            validate(&huge, 3, usize::MAX),
            Err(PacketError::BadLen { .. })
        ));
        let dgram = Header { type_: 2, ..h };
        assert_eq!(validate(&dgram, 3, 10), Err(PacketError::BadType(2)));
        let other = Header { dst_cid: 7, ..h };
        assert_eq!(validate(&other, 3, 10), Err(PacketError::BadDstCid(7)));
        let op = Header { op: 99, ..h };
        assert_eq!(validate(&op, 3, 10), Err(PacketError::BadOp(99)));
        let req_with_data = Header {
            op: OP_REQUEST,
            ..h
        };
        assert!(validate(&req_with_data, 3, 10).is_err());
    }
}
