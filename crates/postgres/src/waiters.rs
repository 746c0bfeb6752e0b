//! Push-based waiting without a herd, and hand-offs without a statement of the waiter's
//! own: a waiter that found the key busy takes a ticket in the key's queue (a row of the
//! `waiters` table, numbered by a sequence, carrying the grant id it will hold) in the
//! same statement as its refused attempt. A release notifies the channel naming the
//! oldest live ticket, `TICKET:KEY`: only the waiter holding that ticket wakes — in
//! whichever process it is — and acquires. With `handoff=true` the release of a lease
//! granted after waiting hands the key to that ticket in its own statement and notifies
//! `TICKET/TOKEN:KEY`: the waiter is already granted (see `sql::release_handing`). The
//! others sleep on until their turn (or a re-check).
//!
//! The queue also orders grants: the acquire statement refuses a free key to a client
//! without a ticket, or with a younger one, while an older ticket of the key lives — so a
//! holder that releases and asks again goes to the back of the line, and hand-offs go
//! round in FIFO order. A ticket lives as long as its instance keeps it alive (one
//! statement per `poll` renews all of an instance's tickets for twice the poll plus a
//! second — sent without waiting for a turn behind the instance's other statements, which
//! under load would outlast the tickets — and each refused attempt renews its own), so a
//! waiter that crashed blocks the queue for at most that long, and a key handed to it
//! expires with its ticket. Each renewal found alive moves the ticket's known end on our
//! clock ([`Confirmed`]); a grant handed to the ticket is valid until then, and the
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
/// on the server until at least then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Confirmed {
    pub sent: Instant,
    pub life: Duration,
}

struct Entry {
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
    tickets: HashMap<i64, Entry>,
    /// The task that keeps the tickets alive (see [`PgNode::register_ticket`]).
    keeper: TaskSlot,
}

impl Waiters {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `ticket`, known alive until `confirmed`; also the number of the keeper
    /// task to start, when none runs (give it to [`keeper_ended`](Self::keeper_ended)).
    pub(crate) fn register(&self, ticket: i64, confirmed: Confirmed) -> (Arc<Notify>, Option<u64>) {
        let mut state = self.state();
        let entry = state.tickets.entry(ticket).or_insert_with(|| Entry {
            notify: Arc::default(),
            handed: None,
            confirmed,
        });
        let notify = Arc::clone(&entry.notify);
        (notify, state.keeper.start())
    }

    /// Whether no waiter of this instance waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.state().tickets.is_empty()
    }

    pub(crate) fn forget(&self, ticket: i64) {
        self.state().tickets.remove(&ticket);
    }

    /// A statement sent at `confirmed.sent` found `ticket` alive and renewed it: its end is
    /// known to be no earlier than `confirmed.until()` (the newest such statement counts).
    pub(crate) fn confirm(&self, ticket: i64, confirmed: Confirmed) {
        if let Some(e) = self.state().tickets.get_mut(&ticket) {
            if confirmed.sent > e.confirmed.sent {
                e.confirmed = confirmed;
            }
        }
    }

    /// The token of a grant handed to `ticket`, and the ticket's known end then; taken
    /// (a second call answers `None`).
    pub(crate) fn take_handed(&self, ticket: i64) -> Option<(u64, Confirmed)> {
        let mut state = self.state();
        let e = state.tickets.get_mut(&ticket)?;
        e.handed.take().map(|token| (token, e.confirmed))
    }

    /// The tickets keeper `task` keeps alive now; `None` (and the keeper is marked
    /// stopped, in the same critical section as [`register`](Self::register) checks it)
    /// when there are none left.
    pub(crate) fn to_keep(&self, task: u64) -> Option<Vec<i64>> {
        let mut state = self.state();
        if state.tickets.is_empty() {
            state.keeper.end(task);
            return None;
        }
        Some(state.tickets.keys().copied().collect())
    }

    /// Keeper `task` ended, or could not be started (no runtime): one is started by the
    /// next registration.
    pub(crate) fn keeper_ended(&self, task: u64) {
        self.state().keeper.end(task);
    }

    /// A release notification: `TICKET/TOKEN:KEY` (the key was handed to that ticket's
    /// grant, with that token) or `TICKET:KEY` (the key was freed: that waiter looks
    /// again). Wakes that ticket's waiter if it is ours.
    pub(crate) fn dispatch(&self, payload: &str) {
        let Some((ticket, _key)) = payload.split_once(':') else {
            return;
        };
        let (ticket, token) = match ticket.split_once('/') {
            Some((ticket, token)) => (ticket, Some(token)),
            None => (ticket, None),
        };
        let Ok(ticket) = ticket.parse::<i64>() else {
            return;
        };
        let token = match token.map(str::parse::<u64>) {
            Some(Ok(t)) => Some(t),
            Some(Err(_)) => return, // not ours to read
            None => None,
        };
        if let Some(e) = self.state().tickets.get_mut(&ticket) {
            if token.is_some() {
                e.handed = token;
            }
            e.notify.notify_one();
        }
    }

    /// The listening connection ended: every waiter tries again (and listens again).
    pub(crate) fn wake_all(&self) {
        for e in self.state().tickets.values() {
            e.notify.notify_one();
        }
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
        let notify = node.register_ticket(ticket, confirmed);
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
        self.node.waiters().forget(self.ticket);
        if !self.consumed {
            self.node.leave_later(self.ticket, &self.key, self.grant.as_str());
        }
    }
}
