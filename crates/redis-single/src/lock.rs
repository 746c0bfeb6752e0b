//! [`RedisLock`]: the backend.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fencelock_core::options::validate_key;
use fencelock_core::waiting::{acquire_with, detached, jitter, Attempt};
use fencelock_core::{
    DistributedLock, Exclusion, FencingToken, GrantId, Guarantees, Lease, LeaseParts, LockError, LockOptions, Result,
    Scope, TokenOrder,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use crate::config::RedisConfig;
use crate::error::{failed, BACKEND};
use crate::grant::RedisGrant;
use crate::scripts::{ACQUIRE, RELEASE};
use crate::waiters::{Subscription, Waiters};

/// What the backend promises when the server persists every write (`appendonly yes`,
/// `appendfsync always`), so the token counter survives a crash or restart.
pub const GUARANTEES_DURABLE: Guarantees = Guarantees {
    backend: "redis",
    exclusion: Exclusion::Conditional,
    tokens: TokenOrder::StrictlyMonotonic,
    scope: Scope::Network,
    assumptions: &[
        "exclusive only while the one server stays up and keeps its data; a failover to an asynchronously replicated replica can grant the lock twice and reuse tokens",
        "tokens strictly increase because the server fsyncs every write (appendfsync always, seen at connect time); turning that off later breaks this",
        "lock expiry runs on the server's wall clock: a clock jump there can end a lease early",
    ],
};

/// What the backend promises when the server does not fsync every write: a restart loses
/// the locks and the token counter, so tokens can start again from 1.
pub const GUARANTEES: Guarantees = Guarantees {
    backend: "redis",
    exclusion: Exclusion::Conditional,
    tokens: TokenOrder::BestEffort,
    scope: Scope::Network,
    assumptions: &[
        "exclusive only while the one server stays up and keeps its data; a restart without persistence or a failover to an asynchronously replicated replica can grant the lock twice",
        "tokens increase only while the counter survives: the server was not seen persisting every write (appendonly yes + appendfsync always), so a restart can reset them",
        "lock expiry runs on the server's wall clock: a clock jump there can end a lease early",
    ],
};

/// Redis keys and channels of one lock key. The `{KEY}` hash tag keeps them on one slot.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn lock(&self, key: &str) -> String {
        format!("{}{{{key}}}:lock", self.prefix)
    }
    fn counter(&self, key: &str) -> String {
        format!("{}{{{key}}}:token", self.prefix)
    }
    pub(crate) fn channel(&self, key: &str) -> String {
        format!("{}{{{key}}}:released", self.prefix)
    }
}

pub(crate) struct Inner {
    pub(crate) conn: ConnectionManager,
    pub(crate) keys: Keys,
    pub(crate) cfg: RedisConfig,
    waiters: Arc<Waiters>,
    guarantees: Guarantees,
}

impl Inner {
    pub(crate) fn failed(&self, doing: &'static str, e: redis::RedisError) -> LockError {
        failed(doing, self.cfg.server(), e)
    }

    pub(crate) async fn release(&self, key: &str, grant: &str) -> Result<bool> {
        let mut invocation = RELEASE.key(self.keys.lock(key));
        invocation.arg(grant).arg(self.keys.channel(key));
        let n: i64 = self.invoke_idempotent("release script", &invocation).await?;
        Ok(n == 1)
    }

    /// Runs a script that is safe to run twice (compare-and-act on our grant), trying once
    /// more when the first try found the connection dropped (the first command after a
    /// server restart does): the connection manager reconnects in between.
    pub(crate) async fn invoke_idempotent<T: redis::FromRedisValue>(
        &self,
        doing: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        let mut conn = self.conn.clone();
        match invocation.invoke_async(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) if e.is_connection_dropped() || e.is_io_error() => {
                tracing::debug!(error = %e, "{doing}: connection dropped; trying once more");
                invocation
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| self.failed(doing, e))
            }
            Err(e) => Err(self.failed(doing, e)),
        }
    }
}

enum Outcome {
    Granted(Lease),
    /// Held by someone else for this many more milliseconds (-1: no TTL on the key).
    Busy(i64),
}

/// The single-instance Redis lock service.
///
/// ```no_run
/// # async fn demo() -> fencelock_core::Result<()> {
/// use fencelock_core::{DistributedLock, LockOptions};
/// let locks = fencelock_redis::RedisLock::connect("redis://127.0.0.1:6379").await?;
/// let lease = locks.acquire("report", &LockOptions::new()).await?;
/// println!("token {}", lease.token());
/// lease.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisLock {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLock")
            .field("server", &self.inner.cfg.server())
            .finish_non_exhaustive()
    }
}

impl RedisLock {
    /// Connects to the server a `redis://` URL names (see [`RedisConfig::from_url`]).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(RedisConfig::from_url(url)?).await
    }

    /// Connects with explicit options.
    pub async fn connect_with(cfg: RedisConfig) -> Result<Self> {
        let client = open_client(&cfg)?;
        let manager_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            .set_response_timeout(Some(cfg.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let bound = cfg.connect_timeout * 3 + cfg.timeout;
        let mut conn =
            match tokio::time::timeout(bound, ConnectionManager::new_with_config(client.clone(), manager_cfg)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(failed("connecting", cfg.server(), e)),
                Err(_) => {
                    return Err(LockError::Unavailable {
                        message: format!("redis unreachable: no connection to {} within {bound:?}", cfg.server()),
                        source: None,
                    })
                }
            };
        let guarantees = if persists_every_write(&mut conn).await {
            GUARANTEES_DURABLE
        } else {
            GUARANTEES
        };
        let waiters = Arc::new(Waiters::new(
            client,
            cfg.server().to_owned(),
            cfg.timeout.max(cfg.connect_timeout),
        ));
        let keys = Keys {
            prefix: cfg.prefix.clone(),
        };
        Ok(RedisLock {
            inner: Arc::new(Inner {
                conn,
                keys,
                cfg,
                waiters,
                guarantees,
            }),
        })
    }

    /// The connection, e.g. for a [`RedisFencedStore`](crate::RedisFencedStore) on the
    /// same server.
    pub fn connection(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    /// The options in use.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.cfg
    }

    /// One acquire script call, in its own task (cancel safety: a grant that lands after
    /// the caller gave up is released by the lease's drop there).
    async fn grant(&self, key: &str, opts: &LockOptions) -> Result<Outcome> {
        let inner = Arc::clone(&self.inner);
        let (key, opts) = (key.to_owned(), *opts);
        detached(BACKEND, async move {
            let grant = GrantId::random();
            let sent_at = Instant::now();
            let mut conn = inner.conn.clone();
            let reply: std::result::Result<(i64, i64), _> = ACQUIRE
                .key(inner.keys.lock(&key))
                .key(inner.keys.counter(&key))
                .arg(grant.as_str())
                .arg(opts.ttl().as_millis() as u64)
                .invoke_async(&mut conn)
                .await;
            let (granted, n) = match reply {
                Ok(r) => r,
                Err(e) => {
                    // The script may have run without our hearing back: free our grant if so.
                    let (inner2, key2, grant2) = (Arc::clone(&inner), key.clone(), grant.to_string());
                    tokio::spawn(async move {
                        let _ = inner2.release(&key2, &grant2).await;
                    });
                    return Err(inner.failed("acquire script", e));
                }
            };
            if granted != 1 {
                return Ok(Outcome::Busy(n));
            }
            let token = FencingToken::new(u64::try_from(n).unwrap_or(0));
            tracing::debug!(%key, %token, "granted");
            let ops = Arc::new(RedisGrant {
                inner: Arc::clone(&inner),
                key: key.clone(),
                grant: grant.to_string(),
            });
            Ok(Outcome::Granted(Lease::new(LeaseParts {
                key,
                token,
                grant,
                sent_at,
                validity: opts.ttl(),
                options: opts,
                ops,
            })))
        })
        .await
    }

    /// One attempt of `acquire`. The first busy answer subscribes to the key's release
    /// channel and re-checks at once; later ones wait for a release message, the holder's
    /// expiry, or the jittered fallback poll, whichever comes first.
    async fn attempt(
        &self,
        key: &str,
        opts: &LockOptions,
        sub: &tokio::sync::Mutex<Option<Subscription>>,
    ) -> Result<Attempt> {
        let mut sub = sub.lock().await;
        let wake = match sub.as_ref() {
            Some(s) => {
                s.ensure().await?;
                Some(s.notified())
            }
            None => None,
        };
        match self.grant(key, opts).await? {
            Outcome::Granted(lease) => Ok(Attempt::Acquired(lease)),
            Outcome::Busy(_) if sub.is_none() => {
                *sub = Some(self.inner.waiters.subscribe(&self.inner.keys.channel(key)).await?);
                Ok(Attempt::Busy {
                    wake: None,
                    retry_at: Some(Instant::now()),
                })
            }
            Outcome::Busy(pttl_ms) => {
                let fallback = jitter(self.inner.cfg.poll);
                let until_expiry = u64::try_from(pttl_ms).map_or(fallback, Duration::from_millis);
                Ok(Attempt::Busy {
                    wake,
                    retry_at: Some(Instant::now() + fallback.min(until_expiry)),
                })
            }
        }
    }
}

/// The client for the URL; for `rediss://`, with ring as the crypto provider (unless the
/// process installed one) and the configured CA.
fn open_client(cfg: &RedisConfig) -> Result<redis::Client> {
    let invalid = |e: redis::RedisError| LockError::InvalidConfig {
        message: format!("`{}` is not a valid Redis URL", cfg.server()),
        source: Some(Box::new(e)),
    };
    #[cfg(feature = "tls")]
    if cfg.client_url.starts_with("rediss://") {
        // Err means another provider is already installed: use that one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if let Some(path) = &cfg.ca_file {
            let root_cert = std::fs::read(path).map_err(|e| LockError::InvalidConfig {
                message: format!("cannot read ca_file {}", path.display()),
                source: Some(Box::new(e)),
            })?;
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            };
            return redis::Client::build_with_tls(cfg.client_url.as_str(), certs).map_err(invalid);
        }
    }
    redis::Client::open(cfg.client_url.as_str()).map_err(invalid)
}

/// `true` when the server fsyncs every write, so the token counter survives a crash.
async fn persists_every_write(conn: &mut ConnectionManager) -> bool {
    async fn get(conn: &mut ConnectionManager, name: &str) -> Option<String> {
        let pair: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(name).query_async(conn).await.ok()?;
        pair.get(1).cloned()
    }
    get(conn, "appendonly").await.as_deref() == Some("yes")
        && get(conn, "appendfsync").await.as_deref() == Some("always")
}

#[async_trait]
impl DistributedLock for RedisLock {
    #[tracing::instrument(level = "debug", skip(self, opts), fields(backend = "redis"))]
    async fn try_acquire(&self, key: &str, opts: &LockOptions) -> Result<Option<Lease>> {
        validate_key(key)?;
        opts.validate_for_try()?;
        match self.grant(key, opts).await? {
            Outcome::Granted(lease) => Ok(Some(lease)),
            Outcome::Busy(_) => Ok(None),
        }
    }

    #[tracing::instrument(level = "debug", skip(self, opts), fields(backend = "redis"))]
    async fn acquire(&self, key: &str, opts: &LockOptions) -> Result<Lease> {
        let sub = tokio::sync::Mutex::new(None);
        acquire_with(key, opts, || self.attempt(key, opts, &sub)).await
    }

    fn guarantees(&self) -> Guarantees {
        self.inner.guarantees.clone()
    }

    fn describe(&self) -> String {
        self.inner.cfg.server().to_owned()
    }
}
