//! The conformance suite against a real redis-server started by the test (one per test),
//! with the hardening hooks acting on that server directly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::Arc;
use std::time::Duration;

use fencelock_core::DistributedLock;
use fencelock_testkit::conformance::{BoxFuture, ClientFactory, Fixture, Proxied, SuiteConfig};
use fencelock_testkit::proxy::FaultProxy;
use fencelock_testkit::redis_server::RedisServer;

/// The lock key of `key` under the default prefix (`fencelock:{KEY}:lock`); the token
/// counter (`…:token`) is a separate key that outlives grants.
fn lock_key(key: &str) -> String {
    format!("fencelock:{{{key}}}:lock")
}

/// The key's queue of waiters (`fencelock:{KEY}:queue`), one list entry per waiter.
fn queue_key(key: &str) -> String {
    format!("fencelock:{{{key}}}:queue")
}

/// One server per test.
struct Redis {
    server: Arc<RedisServer>,
}

impl Redis {
    /// Runs `f` on the server off the runtime (the launcher's commands are blocking).
    async fn on_server<T: Send + 'static>(&self, f: impl FnOnce(&RedisServer) -> T + Send + 'static) -> T {
        let server = Arc::clone(&self.server);
        tokio::task::spawn_blocking(move || f(&server))
            .await
            .expect("server command")
    }
}

impl ClientFactory for Redis {
    fn client(&self) -> BoxFuture<'_, Arc<dyn DistributedLock>> {
        Box::pin(async move {
            let lock = fencelock_redis::RedisLock::connect(&self.server.url())
                .await
                .expect("connect to redis-server");
            Arc::new(lock) as Arc<dyn DistributedLock>
        })
    }
}

impl Fixture for Redis {
    fn remove_grant<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()> {
        let del = format!("DEL {}", lock_key(key));
        Box::pin(async move {
            let n = self.on_server(move |s| s.integer(&del)).await;
            assert_eq!(n, Some(1), "the operator's DEL found no grant to remove");
        })
    }

    /// The lock key, if any, and each entry of the key's queue (a waiter).
    fn records<'a>(&'a self, key: &'a str) -> BoxFuture<'a, usize> {
        let (exists, queued) = (format!("EXISTS {}", lock_key(key)), format!("LLEN {}", queue_key(key)));
        Box::pin(async move {
            let n = self
                .on_server(move |s| s.integer(&exists).zip(s.integer(&queued)).map(|(a, b)| a + b))
                .await;
            usize::try_from(n.expect("EXISTS and LLEN answer integers")).unwrap_or(0)
        })
    }

    fn connections(&self) -> BoxFuture<'_, Option<usize>> {
        Box::pin(async move { Some(self.on_server(RedisServer::clients).await) })
    }

    fn proxied_client(&self, request_timeout: Duration) -> BoxFuture<'_, Option<Proxied>> {
        Box::pin(async move {
            let proxy = FaultProxy::start(self.server.port()).await;
            let ms = request_timeout.as_millis();
            let url = format!(
                "redis://127.0.0.1:{}?timeout={ms}ms&connect_timeout={ms}ms",
                proxy.port()
            );
            let lock = fencelock_redis::RedisLock::connect(&url)
                .await
                .expect("connect through the proxy");
            Some(Proxied {
                client: Arc::new(lock),
                proxies: vec![proxy],
            })
        })
    }
}

fencelock_testkit::conformance_suite!(
    async {
        Redis {
            server: Arc::new(tokio::task::spawn_blocking(RedisServer::start).await.expect("start")),
        }
    },
    SuiteConfig::default()
);
