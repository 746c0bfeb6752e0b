//! # fencelock-testkit
//!
//! What fencelock's own tests and every third-party backend need:
//!
//! * [`conformance`] — the behaviour suite every backend must pass, as public async
//!   functions that take a [`ClientFactory`](conformance::ClientFactory), and the
//!   [`conformance_suite!`] macro that turns it into one `#[tokio::test]` per behaviour
//!   ([`election_suite!`] does the same for the election suite);
//! * [`overlap`] — a detector of two holders inside one critical section;
//! * [`keys`] — unique keys, so tests sharing a server never see each other's locks;
//! * [`faults`] — what the backends' fault tests check the same way on every backend;
//! * [`until`] — a bounded poll for a state on a server (a key written, a waiter queued).
//!
//! * [`etcd_server`] — real `etcd` members, single or as a cluster, with kill, restart,
//!   pause and leader lookup;
//! * [`zk_server`] — real ZooKeeper servers (standalone or an ensemble), run with `java`;
//! * [`proxy`] — a fault-injecting TCP proxy (pass, blackhole, reset) for partitions;
//! * [`pg_server`] — real PostgreSQL clusters (`initdb` + `postgres`, as the `postgres`
//!   user when run as root), killed with their backends on drop, restartable, pausable;
//! * [`pg_raw`] — the raw minimum of a PostgreSQL lease lock, as SQL (bench and perf test);
//! * [`redis_server`] — real `redis-server` processes on free loopback ports (killed on
//!   drop, restartable, pausable), built on [`process`] and [`ports`].
//!
//! A launcher whose server binary is missing fails the test with the command that installs
//! it; nothing is skipped.
//!
//! ```no_run
//! // tests/conformance_memory.rs of a backend crate:
//! use std::sync::Arc;
//! use fencelock_core::{memory::MemoryLock, DistributedLock};
//! use fencelock_testkit::conformance::SuiteConfig;
//!
//! fencelock_testkit::conformance_suite!(
//!     async {
//!         let name = fencelock_testkit::keys::unique_key("mem");
//!         move || { let name = name.clone(); async move { Arc::new(MemoryLock::named(&name)) as Arc<dyn DistributedLock> } }
//!     },
//!     SuiteConfig::default()
//! );
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod conformance;
pub mod cycle_cost;
pub mod etcd_server;
pub mod faults;
pub mod history;
pub mod interop;
pub mod keys;
pub mod lab;
pub mod overlap;
pub mod pg_raw;
pub mod pg_server;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod python;
pub mod redis_server;
pub mod renewals;
mod sysv_shm;
pub mod tls;
pub mod until;
pub mod zk_server;
