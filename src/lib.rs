//! # fencelock
//!
//! Distributed locks with **fencing tokens**, over one API and several backends — so a team
//! can choose, per use, between the pragmatic option and the strictly correct one, and
//! swap by configuration rather than code.
//!
//! Every grant of a lock carries a [`FencingToken`] that grows with each grant of the key.
//! Send it with every write to the protected resource and let the resource refuse stale
//! ones ([`fencing::FencingChecker`]): that is what keeps a holder that paused past its
//! TTL from corrupting data, which no lock service can prevent on its own.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> fencelock::Result<()> {
//! use fencelock::{fencing::FencingChecker, LockOptions};
//!
//! let locks = fencelock::connect("memory://").await?;   // or file:///var/lock/app, redis://…
//! let storage = FencingChecker::new();                   // beside the protected resource
//!
//! let lease = locks.acquire("invoice-7", &LockOptions::new()).await?;
//! storage.check("invoice-7", &lease.fence())?;           // refused if a newer holder wrote
//! // … write …
//! lease.release().await?;
//! # Ok(()) }
//! ```
//!
//! Backends and their URLs are listed at [`connect`]; what each promises is in its
//! [`Guarantees`] (see [`schemes::SCHEMES`] and `fencelock backends`).

#[cfg(unix)]
pub use fencelock_core::file;
pub use fencelock_core::{
    cleanup, closing, election, error, fencing, guarantees, lease, memory, metrics, options, waiting, BoxError,
    DistributedLock, Exclusion, Fence, FenceRejection, FencingToken, GrantId, Guarantees, Lease, LeaseOps, LeaseParts,
    LeaseRef, LeaseReporter, LeaseState, LeaseStatus, LockError, LockExt, LockOptions, LostReason, Requirement, Result,
    Scope, TokenOrder,
};
/// The etcd backend (feature `etcd`).
#[cfg(feature = "etcd")]
pub use fencelock_etcd as etcd;
/// The PostgreSQL backend (feature `postgres`).
#[cfg(feature = "postgres")]
pub use fencelock_postgres as postgres;
/// The single-instance Redis backend (feature `redis`).
#[cfg(feature = "redis")]
pub use fencelock_redis as redis;
/// The Redlock backend (feature `redlock`).
#[cfg(feature = "redlock")]
pub use fencelock_redlock as redlock;
/// The ZooKeeper backend (feature `zookeeper`).
#[cfg(feature = "zookeeper")]
pub use fencelock_zk as zk;

mod config;
mod connect;
mod election_connect;
pub mod schemes;

pub use config::LockConfig;
pub use connect::connect;
pub use election_connect::connect_election;

// The README's example compiles as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
