//! Waiting for our turn in a lock's queue: watch only the key just before ours (no herd),
//! then confirm that our key is still ours — and, on an own lease, renew it — so that the
//! grant's validity counts from that confirmation, not from the start of the wait.

use std::time::Duration;

use etcd_client::{EventType, GetOptions, SortOrder, SortTarget, WatchFilterType, WatchOptions};
use fencelock_core::Result;
use tokio::time::Instant;

use crate::client::Cluster;
use crate::error::lease_gone;
use crate::queue::{Holding, Queued};

/// Waits until no key older than ours is left: watches only the key just before ours, and
/// re-checks after each deletion. Keeps an own lease alive meanwhile. Then confirms our
/// turn (see [`confirm`]) — our key may have expired while we were queued (the etcd 3.4.3
/// Jepsen finding, etcd issue 11456).
///
/// Returns `Some(since)` when we own the lock, valid from `since` (the send instant of the
/// request that confirmed it); `None` when our key or lease vanished (queue again).
pub(crate) async fn wait_turn(c: &Cluster, q: &Queued) -> Result<Option<Instant>> {
    for _ in 0..100_000 {
        let opts = GetOptions::new()
            .with_prefix()
            .with_max_create_revision(q.rev - 1)
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(1)
            .with_keys_only();
        let dir = q.dir.clone();
        let resp = c
            .call("looking for the predecessor", |mut cl| {
                let (dir, opts) = (dir.clone(), opts.clone());
                async move { cl.get(dir, Some(opts)).await }
            })
            .await?;
        let Some(pred) = resp.kvs().first() else { break };
        let (pred_key, pred_rev) = (pred.key().to_vec(), pred.create_revision());
        let seen = resp.header().map_or(0, |h| h.revision());
        // Watch from now, not from `seen + 1`: a watch that starts in the past is put in
        // etcd's "unsynced" group and caught up only every 100 ms — under contention the
        // revision always moves on, so that was the p99 of every hand-off (85 ms). A
        // deletion between `seen` and the watch's creation is caught by the check below.
        let wopts = WatchOptions::new().with_filters([WatchFilterType::NoPut]);
        let mut stream = c
            .call("watching the predecessor", |mut cl| {
                let (pred_key, wopts) = (pred_key.clone(), wopts.clone());
                async move { cl.watch(pred_key, Some(wopts)).await }
            })
            .await?;
        let created = match tokio::time::timeout(c.cfg.timeout, stream.message()).await {
            Ok(Ok(Some(r))) if r.created() => r.header().map_or(i64::MAX, |h| h.revision()),
            _ => continue, // no watch: look again
        };
        if created > seen {
            let still = c
                .call("checking the predecessor", |mut cl| {
                    let pred_key = pred_key.clone();
                    async move { cl.get(pred_key, Some(GetOptions::new().with_keys_only())).await }
                })
                .await?;
            if still.kvs().first().is_none_or(|kv| kv.create_revision() != pred_rev) {
                continue; // it went before the watch began
            }
        }
        loop {
            let refresh = match &q.holding {
                Holding::Own { granted, .. } => *granted / 3,
                Holding::Session { .. } => Duration::from_secs(3600),
            };
            match tokio::time::timeout(refresh, stream.message()).await {
                Ok(Ok(Some(r))) if r.events().iter().any(|e| e.event_type() == EventType::Delete) => break,
                Ok(Ok(Some(r))) if r.canceled() => break,
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) | Ok(Err(_)) => break, // re-check from the top
                Err(_) => {
                    if let Holding::Own { lease, .. } = &q.holding {
                        if !keep_alive_once(c, *lease).await? {
                            return Ok(None);
                        }
                    }
                }
            }
        }
    }
    confirm(c, q).await
}

/// Confirms that our key is still ours at our turn: on an own lease, one keep-alive
/// renews the lease to its full TTL (validity counts from its send instant) and a read
/// checks our key's create revision and lease; on the session, the read alone (the
/// session's keep-alive stream renews its lease).
pub(crate) async fn confirm(c: &Cluster, q: &Queued) -> Result<Option<Instant>> {
    let since = Instant::now();
    if let Holding::Own { lease, .. } = &q.holding {
        if !keep_alive_once(c, *lease).await? {
            return Ok(None);
        }
    }
    let key = q.key.clone();
    let mine = c
        .call("re-reading our key", |mut cl| {
            let key = key.clone();
            async move { cl.get(key, Some(GetOptions::new().with_keys_only())).await }
        })
        .await?;
    let ours = mine
        .kvs()
        .first()
        .is_some_and(|kv| kv.create_revision() == q.rev && kv.lease() == q.holding.lease());
    Ok(ours.then_some(since))
}

/// One keep-alive of a lease: `true` when it lives (renewed to its granted TTL), `false`
/// when it is gone. Opening the keep-alive stream sends the request and checks the answer.
pub(crate) async fn keep_alive_once(c: &Cluster, lease: i64) -> Result<bool> {
    let opened = c
        .call("keeping a lease alive", |mut cl| async move {
            cl.lease_keep_alive(lease).await.map(|_| ())
        })
        .await;
    match opened {
        Ok(()) => Ok(true),
        Err(e) if lease_gone(&e) => Ok(false),
        Err(e) => Err(e),
    }
}
