//! The agent API server (ttrpc over vsock in the guest, over a Unix socket on a host).

use std::path::Path;

/// Serves the agent API at `address` until the process ends.
pub fn serve(address: &str, root: &Path) -> anyhow::Result<()> {
    let _ = (address, root);
    anyhow::bail!("agent API not built yet")
}
