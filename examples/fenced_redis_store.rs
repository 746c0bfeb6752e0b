//! Fence a write into data kept in Redis (`fencelock::redis::RedisFencedStore`).
//!
//! ```sh
//! redis-server --port 6379 &
//! cargo run --example fenced_redis_store --features redis -- redis://127.0.0.1:6379
//! ```
//!
//! The store admits a write in one atomic script only when its token is higher than the
//! highest seen for that resource (or the same grant again), so the holder that paused past
//! its TTL is refused once a newer holder wrote.

use fencelock::redis::{RedisFencedStore, RedisLock};
use fencelock::{DistributedLock, LockError, LockOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> fencelock::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let locks = RedisLock::connect(&url).await?;
    let store = RedisFencedStore::new(&locks).await?;

    let first = locks.acquire("balance", &LockOptions::new()).await?;
    let stale = first.fence();
    store.write("balance", &first.fence(), b"100").await?;
    first.release().await?;

    let second = locks.acquire("balance", &LockOptions::new()).await?;
    store.write("balance", &second.fence(), b"150").await?;
    match store.write("balance", &stale, b"90").await {
        Err(LockError::Fenced(rejection)) => println!("refused as it should be: {rejection}"),
        other => {
            return Err(LockError::invalid_input(format!(
                "a stale write was not refused: {other:?}"
            )))
        }
    }
    second.release().await?;
    let value = store.read("balance").await?.unwrap_or_default();
    println!("balance = {}", String::from_utf8_lossy(&value));
    Ok(())
}
