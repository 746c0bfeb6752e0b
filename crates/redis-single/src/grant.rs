//! One grant on the server: extend and release by compare-and-act on our grant id;
//! background renewals batched with the node's others.

use std::time::Duration;

use async_trait::async_trait;
use fencelock_core::cleanup::CleanupGuard;
use fencelock_core::{GrantId, LeaseOps, Result};

use crate::node::RedisNode;

pub(crate) struct RedisGrant {
    pub node: RedisNode,
    pub key: String,
    /// Shared with the lease (a reference count, not a copy of the text).
    pub grant: GrantId,
    /// The server's `run_id` when the grant was made, read before its request
    /// ([`RedisNode::run_id_for_grant`]) — an acquire's, a waiter's turn's, or for a
    /// grant handed on by a release, the waiter's last turn answered "queued": a repeated
    /// release compares the current one with it.
    pub under: Option<String>,
}

#[async_trait]
impl LeaseOps for RedisGrant {
    async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
        Ok(self
            .node
            .extend(&self.key, self.grant.as_str(), ttl)
            .await?
            .then_some(ttl))
    }

    async fn renew(&self, ttl: Duration) -> Result<Option<Duration>> {
        Ok(self
            .node
            .renew(&self.key, self.grant.as_str(), ttl)
            .await?
            .then_some(ttl))
    }

    async fn release(&self) -> Result<bool> {
        self.node
            .release(&self.key, self.grant.as_str(), self.under.as_deref())
            .await
    }

    /// Counted on the node from the drop on (its release counts itself only once it runs).
    fn cleanup(&self) -> Option<CleanupGuard> {
        Some(self.node.cleanup())
    }
}
