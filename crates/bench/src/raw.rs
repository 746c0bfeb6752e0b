//! The raw minimum of each backend: the fewest client-crate requests a correct lock
//! needs, issued directly, with nothing else — no tokens, no lease bookkeeping, no
//! waiting (a busy key is an error: the raw minimums are only measured uncontended).
//!
//! * Redis: `SET key id NX PX ttl`, then a compare-and-delete script (2 round trips).
//! * Redlock: the same, sent to every node at once; a quorum must say OK.
//! * etcd: a transaction "create the key with the lease if it does not exist", then a
//!   transaction "delete it if it is still the one we created" (2 requests; the lease is
//!   granted once beforehand, as a session would be). The delete is guarded because a
//!   plain delete by name, repeated or late, could remove the next holder's key.
//! * ZooKeeper: create an ephemeral sequential node, list the queue to see ours is first,
//!   delete it (3 requests; the parent exists beforehand).

use std::sync::atomic::{AtomicU64, Ordering};

use fencelock_testkit::cycle_cost::REDIS_COMPARE_AND_DELETE;
use futures_util::future::{join_all, BoxFuture};
use redis::aio::MultiplexedConnection;

use crate::error::{BenchError, Result};
use crate::subject::{Held, Subject, TTL};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A lock holder id unique in this process.
fn unique_id() -> String {
    format!("{}-{}", std::process::id(), NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

/// `SET NX PX` + compare-and-delete on one or several Redis servers (several: Redlock).
pub struct RawRedis {
    conns: Vec<MultiplexedConnection>,
    script: redis::Script,
    who: &'static str,
}

impl RawRedis {
    /// Connects to each node URL (`redis://…`).
    pub async fn connect(nodes: &[String]) -> Result<Self> {
        let who = if nodes.len() == 1 { "raw redis" } else { "raw redlock" };
        let mut conns = Vec::new();
        for url in nodes {
            let client = redis::Client::open(url.as_str()).map_err(|e| BenchError::client(who, "opening", e))?;
            conns.push(
                client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| BenchError::client(who, "connecting", e))?,
            );
        }
        Ok(RawRedis {
            conns,
            script: redis::Script::new(REDIS_COMPARE_AND_DELETE),
            who,
        })
    }
}

impl Subject for RawRedis {
    fn acquire<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Held>> {
        Box::pin(async move {
            let id = unique_id();
            let ttl_ms = TTL.as_millis() as u64;
            let sets = self.conns.iter().map(|c| {
                let (mut c, id) = (c.clone(), id.clone());
                async move {
                    let r: redis::RedisResult<Option<String>> = redis::cmd("SET")
                        .arg(key)
                        .arg(id)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async(&mut c)
                        .await;
                    r
                }
            });
            let answers = join_all(sets).await;
            let granted = answers.iter().filter(|r| matches!(r, Ok(Some(_)))).count();
            // A failed SET is not "busy": say what failed (a newcomer saw "the key was
            // busy" once, not reproduced; an error answer would have read the same).
            let failure = answers.into_iter().find_map(|r| r.err());
            let (conns, script, key, who) = (self.conns.clone(), self.script.clone(), key.to_owned(), self.who);
            let release: Held = Box::pin(async move {
                let dels = conns.iter().map(|c| {
                    let mut c = c.clone();
                    let mut call = script.prepare_invoke();
                    call.key(&key).arg(&id);
                    async move { call.invoke_async::<i64>(&mut c).await }
                });
                for r in join_all(dels).await {
                    r.map_err(|e| BenchError::client(who, "compare-and-delete", e))?;
                }
                Ok(())
            });
            if granted < self.conns.len() / 2 + 1 {
                release.await?;
                return Err(match failure {
                    Some(e) => BenchError::client(self.who, "SET NX", e),
                    None => BenchError::client(self.who, "SET NX", "the key was busy"),
                });
            }
            Ok(release)
        })
    }
}

/// The TTL of the raw minimum's etcd lease, seconds.
const RAW_ETCD_LEASE_SECS: i64 = 900;

/// A transaction that creates the key with a lease if absent, then a delete.
pub struct RawEtcd {
    client: etcd_client::Client,
    lease: i64,
}

impl RawEtcd {
    /// Connects to the endpoints (`HOST:PORT`) and grants the lease the keys ride on.
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        let mut client = etcd_client::Client::connect(endpoints, None)
            .await
            .map_err(|e| BenchError::client("raw etcd", "connecting", e))?;
        let lease = client
            // Long enough for any run without a keep-alive (a session would keep it alive; the
            // keep-alives are not part of the per-lock cost). It expires unused afterwards.
            .lease_grant(RAW_ETCD_LEASE_SECS, None)
            .await
            .map_err(|e| BenchError::client("raw etcd", "granting a lease", e))?
            .id();
        Ok(RawEtcd { client, lease })
    }
}

impl Subject for RawEtcd {
    fn acquire<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Held>> {
        use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
        Box::pin(async move {
            let key = format!("raw/{key}");
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    "",
                    Some(PutOptions::new().with_lease(self.lease)),
                )]);
            let mut kv = self.client.kv_client();
            let r = kv
                .txn(txn)
                .await
                .map_err(|e| BenchError::client("raw etcd", "txn", e))?;
            if !r.succeeded() {
                return Err(BenchError::client("raw etcd", "txn", "the key was busy"));
            }
            let rev = r.header().map_or(0, |h| h.revision());
            let release: Held = Box::pin(async move {
                let guarded = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, rev)])
                    .and_then([TxnOp::delete(key, None)]);
                kv.txn(guarded)
                    .await
                    .map_err(|e| BenchError::client("raw etcd", "guarded delete", e))?;
                Ok(())
            });
            Ok(release)
        })
    }
}

/// Create an ephemeral sequential node, list the queue, delete the node.
pub struct RawZk {
    client: zookeeper_client::Client,
    /// Parents made already (made once per key, before measuring: the warm-up pays it).
    parents: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl RawZk {
    /// Connects to `HOST:PORT[,…]` and makes the parent of the raw lock nodes.
    pub async fn connect(connect_string: &str) -> Result<Self> {
        let client = zookeeper_client::Client::connect(connect_string)
            .await
            .map_err(|e| BenchError::client("raw zookeeper", "connecting", e))?;
        Ok(RawZk {
            client,
            parents: Default::default(),
        })
    }

    async fn ensure_parent(&self, dir: &str) -> Result<()> {
        use zookeeper_client::{Acls, CreateMode};
        let opts = CreateMode::Persistent.with_acls(Acls::anyone_all());
        match self.client.mkdir(dir, &opts).await {
            Ok(()) | Err(zookeeper_client::Error::NodeExists) => Ok(()),
            Err(e) => Err(BenchError::client("raw zookeeper", "mkdir", e)),
        }
    }
}

impl Subject for RawZk {
    fn acquire<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Held>> {
        use zookeeper_client::{Acls, CreateMode};
        Box::pin(async move {
            let dir = format!("/fencelock-bench-raw/{key}");
            let known = self.parents.lock().unwrap_or_else(|p| p.into_inner()).contains(&dir);
            if !known {
                self.ensure_parent(&dir).await?;
                self.parents
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(dir.clone());
            }
            let opts = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
            let (_, seq) = self
                .client
                .create(&format!("{dir}/lock-"), b"", &opts)
                .await
                .map_err(|e| BenchError::client("raw zookeeper", "create", e))?;
            let ours = format!("lock-{seq}");
            let (children, _) = self
                .client
                .get_children(&dir)
                .await
                .map_err(|e| BenchError::client("raw zookeeper", "get_children", e))?;
            let first = children.iter().min().is_some_and(|c| *c == ours);
            let client = self.client.clone();
            let path = format!("{dir}/{ours}");
            let release: Held = Box::pin(async move {
                client
                    .delete(&path, None)
                    .await
                    .map_err(|e| BenchError::client("raw zookeeper", "delete", e))
            });
            if !first {
                release.await?;
                return Err(BenchError::client("raw zookeeper", "create", "the key was busy"));
            }
            Ok(release)
        })
    }
}
