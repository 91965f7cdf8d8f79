//! The redirect between the pod's veth and the tap, both ways (Kata's tcfilter model):
//! an ingress qdisc on each, and on each a u32 filter matching every frame
//! (`protocol all u32 match u8 0 0`) whose action is `mirred egress redirect` to the other.
//! Frames from the CNI bridge arrive on the veth and leave through the tap to the VM; what
//! the VM sends arrives on the tap and leaves through the veth. rtnetlink has these
//! requests (no hand-built netlink needed).

use rtnetlink::packet_route::tc::TcHandle;
use rtnetlink::Handle;

use super::NetError;

/// ETH_P_ALL in network byte order, as `tc ... protocol all` sends it in `tcm_info`.
pub const PROTOCOL_ALL: u16 = (libc::ETH_P_ALL as u16).to_be();
/// The ingress qdisc's handle (`ffff:`), the parent of its filters.
pub const INGRESS_PARENT: u32 = 0xffff_0000;

fn nl(what: String) -> impl FnOnce(rtnetlink::Error) -> NetError {
    move |e| NetError::Netlink {
        what,
        msg: e.to_string(),
    }
}

/// Adds an ingress qdisc to `from` with a filter redirecting all of its frames to `to`.
pub async fn redirect(handle: &Handle, from: u32, to: u32) -> Result<(), NetError> {
    let from_i = i32::try_from(from).map_err(|_| NetError::Netlink {
        what: "redirect".into(),
        msg: format!("interface index {from} out of range"),
    })?;
    handle
        .qdisc()
        .add(from_i)
        .ingress()
        .execute()
        .await
        .map_err(nl(format!("adding the ingress qdisc to link {from}")))?;
    handle
        .traffic_filter(from_i)
        .add()
        .parent(INGRESS_PARENT)
        .protocol(PROTOCOL_ALL)
        .redirect(to)
        .map_err(nl(format!("building the redirect {from} -> {to}")))?
        .execute()
        .await
        .map_err(nl(format!("adding the redirect {from} -> {to}")))?;
    Ok(())
}

/// Removes the ingress qdisc of `index` (and with it its filters).
pub async fn remove_ingress(handle: &Handle, index: u32) -> Result<(), NetError> {
    let i = i32::try_from(index).map_err(|_| NetError::Netlink {
        what: "remove ingress".into(),
        msg: format!("interface index {index} out of range"),
    })?;
    let mut del = handle.qdisc().del(i);
    let m = del.message_mut();
    m.header.parent = TcHandle::INGRESS;
    m.header.handle = INGRESS_PARENT.into();
    del.execute()
        .await
        .map_err(nl(format!("removing the ingress qdisc of link {index}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_all_is_big_endian_on_the_wire() {
        assert_eq!(PROTOCOL_ALL.to_ne_bytes(), [0x00, 0x03]);
    }
}
