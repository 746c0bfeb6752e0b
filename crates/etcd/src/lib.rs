//! # fencelock-etcd
//!
//! The etcd backend of fencelock (`etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`): strict mutual
//! exclusion on a Raft-replicated store, with the lock key's **create revision** as the
//! fencing token — strictly increasing across the whole cluster.
//!
//! The recipe is etcd's own concurrency mutex, with fencing and the Jepsen fix built in:
//!
//! * **Session**: one lease per backend instance, kept alive by one keep-alive stream in
//!   the background and shared by every auto-renewed lock the instance holds — renewal
//!   cost does not grow with the number of locks. Locks without auto-renew get a lease of
//!   their own with their TTL (whole seconds, rounded up).
//! * **Lock**: **one transaction** puts `PREFIX/KEY/INSTANCE.SLOT` with the lease: into an
//!   empty `PREFIX/KEY/` (one compare over the directory) the put alone, and we own the
//!   lock — no read; otherwise our put and, for an acquire that waits, a read of the (up
//!   to) three keys just older than ours and whether more are left. A waiter watches those
//!   keys and its own (`wait`): each release is pushed to at most the three waiters behind
//!   it (no thundering herd), and when every older key it knows of is deleted and nothing
//!   older was left it is granted **on the push, with no read**. It reads its place again
//!   (those keys and its own, in one transaction) only when a watch began after the last
//!   read, keys left out of order, or older keys may be left. A key whose lease ran out
//!   while queued (etcd issue 11456) ends the wait through the watch on it or that read —
//!   or, deleted in the same revision as the keys it waited for (etcd pushes one
//!   revision's events to its watchers in no set order), is caught after the grant: by the
//!   grant's move of the key onto the session lease, the session's key check, `extend` or
//!   `release`. An own lease is kept alive while waiting, and the grant's validity counts
//!   from its last confirmed keep-alive (one is sent at the turn when that is older than a
//!   quarter of the validity).
//! * **Waiting lease**: a waiter's key rides on a short lease of the session (etcd's
//!   minimum TTL, kept alive only while the instance waits), so a waiter that dies while
//!   queued blocks the others for that TTL, not the session's; a grant's first renewal moves
//!   its key onto the session lease, valid no longer than the short lease until then (a
//!   holder that releases sooner never moves it: a hand-off costs the release's delete).
//! * **Release** deletes only our key, guarded by its create revision (its name is unique to
//!   the grant while it lives); an own lease is revoked afterwards in the background.
//! * **Checks**: after each keep-alive the session lists the keys on its lease (one request
//!   for any number of locks): a grant whose key was deleted behind its back is told it is
//!   lost, and a key that no grant or waiter claims (a put whose answer was lost and that
//!   landed late, a release that was not confirmed) is deleted. `extend` reads our key.
//! * **Loss**: a keep-alive answered with TTL 0 (expired or revoked) or no keep-alive
//!   confirmed within the TTL loses the session, and every lock on it is told at once.
//! * **Close**: [`DistributedLock::close`](fencelock_core::DistributedLock::close) finishes
//!   the background follow-ups (bounded) and revokes the session, as etcd's `Session.Close`.
//!
//! Files: `config` (URL, validation, key escape) · `error` (per-error classification) ·
//! `client` (bounded, repeated requests) · `lock` ([`EtcdLock`]) · `queue` (joining the
//! queue) · `wait` (the predecessor watch, confirming our turn) · `grant` (extend, release,
//! lease moves) · `session` (the shared lease and its key check) · `cleanup` (follow-ups) ·
//! `slots` (queue key names) · `waiting_lease` (the short lease queued keys ride on, so a
//! waiter that dies blocks the queue for its TTL, not the session's) · `election`
//! ([`EtcdElection`]: candidates as queue keys holding their value, observe by watch).
//!
//! ## When to choose it
//!
//! When two holders at once would be a correctness bug: exclusion is as strong as etcd's
//! linearizability, and the token is sound for fencing. A holder that pauses past its
//! lease's TTL can still act after another got the lock — that is what the token is for.
//! See `docs/backends/etcd.md`.

mod cleanup;
mod client;
mod config;
mod election;
mod error;
mod finish;
mod grant;
#[cfg(test)]
mod hooks;
mod lock;
mod queue;
mod session;
mod slots;
mod wait;
mod waiting_lease;
mod watch_stream;

pub use config::{EtcdConfig, EtcdLayout};
pub use election::{EtcdElection, MAX_WATCH_FAILURES};
pub use lock::{EtcdLock, GUARANTEES};
