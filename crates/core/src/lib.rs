//! # fencelock-core
//!
//! The contract of fencelock — distributed locks whose every grant carries a **fencing
//! token** — and the two embedded backends.
//!
//! * [`DistributedLock`]: the object-safe async trait every backend implements.
//! * [`Lease`]: one grant, with its [`FencingToken`], validity, auto-renewal and loss signal.
//! * [`LockOptions`]: TTL, wait bound, auto-renew.
//! * [`Guarantees`] and [`Requirement`]: what a backend promises, as data.
//! * [`Election`]: leader election with fencing terms ([`election`]).
//! * [`fencing`]: the resource-side check that refuses stale tokens.
//! * [`memory`] (`memory://`) and [`mod@file`] (`file:///dir`): backends that need no server.
//!
//! Most users depend on the `fencelock` facade crate instead, which re-exports all of this
//! and builds a backend from a URL.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> fencelock::Result<()> {
//! use fencelock::{fencing::FencingChecker, memory::MemoryLock, DistributedLock, LockOptions};
//! let locks = MemoryLock::new();
//! let storage = FencingChecker::new(); // lives beside the protected resource
//! let lease = locks.acquire("invoice-7", &LockOptions::new()).await?;
//! storage.check("invoice-7", &lease.fence())?; // then write
//! lease.release().await?;
//! # Ok(()) }
//! ```

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod backend_url;
pub mod batch;
pub mod cleanup;
pub mod closing;
pub mod election;
pub mod error;
mod ext;
pub mod fencing;
#[cfg(unix)]
pub mod file;
pub mod guarantees;
pub mod lease;
mod lock;
pub mod memory;
pub mod metrics;
#[cfg(test)]
mod on_event;
pub mod options;
pub mod panic;
mod token;
pub mod waiting;

pub use election::{Election, ElectionCapabilities, LeaderInfo, Leadership, Observer};
pub use error::{BoxError, FenceRejection, LockError, LostReason, Result};
pub use ext::{LeaseRef, LockExt};
pub use guarantees::{Exclusion, Guarantees, Requirement, Scope, TokenOrder};
pub use lease::{Lease, LeaseOps, LeaseParts, LeaseRegistry, LeaseReporter, LeaseState, LeaseStatus};
pub use lock::DistributedLock;
pub use options::LockOptions;
pub use token::{Fence, FencingToken, GrantId};
