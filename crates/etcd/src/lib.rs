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
//! * **Lock**: put `PREFIX/KEY/INSTANCE.SLOT` with the lease and read the current owner (the
//!   lowest create revision under `PREFIX/KEY/`) in **one transaction**. If ours is not the
//!   lowest, watch only the key with the next-lower create revision (no thundering herd),
//!   re-check after each deletion, and finally **re-read our own key** — the lease may have
//!   expired while we were queued (etcd issue 11456) — renewing an own lease in the same
//!   step, so validity counts from our turn, not from the start of the wait.
//! * **Waiting lease**: a waiter's key rides on a short lease of the session (etcd's
//!   minimum TTL, kept alive only while the instance waits), so a waiter that dies while
//!   queued blocks the others for that TTL, not the session's; a grant moves its key onto
//!   the session lease in the background, valid no longer than the short lease until then.
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
