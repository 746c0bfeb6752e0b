//! The conformance suite against real etcd: a single member and a 3-member cluster,
//! started by the test (one per test; etcd starts in well under a second). The fixture's
//! hooks act on etcd directly through a client of their own, as an operator would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::Arc;
use std::time::Duration;

use fencelock_core::DistributedLock;
use fencelock_etcd::{EtcdConfig, EtcdLock};
use fencelock_testkit::conformance::{BoxFuture, ClientFactory, Fixture, Proxied, SuiteConfig};
use fencelock_testkit::etcd_server::EtcdCluster;
use fencelock_testkit::proxy::FaultProxy;

/// The session TTL every client of the suite uses.
const SESSION_TTL: Duration = Duration::from_secs(2);

/// etcd leases are whole seconds, at least 1 s with the testkit's 100 ms elections.
fn config() -> SuiteConfig {
    SuiteConfig {
        short_ttl: Duration::from_secs(1),
        session_timeout: SESSION_TTL,
        ..SuiteConfig::default()
    }
}

/// One cluster per test, and an operator's client of it.
struct Etcd {
    cluster: EtcdCluster,
    admin: etcd_client::Client,
}

impl Etcd {
    async fn start(members: usize) -> Etcd {
        let cluster = EtcdCluster::start(members);
        let endpoints: Vec<String> = cluster.endpoints().iter().map(|e| format!("http://{e}")).collect();
        let admin = etcd_client::Client::connect(endpoints, None)
            .await
            .expect("operator's connection to etcd");
        Etcd { cluster, admin }
    }

    fn url(&self) -> String {
        self.cluster.url(&format!("session_ttl={}s", SESSION_TTL.as_secs()))
    }

    /// The directory holding `key`'s lock and queue keys.
    fn dir(&self, key: &str) -> String {
        EtcdConfig::from_url(&self.url()).expect("suite URL").lock_dir(key)
    }
}

impl ClientFactory for Etcd {
    fn client(&self) -> BoxFuture<'_, Arc<dyn DistributedLock>> {
        Box::pin(async move {
            // A connect is bounded by the 2 s request timeout; a three-member cluster on a
            // loaded CI machine (the suite runs beside other test executables) once missed
            // it. The cases test what a client does, not the first read's latency: up to
            // three tries, each still bounded.
            let mut last = None;
            for _ in 0..3 {
                match EtcdLock::connect(&self.url()).await {
                    Ok(c) => return Arc::new(c) as Arc<dyn DistributedLock>,
                    Err(e) if e.is_temporary() => last = Some(e),
                    Err(e) => panic!("connect to etcd: {e:?}"),
                }
            }
            panic!("connect to etcd, three tries: {last:?}")
        })
    }
}

impl Fixture for Etcd {
    /// `etcdctl del --prefix DIR`: the lock key and every queue key of `key`.
    fn remove_grant<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut admin = self.admin.clone();
            admin
                .delete(self.dir(key), Some(etcd_client::DeleteOptions::new().with_prefix()))
                .await
                .expect("operator's delete");
        })
    }

    fn records<'a>(&'a self, key: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            let mut admin = self.admin.clone();
            let opts = etcd_client::GetOptions::new().with_prefix().with_count_only();
            admin
                .get(self.dir(key), Some(opts))
                .await
                .expect("operator's count")
                .count() as usize
        })
    }

    fn connections(&self) -> BoxFuture<'_, Option<usize>> {
        Box::pin(async move { Some(self.cluster.client_connections()) })
    }

    fn proxied_client(&self, request_timeout: Duration) -> BoxFuture<'_, Option<Proxied>> {
        Box::pin(async move {
            let mut proxies = Vec::new();
            for port in self.cluster.client_ports() {
                proxies.push(FaultProxy::start(port).await);
            }
            let hosts: Vec<String> = proxies.iter().map(|p| format!("127.0.0.1:{}", p.port())).collect();
            let url = format!(
                "etcd://{}?session_ttl={}s&timeout={}ms",
                hosts.join(","),
                SESSION_TTL.as_secs(),
                request_timeout.as_millis()
            );
            let client = Arc::new(EtcdLock::connect(&url).await.expect("connect through the proxies"));
            Some(Proxied {
                client: client as Arc<dyn DistributedLock>,
                proxies,
            })
        })
    }
}

mod single {
    use super::*;
    fencelock_testkit::conformance_suite!(Etcd::start(1), config());
}

mod cluster_of_three {
    use super::*;
    fencelock_testkit::conformance_suite!(Etcd::start(3), config());
}
