//! Fencing tokens and mutual exclusion under real concurrency.

use std::sync::Arc;
use std::time::Duration;

use fencelock_core::{LockOptions, TokenOrder};

use super::{within, ClientFactory, SuiteConfig, LONG_TTL};
use crate::keys::unique_key;
use crate::overlap::OverlapDetector;

/// Each grant of a key, from any client, carries a token greater than the one before.
pub async fn tokens_increase_with_each_grant(f: &dyn ClientFactory, _cfg: &SuiteConfig) {
    let _gate = super::shared_gate().await;
    let clients = [f.client().await, f.client().await];
    let key = unique_key("tokens");
    let opts = LockOptions::new().with_ttl(LONG_TTL).with_auto_renew(false);
    let mut last = None;
    for i in 0..10 {
        let lease = clients[i % 2].acquire(&key, &opts).await.expect("acquire");
        if let Some(prev) = last {
            assert!(lease.token() > prev, "grant {i}: token {} after {prev}", lease.token());
        }
        last = Some(lease.token());
        lease.release().await.expect("release");
    }
}

/// Many tasks on several independent clients contend for one key: never two inside at
/// once, and (for backends with strictly monotonic tokens) tokens grow in the order the
/// holders got in.
pub async fn mutual_exclusion_under_contention(f: &dyn ClientFactory, cfg: &SuiteConfig) {
    let _gate = super::shared_gate().await;
    let key = unique_key("contention");
    let detector = Arc::new(OverlapDetector::new());
    let opts = LockOptions::new().with_ttl(LONG_TTL).with_wait(Duration::from_secs(60));
    let mut tasks = Vec::new();
    let mut strict = true;
    let rounds = cfg.rounds;
    for _ in 0..cfg.clients {
        let client = f.client().await;
        strict &= client.guarantees().tokens == TokenOrder::StrictlyMonotonic;
        for _ in 0..cfg.tasks_per_client {
            let (client, key, detector) = (client.clone(), key.clone(), detector.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..rounds {
                    let lease = client.acquire(&key, &opts).await.expect("acquire under contention");
                    {
                        let _inside = detector.enter(lease.token());
                        // Stay inside across a scheduling point so an overlap would be seen.
                        tokio::task::yield_now().await;
                        tokio::task::yield_now().await;
                    }
                    lease.release().await.expect("release under contention");
                }
            }));
        }
    }
    let total = cfg.clients * cfg.tasks_per_client * cfg.rounds;
    for t in tasks {
        within(Duration::from_secs(120), "a contending task", t)
            .await
            .expect("contending task panicked");
    }
    assert_eq!(detector.entries().len(), total);
    assert_eq!(
        detector.overlaps(),
        0,
        "two holders were inside the critical section at once"
    );
    if strict {
        let regressions = detector.token_regressions();
        assert!(
            regressions.is_empty(),
            "tokens did not grow in entry order: {regressions:?}"
        );
    }
}
