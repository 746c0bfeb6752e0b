//! The backends a run measures: started here on loopback (and stopped when dropped), or
//! named by URL. Each knows its raw minimum, its peers, and how to read the server's own
//! request counters.

use std::time::Duration;

use fencelock_testkit::etcd_server::EtcdCluster;
use fencelock_testkit::pg_server::PgServer;
use fencelock_testkit::process::{http, tcp_exchange_to_eof};
use fencelock_testkit::redis_server::{redlock_url, start_many};
use fencelock_testkit::zk_server::ZkEnsemble;
use serde::Serialize;

use crate::error::{BenchError, Result};
use crate::peers::{DistributedLockRedis, Rslock};
use crate::pg::{DistributedLockPostgres, RawPg};
use crate::raw::{RawEtcd, RawRedis, RawZk};
use crate::subject::Subject;

/// The kind of backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One Redis server.
    Redis,
    /// Redlock over independent Redis servers.
    Redlock,
    /// etcd.
    Etcd,
    /// ZooKeeper.
    Zookeeper,
    /// PostgreSQL.
    Postgres,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 5] = [Kind::Redis, Kind::Redlock, Kind::Etcd, Kind::Zookeeper, Kind::Postgres];

    /// The name used in the report and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Redis => "redis",
            Kind::Redlock => "redlock",
            Kind::Etcd => "etcd",
            Kind::Zookeeper => "zookeeper",
            Kind::Postgres => "postgres",
        }
    }

    /// Parses a name from `--only`.
    pub fn parse(name: &str) -> Result<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == name || (name == "zk" && *k == Kind::Zookeeper))
            .ok_or_else(|| {
                BenchError::Usage(format!(
                    "unknown backend `{name}` (redis, redlock, etcd, zookeeper, postgres)"
                ))
            })
    }
}

/// Servers this run started, held only to be stopped when dropped.
type Owned = Box<dyn std::any::Any + Send + Sync>;

/// One backend under measurement.
pub struct Target {
    /// Its kind.
    pub kind: Kind,
    /// What the report calls it, e.g. `redlock (5 nodes)`.
    pub label: String,
    /// Our URL for it.
    pub url: String,
    /// For the raw minimum and the peers: `redis://H:P` per node (Redis, Redlock),
    /// `H:P` per member (etcd), or the connect string (ZooKeeper).
    pub nodes: Vec<String>,
    owned: Option<Owned>,
}

/// The number of Redlock nodes a run starts.
pub const REDLOCK_NODES: usize = 5;

impl Target {
    /// Starts the servers for `kind` on loopback, on free ports. Fails (with how to install
    /// it) when a server cannot start.
    pub async fn start(kind: Kind) -> Result<Target> {
        let started = tokio::task::spawn_blocking(move || match kind {
            Kind::Redis => {
                let servers = start_many(1);
                (servers[0].url(), Box::new(servers) as Owned)
            }
            Kind::Redlock => {
                let servers = start_many(REDLOCK_NODES);
                (redlock_url(&servers, ""), Box::new(servers) as Owned)
            }
            Kind::Etcd => {
                let cluster = EtcdCluster::single();
                (cluster.url(""), Box::new(cluster) as Owned)
            }
            Kind::Zookeeper => {
                let ensemble = ZkEnsemble::standalone();
                (ensemble.url("/fencelock-bench", ""), Box::new(ensemble) as Owned)
            }
            Kind::Postgres => {
                let server = PgServer::start();
                (server.url(), Box::new(server) as Owned)
            }
        })
        .await
        .map_err(|e| {
            let panic = e.try_into_panic().ok();
            let why = panic
                .as_deref()
                .and_then(fencelock_core::panic::text)
                .unwrap_or("the launcher failed");
            BenchError::Usage(format!("cannot start the {} server(s): {why}", kind.name()))
        })?;
        // The URL says the rest (label, nodes), as for servers named on the command line.
        let (url, owned) = started;
        Ok(Target {
            owned: Some(owned),
            ..Target::from_url(&url)?
        })
    }

    /// A backend named by URL (`redis://`, `redlock://`, `etcd://`, `zk://`): measured as
    /// it is; its servers are not ours to start or stop.
    pub fn from_url(url: &str) -> Result<Target> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| BenchError::Usage(format!("`{url}` is not a URL (e.g. redis://127.0.0.1:6379)")))?;
        if !matches!(scheme, "redis" | "redlock" | "etcd" | "zk" | "postgres" | "postgresql") {
            return Err(BenchError::Usage(format!(
                "cannot benchmark `{scheme}://` (redis, redlock, etcd, zk, postgres)"
            )));
        }
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let (creds, hosts) = match authority.rsplit_once('@') {
            Some((c, h)) => (format!("{c}@"), h),
            None => (String::new(), authority),
        };
        if hosts.is_empty() {
            return Err(BenchError::Usage(format!("`{url}` names no host")));
        }
        let hosts: Vec<&str> = hosts.split(',').collect();
        let (kind, nodes) = match scheme {
            "redis" => (Kind::Redis, vec![format!("redis://{creds}{}", hosts[0])]),
            "redlock" => (
                Kind::Redlock,
                hosts.iter().map(|h| format!("redis://{creds}{h}")).collect(),
            ),
            "etcd" => (Kind::Etcd, hosts.iter().map(|h| h.to_string()).collect()),
            // tokio-postgres takes the whole URL (libpq form) for the raw minimum and the peer.
            "postgres" | "postgresql" => (Kind::Postgres, vec![url.to_owned()]),
            _ => (Kind::Zookeeper, vec![hosts.join(",")]),
        };
        let label = match kind {
            Kind::Redlock => format!("redlock ({} nodes)", nodes.len()),
            k => k.name().to_owned(),
        };
        Ok(Target {
            kind,
            label,
            url: url.to_owned(),
            nodes,
            owned: None,
        })
    }

    /// The raw minimum for this backend.
    pub async fn raw(&self) -> Result<Box<dyn Subject>> {
        Ok(match self.kind {
            Kind::Redis | Kind::Redlock => Box::new(RawRedis::connect(&self.nodes).await?),
            Kind::Etcd => Box::new(RawEtcd::connect(&self.nodes).await?),
            Kind::Zookeeper => Box::new(RawZk::connect(&self.nodes[0]).await?),
            Kind::Postgres => Box::new(RawPg::connect(&self.nodes[0]).await?),
        })
    }

    /// The names of the peer crates that support this backend.
    pub fn peer_names(&self) -> &'static [&'static str] {
        match self.kind {
            Kind::Redis | Kind::Redlock => &["rslock", "distributed-lock"],
            Kind::Postgres => &["distributed-lock"],
            // Neither peer has an etcd or ZooKeeper backend.
            Kind::Etcd | Kind::Zookeeper => &[],
        }
    }

    /// A new client of peer `name` (one of [`peer_names`](Self::peer_names)).
    pub async fn peer(&self, name: &str) -> Result<Box<dyn Subject>> {
        Ok(match name {
            "rslock" => Box::new(Rslock::new(&self.nodes)),
            "distributed-lock" if self.kind == Kind::Postgres => {
                Box::new(DistributedLockPostgres::connect(&self.nodes[0]).await?)
            }
            "distributed-lock" => Box::new(DistributedLockRedis::connect(&self.nodes).await?),
            other => return Err(BenchError::Usage(format!("no peer `{other}` for {}", self.label))),
        })
    }

    /// Requests the servers have received so far, by their own counters: Redis script
    /// calls (`EVALSHA` + `EVAL`, summed over nodes), etcd gRPC messages received (unary
    /// calls and stream messages such as keep-alives), ZooKeeper packets received (requests
    /// and pings). `None` when the counters cannot be read (etcd and ZooKeeper counters
    /// are read on loopback only).
    pub async fn server_requests(&self) -> Option<u64> {
        self.counter(RedisCount::Scripts).await
    }

    /// Commands the servers have run so far, by their own counters: every Redis command
    /// (`INFO commandstats`, summed over nodes, less the `INFO` calls that read them);
    /// etcd and ZooKeeper count as in [`server_requests`](Self::server_requests). For the
    /// contention runs' commands per grant. `None` when the counters cannot be read, and
    /// for PostgreSQL, whose backends flush their statistics lazily (up to seconds after
    /// the fact), so a count over a run of seconds would be wrong rather than rough.
    pub async fn server_commands(&self) -> Option<u64> {
        if self.kind == Kind::Postgres {
            return None;
        }
        self.counter(RedisCount::All).await
    }

    /// What the counters of [`server_commands`](Self::server_commands) count.
    pub fn command_unit(&self) -> &'static str {
        match self.kind {
            Kind::Redis | Kind::Redlock => "Redis commands (all nodes)",
            Kind::Etcd => "gRPC messages received",
            Kind::Zookeeper => "packets received",
            Kind::Postgres => "not counted (statistics flushed lazily)",
        }
    }

    async fn counter(&self, redis: RedisCount) -> Option<u64> {
        match self.kind {
            Kind::Redis | Kind::Redlock => {
                let mut total = 0;
                for url in &self.nodes {
                    total += redis_command_calls(url, redis).await?;
                }
                Some(total)
            }
            Kind::Etcd => {
                let mut total = 0;
                for ep in &self.nodes {
                    let port = loopback_port(ep)?;
                    let body = tokio::task::spawn_blocking(move || http(port, "GET", "/metrics", ""))
                        .await
                        .ok()??;
                    total += body
                        .lines()
                        .filter(|l| l.starts_with("grpc_server_msg_received_total{"))
                        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                        .sum::<f64>() as u64;
                }
                Some(total)
            }
            Kind::Zookeeper => {
                let mut total = 0;
                for ep in self.nodes[0].split(',') {
                    let port = loopback_port(ep)?;
                    let reply = tokio::task::spawn_blocking(move || tcp_exchange_to_eof(port, b"mntr"))
                        .await
                        .ok()??;
                    total += String::from_utf8_lossy(&reply)
                        .lines()
                        .find_map(|l| l.strip_prefix("zk_packets_received")?.trim().parse::<u64>().ok())?;
                }
                Some(total)
            }
            Kind::Postgres => {
                let row = pg_query_one(&self.nodes[0], "SELECT sum(xact_commit)::bigint FROM pg_stat_database").await?;
                u64::try_from(row.get::<_, i64>(0)).ok()
            }
        }
    }

    /// What the counters of [`server_requests`](Self::server_requests) count, for the report.
    pub fn request_unit(&self) -> &'static str {
        match self.kind {
            Kind::Redis | Kind::Redlock => "script calls (all nodes)",
            Kind::Etcd => "gRPC messages received",
            Kind::Zookeeper => "packets received",
            Kind::Postgres => "transactions committed (statistics flushed about once a second)",
        }
    }

    /// The version the server reports, when it can be read.
    pub async fn server_version(&self) -> Option<String> {
        match self.kind {
            Kind::Redis | Kind::Redlock => {
                let client = redis::Client::open(self.nodes[0].as_str()).ok()?;
                let mut c = client.get_multiplexed_async_connection().await.ok()?;
                let info: String = redis::cmd("INFO").arg("server").query_async(&mut c).await.ok()?;
                info.lines()
                    .find_map(|l| l.strip_prefix("redis_version:"))
                    .map(|v| format!("redis-server {}", v.trim()))
            }
            Kind::Etcd => {
                let port = loopback_port(&self.nodes[0])?;
                let body = tokio::task::spawn_blocking(move || http(port, "GET", "/version", ""))
                    .await
                    .ok()??;
                let at = body.find("\"etcdserver\":\"")? + 14;
                Some(format!("etcd {}", body[at..].split('"').next()?))
            }
            Kind::Zookeeper => {
                let port = loopback_port(self.nodes[0].split(',').next()?)?;
                let reply = tokio::task::spawn_blocking(move || tcp_exchange_to_eof(port, b"mntr"))
                    .await
                    .ok()??;
                let text = String::from_utf8_lossy(&reply).into_owned();
                let v = text.lines().find_map(|l| l.strip_prefix("zk_version"))?.trim();
                Some(format!("ZooKeeper {}", v.split(['-', ',']).next().unwrap_or(v)))
            }
            Kind::Postgres => {
                let row = pg_query_one(&self.nodes[0], "SELECT current_setting('server_version')").await?;
                Some(format!("PostgreSQL {}", row.get::<_, String>(0)))
            }
        }
    }

    /// Whether this run started (and will stop) the servers.
    pub fn started_here(&self) -> bool {
        self.owned.is_some()
    }
}

/// The port of `127.0.0.1:PORT` / `localhost:PORT`; `None` for other hosts.
fn loopback_port(endpoint: &str) -> Option<u16> {
    let (host, port) = endpoint.rsplit_once(':')?;
    matches!(host, "127.0.0.1" | "localhost").then(|| port.parse().ok())?
}

/// Which Redis commands a counter sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RedisCount {
    /// `EVALSHA` + `EVAL`.
    Scripts,
    /// Every command but `INFO` (the reading itself).
    All,
}

/// The calls of the commands `which` the server has run (`INFO commandstats`).
async fn redis_command_calls(url: &str, which: RedisCount) -> Option<u64> {
    let client = redis::Client::open(url).ok()?;
    let mut c = tokio::time::timeout(Duration::from_secs(2), client.get_multiplexed_async_connection())
        .await
        .ok()?
        .ok()?;
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut c).await.ok()?;
    Some(
        info.lines()
            .filter(|l| match which {
                RedisCount::Scripts => l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"),
                RedisCount::All => l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"),
            })
            .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
            .sum(),
    )
}

/// One row of `sql` on a fresh connection to `url` (bounded by 2 s); `None` on failure.
async fn pg_query_one(url: &str, sql: &str) -> Option<tokio_postgres::Row> {
    let connecting = tokio_postgres::connect(url, tokio_postgres::NoTls);
    let (client, connection) = tokio::time::timeout(Duration::from_secs(2), connecting)
        .await
        .ok()?
        .ok()?;
    tokio::spawn(connection);
    tokio::time::timeout(Duration::from_secs(2), client.query_one(sql, &[]))
        .await
        .ok()?
        .ok()
}
