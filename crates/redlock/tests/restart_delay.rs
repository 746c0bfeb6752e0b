//! The `restart_delay` option's checks: what it needs of the Redis user (`INFO`), the TTLs
//! it covers, and its range — each refused at once with an error that names the cause.
//!
//! `opts` and `client` are the minimum of `tests/faults.rs`'s helpers of the same names
//! (there is no shared `tests/common` module; the servers come from fencelock-testkit).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::time::Duration;

use fencelock_core::{DistributedLock, LockError, LockOptions};
use fencelock_redlock::{RedlockConfig, RedlockLock};
use fencelock_testkit::redis_server::{redlock_url, start_many, RedisServer};

fn opts(ttl: Duration) -> LockOptions {
    LockOptions::new()
        .with_ttl(ttl)
        .with_wait(Duration::from_secs(2))
        .with_auto_renew(false)
}

async fn connect(servers: &[RedisServer], extra: &str) -> fencelock_core::Result<RedlockLock> {
    RedlockLock::connect(&redlock_url(servers, &format!("per_node_timeout=100ms{extra}"))).await
}

fn refuse_info(server: &RedisServer) {
    assert!(server.command("ACL SETUSER default -info").starts_with("+OK"));
}

/// Below 1 ms the scripts' whole milliseconds would turn the delay off unsaid; refused
/// as `per_node_timeout=500us` is (before: accepted).
#[test]
fn restart_delay_below_a_millisecond_is_refused() {
    for d in ["1ns", "500us", "999us"] {
        let url = format!("redlock://h:1,h:2,h:3?restart_delay={d}");
        let err = RedlockConfig::from_url(&url).expect_err(&url);
        assert!(matches!(err, LockError::InvalidConfig { .. }), "{err:?}");
        assert!(err.to_string().contains("restart_delay must be between 1ms"), "{err}");
    }
    for d in ["0s", "1ms", "24h"] {
        RedlockConfig::from_url(&format!("redlock://h:1,h:2,h:3?restart_delay={d}")).unwrap();
    }
    assert!(RedlockConfig::from_url("redlock://h:1?restart_delay=25h").is_err());
}
