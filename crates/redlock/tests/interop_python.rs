//! Issue 17, Redlock: pottery's `Redlock` and python-redis-lock are covered on one Redis by
//! `fencelock-redis`'s `interop_python`; here, what the Redlock backend adds — an election
//! in a peer layout is refused (its seat keys keep fencelock's own names, which the peer
//! layout's lock key does not match).
//!
//! Run: `cargo test -p fencelock-redlock --test interop_python`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use fencelock_core::LockError;
use fencelock_redlock::RedlockElection;
use fencelock_testkit::redis_server::{redlock_url, start_many};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elections_refuse_peer_layouts() {
    let servers = start_many(3);
    for layout in ["bare", "python-redis-lock", "pottery"] {
        let e = RedlockElection::connect(&redlock_url(&servers, &format!("layout={layout}")))
            .await
            .err()
            .unwrap_or_else(|| panic!("layout={layout}: an election was made"));
        assert!(matches!(e, LockError::InvalidConfig { .. }), "{e}");
        assert!(e.to_string().contains(&format!("layout={layout}")), "{e}");
    }
    RedlockElection::connect(&redlock_url(&servers, "")).await.unwrap();
}
