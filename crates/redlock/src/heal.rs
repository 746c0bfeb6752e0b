//! Healing a grant onto the nodes that refused it: a lease granted by a quorum but not
//! by every node that answered (a node still held an earlier grant — typically the
//! previous holder's, whose release had not reached it yet when the hand-off's claim
//! did) takes those nodes too once the key is free there, so it does not live on a bare
//! quorum. Why this and not a claim that may replace the releasing grant: see
//! docs/backends/redlock.md, "Healing a grant onto the nodes that refused it".

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use fencelock_redis::{NodeGrant, RedisNode};
use tokio::time::Instant;

use crate::grant::RedlockGrant;
use crate::quorum::{fan_out, Bound};

/// The pause before the first try: the release that frees a refusing node was usually
/// sent together with the hand-off and lands within a round trip.
const FIRST_PAUSE: Duration = Duration::from_millis(2);
/// The most tries of one heal. Pauses double from [`FIRST_PAUSE`] (2 ms, then 4, 8, …:
/// the 16th try would come about 131 s after the grant), but the task never sleeps past
/// the end of the copies the quorum confirmed, and ends there.
const TRIES: u32 = 16;

/// Starts, in the background, the heal of `grant` onto the nodes of `refused` — each a
/// node index and, when it said, how long (ms) the grant that made it refuse still has
/// there. Nothing when `refused` is empty or no tokio runtime runs.
///
/// The heal holds the lease's state only weakly and ends at the first of: every node
/// healed; [`TRIES`] tries; the lease's release (asked for, or the lease dropped or run
/// out: the backend releases it then); the end of the copies the quorum confirmed
/// ([`RedlockGrant::copies_left`], which no pause sleeps past); the instance closed or
/// dropped. Each try sends every pending node one [`RedisNode::heal`] at once, each
/// bounded by `per_node_timeout`. Ended by the release, it releases again the nodes it
/// healed or got no answer from ([`release_again`]), counted among the clean-ups.
pub(crate) fn start(grant: &Arc<RedlockGrant>, refused: Vec<(usize, Option<u64>)>) {
    if refused.is_empty() {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    tracing::debug!(key = %grant.key, token = grant.token, nodes = refused.len(), "granted without every node; healing onto them");
    rt.spawn(heal(Arc::downgrade(grant), refused));
}

/// A node still to heal, and when the grant that refused us there ends at the latest
/// (from its PTTL), when it said.
type Pending = (usize, Option<Instant>);

async fn heal(weak: Weak<RedlockGrant>, refused: Vec<(usize, Option<u64>)>) {
    let at = |from: Instant, ms: Option<u64>| ms.map(|ms| from + Duration::from_millis(ms));
    let now = Instant::now();
    let mut pending: Vec<Pending> = refused.into_iter().map(|(i, ms)| (i, at(now, ms))).collect();
    let mut pause = FIRST_PAUSE;
    // Nodes whose last try got no answer: the grant may be there unheard.
    let mut unknown: Vec<usize> = Vec::new();
    for _ in 0..TRIES {
        // A refusing grant's expiry frees its node unless its release comes first: try
        // then too (1 ms after, so the node's own expiry has run), not only at the pause.
        let mut wake = Instant::now() + pause;
        if let Some(ends) = pending.iter().filter_map(|(_, ends)| *ends).min() {
            wake = wake.min(ends + Duration::from_millis(1));
        }
        // Never past the copies' end (a try then sends nothing and ends the task): the
        // doubling pauses otherwise kept a task asleep up to about twice the lease's
        // life after its lease and its instance were gone.
        match weak.upgrade() {
            Some(g) => {
                let copies_end = Instant::now() + g.copies_left();
                wake = wake.min(copies_end);
            }
            None => return,
        }
        tokio::time::sleep_until(wake).await;
        pause *= 2;
        let Some(g) = weak.upgrade() else { return };
        let inner = &g.inner;
        let per_node = inner.cfg.per_node_timeout;
        // The copy set here ends with the quorum's, never later: a holder that dies
        // leaves the key held nowhere longer than it would have without the heal.
        let left = g.copies_left();
        if g.released.load(Ordering::SeqCst) {
            // A try whose answer never came may have landed after the release did on
            // its node (its request checked the mark just before the release set it):
            // release it there again (a no-op where it did not land).
            release_again(&g, &unknown, left);
            return;
        }
        if inner.gate.is_closed() || left <= per_node {
            return;
        }
        let nodes: Vec<RedisNode> = pending.iter().map(|(i, _)| inner.nodes[*i].clone()).collect();
        let (key, grant, token, delay) = (&g.key, &g.grant, g.token, inner.cfg.restart_delay);
        // Read before the requests: a copy healed onto a node keeps the run_id it had then.
        let asked_under: Vec<Option<String>> = nodes.iter().map(RedisNode::run_id_for_grant).collect();
        let answers = fan_out(&nodes, Bound::strict(per_node), |_, node| async move {
            node.heal(key, grant, left, token, delay).await
        })
        .await;
        let now = Instant::now();
        let mut healed = Vec::new();
        unknown.clear();
        {
            // Healed, or maybe healed unheard: the copy there (if any) is the heal's.
            let mut under = g.under.lock().unwrap_or_else(|p| p.into_inner());
            for (((i, _), answer), asked) in pending.iter().zip(&answers).zip(asked_under) {
                if matches!(answer, Ok(NodeGrant::Granted(_)) | Err(_)) {
                    if let Some(slot) = under.get_mut(*i) {
                        *slot = asked;
                    }
                }
            }
        }
        pending = pending
            .into_iter()
            .zip(answers)
            .filter_map(|((i, ends), answer)| match answer {
                Ok(NodeGrant::Granted(_)) => {
                    healed.push(i);
                    None
                }
                Ok(NodeGrant::Busy(ms)) => Some((i, at(now, ms))),
                // Tried again once its delay has passed.
                Ok(NodeGrant::Restarting(ms)) => Some((i, at(now, Some(ms)))),
                // Unknown (it may have landed unheard: the lease's release goes to every
                // node, this one too); tried again with the others.
                // An end already past would wake the next try at once, and the next:
                // the tries went back to back, one per `per_node_timeout`, rather than
                // after doubling pauses. Kept only while still ahead.
                Err(_) => {
                    unknown.push(i);
                    Some((i, ends.filter(|&e| e > now)))
                }
            })
            .collect();
        if !healed.is_empty() {
            tracing::debug!(key = %g.key, token = g.token, healed = healed.len(), left = pending.len(), "grant healed onto nodes that had refused it");
        }
        // The release started while these requests were out: it may have reached those
        // nodes before them, so the copies set here would outlive the lease. Release
        // them again (a no-op where the release came after).
        // Nodes whose heal was not answered may hold it too, unheard.
        if g.released.load(Ordering::SeqCst) {
            healed.extend_from_slice(&unknown);
            release_again(&g, &healed, left);
            return;
        }
        if pending.is_empty() {
            return;
        }
    }
}

/// Releases `g` again on `nodes` (copies a heal may have set after the lease's release
/// reached them), the silent ones in the background until `left` has passed. Counted
/// among the instance's clean-ups, so a `close()` right after the release waits for it.
fn release_again(g: &Arc<RedlockGrant>, nodes: &[usize], left: Duration) {
    if nodes.is_empty() {
        return;
    }
    let (plan, nodes) = (g.release_plan(), nodes.to_vec());
    let until = Instant::now() + left;
    let cleanups = g.inner.cleanups.clone();
    let _ = cleanups.spawn("releasing a heal that crossed the release", async move {
        plan.on(&nodes, until).await;
    });
}
