//! Push-based waiting without a herd, and hand-offs without a statement of the waiter's
//! own: a waiter that found the key busy takes a ticket in the key's queue (a row of the
//! `waiters` table, numbered by a sequence, carrying the grant id it will hold) in the
//! same statement as its refused attempt. A release notifies the channel naming the
//! oldest live ticket, `TICKET:KEY`: only the waiter holding that ticket wakes — in
//! whichever process it is — and acquires. With `handoff=true` the release of a lease
//! granted after waiting hands the key to that ticket in its own statement and notifies
//! `TICKET/TOKEN/GRANT:KEY`: the waiter whose ticket, grant id and key these are is
//! already granted (see `sql::release_handing`). The others sleep on until their turn (or
//! a re-check).
//!
//! A notification proves nothing by itself: `NOTIFY` needs no privilege, and a ticket
//! number can be issued twice (its insert and the sequence's advance commit lazily, so a
//! server crash can forget both). So a hand-off is taken only when it names the wait's
//! grant id — 128 random bits, which only a role that can read the `waiters` table can
//! know — as well as its ticket and key; anything else only wakes the waiter, which then
//! looks with a statement of its own (a wake-up costs one refused look, never a grant).
//! The statements that renew or remove a ticket match its number and grant id alike.
//!
//! The queue also orders grants: the acquire statement refuses a free key to a client
//! without a ticket, or with a younger one, while an older ticket of the key lives — so a
//! holder that releases and asks again goes to the back of the line, and hand-offs go
//! round in FIFO order. A ticket lives as long as its instance keeps it alive (one
//! statement per `poll` renews all of an instance's tickets for twice the poll plus a
//! second — sent without waiting for a turn behind the instance's other statements, which
//! under load would outlast the tickets — and each refused attempt renews its own), so a
//! waiter that crashed blocks the queue for at most that long, and a key handed to it
//! expires with its ticket. Each durable renewal found alive (the keeper's, or the ticket's
//! creation; never a refused attempt's, which commits lazily and a crash can lose) moves
//! the ticket's known end on our clock ([`Confirmed`]); a grant handed to the ticket is valid until then, and the
//! lease's first renewal lengthens it to its TTL.
//!
//! Notifications are not persistent: one sent while our listening connection was being
//! replaced is lost (its end wakes every waiter anyway, and their next attempt — which
//! also finds a key already handed to its grant id — makes another connection listen
//! first). A listening connection that falls silent but is kept for its leases holds the
//! notifications on the server until its stuck statement ends: another connection listens
//! in its place at once and every waiter looks once (`PgNode::ensure_listener`). A refused waiter therefore looks again when the ticket ahead of it expires,
//! or — first in line — when the holder's lease does, at the latest every four polls
//! (see `lock::retry_in`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fencelock_core::waiting::WakeFuture;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::node::PgNode;
use crate::task_slot::TaskSlot;

/// A lower bound, on our monotonic clock, of the end of a ticket's life on the server:
/// a statement sent at `sent` found the ticket and set it to live `life` from the
/// server's reading of its own start, which is later. A grant handed to the ticket lives
/// on the server until at least then. Only a write a crash cannot undo counts: the
/// keeper's durable renewal, or the ticket's creation (undone, it leaves no ticket to
/// hand a grant to) — never a look's lazily committed renewal (see `sql::LAZY_COMMIT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Confirmed {
    pub sent: Instant,
    pub life: Duration,
}

struct Entry {
    /// The grant id the ticket carries, and its key: a hand-off must name both.
    grant: String,
    key: String,
    notify: Arc<Notify>,
    /// The token of a grant a release handed to this ticket (from its notification).
    handed: Option<u64>,
    confirmed: Confirmed,
}

/// The tickets of the waiters of this backend instance.
#[derive(Default)]
pub(crate) struct Waiters {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// By ticket number; more than one entry only when a number was issued twice (see
    /// the module's documentation), each with its own grant id.
    tickets: HashMap<i64, Vec<Entry>>,
    /// The task that keeps the tickets alive (see [`PgNode::register_ticket`]).
    keeper: TaskSlot,
}

impl State {
    fn entry(&mut self, ticket: i64, grant: &str) -> Option<&mut Entry> {
        self.tickets.get_mut(&ticket)?.iter_mut().find(|e| e.grant == grant)
    }
}

impl Waiters {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `ticket` of `key`, carrying `grant`, known alive until `confirmed`; also
    /// the number of the keeper task to start, when none runs (give it to
    /// [`keeper_ended`](Self::keeper_ended)).
    pub(crate) fn register(
        &self,
        ticket: i64,
        key: &str,
        grant: &str,
        confirmed: Confirmed,
    ) -> (Arc<Notify>, Option<u64>) {
        let mut state = self.state();
        let entries = state.tickets.entry(ticket).or_default();
        let notify = match entries.iter().find(|e| e.grant == grant) {
            Some(e) => Arc::clone(&e.notify),
            None => {
                let notify = Arc::new(Notify::new());
                entries.push(Entry {
                    grant: grant.to_owned(),
                    key: key.to_owned(),
                    notify: Arc::clone(&notify),
                    handed: None,
                    confirmed,
                });
                notify
            }
        };
        (notify, state.keeper.start())
    }

    /// Whether no waiter of this instance waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.state().tickets.is_empty()
    }

    pub(crate) fn forget(&self, ticket: i64, grant: &str) {
        let mut state = self.state();
        if let Some(entries) = state.tickets.get_mut(&ticket) {
            entries.retain(|e| e.grant != grant);
            if entries.is_empty() {
                state.tickets.remove(&ticket);
            }
        }
    }

    /// A statement sent at `confirmed.sent` found `ticket` carrying `grant` alive and
    /// renewed it: its end is known to be no earlier than `confirmed.sent +
    /// confirmed.life` (the newest such statement counts).
    pub(crate) fn confirm(&self, ticket: i64, grant: &str, confirmed: Confirmed) {
        if let Some(e) = self.state().entry(ticket, grant) {
            if confirmed.sent > e.confirmed.sent {
                e.confirmed = confirmed;
            }
        }
    }

    /// The token of a grant handed to `ticket` carrying `grant`, and the ticket's known
    /// end then; taken (a second call answers `None`).
    pub(crate) fn take_handed(&self, ticket: i64, grant: &str) -> Option<(u64, Confirmed)> {
        let mut state = self.state();
        let e = state.entry(ticket, grant)?;
        e.handed.take().map(|token| (token, e.confirmed))
    }

    /// The tickets keeper `task` keeps alive now, each with the grant id it carries;
    /// `None` (and the keeper is marked stopped, in the same critical section as
    /// [`register`](Self::register) checks it) when there are none left.
    pub(crate) fn to_keep(&self, task: u64) -> Option<Vec<(i64, String)>> {
        let mut state = self.state();
        if state.tickets.is_empty() {
            state.keeper.end(task);
            return None;
        }
        let keep = state
            .tickets
            .iter()
            .flat_map(|(ticket, entries)| entries.iter().map(|e| (*ticket, e.grant.clone())))
            .collect();
        Some(keep)
    }

    /// Keeper `task` ended, or could not be started (no runtime): one is started by the
    /// next registration.
    pub(crate) fn keeper_ended(&self, task: u64) {
        self.state().keeper.end(task);
    }

    /// A release notification: `TICKET/TOKEN/GRANT:KEY` (the key was handed to that
    /// ticket's grant, with that token) or `TICKET:KEY` (the key was freed: that waiter
    /// looks again). Wakes the waiters of ours that hold that ticket of that key; a
    /// hand-off is recorded only for the one whose grant id it names. Anything else —
    /// another grant id (the number was issued twice, or the notification is forged),
    /// an old client's `TICKET/TOKEN:KEY` without one — only wakes them: their look sees
    /// what the server holds for them (a key handed to their grant id, too).
    pub(crate) fn dispatch(&self, payload: &str) {
        let Some(notice) = Notice::parse(payload) else {
            return;
        };
        let mut state = self.state();
        let Some(entries) = state.tickets.get_mut(&notice.ticket) else {
            return;
        };
        for e in entries.iter_mut().filter(|e| e.key == notice.key) {
            if let Some((token, grant)) = notice.handed {
                if e.grant == grant {
                    e.handed = Some(token);
                }
            }
            e.notify.notify_one();
        }
    }

    /// The listening connection ended: every waiter tries again (and listens again).
    pub(crate) fn wake_all(&self) {
        for e in self.state().tickets.values().flatten() {
            e.notify.notify_one();
        }
    }
}

/// A release notification's payload, read (see [`Waiters::dispatch`]).
#[derive(Debug, PartialEq, Eq)]
struct Notice<'a> {
    ticket: i64,
    /// The token and grant id of a hand-off.
    handed: Option<(u64, &'a str)>,
    key: &'a str,
}

impl<'a> Notice<'a> {
    /// `TICKET:KEY` or `TICKET/TOKEN/GRANT:KEY` (the key may hold `:` and `/`; the ticket,
    /// the token and a grant id of ours hold neither). `TICKET/TOKEN:KEY`, an older
    /// client's hand-off, reads as a wake-up. `None` when it is not ours to read.
    fn parse(payload: &'a str) -> Option<Self> {
        let (head, key) = payload.split_once(':')?;
        let (ticket, handed) = match head.split_once('/') {
            Some((ticket, handed)) => (ticket, Some(handed)),
            None => (head, None),
        };
        let ticket = ticket.parse::<i64>().ok()?;
        let handed = match handed.map(|h| h.split_once('/').unwrap_or((h, ""))) {
            None => None,
            Some((token, grant)) => {
                let token = token.parse::<u64>().ok()?;
                if grant.contains('/') {
                    return None;
                }
                (!grant.is_empty()).then_some((token, grant))
            }
        };
        Some(Notice { ticket, handed, key })
    }
}

/// The keys this instance found contended lately: a wait of one starts with the attempt
/// that takes a ticket, skipping `try_acquire`'s statement, which would only be refused
/// (one statement less per contended grant, and one less holding the key's row lock in
/// front of the holder's release). A key leaves the set when such an attempt is granted
/// at once. At most [`Contended::MOST`] keys (then it is emptied: a hint, not a record).
#[derive(Default)]
pub(crate) struct Contended {
    keys: Mutex<std::collections::HashSet<String>>,
}

impl Contended {
    const MOST: usize = 4096;

    fn keys(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.keys().contains(key)
    }

    pub(crate) fn set(&self, key: &str, contended: bool) {
        let mut keys = self.keys();
        if !contended {
            keys.remove(key);
        } else if !keys.contains(key) {
            if keys.len() >= Self::MOST {
                keys.clear();
            }
            keys.insert(key.to_owned());
        }
    }
}

/// Our place in a key's queue, and the grant id a release hands the key to. Dropping it
/// leaves the queue and releases a grant handed to it meanwhile (in the background),
/// unless the wait used the ticket (`consumed`).
pub(crate) struct Ticket {
    pub node: PgNode,
    pub ticket: i64,
    pub key: String,
    /// The grant id the ticket carries: every attempt of the wait uses it.
    pub grant: fencelock_core::GrantId,
    notify: Arc<Notify>,
    pub consumed: bool,
    /// The last look found the ticket gone (see `PgLock::attempt`).
    pub vanished: bool,
}

impl Ticket {
    pub(crate) fn new(
        node: PgNode,
        ticket: i64,
        key: &str,
        grant: fencelock_core::GrantId,
        confirmed: Confirmed,
    ) -> Self {
        let notify = node.register_ticket(ticket, key, grant.as_str(), confirmed);
        Ticket {
            node,
            ticket,
            key: key.to_owned(),
            grant,
            notify,
            consumed: false,
            vanished: false,
        }
    }

    /// Completes when a release names this ticket (or the connection ends). A wake-up
    /// sent before this future is polled is kept (`notify_one` stores a permit).
    pub(crate) fn notified(&self) -> WakeFuture {
        let n = Arc::clone(&self.notify);
        Box::pin(async move { n.notified().await })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.node.waiters().forget(self.ticket, self.grant.as_str());
        if !self.consumed {
            self.node.leave_later(self.ticket, &self.key, self.grant.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_is_read_whole_or_not_at_all() {
        let read = Notice::parse;
        assert_eq!(
            read("42:k"),
            Some(Notice {
                ticket: 42,
                handed: None,
                key: "k"
            })
        );
        assert_eq!(
            read("42/7/g1:a:b/c"),
            Some(Notice {
                ticket: 42,
                handed: Some((7, "g1")),
                key: "a:b/c"
            })
        );
        // An older client's hand-off names no grant id: a wake-up only.
        assert_eq!(
            read("42/7:k"),
            Some(Notice {
                ticket: 42,
                handed: None,
                key: "k"
            })
        );
        for other in ["", "k", "x:k", "42/x/g:k", "42/7/g/h:k", "-/7/g:k"] {
            assert_eq!(read(other), None, "{other:?}");
        }
    }

    fn confirmed() -> Confirmed {
        Confirmed {
            sent: Instant::now(),
            life: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn a_hand_off_is_taken_only_by_its_grant_id_on_its_key() {
        let waiters = Waiters::default();
        let (mine, keeper) = waiters.register(42, "k", "g1", confirmed());
        // Another wait that got the same number (issued twice after a crash).
        let (theirs, _) = waiters.register(42, "k", "g2", confirmed());
        for forged in ["42/9:k", "42/9/g3:k", "42/9/g1:other"] {
            waiters.dispatch(forged);
            assert_eq!(waiters.take_handed(42, "g1"), None, "{forged}");
            assert_eq!(waiters.take_handed(42, "g2"), None, "{forged}");
        }
        waiters.dispatch("42/9/g2:k");
        assert_eq!(waiters.take_handed(42, "g1"), None);
        assert_eq!(waiters.take_handed(42, "g2").map(|(token, _)| token), Some(9));
        // Every notification naming the ticket on its key woke both (a look each).
        for n in [mine, theirs] {
            tokio::time::timeout(Duration::from_millis(100), n.notified())
                .await
                .unwrap();
        }
        waiters.forget(42, "g2");
        let keeper = keeper.expect("the first registration starts the keeper");
        assert_eq!(waiters.to_keep(keeper), Some(vec![(42, "g1".to_owned())]));
    }
}
