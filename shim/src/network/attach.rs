//! One pod's network, attached and detached: inside the pod's namespace, find its
//! interface, make the tap (same MTU, up) and the two redirects. A failure part-way undoes
//! what was done. Detach removes the redirects' qdiscs and the tap, leaving the namespace
//! as CNI made it; after a shim that was killed, [`detach_leftover`] does it from the
//! namespace alone.

use std::path::{Path, PathBuf};

use futures_util::stream::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec};

use super::{discover, netns, tap, tc, NetError, PodNetwork, TAP_NAME};

fn nl(what: &str) -> impl FnOnce(rtnetlink::Error) -> NetError + '_ {
    move |e| NetError::Netlink {
        what: what.into(),
        msg: e.to_string(),
    }
}

fn connect() -> Result<Handle, NetError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| NetError::Netlink {
        what: "socket".into(),
        msg: e.to_string(),
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The index of link `name`, None when there is none.
async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(l) => Ok(l.map(|l| l.header.index)),
        // No such device: ENODEV
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl("looking up a link")(e)),
    }
}

async fn delete_tap(handle: &Handle) -> Result<(), NetError> {
    if let Some(i) = link_index(handle, TAP_NAME).await? {
        handle
            .link()
            .del(i)
            .execute()
            .await
            .map_err(nl("deleting the tap"))?;
    }
    Ok(())
}

async fn attach_in(netns: PathBuf) -> Result<PodNetwork, NetError> {
    let handle = connect()?;
    // A tap left by a shim that was killed is replaced, not reused.
    delete_tap(&handle).await?;
    let interface = discover::discover(&handle, TAP_NAME).await?;
    tap::create_persistent(TAP_NAME)?;
    let done = async {
        let tap_index = link_index(&handle, TAP_NAME)
            .await?
            .ok_or_else(|| NetError::Tap {
                name: TAP_NAME.into(),
                msg: "created, then not found".into(),
            })?;
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(tap_index)
                    .mtu(interface.mtu)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("setting the tap's MTU and bringing it up"))?;
        tc::redirect(&handle, interface.index, tap_index).await?;
        if let Err(e) = tc::redirect(&handle, tap_index, interface.index).await {
            let _ = tc::remove_ingress(&handle, interface.index).await;
            return Err(e);
        }
        Ok(tap_index)
    }
    .await;
    match done {
        Ok(tap_index) => Ok(PodNetwork {
            netns,
            interface,
            tap: TAP_NAME.into(),
            tap_index,
        }),
        Err(e) => {
            let _ = delete_tap(&handle).await;
            Err(e)
        }
    }
}

/// Attaches the pod's network namespace at `netns` to a new tap (see the module docs).
pub fn attach(netns: &Path) -> Result<PodNetwork, NetError> {
    let owned = netns.to_path_buf();
    netns::block_in(netns, move || attach_in(owned))
}

/// Removes the redirects and the tap. The veth's qdisc is looked up by index, the tap by
/// name (its index is gone with it).
pub fn detach(net: &PodNetwork) -> Result<(), NetError> {
    let veth = net.interface.index;
    let veth_name = net.interface.name.clone();
    netns::block_in(&net.netns, move || async move {
        let handle = connect()?;
        // The veth may have gone with the namespace's teardown: only a live one is touched.
        let first = match link_index(&handle, &veth_name).await? {
            Some(i) if i == veth => tc::remove_ingress(&handle, veth).await,
            _ => Ok(()),
        };
        let second = delete_tap(&handle).await;
        first.and(second)
    })
}

/// Detach without the [`PodNetwork`] of the attach: for `shim delete` after a shim that was
/// killed. The tap is found by name and the veth as attach found it. A namespace without
/// the tap is left alone: husk never attached it (or detached already), so an ingress
/// qdisc on its veth is not husk's.
pub fn detach_leftover(netns: &Path) -> Result<(), NetError> {
    netns::block_in(netns, || async {
        let handle = connect()?;
        if link_index(&handle, TAP_NAME).await?.is_none() {
            return Ok(());
        }
        let first = match discover::discover(&handle, TAP_NAME).await {
            Ok(veth) => tc::remove_ingress(&handle, veth.index).await,
            // only the tap and loopback: nothing to unhook
            Err(NetError::NoInterface) => Ok(()),
            Err(e) => Err(e),
        };
        let second = delete_tap(&handle).await;
        first.and(second)
    })
}
