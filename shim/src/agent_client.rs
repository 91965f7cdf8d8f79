//! The real agent client: ttrpc over the vsock stream.
//!
//! The agent API's messages and service live in `husk-protocol` (issue 4), which does
//! not define them yet; until it does, connecting reports that plainly instead of
//! guessing the wire format. The [`AgentClient`] trait is what the shim needs from it.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::net::UnixStream;

use crate::agent::{AgentClient, AgentError, AgentResult};
use crate::vmm::AgentConnector;

/// Connects [`AgentClient`]s over ttrpc.
pub struct TtrpcConnector;

#[async_trait]
impl AgentConnector for TtrpcConnector {
    async fn connect(&self, stream: UnixStream) -> AgentResult<Arc<dyn AgentClient>> {
        drop(stream);
        Err(AgentError::Unavailable(
            "husk-protocol does not define the agent API yet, so the shim cannot talk to the agent"
                .into(),
        ))
    }
}
