//! Waiting for our turn in a lock's queue: watch only the key just before ours (no herd),
//! and when it goes, confirm in one request that our key is first and still ours — and, on
//! an own lease, renew it in parallel — so that the grant's validity counts from that
//! confirmation, not from the start of the wait.
//!
//! Requests per hand-off (from the predecessor's delete to our grant): one transaction
//! (the queue read below) on the session; that transaction and one keep-alive, sent
//! together, on an own lease. The watch push itself is the only other message.

use std::time::Duration;

use etcd_client::{
    EventType, GetOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchFilterType, WatchOptions,
};
use fencelock_core::Result;
use tokio::time::Instant;

use crate::client::Cluster;
use crate::error::lease_gone;
use crate::queue::{Holding, Queued};

/// What one queue read (a single transaction) says about our place.
struct Place {
    /// The key just before ours and its create revision; `None` when ours is first.
    pred: Option<(Vec<u8>, i64)>,
    /// How many keys are older than ours (etcd counts past the read's limit of one).
    older: i64,
    /// Our key still exists with our create revision, on our lease.
    ours: bool,
    /// The revision the read saw.
    seen: i64,
}

/// Reads, in one transaction, the key just before ours (with the number of keys older than
/// ours) and our own key. Reading both together is what makes one request enough at our
/// turn: "nothing older is left" and "our key is still ours" hold at the same revision.
async fn read_place(c: &Cluster, q: &Queued) -> Result<Place> {
    let older = GetOptions::new()
        .with_prefix()
        .with_max_create_revision(q.rev - 1)
        .with_sort(SortTarget::Create, SortOrder::Descend)
        .with_limit(1)
        .with_keys_only();
    let txn = Txn::new().and_then([
        TxnOp::get(q.dir.clone(), Some(older)),
        TxnOp::get(q.key.clone(), Some(GetOptions::new().with_keys_only())),
    ]);
    let resp = c
        .call("reading our place in the queue", |mut cl| {
            let txn = txn.clone();
            async move { cl.txn(txn).await }
        })
        .await?;
    let mut place = Place {
        pred: None,
        older: 0,
        ours: false,
        seen: resp.header().map_or(0, |h| h.revision()),
    };
    for (i, op) in resp.op_responses().into_iter().enumerate() {
        let TxnOpResponse::Get(g) = op else { continue };
        let first = g.kvs().first();
        if i == 0 {
            place.older = g.count();
            place.pred = first.map(|kv| (kv.key().to_vec(), kv.create_revision()));
        } else {
            place.ours = first.is_some_and(|kv| kv.create_revision() == q.rev && kv.lease() == q.holding.lease());
        }
    }
    Ok(place)
}

/// Waits until no key older than ours is left: watches only the key just before ours, and
/// re-reads the queue after each deletion. Keeps an own lease alive meanwhile. Our key may
/// have expired while we were queued (the etcd 3.4.3 Jepsen finding, etcd issue 11456):
/// every queue read also checks it.
///
/// Returns `Some(since)` when we own the lock, valid from `since` (the send instant of the
/// request(s) that confirmed it); `None` when our key or lease vanished (queue again).
pub(crate) async fn wait_turn(c: &Cluster, q: &Queued) -> Result<Option<Instant>> {
    // Set when the key that just went was the only one older than ours: the next read
    // very likely finds us first, so an own lease's keep-alive goes out with it.
    let mut likely_first = false;
    for _ in 0..100_000 {
        // Validity must count from a request that confirmed ownership (issue 12, K1). On an
        // own lease that is the keep-alive: it renews the lease to its full TTL at a server
        // instant after `since`, and the read sent at `since` too proves our key is first
        // and on that lease. Not the watch request's send instant: a watch renews no lease,
        // so the TTL would still count from the last periodic keep-alive (up to a third of
        // the TTL earlier). On the session, the grant's validity comes from the session's
        // own keep-alives, and the read alone confirms the key.
        let since = Instant::now();
        let (place, alive) = match (&q.holding, likely_first) {
            (Holding::Own { lease, .. }, true) => {
                let (p, a) = tokio::join!(read_place(c, q), keep_alive_once(c, *lease));
                (p?, Some(a?))
            }
            _ => (read_place(c, q).await?, None),
        };
        if !place.ours || alive == Some(false) {
            return Ok(None);
        }
        let Some((pred_key, pred_rev)) = place.pred else {
            return match (&q.holding, alive) {
                (Holding::Own { .. }, Some(true)) | (Holding::Session { .. }, _) => Ok(Some(since)),
                (Holding::Own { lease, .. }, _) => {
                    // Not expected first: renew now, and count from this keep-alive.
                    let since = Instant::now();
                    Ok(keep_alive_once(c, *lease).await?.then_some(since))
                }
            };
        };
        likely_first = place.older == 1;
        let seen = place.seen;
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
    Ok(None) // the queue never settled (bounded): queue again
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
