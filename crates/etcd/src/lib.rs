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
//! * **Lock**: put `PREFIX/KEY/LEASE.RANDOM` with the lease and read the current owner (the
//!   lowest create revision under `PREFIX/KEY/`) in **one transaction**. If ours is not the
//!   lowest, watch only the key with the next-lower create revision (no thundering herd),
//!   re-check after each deletion, and finally **re-read our own key** — the lease may have
//!   expired while we were queued (etcd issue 11456).
//! * **Release** deletes only our key (its name is unique to the grant); an own lease is
//!   revoked instead, which deletes the key in the same request. An unconfirmed delete is
//!   retried in the background, and the session lease is revoked if it stays unconfirmed
//!   and no other lock uses the session.
//! * **Loss**: a keep-alive answered with TTL 0 (expired or revoked) or no keep-alive
//!   confirmed within the TTL loses the session, and every lock on it is told at once.
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
mod error;
mod grant;
mod lock;
mod queue;
mod session;
mod slots;
mod wait;

pub use config::EtcdConfig;
pub use lock::{EtcdLock, GUARANTEES};
