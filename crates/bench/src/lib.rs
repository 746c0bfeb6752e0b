//! # fencelock-bench
//!
//! What a lock costs, per backend, side by side in one run: `fencelock bench` (the CLI,
//! built with its `bench` feature) calls [`run`] and writes `docs/benchmarks.md`.
//!
//! For each backend it measures, on servers it starts itself (or on the URLs given):
//!
//! * uncontended acquire + release, ours beside the **raw minimum** ([`raw`]: the fewest
//!   client-crate requests a correct lock needs) and beside the **peer crates**
//!   ([`peers`]: `rslock`, `distributed-lock`; for PostgreSQL [`pg`]), interleaved so
//!   machine noise hits all alike;
//! * contention: 8 and 64 clients on one key — hand-off latency, throughput, fairness, and
//!   server commands per grant from the servers' own counters;
//! * many keys at once: 1,000 keys each contended by 4 clients (the shape of a service);
//! * a waiter that dies while queued ([`dead_waiter`]): how long the live waiters wait;
//! * failover ([`failover`]): a leader killed → its successor's campaign returns, median
//!   and p99 over 50 failovers, with a 1 s TTL / session bound for that row;
//! * scale: 100 to 10,000 locks held by one process with auto-renew — renewal requests per
//!   second at the server, client CPU and memory.
//!
//! With `Plan::runs` > 1 it repeats all of it on the same servers and reports each figure
//! as the median of the runs with their min–max; the verdicts check the targets on
//! every run's data.
//!
//! The peers are dependencies of this crate only, never of the library.

pub mod contention;
pub mod dead_waiter;
pub mod error;
pub mod failover;
pub mod machine;
pub mod peers;
pub mod pg;
pub mod plan;
pub mod raw;
pub mod report;
pub mod scale;
pub mod stats;
pub mod subject;
pub mod svg;
pub mod targets;
pub mod uncontended;

pub use error::{BenchError, Result};
pub use plan::{run, Plan};
pub use report::Report;
