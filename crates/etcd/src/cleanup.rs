//! Background follow-ups of requests whose effect must be undone — an abandoned queue key,
//! a release that was not confirmed, a lease left over from a lease move — each retried a
//! bounded number of times, and counted among the instance's
//! [`Cleanups`](fencelock_core::cleanup::Cleanups) (each spawned with `Cleanups::spawn`,
//! counted from the call) so that [`EtcdLock::close`](crate::EtcdLock) can wait for them
//! (bounded) before it ends the session.
//!
//! What a follow-up cannot confirm is still bounded: a key on the session lease that no
//! grant or waiter of ours claims is deleted by the session's periodic key check (see
//! [`crate::session`]) for as long as the session lives; an own lease ends with its TTL.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use fencelock_core::waiting::jitter;
use fencelock_core::{LockError, Result};

use crate::client::Cluster;
use crate::error::lease_gone;

/// Tries of one follow-up (each bounded by the request timeout), with a jittered pause
/// doubling from 50 ms up to 1 s between them.
const TRIES: u32 = 8;

/// Repeats `op` until it succeeds, fails for good (a permanent error), or [`TRIES`] tries
/// have failed; `true` when it succeeded.
pub(crate) async fn until_confirmed<F, Fut>(what: &'static str, mut op: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut pause = Duration::from_millis(50);
    for attempt in 1..=TRIES {
        match op().await {
            Ok(()) => return true,
            Err(e) if !e.is_temporary() => {
                tracing::warn!(what, error = %e, "follow-up refused; left to the TTL or the session");
                return false;
            }
            Err(e) => tracing::debug!(what, attempt, error = %e, "follow-up failed; trying again"),
        }
        if attempt < TRIES {
            tokio::time::sleep(jitter(pause)).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
    tracing::warn!(
        what,
        "follow-up not confirmed after {TRIES} tries; left to the TTL or the session"
    );
    false
}

/// Revokes `lease`; a lease already gone counts as revoked. Revoking deletes every key on
/// the lease, and a late put that names the lease fails afterwards ("lease not found").
///
/// A refusal "lease not found" carries no header: it may come from a member of another
/// cluster (a URL naming two; [`crate::client::Answer`]), while the lease and its keys
/// live on here. It is read back ([`Cluster::refusal_stands`]) before it counts as done.
///
/// # Errors
/// The revoke's error; `InvalidConfig` when a member of another cluster refused it.
pub(crate) async fn revoke(c: &Cluster, lease: i64) -> Result<()> {
    let doing = "revoking a lease";
    match c
        .call(doing, |mut cl| async move { cl.lease_revoke(lease).await })
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if lease_gone(&e) => c.refusal_stands(lease, doing, &format!("the lease {lease:x}")).await,
        Err(e) => Err(e),
    }
}

/// Deletes our key if it is still the one created at `rev`; `true` if it was. The compare
/// makes a late repeat harmless: it can never delete a newer key of the same name (names
/// are reused, see [`crate::slots`]).
pub(crate) async fn delete_key(c: &Cluster, key: &str, rev: i64) -> Result<bool> {
    let (r, _) = c.txn_built("deleting the lock key", |_| guarded_delete(key, rev)).await;
    Ok(r?.succeeded())
}

/// The delete of `key` if it is still the one created at `rev` (built for each try: no
/// copy of it is kept).
fn guarded_delete(key: &str, rev: i64) -> Txn {
    Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, rev)])
        .and_then([TxnOp::delete(key, None)])
}

/// A release's delete of our key (created at `rev`, riding on `lease`): `true` when the key
/// was ours until this delete.
///
/// A delete that went out more than once (a try cut off by its share of the timeout, or
/// failed on the way, then repeated, perhaps on another member) may find the key already
/// gone because an earlier try deleted it: the compare alone would then call a lease lost
/// that was ours to the end. So when a repeat finds nothing, the key's lease is read: a
/// lease that is still alive never expired, so its keys were not deleted by expiry, and
/// the earlier try is what deleted ours — released. A lease that is gone means the key
/// may have expired first: not held, the conservative answer. Left ambiguous (etcd keeps
/// no trace of who deleted a key): a key deleted by an operator while its lease lived,
/// found by a repeated release, is answered "released" (a release sent once still reports
/// it; marking our own delete with a second key would cost a write on every release).
///
/// # Errors
/// The delete's error; an `Unavailable` error saying the outcome is unknown when the
/// follow-up read fails.
pub(crate) async fn release_key(c: &Cluster, key: &str, rev: i64, lease: i64) -> Result<bool> {
    let (r, echoes) = c.txn_built("deleting the lock key", |_| guarded_delete(key, rev)).await;
    let r = r?;
    if r.succeeded() || !echoes {
        return Ok(r.succeeded());
    }
    let alive = c
        .call(
            "reading the lease of a lock key whose delete was repeated",
            |mut cl| async move { cl.lease_time_to_live(lease, None).await },
        )
        .await;
    match alive {
        // TTL -1: expired or revoked; 0 is a lease still there with under a second left.
        Ok(l) => Ok(l.ttl() >= 0),
        Err(e) if lease_gone(&e) => Ok(false),
        Err(e) => Err(LockError::Unavailable {
            message: format!(
                "the release of `{key}` was sent more than once and the key is gone; whether an earlier try deleted it \
                 could not be settled: {e}"
            ),
            source: Some(Box::new(e)),
        }),
    }
}

/// Deletes a key by name, for a queue key whose put went unanswered (its create revision
/// is unknown). Safe because its name stays reserved (the slot is never freed), so the
/// name cannot belong to a newer request of ours.
pub(crate) async fn delete_name(c: &Cluster, key: &str) -> Result<()> {
    c.call("deleting an abandoned queue key", |mut cl| {
        let key = key.to_owned();
        async move { cl.delete(key, None).await }
    })
    .await
    .map(|_| ())
}
