//! Push-based waiting without a herd: a waiter that found the key busy takes a ticket in
//! the key's queue (a row of the `waiters` table, numbered by a sequence), and a release
//! notifies the channel naming the oldest live ticket of the key (`TICKET:KEY`). Only the
//! waiter holding that ticket wakes — in whichever process it is — instead of every
//! waiter racing for the key; the others sleep on until their turn (or a re-check).
//!
//! The queue also orders grants: the acquire statement refuses a free key to a client
//! without a ticket, or with a younger one, while an older ticket of the key lives — so a
//! holder that releases and asks again goes to the back of the line, and hand-offs go
//! round in FIFO order. A ticket lives as long as its instance keeps it alive (one
//! statement per `poll` renews all of an instance's tickets for twice the poll plus a
//! second — sent without waiting for a turn behind the instance's other statements, which
//! under load would outlast the tickets — and each refused attempt renews its own), so a
//! waiter that crashed blocks the queue for at most that long. Notifications are not
//! persistent: one sent while our listening connection was being replaced is lost (its
//! end wakes every waiter anyway, and their next attempt makes another connection listen
//! first), and a ticket left by a crashed waiter is named in vain until it expires. A refused
//! waiter therefore looks again when the ticket ahead of it expires, or — first in line —
//! when the holder's lease does, at the latest every four polls (see `lock::retry_in`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fencelock_core::waiting::WakeFuture;
use tokio::sync::Notify;

use crate::node::PgNode;

/// The tickets of the waiters of this backend instance.
#[derive(Default)]
pub(crate) struct Waiters {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    tickets: HashMap<i64, Arc<Notify>>,
    /// Whether the task that keeps the tickets alive runs (see [`PgNode::register_ticket`]).
    keeping: bool,
}

impl Waiters {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `ticket`; also says whether the keeper task must be started (it was not
    /// running).
    pub(crate) fn register(&self, ticket: i64) -> (Arc<Notify>, bool) {
        let mut state = self.state();
        let notify = Arc::clone(state.tickets.entry(ticket).or_default());
        let start = !std::mem::replace(&mut state.keeping, true);
        (notify, start)
    }

    pub(crate) fn forget(&self, ticket: i64) {
        self.state().tickets.remove(&ticket);
    }

    /// The tickets to keep alive now; `None` (and the keeper is marked stopped, in the
    /// same critical section as [`register`](Self::register) checks it) when there are
    /// none left.
    pub(crate) fn to_keep(&self) -> Option<Vec<i64>> {
        let mut state = self.state();
        if state.tickets.is_empty() {
            state.keeping = false;
            return None;
        }
        Some(state.tickets.keys().copied().collect())
    }

    /// The keeper could not be started (no runtime).
    pub(crate) fn keeper_stopped(&self) {
        self.state().keeping = false;
    }

    /// A release notification `TICKET:KEY`: wakes that ticket's waiter if it is ours.
    pub(crate) fn dispatch(&self, payload: &str) {
        let Some((ticket, _key)) = payload.split_once(':') else {
            return;
        };
        let Ok(ticket) = ticket.parse::<i64>() else {
            return; // `-`: nobody was queued
        };
        if let Some(n) = self.state().tickets.get(&ticket) {
            n.notify_one();
        }
    }

    /// The listening connection ended: every waiter tries again (and listens again).
    pub(crate) fn wake_all(&self) {
        for n in self.state().tickets.values() {
            n.notify_one();
        }
    }
}

/// Our place in a key's queue. Dropping it leaves the queue (in the background), unless
/// the acquire statement that granted us the key already removed the row.
pub(crate) struct Ticket {
    pub node: PgNode,
    pub ticket: i64,
    notify: Arc<Notify>,
    pub consumed: bool,
}

impl Ticket {
    pub(crate) fn new(node: PgNode, ticket: i64) -> Self {
        let notify = node.register_ticket(ticket);
        Ticket {
            node,
            ticket,
            notify,
            consumed: false,
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
            self.node.dequeue_later(self.ticket);
        }
    }
}
