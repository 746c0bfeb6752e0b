//! Batched auto-renewals: the background renewals of every lease of one backend instance
//! that came due in one window are sent as one `UPDATE … FROM unnest(…)` statement per
//! connection (with `fencelock_core::batch`; a lease is renewed through the connection
//! that granted it), so holding 10,000 locks costs a few statements per renewal period
//! instead of 10,000.
//!
//! A renewal waits at most `renew_window`, capped at a tenth of its TTL. The lease counts
//! the renewed validity from the moment it asked, before the wait, so waiting only ever
//! shortens what the holder believes. Explicit `Lease::extend` calls do not come here.
//!
//! **Bounded in flight, merged while waiting.** At most [`IN_FLIGHT`] renewal statements
//! are on a connection at once. The batches the window makes go into the connection's
//! queue ([`Pending`]); whoever gets a turn sends the oldest [`MAX_BATCH`] queued renewals, its
//! own or others'. So when the server is slow the batches grow (up to the cap) instead of
//! piling up as statements queued behind one another on the one connection — which is how
//! 10,000 held leases were once all lost: twenty batches pipelined at once, the last of
//! them waited behind the others past the statement timeout, and the connection was cut
//! for it while the server was healthy.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use fencelock_core::batch::Batcher;
use fencelock_core::{LockError, Result};
use tokio::sync::{oneshot, Semaphore};

/// The most grants one statement renews (an index lookup and a row update each; 500 take
/// about 10–20 ms on a 10,000-row table, measured with `EXPLAIN ANALYZE`).
pub(crate) const MAX_BATCH: usize = 500;

/// Renewal statements on one connection at once.
pub(crate) const IN_FLIGHT: usize = 2;

/// One renewal in a batch.
pub(crate) struct Renewal {
    /// The connection that granted the lease: the renewal goes through it.
    pub session: std::sync::Weak<crate::session::Session>,
    pub key: String,
    pub grant: String,
    pub ttl_ms: i64,
    /// Alive while the lease still waits for this renewal's answer (its `submit` to the
    /// batcher not dropped): a renewal the lease gave up on is not sent ([`Pending::take`]).
    pub waiting: std::sync::Weak<()>,
}

/// The batcher; each answer says whether the row still held the grant.
pub(crate) type Renewals = Batcher<Renewal, bool>;

pub(crate) fn renewals() -> Renewals {
    Batcher::new(MAX_BATCH)
}

/// How many statement timeouts [`bound`] is at most.
pub(crate) const BOUND_TIMEOUTS: u32 = 10;

/// The longest a renewal statement may take (waiting for its turn, and again for its
/// answer): a third of the shortest TTL involved, at least the statement `timeout` and at
/// most [`BOUND_TIMEOUTS`] of them. Auto-renewal runs a third of the way into a validity,
/// so a renewal answered within this bound still finds a third of its lease left; one
/// that is not fails and is tried again while the validity lasts (a day-long TTL must not
/// wait hours for one answer). Not how long the connection may stay silent: it is cut
/// only once no lease on it can still be renewed ([`crate::session::Session::is_dead`]).
pub(crate) fn bound(timeout: Duration, ttl: Duration) -> Duration {
    (ttl / 3).clamp(timeout, timeout * BOUND_TIMEOUTS)
}

/// [`bound`] for a TTL in milliseconds.
pub(crate) fn bound_ms(timeout: Duration, ttl_ms: i64) -> Duration {
    bound(timeout, Duration::from_millis(u64::try_from(ttl_ms).unwrap_or(0)))
}

/// A queued renewal and where its answer goes.
pub(crate) struct Queued {
    seq: u64,
    pub renewal: Renewal,
    pub reply: oneshot::Sender<Result<bool>>,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Queued>,
    /// The sequence number of the next renewal queued.
    next: u64,
}

/// The renewals waiting for a statement, and the turns to send one.
pub(crate) struct Pending {
    queue: Mutex<Queue>,
    turns: Semaphore,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            queue: Mutex::default(),
            turns: Semaphore::new(IN_FLIGHT),
        }
    }
}

/// The renewals one batch queued: sequence numbers `first..end`.
pub(crate) struct Ticket {
    first: u64,
    end: u64,
    pub answers: Vec<oneshot::Receiver<Result<bool>>>,
}

impl Pending {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The turns to send a renewal statement.
    pub(crate) fn turns(&self) -> &Semaphore {
        &self.turns
    }

    /// Queues a batch, in order.
    pub(crate) fn push(&self, batch: Vec<Renewal>) -> Ticket {
        let mut q = self.queue();
        let first = q.next;
        let mut answers = Vec::with_capacity(batch.len());
        for renewal in batch {
            let (reply, answer) = oneshot::channel();
            let seq = q.next;
            q.next += 1;
            q.items.push_back(Queued { seq, renewal, reply });
            answers.push(answer);
        }
        Ticket {
            first,
            end: q.next,
            answers,
        }
    }

    /// Whether every renewal of `ticket` has left the queue (taken into a statement, or
    /// withdrawn): the queue is in order, so it is when the oldest one left is younger.
    pub(crate) fn gone(&self, ticket: &Ticket) -> bool {
        self.queue().items.front().is_none_or(|f| f.seq >= ticket.end)
    }

    /// Takes the oldest [`MAX_BATCH`] queued renewals, for one statement. A renewal its
    /// lease no longer waits for ([`Renewal::waiting`]: the lease gave up on it, its
    /// validity run out, and was reported lost) leaves the queue unsent, answered with
    /// an error: sent, it could keep the lost lease's row alive on the server for up to
    /// one more TTL, blocking the key for nobody. Empty only when the queue is.
    pub(crate) fn take(&self) -> Vec<Queued> {
        let mut q = self.queue();
        let mut taken = Vec::with_capacity(q.items.len().min(MAX_BATCH));
        while taken.len() < MAX_BATCH {
            let Some(item) = q.items.pop_front() else {
                break;
            };
            if item.renewal.waiting.strong_count() == 0 {
                let _ = item.reply.send(Err(LockError::Unavailable {
                    message: "the lease stopped waiting for this renewal; it was not sent".into(),
                    source: None,
                }));
                continue;
            }
            taken.push(item);
        }
        taken
    }

    /// Takes the renewals of `ticket` still queued out of the queue and answers them with
    /// `why` (nothing was sent for them).
    pub(crate) fn withdraw(&self, ticket: &Ticket, why: &LockError) {
        let mine: Vec<Queued> = {
            let mut q = self.queue();
            let (mine, rest): (VecDeque<Queued>, VecDeque<Queued>) = std::mem::take(&mut q.items)
                .into_iter()
                .partition(|i| (ticket.first..ticket.end).contains(&i.seq));
            q.items = rest;
            mine.into()
        };
        let errors = fencelock_core::batch::spread_error(why, mine.len());
        for (item, e) in mine.into_iter().zip(errors) {
            let _ = item.reply.send(e);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::Arc;

    use super::*;

    /// A renewal of key `k{i}` whose lease waits for it while `waiting` lives.
    fn renewal(i: usize, waiting: &Arc<()>) -> Renewal {
        Renewal {
            session: std::sync::Weak::new(),
            key: format!("k{i}"),
            grant: format!("g{i}"),
            ttl_ms: 6000,
            waiting: Arc::downgrade(waiting),
        }
    }

    #[test]
    fn batches_queued_while_waiting_go_out_merged_and_capped() {
        let pending = Pending::default();
        let waiting = Arc::new(());
        let a = pending.push((0..300).map(|i| renewal(i, &waiting)).collect());
        let b = pending.push((300..700).map(|i| renewal(i, &waiting)).collect());
        let first = pending.take();
        assert_eq!(first.len(), MAX_BATCH, "one statement carries at most MAX_BATCH");
        assert_eq!(first[0].renewal.key, "k0");
        assert!(pending.gone(&a), "all of a went out in the first statement");
        assert!(!pending.gone(&b));
        assert_eq!(pending.take().len(), 200);
        assert!(pending.gone(&b));
        assert!(pending.take().is_empty());
    }

    #[tokio::test]
    async fn withdrawn_renewals_are_answered_and_leave_the_others_queued() {
        let pending = Pending::default();
        let waiting = Arc::new(());
        let a = pending.push((0..3).map(|i| renewal(i, &waiting)).collect());
        let b = pending.push((3..5).map(|i| renewal(i, &waiting)).collect());
        let why = LockError::Unavailable {
            message: "no turn".into(),
            source: None,
        };
        pending.withdraw(&a, &why);
        assert!(pending.gone(&a));
        for answer in a.answers {
            assert!(answer.await.unwrap().unwrap_err().is_temporary());
        }
        let left = pending.take();
        assert_eq!(left.len(), 2);
        assert!(pending.gone(&b));
    }

    /// A renewal whose lease stopped waiting for it while it was queued for a turn (its
    /// validity ran out: the lease is reported lost) is answered and not sent: sent, it
    /// could keep the lost lease's row alive on the server for up to one more TTL,
    /// blocking the key for nobody.
    #[tokio::test]
    async fn renewals_given_up_on_are_answered_and_not_sent() {
        let pending = Pending::default();
        let (kept, given_up) = (Arc::new(()), Arc::new(()));
        let t = pending.push(vec![renewal(0, &kept), renewal(1, &given_up), renewal(2, &kept)]);
        drop(given_up);
        let taken = pending.take();
        let keys: Vec<&str> = taken.iter().map(|q| q.renewal.key.as_str()).collect();
        assert_eq!(keys, ["k0", "k2"], "a renewal its lease gave up on was sent");
        assert!(pending.gone(&t));
        let answer = t.answers.into_iter().nth(1).unwrap();
        assert!(answer.await.unwrap().is_err(), "the given-up renewal was answered Ok");
    }

    #[test]
    fn the_bound_is_a_third_of_the_ttl_within_one_to_ten_timeouts() {
        let timeout = Duration::from_secs(1);
        assert_eq!(bound_ms(timeout, 6000), Duration::from_secs(2));
        assert_eq!(bound_ms(timeout, 900), timeout);
        assert_eq!(bound_ms(timeout, -1), timeout);
        assert_eq!(bound(timeout, Duration::from_secs(86_400)), timeout * 10);
    }
}
