//! The etcd client with every unary call bounded by the request timeout.

use std::future::Future;

use etcd_client::{Client, ConnectOptions, KvClient, Txn, TxnResponse};
use fencelock_core::Result;

use crate::config::EtcdConfig;
use crate::error::{failed, failed_connecting, failed_first_read, kind, timed_out, Kind};

/// A connected client and the options it was made with.
#[derive(Clone)]
pub(crate) struct Cluster {
    pub client: Client,
    pub cfg: EtcdConfig,
}

impl Cluster {
    /// Connects to every endpoint (the client balances over them) and checks that the
    /// cluster answers with a leader: `Unavailable` otherwise.
    pub async fn connect(cfg: EtcdConfig) -> Result<Self> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(cfg.connect_timeout)
            // HTTP/2 pings find dead connections; etcd refuses pings more often than every
            // 5 s (--grpc-keepalive-min-time) by closing the connection, so stay above that.
            .with_keep_alive(std::time::Duration::from_secs(10), cfg.timeout)
            .with_require_leader(true);
        if let Some((u, p)) = &cfg.user {
            options = options.with_user(u.clone(), p.clone());
        }
        let endpoints: Vec<String> = cfg.endpoints.iter().map(|e| format!("http://{e}")).collect();
        let connecting = Client::connect(endpoints, Some(options));
        let client = match tokio::time::timeout(cfg.connect_timeout + cfg.timeout, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(failed_connecting(&cfg.display, cfg.user.is_some(), e)),
            Err(_) => return Err(timed_out("connecting", &cfg.display, cfg.connect_timeout + cfg.timeout)),
        };
        let cluster = Cluster { client, cfg };
        // The client connects lazily: one linearizable read proves a leader answers.
        let probe = format!("{}/", cluster.cfg.prefix);
        cluster
            .call("checking the cluster", |mut c| {
                let probe = probe.clone();
                async move { c.get(probe, None).await }
            })
            .await
            .map_err(|e| failed_first_read(e, &cluster.cfg.display, cluster.cfg.user.is_some()))?;
        Ok(cluster)
    }

    /// Runs one request, bounded in all by the request timeout, errors mapped. Each try
    /// gets a share of the timeout (timeout / (endpoints + 1), at least 100 ms; all of it
    /// with one endpoint), so a silent member costs only that share. A request that failed without an answer from a healthy
    /// leader — the member it went to is down (refused, reset), or the cluster is between
    /// leaders ("leader changed", "no leader") — is sent again after a short pause while
    /// the timeout lasts (see [`crate::error::kind`]: `Kind::Unreachable`); the client
    /// balances over the endpoints, so another member may
    /// take it. Every request we send is safe to repeat: puts are guarded by a compare on
    /// our own key (a put that did land is found by the retry's else branch), a delete is
    /// guarded by our key's create revision (it can never remove a newer key of the same
    /// name; a repeat after one that landed finds nothing, which the release settles by
    /// reading the key's lease: [`crate::cleanup::release_key`]), reads and keep-alives are idempotent, and a duplicate lease
    /// grant only leaves a lease that expires unused.
    pub async fn call<T, F, Fut>(&self, doing: &'static str, op: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.call_counting_echoes(doing, op).await.0
    }

    /// [`call`](Self::call), also saying whether some try went out without an answer (cut
    /// off by its share of the timeout, or failed on the way): such a try may still reach
    /// the server later — an *echo* of the request that the caller must allow for.
    pub async fn call_counting_echoes<T, F, Fut>(&self, doing: &'static str, op: F) -> (Result<T>, bool)
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.tries(doing, &self.client, op).await
    }

    /// One transaction, as [`call_counting_echoes`](Self::call_counting_echoes) sends a
    /// request — each try on a clone of the KV client alone, not of the whole client (eight
    /// gRPC clients; cloning them cost ~5 µs per request, on every acquire and release).
    pub async fn txn_counting_echoes(&self, doing: &'static str, txn: &Txn) -> (Result<TxnResponse>, bool) {
        let kv = self.client.kv_client();
        self.tries(doing, &kv, |mut kv: KvClient| {
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await
    }

    /// [`txn_counting_echoes`](Self::txn_counting_echoes) without the echo flag.
    pub async fn txn(&self, doing: &'static str, txn: &Txn) -> Result<TxnResponse> {
        self.txn_counting_echoes(doing, txn).await.0
    }

    /// The tries of one request on clones of `handle`, bounded as [`call`](Self::call) says.
    async fn tries<H, T, F, Fut>(&self, doing: &'static str, handle: &H, op: F) -> (Result<T>, bool)
    where
        H: Clone,
        F: Fn(H) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.cfg.timeout;
        // A member that is silent (partitioned, not refusing) must not eat the whole
        // timeout: each try gets a share of it, so later tries can reach another member.
        // With one member there is nowhere else to go: its try gets the whole timeout.
        let share = match self.cfg.endpoints.len() {
            1 => self.cfg.timeout,
            n => (self.cfg.timeout / (n as u32 + 1)).max(std::time::Duration::from_millis(100)),
        };
        let mut pause = std::time::Duration::from_millis(20);
        let mut last = None;
        let mut echoes = false;
        for _ in 0..10 {
            let until = (tokio::time::Instant::now() + share).min(deadline);
            let attempt = tokio::time::timeout_at(until, op(handle.clone())).await;
            let attempt = match attempt {
                Err(_) if tokio::time::Instant::now() < deadline && self.cfg.endpoints.len() > 1 => {
                    tracing::debug!("{doing}: no answer within {share:?}; trying again");
                    echoes = true;
                    continue;
                }
                other => other,
            };
            match attempt {
                Ok(Ok(v)) => return (Ok(v), echoes),
                Ok(Err(e)) if kind(&e) == Kind::Unreachable => {
                    tracing::debug!(error = %e, "{doing}: no answer from a leader; trying again");
                    echoes = true;
                    last = Some(e);
                    if tokio::time::Instant::now() + pause >= deadline {
                        break;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(200));
                }
                Ok(Err(e)) => return (Err(failed(doing, &self.cfg.display, e)), echoes),
                Err(_) => {
                    echoes = true;
                    break;
                }
            }
        }
        let e = match last {
            Some(e) => failed(doing, &self.cfg.display, e),
            None => timed_out(doing, &self.cfg.display, self.cfg.timeout),
        };
        (Err(e), echoes)
    }

    /// The cluster, for messages.
    pub fn display(&self) -> &str {
        &self.cfg.display
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("endpoints", &self.cfg.endpoints)
            .finish_non_exhaustive()
    }
}
