//! Waiting and contention: one `acquire` attempt of [`RedlockLock`] (queued on the key's
//! primary node, woken by the hand-off addressed to it), the primary node a contended key
//! asks first, and the memory of which keys were busy.

use std::time::Duration;

use fencelock_core::waiting::{jitter, Attempt, CancelGuard};
use fencelock_core::{GrantId, LockOptions, Result};
pub(crate) use fencelock_redis::Contention;
use fencelock_redis::{NodeGrant, NodeSubscription, RedisNode, Turn, HANDOFF_CLAIM};
use tokio::time::Instant;

use crate::error::Refusal;
use crate::lock::{grant_on, Counting, RedlockLock, Round};
use crate::quorum::{late, Answer, Bound};

/// One `acquire` queued on the key's primary node: registered on the instance's channel
/// there, its grant id (the same for every turn until a turn whose grant is undone spends
/// it) and its queue entry. Dropped before it
/// was granted (timed out, cancelled, failed), it leaves the queue in the background.
///
/// The primary is chosen when the acquire queues and kept for the wait's turns, their
/// undo and the lease a turn grants: were it chosen again inside a turn, a `run_id` read
/// in between (a node connected late, a restart noticed) could move it, and the wait
/// would claim on one node while its queue entry sits on another, or undo a turn's grant
/// with a release that skips the queue it holds up. Between turns it is ranked again: a
/// turn that only queued (or re-checked) and finds the ranking moved drops this state —
/// leaving the old queue — and the next attempt queues on the new primary.
pub(crate) struct Queued {
    /// The primary's index in the instance's nodes.
    at: usize,
    primary: RedisNode,
    key: String,
    /// How long a give-up sends its `LEAVE`: the longer of the TTL (a lock granted to
    /// this wait lasts that long) and the wait (its entry lapses that long after a turn).
    leave_for: Duration,
    sub: NodeSubscription,
    grant: GrantId,
    entry: String,
    done: bool,
}

impl Drop for Queued {
    fn drop(&mut self) {
        if !self.done {
            self.primary
                .leave_later(&self.key, self.grant.as_str(), &self.entry, self.leave_for);
        }
    }
}

/// The waiting state of one `acquire`.
#[derive(Default)]
pub(crate) struct WaitState {
    /// Its place in the queue: `None` until its first busy round, and again after a turn
    /// that spent its grant id.
    queued: Option<Queued>,
    /// Turns in a row whose grant on the primary missed the quorum (undone): see
    /// [`RedlockLock::attempt`]'s retry after one.
    missed: u32,
    /// When this wait last made a re-check's plain round (see [`RedlockLock::attempt`]).
    last_round: Option<Instant>,
    /// When the lock on the primary (by index) ends, on the primary's clock (its `TIME`
    /// plus the lock's `PTTL`, ms), as this wait's latest turn saw it: a re-check that
    /// finds it moved knows the lock was granted again or extended since — the queue is
    /// moving, or a holder renews — and makes no plain round ([`RedlockLock::attempt`]).
    seen_end: Option<(usize, u64)>,
    /// Why the latest round of this wait that every node was asked in (a plain round,
    /// or a turn's) was refused: a wait that runs out refused by nodes inside their
    /// restart delay says so rather than time out as if the key were held
    /// ([`Refusal::restart_error`]).
    pub(crate) refusal: Refusals,
}

/// The latest refusal of a wait, and whether the wait said it waits on the restart delay.
#[derive(Default)]
pub(crate) struct Refusals {
    pub(crate) latest: Option<Refusal>,
    told_restart: bool,
}

impl Refusals {
    /// Keeps `refusal` as the wait's latest. The first one of the wait that the restart
    /// delay caused is logged at info level (`-v` on the CLI): a wait on a freshly started
    /// cluster otherwise says nothing until it runs out (a new-user trial waited out a 2 s
    /// `restart_delay` with no word, even with `-v`).
    fn keep(&mut self, refusal: Refusal, key: &str, restart_delay: Duration) {
        if !self.told_restart {
            if let Some(e) = refusal.restart_error(key, restart_delay) {
                tracing::info!(%key, "waiting: {e}");
                self.told_restart = true;
            }
        }
        self.latest = Some(refusal);
    }
}

/// The waiting state of one `acquire`, locked by each attempt.
pub(crate) type Waiting = tokio::sync::Mutex<WaitState>;

/// Slack after a reservation's claim window before the next waiter takes over.
const NEXT_MARGIN: Duration = Duration::from_millis(5);

/// How often a handed turn asks again the secondaries that refused its claim while the
/// previous holder's release was still on its way (see `ask_refusals_again`).
const REFUSAL_RETRIES: u32 = 4;

impl RedlockLock {
    /// One attempt of `acquire`. The first is a plain round of the algorithm; a busy answer
    /// queues this acquire on the key's primary node (the FIFO queue of `fencelock-redis`)
    /// and later attempts are its turns: when a release hands the primary's lock to it
    /// (`g`), it claims it there and asks the other nodes in the same round.
    pub(crate) async fn attempt(&self, key: &str, opts: &LockOptions, waiting: &Waiting) -> Result<Attempt> {
        let mut guard = waiting.lock().await;
        let st = &mut *guard;
        let state = &mut st.queued;
        if state.as_ref().is_some_and(|q| q.done) {
            // This wait's grant was handed out and came back with no validity left: it is
            // being released in the background under its grant id, so that id is spent
            // (see `spent` below) — wait again as a new waiter.
            *state = None;
        }
        let per_node = self.inner.cfg.per_node_timeout;
        let first_turn = state.is_none();
        // Whether this attempt made a plain round already (every node asked).
        let mut rounded = false;
        // A place in flight before anything is sent (`admission.rs`); a turn that claims
        // a lock handed to us takes one from its own pool, below.
        let mut permit = None;
        let q = match &mut *state {
            Some(q) => q,
            slot @ None => {
                permit = Some(self.inner.admission.round().await);
                let contended = self.inner.busy.recently_busy(key);
                let mut shortest = None;
                if !contended {
                    match self.round(key, opts).await? {
                        Round::Granted(lease) => return Ok(Attempt::Acquired(lease)),
                        Round::Busy(refusal) => {
                            shortest = refusal.shortest();
                            st.refusal.keep(refusal, key, self.inner.cfg.restart_delay);
                            rounded = true;
                        }
                    }
                }
                // Found busy (now, or by this instance within the last second): queue on
                // the primary at once — its turn grants a free key too, and asks the other
                // nodes only then — rather than a round whose answer would be "busy".
                self.inner.busy.found_busy(key);
                let at = primary(key, &self.inner.nodes);
                let primary = self.inner.nodes[at].clone();
                let grant = GrantId::random();
                match tokio::time::timeout(per_node, primary.wait_as(grant.as_str())).await {
                    Ok(Ok(sub)) => slot.insert(Queued {
                        at,
                        primary,
                        key: key.to_owned(),
                        leave_for: opts.ttl().max(opts.wait()),
                        sub,
                        grant,
                        entry: String::new(),
                        done: false,
                    }),
                    // No queue without the primary: a plain round (the other nodes can
                    // still make a quorum), else the algorithm's random delay.
                    _ => {
                        if contended {
                            match self.round(key, opts).await? {
                                Round::Granted(lease) => return Ok(Attempt::Acquired(lease)),
                                Round::Busy(refusal) => st.refusal.keep(refusal, key, self.inner.cfg.restart_delay),
                            }
                        }
                        return Ok(Attempt::Busy {
                            wake: None,
                            retry_at: Some(Instant::now() + self.random_delay(shortest)),
                        });
                    }
                }
            }
        };
        let _ = tokio::time::timeout(per_node, q.sub.ensure()).await;
        // Registered before the messages are read: one arriving in between still wakes us.
        let wake = q.sub.notified();
        let (turn, next) = q.sub.take_messages();
        if next && !turn && !first_turn {
            return Ok(Attempt::Busy {
                wake: Some(wake),
                retry_at: Some(Instant::now() + HANDOFF_CLAIM + NEXT_MARGIN),
            });
        }
        if permit.is_none() {
            permit = Some(if turn {
                self.inner.admission.claim().await
            } else {
                self.inner.admission.round().await
            });
        }
        let _permit = permit;
        let cfg = &self.inner.cfg;
        // The primary this wait queued on (see `Queued`).
        let p = q.at;
        // Armed before the first request: dropped anywhere in the round, the grant is
        // released on every node in the background (the queue's leave frees the primary
        // too; both are idempotent).
        let undo = {
            let plan = crate::grant::ReleasePlan {
                inner: std::sync::Arc::clone(&self.inner),
                key: key.to_owned(),
                grant: q.grant.to_string(),
                primary: p,
                raise_to: None,
                under: Vec::new(),
            };
            let ttl = opts.ttl();
            CancelGuard::new(move || plan.everywhere_later(Instant::now() + ttl))
        };
        let others: Vec<RedisNode> = (self.inner.nodes.iter().enumerate())
            .filter(|(i, _)| *i != p)
            .map(|(_, n)| n.clone())
            .collect();
        // The primary's vote counts with quorum − 1 of the others'; a late answer still
        // counts within the late bound (`quorum.rs`).
        let rest_bound = Bound::quorum(per_node, cfg.quorum().saturating_sub(1));
        // Read before the requests: each grant keeps the run_id its node had then.
        let mut under: Vec<Option<String>> = self.inner.nodes.iter().map(RedisNode::run_id_for_grant).collect();
        let start = Instant::now();
        let asked = tokio::time::timeout(
            late(per_node),
            q.primary.wait_turn(
                key,
                q.grant.as_str(),
                opts.ttl(),
                &q.entry,
                opts.wait(),
                cfg.restart_delay,
            ),
        );
        // The secondaries' round of this turn (see below for when).
        let ask_others = || {
            grant_on(
                &others,
                rest_bound,
                Counting::Answers,
                key,
                &q.grant,
                opts.ttl(),
                cfg.restart_delay,
            )
        };
        // Handed the lock (`g`): the previous holder's release, sent to every node at
        // once, has usually freed the others too — ask them in the same round trip as the
        // claim (a secondary the release has not reached yet answers busy: the grant then
        // holds on the quorum without it and takes that node once the release lands,
        // `heal.rs`).
        // Otherwise (queueing, a fallback re-check) only the primary is asked.
        let (first, early) = if turn {
            let rest = ask_others();
            let (first, rest) = tokio::join!(asked, rest);
            (first, Some(rest))
        } else {
            (asked.await, None)
        };
        // Set when this turn's grant was (or may have been) made on some node and is being
        // undone: the grant id is then never asked for again (see below); how long until
        // the wait queues again under a new one.
        let mut spent: Option<Duration> = None;
        let retry = match first {
            Ok(Ok(Turn::Granted(token))) => {
                // The primary's vote, counted from `start`, with the others'.
                let mut answers = match early {
                    Some(rest) => rest,
                    None => ask_others().await,
                };
                answers.insert(p, Ok(NodeGrant::Granted(token)));
                self.ask_refusals_again(key, opts, &q.grant, &mut answers, &mut under, start)
                    .await;
                let round = self
                    .conclude(key, opts, q.grant.clone(), p, &answers, under, start)
                    .await;
                undo.disarm();
                match round {
                    Ok(Round::Granted(lease)) => {
                        q.done = true;
                        return Ok(Attempt::Acquired(lease));
                    }
                    // Undone everywhere (the primary handed the lock on to the next
                    // waiter). The first miss in a row — usually a secondary the previous
                    // holder's release had not reached yet, right after a hand-off or a
                    // release that left the lock free —: queue again at once. No random
                    // delay — only this waiter had the turn, so there is no herd to spread
                    // out, and a delay here was the longest wait of the quick bench
                    // (~190 ms; a trial of one after every non-handed miss made Jain 0.88).
                    // Misses in a row — a primary that does not hold the holder's grant
                    // (restarted without persistence, or a node this waiter moved to)
                    // grants every turn a free lock the others refuse, and the waiters
                    // pass the undone lock round — wait the algorithm's random delay: at
                    // once, it was a loop of round trips for the holder's whole TTL
                    // (review: 20,566 commands in a 2 s wait).
                    Ok(Round::Busy(refusal)) => {
                        st.missed += 1;
                        spent = Some(if st.missed == 1 {
                            Duration::ZERO
                        } else {
                            self.random_delay(refusal.shortest())
                        });
                        st.refusal.keep(refusal, key, self.inner.cfg.restart_delay);
                        Duration::ZERO
                    }
                    // Fewer than a quorum answered: undone too, and the undo of the silent
                    // nodes goes on in the background — spent like a busy round's id.
                    Err(e) => {
                        *state = None;
                        return Err(e);
                    }
                }
            }
            Ok(Ok(Turn::Queued { pttl, entry, server_ms })) => {
                q.entry = entry;
                st.missed = 0;
                let end = server_ms.zip(pttl).map(|(now, left)| (q.at, now.saturating_add(left)));
                let moved = match (st.seen_end, end) {
                    (Some((was_at, was)), Some((at, now))) => was_at == at && now.abs_diff(was) > END_SLACK_MS,
                    _ => false,
                };
                st.seen_end = end;
                // The primary refused inside its restart delay (no server time: the
                // script stopped at the delay's check) and queued nothing.
                let primary_restarting = server_ms.is_none();
                let granted_elsewhere = early.as_ref().is_some_and(|rest| {
                    rest.iter()
                        .any(|a| !matches!(a, Ok(NodeGrant::Busy(_) | NodeGrant::Restarting(_))))
                });
                if granted_elsewhere {
                    drop(undo); // the turn was lost: give back what the others granted
                    spent = Some(Duration::ZERO);
                } else {
                    undo.disarm(); // granted nowhere
                }
                // The ranking moved since this wait queued — a node's `run_id`, unknown
                // then (paused or slow at connect), read since; a restart noticed: the
                // other clients queue on the new primary, where this queue would never be
                // handed the lock (a waiter starved behind later arrivals, seen in a
                // trial). Leave this queue and queue there, at the back.
                if spent.is_none() {
                    // A node whose `run_id` is unknown is asked for it now (when its
                    // back-off allows), so that this ranking already uses it.
                    // One at a time, all within one `per_node_timeout` (rarely more
                    // than one node is unknown).
                    let settle = async {
                        for node in self.inner.nodes.iter().filter(|n| n.identity().is_none()) {
                            node.settle_identity().await;
                        }
                    };
                    let _ = tokio::time::timeout(per_node, settle).await;
                    if primary(key, &self.inner.nodes) != q.at {
                        tracing::debug!(%key, "the key's primary node moved; queueing there");
                        *state = None;
                        return Ok(Attempt::again_now());
                    }
                }
                // A re-check (no hand-off came) that the primary answered "busy": ask
                // every node, as a plain round. The primary's word alone is not a holder:
                // a grant request buffered on a paused primary lands on resume after its
                // owner released and left — a key held by nobody there for a whole TTL,
                // no release to hand it off — and queued waiters that asked only the
                // primary ran out their waits while a quorum of the other nodes was free
                // (a trial: every queued waiter exit 75, clients that did not queue took
                // the lock). Against a holder with a quorum the round is refused and
                // undone: N requests and their undo per re-check, every few seconds.
                //
                // Not while the primary's lock may be a hand-off's reservation (a PTTL
                // within the claim window): that is the queue head's turn — a holder gone
                // without a release, freed by this very re-check's hand-off — and a plain
                // round (`SET NX`, blind to the queue) took the free secondaries before
                // the head's claim reached them: the waiter behind the head overtook it
                // in 8 of 8 tries (review, test
                // `a_lock_freed_without_a_release_goes_to_the_queue_head_not_to_a_re_checking_waiter`).
                // A stray grant's PTTL is a lock's TTL; one within the window ends soon,
                // and the re-check then comes at its end anyway.
                let reserved = pttl.is_some_and(|ms| ms <= HANDOFF_CLAIM.as_millis() as u64);
                // At most once per stretched re-check period (2 s with the default
                // `retry_delay`): with a peer layout the re-check is every `retry_delay`,
                // and a round at each multiplied the waiters' commands by 5 (review: 167
                // against 33 per waiter per second, 16 waiters on a held key, test
                // `queued_waiters_under_a_peer_layout_do_not_multiply_the_commands_while_a_lock_is_held`).
                let period = cfg.retry_delay.saturating_mul(QUEUED_POLL_FACTOR) / 2;
                let due = st.last_round.is_none_or(|at| at.elapsed() >= period);
                // A first turn follows this attempt's plain round — unless the key was
                // found busy recently and the wait queued at once: then a primary inside
                // its restart delay, which queued nothing, is the only answer, and the
                // round asks the other nodes (which may grant, or say why not).
                let asked_all = !first_turn || (primary_restarting && !rounded);
                // Not when the primary's lock changed since this wait's previous turn
                // (`moved`): granted again (a hand-off, the queue moving) or extended (a
                // holder renewing) — not the stuck grant of nobody the round is for, which
                // never changes, and a round against a live holder is refused and undone.
                // Issue 14: with many waiters each re-checked this way about every 2 s
                // while the queue moved, a plain round on every node and its undo (about
                // 40 commands with 5 nodes) per re-check — commands per hand-off grew
                // with waiters × wait (4 → 32 waiters: 48 → 53–56 per grant, MONITOR:
                // the plain rounds of queued waiters). A stuck grant that landed after
                // the wait's previous turn is seen unchanged at the next re-check: found
                // one period later at most.
                if spent.is_none() && !turn && asked_all && !reserved && due && !moved {
                    st.last_round = Some(Instant::now());
                    match self.round(key, opts).await? {
                        Round::Granted(lease) => {
                            *state = None; // leaves the queue (the drop of `Queued`)
                            return Ok(Attempt::Acquired(lease));
                        }
                        Round::Busy(refusal) => st.refusal.keep(refusal, key, self.inner.cfg.restart_delay),
                    }
                }
                // A peer library's release sends no message: with a peer layout the
                // re-check is the hand-off path, so it is not stretched.
                let layout = q.primary.config().layout;
                let factor = if layout.is_peer() { 1 } else { QUEUED_POLL_FACTOR };
                let fallback = jitter(cfg.retry_delay * factor);
                pttl.map_or(fallback, |ms| fallback.min(Duration::from_millis(ms + 1)))
            }
            // The primary is silent or failing: a plain round, so the other nodes can
            // still grant; the waiter leaves the queue and queues afresh next time.
            _ => {
                drop(undo); // the primary's answer is unknown: release our grant everywhere
                *state = None; // spent (see below): leave the queue, queue afresh next turn
                return match self.round(key, opts).await? {
                    Round::Granted(lease) => Ok(Attempt::Acquired(lease)),
                    Round::Busy(refusal) => {
                        let retry_at = Instant::now() + self.random_delay(refusal.shortest());
                        st.refusal.keep(refusal, key, self.inner.cfg.restart_delay);
                        Ok(Attempt::Busy {
                            wake: Some(wake),
                            retry_at: Some(retry_at),
                        })
                    }
                };
            }
        };
        if let Some(after) = spent {
            // Issue 14: the undo of a grant goes on in the background (a silent node's
            // release, a lost answer's) for up to a TTL; were the same grant id asked for
            // again, a late undo could delete the *next* turn's grant on a node — a holder
            // losing its lock unheard (seen as releases answering "not held" with many
            // keys). So the waiter leaves the queue under this id (the drop of `Queued`)
            // and queues again under a new one (at once, or after the delay above): it
            // had lost its place anyway.
            *state = None;
            return Ok(Attempt::Busy {
                wake: None,
                retry_at: Some(Instant::now() + after),
            });
        }
        Ok(Attempt::Busy {
            wake: Some(wake),
            retry_at: Some(Instant::now() + retry),
        })
    }

    /// A handed turn holds the primary's claim but missed the quorum only because some
    /// secondaries still held another grant — nearly always the previous holder's, whose
    /// release, sent to every node at once, had not reached them yet when the claim did
    /// (about 1 hand-off in 10 under load). With every node answering, the grant still
    /// has its quorum (and `heal.rs` takes those nodes later); with a node silent or
    /// paused it has not, and undoing the round hands the primary's lock to the next
    /// waiter and sends this one to the back of the queue: a trial saw waiters that had
    /// queued overtaken by later ones for as long as a node stayed paused. So those nodes
    /// are asked again, [`REFUSAL_RETRIES`] times at most, pauses doubling from 1 ms, each
    /// sent within `per_node_timeout` of the round's answers and bounded as the round's
    /// own asks are (a late answer counts while fewer than needed came, within the
    /// validity), while the quorum can still be reached and the validity stays positive.
    /// A re-ask that gets no answer leaves the node's earlier "busy" in place. Safe under
    /// the algorithm: a later yes sets the node's TTL from a later instant than `start`,
    /// from which the validity is counted, so every copy outlives it; the primary's claim
    /// keeps others from a quorum meanwhile. A secondary genuinely held by a competitor
    /// (its plain round) is asked the same way: if that round is undone, the head wins
    /// once its copy goes; if the competitor holds a quorum, the re-asks fail and cost up
    /// to 4 requests per refusing node and the primary's claim for up to the late bound
    /// before the undo.
    async fn ask_refusals_again(
        &self,
        key: &str,
        opts: &LockOptions,
        grant: &GrantId,
        answers: &mut [Answer<NodeGrant>],
        under: &mut [Option<String>],
        start: Instant,
    ) {
        let cfg = &self.inner.cfg;
        let per_node = cfg.per_node_timeout;
        let mut pause = Duration::from_millis(1);
        // From now, not from `start`: with a node silent the round itself waited out
        // `per_node_timeout` for it before concluding.
        let until = Instant::now() + per_node;
        let drift = cfg.drift(opts.ttl());
        for _ in 0..REFUSAL_RETRIES {
            let yes = answers
                .iter()
                .filter(|a| matches!(a, Ok(NodeGrant::Granted(_))))
                .count();
            // A node inside its restart delay is asked again only when the delay it
            // told ends within the window (`per_node`): before, its answer cannot change.
            let refused: Vec<usize> = (answers.iter().enumerate())
                .filter(|(_, a)| match a {
                    Ok(NodeGrant::Busy(_)) => true,
                    Ok(NodeGrant::Restarting(ms)) => Duration::from_millis(*ms) < per_node,
                    _ => false,
                })
                .map(|(i, _)| i)
                .collect();
            let worth_it = yes < cfg.quorum() && yes + refused.len() >= cfg.quorum();
            let now = Instant::now();
            if !worth_it || now + pause >= until || start.elapsed() + pause + per_node + drift >= opts.ttl() {
                return;
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
            let nodes: Vec<RedisNode> = refused.iter().map(|&i| self.inner.nodes[i].clone()).collect();
            let asked_under: Vec<Option<String>> = nodes.iter().map(RedisNode::run_id_for_grant).collect();
            // Bounded as the round's own asks are — late answers count while fewer than
            // needed came (`quorum.rs`), as long as the validity lasts — not by what is
            // left of the window: the first ask's answer counted however late it came,
            // and a re-ask cut off sooner turned a yes into silence (review: a 120 ms
            // answer against a 49 ms bound).
            let validity_left = opts.ttl().saturating_sub(start.elapsed() + drift);
            let bound = Bound {
                per_node,
                quorum: cfg.quorum() - yes,
                late: late(per_node).min(validity_left).max(per_node),
            };
            let again = grant_on(
                &nodes,
                bound,
                Counting::Answers,
                key,
                grant,
                opts.ttl(),
                cfg.restart_delay,
            )
            .await;
            for ((i, answer), asked_under) in refused.into_iter().zip(again).zip(asked_under) {
                // A re-ask with no answer leaves the node's "busy" as it was: the node did
                // answer the round, and an unknown re-ask may have landed unheard — the
                // undo, or the lease's release, goes to every node anyway. Counted as
                // silent, it made a round that every node but a paused one answered a
                // "no quorum" (`Unavailable`, a back-off, the waiter's place lost).
                if answer.is_ok() {
                    answers[i] = answer;
                    under[i] = asked_under;
                }
            }
        }
    }

    /// The algorithm's random delay, so contenders that split the vote do not collide
    /// again; never longer than the shortest holder TTL seen.
    fn random_delay(&self, shortest: Option<Duration>) -> Duration {
        let retry = self.inner.cfg.retry_delay;
        jitter(shortest.map_or(retry, |s| s.min(retry)).max(Duration::from_millis(1)))
    }
}

/// How far apart (ms) two readings of the primary's lock's end (`TIME` + `PTTL`, in one
/// script) may be and still be the same grant: `PTTL` counts from the script's start,
/// `TIME` reads the clock when called, each rounded to the ms.
const END_SLACK_MS: u64 = 5;

/// How much later than `retry_delay` a queued waiter re-checks without a message (the
/// hand-off is addressed to it; the poll only covers a lost message).
const QUEUED_POLL_FACTOR: u32 = 20;

/// The node a contended key queues on (its primary), as an index into `nodes`: the node
/// whose server ranks highest for the key (rendezvous hashing: FNV-1a of the key and the
/// server's identity), so keys spread over the nodes and every client of the same
/// servers picks the same node for a key, in whatever order its URL lists them. Only the
/// primary can hold a queue for the key; releases elsewhere skip the queue
/// ([`RedisNode::release_unqueued`]), so two clients that disagree on the primary lose
/// the hand-off: the holder's release pushes nobody where the waiters queued, and they
/// get the lock at their fallback re-check, seconds later.
///
/// The identity is the server's `run_id` ([`RedisNode::identity`]), not the `host:port`
/// the client spells: clients that reach the same servers under other names —
/// `localhost` against `127.0.0.1`, a DNS name against an IP, through a TCP proxy or a
/// NAT — agree too. A node whose `run_id` this client does not know (not connected yet,
/// `INFO` refused) is ranked by its address (`server()`) instead, node by node: only the
/// keys that this node ranks first for, under either of its two names, can then be placed
/// otherwise than by clients that know it — about 2/N of the keys, where ranking every
/// node by address whenever one `run_id` is missing would move about (N−1)/N of them.
/// Ties (two 64-bit hashes equal) go to the greater identity, then — only for one
/// identity listed twice, which `connect` refuses — to the earlier node: never to a
/// position in the URL.
///
/// A restarted server has a new `run_id`, so the primary of some keys moves after a
/// restart. A client reads it again after a request found the connection dropped (as the
/// first request after a restart does) and whenever it ranks the nodes with one unknown
/// ([`RedisNode::identity`]), so clients connected before and after a restart, or while a
/// node was silent, agree again; until then those keys may lose their hand-off, nothing
/// more: the queue is not a safety device — a grant is a quorum of nodes whatever node it
/// queued on. A wait keeps its primary for its turns and moves only between them
/// (`Queued`); a lease hands off on the primary its grant was made with and on the one
/// ranked at its release (`ReleasePlan::send`).
pub(crate) fn primary(key: &str, nodes: &[RedisNode]) -> usize {
    let run_ids: Vec<Option<String>> = nodes.iter().map(RedisNode::identity).collect();
    for (node, id) in nodes.iter().zip(&run_ids) {
        if id.is_none() {
            node.want_identity(); // read in the background, so later rankings use it
        }
    }
    let servers: Vec<&str> = nodes.iter().map(RedisNode::server).collect();
    rank(key, &run_ids, &servers)
}

/// [`primary`] over the nodes' `run_id`s and addresses (by node).
fn rank(key: &str, run_ids: &[Option<String>], servers: &[&str]) -> usize {
    let fnv = |h: u64, bytes: &[u8]| {
        bytes
            .iter()
            .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
    };
    let identities: Vec<&str> = run_ids
        .iter()
        .zip(servers)
        .map(|(id, server)| id.as_deref().filter(|id| !id.is_empty()).unwrap_or(server))
        .collect();
    let of_key = fnv(fnv(0xcbf2_9ce4_8422_2325, key.as_bytes()), b"\0");
    (0..identities.len())
        .max_by_key(|&i| {
            let id = identities[i];
            (fnv(of_key, id.as_bytes()), id, std::cmp::Reverse(i))
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use fencelock_redis::RedisConfig;

    fn nodes(ports: &[u16]) -> Vec<RedisNode> {
        ports
            .iter()
            .map(|p| RedisNode::lazy(RedisConfig::from_url(&format!("redis://127.0.0.1:{p}")).unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn the_primary_does_not_depend_on_the_order_of_the_nodes() {
        let a = nodes(&[7001, 7002, 7003, 7004, 7005]);
        let b = nodes(&[7004, 7002, 7005, 7001, 7003]);
        let mut used = std::collections::HashSet::new();
        for i in 0..200 {
            let key = format!("key-{i}");
            let (pa, pb) = (primary(&key, &a), primary(&key, &b));
            assert_eq!(a[pa].server(), b[pb].server(), "{key}");
            used.insert(pa);
        }
        assert_eq!(used.len(), 5, "keys spread over every node");
    }

    fn ids(ids: &[&str]) -> Vec<Option<String>> {
        ids.iter().map(|id| Some((*id).to_owned())).collect()
    }

    /// Two clients that reach the same servers under other names (one directly, one through
    /// proxies or by another host name), in another order: the same primary for every key,
    /// chosen by the servers' `run_id`s — their addresses have no say.
    #[test]
    fn clients_that_spell_the_servers_otherwise_pick_the_same_primary() {
        let direct = [
            "127.0.0.1:7001",
            "127.0.0.1:7002",
            "127.0.0.1:7003",
            "127.0.0.1:7004",
            "127.0.0.1:7005",
        ];
        let run_ids = ids(&["r1", "r2", "r3", "r4", "r5"]);
        // The same servers, other names and order: localhost:900N names run_ids[N - 1].
        let order = [3, 0, 4, 2, 1];
        let proxied: Vec<String> = order.iter().map(|&n| format!("localhost:{}", 9001 + n)).collect();
        let proxied: Vec<&str> = proxied.iter().map(String::as_str).collect();
        let proxied_ids: Vec<Option<String>> = order.iter().map(|&n| run_ids[n].clone()).collect();
        let (mut used, mut moved) = (std::collections::HashSet::new(), 0);
        for i in 0..200 {
            let key = format!("key-{i}");
            let (a, b) = (rank(&key, &run_ids, &direct), rank(&key, &proxied_ids, &proxied));
            assert_eq!(run_ids[a], proxied_ids[b], "{key}");
            used.insert(a);
            // Ranked by address, the two clients would often disagree.
            let by_address = rank(&key, &[None, None, None, None, None], &direct);
            if by_address != a {
                moved += 1;
            }
        }
        assert_eq!(used.len(), 5, "keys spread over every node");
        assert!(moved > 0, "the run_ids, not the addresses, decide");
    }

    /// A node whose `run_id` is unknown (not connected yet, `INFO` refused) is ranked by
    /// its address; the others keep their identities, so a key moves only where that node
    /// ranks first under one of its two names.
    #[test]
    fn a_missing_run_id_ranks_that_node_by_address() {
        let servers = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"];
        let known = ids(&["r1", "r2", "r3"]);
        let none = [None, None, None];
        for (missing, lacked) in [
            (vec![None, Some("r2".to_owned()), Some("r3".to_owned())], 0),
            (
                vec![Some("r1".to_owned()), Some(String::new()), Some("r3".to_owned())],
                1,
            ),
        ] {
            let mut differ = 0;
            for i in 0..300 {
                let key = format!("key-{i}");
                let (with_all, without) = (rank(&key, &known, &servers), rank(&key, &missing, &servers));
                if with_all != without {
                    // Only where the lacked node ranks first under one of its two names.
                    assert!(with_all == lacked || without == lacked, "{key}");
                    differ += 1;
                }
            }
            assert!(differ > 0, "the lacked node's name decides some keys");
        }
        // Nodes never connected know no run_id: `primary` ranks them by address.
        let nodes = nodes(&[7001, 7002, 7003]);
        let servers: Vec<&str> = nodes.iter().map(RedisNode::server).collect();
        for i in 0..100 {
            let key = format!("key-{i}");
            assert_eq!(primary(&key, &nodes), rank(&key, &none, &servers), "{key}");
        }
    }
}
