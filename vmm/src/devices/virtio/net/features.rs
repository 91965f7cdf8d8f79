//! The virtio-net features husk offers, and the tap offloads (TUNSETOFFLOAD) that follow
//! from the ones the driver accepts.
//!
//! The set is what the tap can carry both ways, as Firecracker and Cloud Hypervisor offer
//! it, plus mergeable RX buffers:
//! - checksum offload both ways (`CSUM`, `GUEST_CSUM`): the tap takes and gives frames with
//!   a partial checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`), so nobody checksums a frame that
//!   only crosses this host;
//! - TSO both ways, IPv4 and IPv6, with ECN (`HOST_TSO4/6`, `HOST_ECN`, `GUEST_TSO4/6`,
//!   `GUEST_ECN`): one 64 KiB frame crosses the queue instead of some forty 1.5 KiB ones,
//!   and per-frame work (exits, interrupts, tap syscalls) is what a VM's network pays for;
//! - mergeable RX buffers (`MRG_RXBUF`): with guest TSO, the driver would otherwise post a
//!   64 KiB chain for every frame ("big packets"), a few per ring; with it, page-sized
//!   buffers are posted and a large frame spans several of them (`num_buffers`).
//!
//! Not offered: UFO either way (the kernel has not produced UFO frames since 4.14: a tap
//! accepts `TUN_F_UFO` and ignores it, and a Linux guest never sends them), USO (newer
//! than some hosts' taps), the control queue, multiqueue and `EVENT_IDX`.

/// Device handles packets with a partial checksum (guest -> host).
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
/// Driver handles packets with a partial checksum (host -> guest).
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
pub const VIRTIO_NET_F_GUEST_ECN: u64 = 1 << 9;
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
pub const VIRTIO_NET_F_HOST_ECN: u64 = 1 << 13;
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;

/// Everything the device offers (the transport adds VIRTIO_F_VERSION_1).
pub const OFFERED: u64 = VIRTIO_NET_F_MAC
    | VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_GUEST_TSO4
    | VIRTIO_NET_F_GUEST_TSO6
    | VIRTIO_NET_F_GUEST_ECN
    | VIRTIO_NET_F_HOST_TSO4
    | VIRTIO_NET_F_HOST_TSO6
    | VIRTIO_NET_F_HOST_ECN
    | VIRTIO_NET_F_MRG_RXBUF;

/// `TUNSETOFFLOAD` flags (linux/if_tun.h): what the tap may hand us, i.e. what the guest
/// can receive.
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_TSO_ECN: u32 = 0x08;

/// The tap offloads for what the driver accepted. The kernel refuses TSO without checksum
/// offload and ECN without TSO (EINVAL), as the virtio spec makes GUEST_TSO depend on
/// GUEST_CSUM and GUEST_ECN on GUEST_TSO; a driver that accepted one without the other
/// gets the consistent subset, never a set the tap would refuse.
pub fn tap_offloads(acked: u64) -> u32 {
    if acked & VIRTIO_NET_F_GUEST_CSUM == 0 {
        return 0;
    }
    let mut f = TUN_F_CSUM;
    if acked & VIRTIO_NET_F_GUEST_TSO4 != 0 {
        f |= TUN_F_TSO4;
    }
    if acked & VIRTIO_NET_F_GUEST_TSO6 != 0 {
        f |= TUN_F_TSO6;
    }
    if f & (TUN_F_TSO4 | TUN_F_TSO6) != 0 && acked & VIRTIO_NET_F_GUEST_ECN != 0 {
        f |= TUN_F_TSO_ECN;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offloads_follow_the_guest_features() {
        assert_eq!(tap_offloads(0), 0);
        assert_eq!(tap_offloads(OFFERED), 0x0f);
        assert_eq!(
            tap_offloads(VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4),
            TUN_F_CSUM | TUN_F_TSO4
        );
        // Host-side (TX) offloads change nothing on the tap's read side.
        assert_eq!(
            tap_offloads(VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_MRG_RXBUF),
            0
        );
    }

    #[test]
    fn inconsistent_sets_are_reduced_to_what_the_tap_takes() {
        // TSO without checksum offload: nothing.
        assert_eq!(
            tap_offloads(VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_ECN),
            0
        );
        // ECN without TSO: checksum only.
        assert_eq!(
            tap_offloads(VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_ECN),
            TUN_F_CSUM
        );
    }

    #[test]
    fn offered_set_has_no_ufo_and_no_control_queue() {
        // GUEST_UFO (10), HOST_UFO (14), CTRL_VQ (17), MQ (22), EVENT_IDX (29).
        for bit in [10, 14, 17, 22, 29] {
            assert_eq!(OFFERED & (1 << bit), 0, "bit {bit}");
        }
    }
}
