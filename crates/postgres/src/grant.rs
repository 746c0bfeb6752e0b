//! One grant on the server: extend and release act on our row only (key and grant id),
//! through the connection that granted it; background renewals are batched with that
//! connection's others.

use std::sync::{Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use fencelock_core::cleanup::CleanupGuard;
use fencelock_core::{LeaseOps, Result};

use crate::node::PgNode;
use crate::session::Session;

pub(crate) struct PgGrant {
    pub node: PgNode,
    /// The connection that granted it: extend, renewals and release go through it.
    pub session: Weak<Session>,
    pub key: String,
    pub grant: String,
    /// The session that granted it and the lease's id there, once tracked.
    pub tracked: Mutex<Option<(Weak<Session>, u64)>>,
    /// Release by handing the key to the oldest waiter (`sql::release_handing`): a lease
    /// granted after waiting, on a key others are likely waiting for too. A lease granted
    /// at once uses the cheaper plain release, which wakes a waiter to acquire instead.
    pub handing: bool,
    /// Whether the lease renews itself: its `extend` is held to
    /// [`PgConfig::min_ttl_for`](crate::PgConfig::min_ttl_for) of it, as its acquire was.
    pub auto_renew: bool,
}

impl PgGrant {
    /// The validity after an extend (counted from its send instant by the lease); a
    /// grant the server no longer holds is forgotten by the session too.
    fn answer(&self, held: bool, ttl: Duration) -> Option<Duration> {
        if !held {
            self.untrack();
        }
        held.then_some(ttl)
    }

    fn untrack(&self) {
        let tracked = self.tracked.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((session, id)) = tracked {
            if let Some(s) = session.upgrade() {
                s.untrack(id);
            }
        }
    }
}

#[async_trait]
impl LeaseOps for PgGrant {
    async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
        self.node.config().check_ttl(ttl, self.auto_renew)?;
        let held = self.node.extend(&self.session, &self.key, &self.grant, ttl).await?;
        Ok(self.answer(held, ttl))
    }

    async fn renew(&self, ttl: Duration) -> Result<Option<Duration>> {
        let held = self.node.renew(&self.session, &self.key, &self.grant, ttl).await?;
        Ok(self.answer(held, ttl))
    }

    async fn release(&self) -> Result<bool> {
        self.untrack();
        let session = self.session.upgrade();
        self.node
            .release(session.as_ref(), &self.key, &self.grant, self.handing)
            .await
    }

    /// Counted on the node from the drop on: `close` waits for the release before it ends
    /// the connections (the release goes through the one that granted it).
    fn cleanup(&self) -> Option<CleanupGuard> {
        Some(self.node.count_cleanup())
    }
}
