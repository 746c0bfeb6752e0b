//! Statements prepared once on a plain client and issued by hand — the raw minimum's or
//! the backend's own (`fencelock_postgres::by_hand`) — for the measurements that put
//! fencelock beside them: `tests/perf.rs` and `examples/pg_cycle_cost.rs` (each declares
//! this file with `#[path]`; it was a copy in each).

use std::time::{Duration, Instant};

use fencelock_postgres::tokio_postgres::{self, Client, NoTls, Statement};
use fencelock_testkit::pg_raw::SCHEMA as RAW_SCHEMA;

/// One plain connection with an acquire and a release statement prepared on it.
pub struct ByHand {
    client: Client,
    acquire: Statement,
    release: Statement,
    /// The server process serving the connection (`pg_backend_pid()`).
    #[allow(dead_code)] // read by examples/pg_cycle_cost.rs, not by tests/perf.rs
    pub pid: i32,
}

impl ByHand {
    /// Connects to `url`, creates the raw minimum's tables if missing, and prepares
    /// `acquire` (`$1` key, `$2` holder id, `$3` TTL in ms; answers the token first, NULL
    /// when busy) and `release` (`$1` key, `$2` holder id).
    pub async fn connect(url: &str, acquire: &str, release: &str) -> Self {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
        tokio::spawn(connection);
        client.batch_execute(RAW_SCHEMA).await.unwrap();
        let acquire = client.prepare(acquire).await.unwrap();
        let release = client.prepare(release).await.unwrap();
        let pid = client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
        ByHand {
            client,
            acquire,
            release,
            pid,
        }
    }

    /// One acquire (with a 10 s TTL, holder id `n` in hex) and its release; returns the
    /// acquire's latency counted from `t0`. Panics when the key was busy.
    pub async fn cycle(&self, key: &str, n: u64, t0: Instant) -> Duration {
        let id = format!("{n:032x}");
        let ttl_ms: i64 = 10_000;
        let rows = self.client.query(&self.acquire, &[&key, &id, &ttl_ms]).await.unwrap();
        assert!(
            rows.first().is_some_and(|r| r.get::<_, Option<i64>>(0).is_some()),
            "{key} was busy"
        );
        let acquired = t0.elapsed();
        self.client.query(&self.release, &[&key, &id]).await.unwrap();
        acquired
    }
}
