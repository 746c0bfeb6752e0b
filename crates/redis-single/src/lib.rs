//! # fencelock-redis
//!
//! The single-instance Redis backend of fencelock (`redis://HOST:PORT`): the "vanilla"
//! Redis lock, done as well as it can be done.
//!
//! * **Acquire** is one round trip: one transaction (`MULTI`, `SET key grant NX PX ttl`,
//!   `INCR` of the key's token counter, `EXEC`) in one pipeline, so the grant and its token
//!   are one atomic step.
//! * **Release** and **extend** are one round trip each, compare-and-delete /
//!   compare-and-pexpire on our grant id; release also hands the lock to the first live
//!   waiter queued on the key.
//! * **Waiters** queue on the server (a FIFO list per contended key) and are woken one at
//!   a time on their instance's pub/sub channel: a release grants the lock to the queue
//!   head directly (its full TTL, the token counted in the release script) and pushes the
//!   token to it — the waiter holds the lock on the push alone, its validity counted from
//!   its last turn ([`handoff`]). Server work per hand-off does not grow with the number
//!   of waiters; a waiter whose process died while queued is skipped at once. A jittered
//!   fallback re-check covers lost messages. (Redlock's waiters, whose grant needs a
//!   quorum, get a reservation of [`HANDOFF_CLAIM`] instead and claim it.)
//! * [`RedisFencedStore`] fences data kept in Redis itself.
//!
//! ## When to choose it
//!
//! When one Redis is already there and an occasional double grant after a Redis crash or
//! failover is tolerable (efficiency locks), or when every write goes through a fenced
//! resource anyway. Mutual exclusion holds only while that one server stays up and keeps
//! its data; tokens are strictly monotonic only when the server fsyncs every write and
//! never evicts the token counter, and nobody deletes it (`FLUSHALL`, `FLUSHDB`, `DEL`) — see [`GUARANTEES`] and [`GUARANTEES_DURABLE`], chosen
//! at connect time from the server's `appendonly`, `appendfsync` and `maxmemory-policy`. For strict exclusion use etcd or ZooKeeper.
//!
//! ```no_run
//! # async fn demo() -> fencelock_core::Result<()> {
//! use fencelock_core::{DistributedLock, LockOptions};
//! let locks = fencelock_redis::RedisLock::connect("redis://127.0.0.1:6379?timeout=500ms").await?;
//! let lease = locks.acquire("nightly", &LockOptions::new()).await?;
//! lease.release().await?;
//! # Ok(()) }
//! ```

mod acl;
mod config;
mod contention;
mod election;
mod error;
mod fence;
mod grant;
pub mod handoff;
mod identity;
mod layout;
mod lock;
mod node;
mod renewals;
mod scripts;
mod wait;

pub use config::RedisConfig;
pub use contention::Contention;
pub use election::{proclaim_on, read_seat_on, NodeSeat, RedisElection};
pub use error::is_rights_refusal;
pub use fence::RedisFencedStore;
/// A background clean-up counted on a node ([`RedisNode::cleanup`]): the core's type.
pub use fencelock_core::cleanup::CleanupGuard;
pub use layout::RedisLayout;
pub use lock::{RedisLock, GUARANTEES, GUARANTEES_DURABLE};
pub use node::{CounterSafety, NodeGrant, NodeSubscription, RedisNode, Turn, HANDOFF_CLAIM};
pub use scripts::with_source;
