//! The election conformance suite against a real etcd member started by the test (one per
//! test; etcd starts in well under a second), plus etcd-specific election checks. The
//! operator hook deletes the leader's key (the lowest create revision under the
//! election's directory) through a client of its own, as `etcdctl del` would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{GetOptions, SortOrder, SortTarget};
use fencelock_core::election::{Election, Observation};
use fencelock_core::{LockOptions, LostReason};
use fencelock_etcd::EtcdElection;
use fencelock_testkit::conformance::election::{ElectionConfig, ElectionFactory, ElectionFixture};
use fencelock_testkit::etcd_server::EtcdCluster;
use fencelock_testkit::keys::unique_key;
use fencelock_testkit::proxy::{FaultProxy, Mode};

/// The session TTL of every client (etcd leases are whole seconds).
const SESSION_TTL: Duration = Duration::from_secs(2);

struct Etcd {
    cluster: EtcdCluster,
    admin: etcd_client::Client,
}

impl Etcd {
    async fn start() -> Etcd {
        let cluster = tokio::task::spawn_blocking(|| EtcdCluster::start(1))
            .await
            .expect("start etcd");
        let endpoints: Vec<String> = cluster.endpoints().iter().map(|e| format!("http://{e}")).collect();
        let admin = etcd_client::Client::connect(endpoints, None)
            .await
            .expect("operator's connection to etcd");
        Etcd { cluster, admin }
    }

    fn url(&self) -> String {
        self.cluster.url(&format!("session_ttl={}s", SESSION_TTL.as_secs()))
    }

    async fn connect(&self) -> EtcdElection {
        EtcdElection::connect(&self.url()).await.expect("connect to etcd")
    }

    /// The candidate keys of `name`, lowest create revision first: (key, value).
    async fn candidates(&self, name: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        let dir = self.connect().await.seat_dir(name).expect("seat dir");
        let opts = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend);
        let r = self.admin.clone().get(dir, Some(opts)).await.expect("operator's read");
        r.kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
            .collect()
    }
}

impl ElectionFactory for Etcd {
    fn election(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Election>> + Send + '_>> {
        Box::pin(async move { Arc::new(self.connect().await) as Arc<dyn Election> })
    }
}

impl ElectionFixture for Etcd {
    /// `etcdctl del KEY` of the lowest candidate key.
    fn remove_leader<'a>(&'a self, name: &'a str) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let (lowest, _) = self
                .candidates(name)
                .await
                .into_iter()
                .next()
                .expect("a leader's key to remove");
            let r = self
                .admin
                .clone()
                .delete(lowest, None)
                .await
                .expect("operator's delete");
            assert_eq!(r.deleted(), 1, "the operator's delete found no key");
        })
    }
}

fn config() -> ElectionConfig {
    ElectionConfig {
        short_ttl: Duration::from_secs(1),
        slack: Duration::from_secs(2),
        ..ElectionConfig::default()
    }
}

fencelock_testkit::election_suite!(Etcd::start(), config());

/// The recipe's shape on the server: every candidate is one key under the election's
/// directory holding its value; the lowest create revision leads and its create revision
/// is the term; a proclaim changes only our key's value; observe is a push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_are_keys_holding_their_values() {
    let etcd = Etcd::start().await;
    let (a, b) = (etcd.connect().await, etcd.connect().await);
    assert_eq!(a.capabilities().observe, Observation::Native);
    let name = unique_key("elect-shape");
    let la = a
        .campaign(&name, b"a:1", &LockOptions::new())
        .await
        .expect("campaign a");
    let waiting = tokio::spawn({
        let (b, name) = (b.clone(), name.clone());
        async move { b.campaign(&name, b"b:1", &LockOptions::new()).await }
    });
    // Bounded: b's key appears within the wait (its put is one request).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while etcd.candidates(&name).await.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b's candidate key never appeared"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let values: Vec<Vec<u8>> = etcd.candidates(&name).await.into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, vec![b"a:1".to_vec(), b"b:1".to_vec()]);
    la.proclaim(b"a:2").await.expect("proclaim");
    let values: Vec<Vec<u8>> = etcd.candidates(&name).await.into_iter().map(|(_, v)| v).collect();
    assert_eq!(
        values,
        vec![b"a:2".to_vec(), b"b:1".to_vec()],
        "proclaim touched only our key"
    );
    let leader = b.leader(&name).await.expect("leader").expect("a leads");
    assert_eq!((leader.value.as_slice(), leader.term), (&b"a:2"[..], la.term()));
    let term_a = la.term();
    la.resign().await.expect("resign a");
    let lb = waiting.await.expect("b's task").expect("b's campaign");
    assert!(lb.term() > term_a);
    // b's key rode on the waiting lease while it waited and moves onto its session lease
    // at its first renewal: both moves keep the value.
    // Polled (bounded) until the key rides on a lease longer than the waiting lease's 1 s
    // (a sleep checked nothing: the value is b's whether or not the move has landed).
    let dir = b.seat_dir(&name).expect("seat dir");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = etcd
            .admin
            .clone()
            .get(dir.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .expect("read");
        let kvs = r.kvs();
        assert_eq!(kvs.len(), 1, "only b's key is left");
        assert_eq!(kvs[0].value(), b"b:1", "the lease moves kept b's value");
        let granted = etcd
            .admin
            .clone()
            .lease_time_to_live(kvs[0].lease(), None)
            .await
            .expect("lease read")
            .granted_ttl();
        if granted > 1 {
            break; // on b's session lease
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b's key stayed on its {granted} s waiting lease"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let values: Vec<Vec<u8>> = etcd.candidates(&name).await.into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, vec![b"b:1".to_vec()], "the lease moves kept b's value");
    let leader = a.leader(&name).await.expect("leader").expect("b leads");
    assert_eq!((leader.value.as_slice(), leader.term), (&b"b:1"[..], lb.term()));
    lb.resign().await.expect("resign b");
    assert!(etcd.candidates(&name).await.is_empty(), "resign leaves nothing behind");
    a.close().await.expect("close a");
    b.close().await.expect("close b");
}

/// A campaign without auto-renew whose lease is extended past its granted TTL moves its key
/// onto a longer lease: the value must stay (the move re-puts the key). Failed before the
/// move kept the value (`ignore_value`): the key then held an empty value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extending_onto_a_longer_lease_keeps_the_value() {
    let etcd = Etcd::start().await;
    let e = etcd.connect().await;
    let name = unique_key("elect-move");
    let opts = LockOptions::new()
        .with_ttl(Duration::from_secs(2))
        .with_auto_renew(false);
    let l = e.campaign(&name, b"addr", &opts).await.expect("campaign");
    l.lease()
        .extend(Duration::from_secs(30))
        .await
        .expect("extend onto a longer lease");
    let leader = e.leader(&name).await.expect("leader").expect("still leads");
    assert_eq!((leader.value.as_slice(), leader.term), (&b"addr"[..], l.term()));
    l.resign().await.expect("resign");
    e.close().await.expect("close");
}

/// A leader whose client is cut off without resigning (its session lease is no longer
/// kept alive) is replaced within the session TTL, and an observer sees the successor; closing
/// the client instead revokes the session at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_leader_is_replaced_within_the_session_ttl() {
    let etcd = Etcd::start().await;
    let name = unique_key("elect-dead");
    let proxy = FaultProxy::start(etcd.cluster.client_ports()[0]).await;
    let dead_url = format!(
        "etcd://127.0.0.1:{}?session_ttl={}s",
        proxy.port(),
        SESSION_TTL.as_secs()
    );
    let dead = EtcdElection::connect(&dead_url)
        .await
        .expect("connect through the proxy");
    let (next, watcher) = (etcd.connect().await, etcd.connect().await);
    let mut observer = watcher.observe(&name).await.expect("observe");
    assert_eq!(observer.changed().await, Some(None));
    let l = dead
        .campaign(&name, b"dead", &LockOptions::new())
        .await
        .expect("campaign");
    let dead_term = l.term();
    let seen = observer.changed().await.flatten().expect("the first leader");
    assert_eq!(seen.term, dead_term);
    // The "kill": every connection of the leader's client is cut and refused from now on,
    // so nothing is resigned or revoked and its session lease ends by its TTL.
    let started = tokio::time::Instant::now();
    proxy.set(Mode::Reset);
    let wait = SESSION_TTL + Duration::from_secs(4);
    let ln = next
        .campaign(&name, b"next", &LockOptions::new().with_wait(wait))
        .await
        .expect("successor");
    let took = started.elapsed();
    assert!(ln.term() > dead_term);
    assert!(took <= SESSION_TTL + Duration::from_secs(2), "successor after {took:?}");
    // Bounded by the observer's own timeout.
    let seen = loop {
        let s = tokio::time::timeout(Duration::from_secs(5), observer.changed())
            .await
            .expect("observer stalled")
            .expect("feed ended");
        if let Some(s) = s.filter(|s| s.term == ln.term()) {
            break s;
        }
    };
    assert_eq!(seen.value, b"next");
    let closed_term = ln.term();
    let lost = ln.lost();
    next.close().await.expect("close");
    assert!(matches!(lost.await, LostReason::Backend(_)));
    let after = watcher.leader(&name).await.expect("leader");
    assert_eq!(
        after, None,
        "close revoked the session and its key (term {closed_term})"
    );
    watcher.close().await.expect("close watcher");
    assert!(!l.is_leader(), "the cut-off leader still believes it leads");
    drop((l, dead, proxy));
}

/// The observer's request timeout in
/// [`an_observer_whose_re_read_failed_still_reports_the_leader`].
const OUTAGE_TIMEOUT: Duration = Duration::from_secs(1);

/// Rounds in which the observer's watch came back without a fresh read, wanted.
const RESUMED_ROUNDS: usize = 2;

/// At most this many rounds in all.
const OUTAGE_ROUNDS: usize = 10;

/// A watch that broke, followed by a fresh read that failed, is replaced by a watch that
/// must not replay events the observer applied already. Each round: A leads, an observer
/// (through a proxy) starts, A resigns and campaigns again — under the same queue key name
/// (slot 0) — and C queues behind it; the observer has seen all of it. Then the proxy
/// resets the observer's connections (its watch breaks) and refuses new ones for about one
/// and a half request timeouts: the fresh read fails (one timeout), and the replacing
/// watch, sent at once, gets through when the proxy passes again. Before the fix that watch
/// started at the observer's first read and replayed A's resign: the delete of A's
/// *previous* key under the same name removed A's live key, C was reported, and A's own put
/// was refused as a lower term — C for A's whole tenure. A round counts when the observer
/// resumed without a successful read (no `Range` reached the member meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_whose_re_read_failed_still_reports_the_leader() {
    use fencelock_core::election::LeaderInfo;
    use fencelock_testkit::until::{until, until_async, until_eq};

    let etcd = Etcd::start().await;
    let proxy = FaultProxy::start(etcd.cluster.client_ports()[0]).await;
    let observer_url = format!(
        "etcd://127.0.0.1:{}?session_ttl={}s&timeout={}ms",
        proxy.port(),
        SESSION_TTL.as_secs(),
        OUTAGE_TIMEOUT.as_millis()
    );
    let o = EtcdElection::connect(&observer_url)
        .await
        .expect("connect through the proxy");
    let (a, c) = (etcd.connect().await, etcd.connect().await);
    let ranges = || {
        etcd.cluster
            .grpc_calls(0, "Range")
            .expect("the member answers /metrics")
    };
    let (mut resumed, mut rounds) = (0, 0);
    for round in 0..OUTAGE_ROUNDS {
        rounds = round + 1;
        let name = unique_key("elect-outage");
        let first = a
            .campaign(&name, b"a", &LockOptions::new())
            .await
            .expect("A's campaign");
        let observer = o.observe(&name).await.expect("observe");
        let a_key = etcd.candidates(&name).await[0].0.clone();
        first.resign().await.expect("A resigns");
        let la = a.campaign(&name, b"a", &LockOptions::new()).await.expect("A again");
        assert_eq!(etcd.candidates(&name).await[0].0, a_key, "A's key name was not reused");
        let waiting = tokio::spawn({
            let (c, name) = (c.clone(), name.clone());
            async move { c.campaign(&name, b"c", &LockOptions::new()).await }
        });
        until_async("C queued behind A", Duration::from_secs(5), async || {
            etcd.candidates(&name).await.len() == 2
        })
        .await;
        // The observer has applied everything up to here once it reports this value.
        la.proclaim(b"a2").await.expect("proclaim");
        let leads = |value: &[u8]| {
            Some(LeaderInfo {
                value: value.to_vec(),
                term: la.term(),
            })
        };
        until("the observer saw A's proclaim", Duration::from_secs(5), || {
            observer.current() == leads(b"a2")
        })
        .await;
        let ranges_before = ranges();
        proxy.set(Mode::Reset);
        // The outage's length (a fault, not a wait for a state): the watch breaks at once,
        // the fresh read after a 40 ms pause fails after one timeout, and the replacing
        // watch is under way when the proxy passes again.
        tokio::time::sleep(Duration::from_millis(40) + OUTAGE_TIMEOUT * 3 / 2).await;
        proxy.set(Mode::Pass);
        la.proclaim(b"a3").await.expect("proclaim after the outage");
        until_eq(
            &format!("round {round}: after the outage the observer reports A, its leader"),
            OUTAGE_TIMEOUT * 4 + Duration::from_secs(2),
            leads(b"a3"),
            || observer.current(),
        )
        .await;
        assert_eq!(observer.current(), o.leader(&name).await.expect("leader"));
        if ranges() == ranges_before + 1 {
            // Only the `leader` read just now: the watch came back without a fresh read.
            resumed += 1;
        }
        la.resign().await.expect("A resigns");
        let lc = waiting.await.expect("C's task").expect("C's campaign");
        lc.resign().await.expect("C resigns");
        drop(observer);
        if resumed == RESUMED_ROUNDS {
            break;
        }
    }
    eprintln!("{resumed} of {rounds} rounds resumed the watch without a fresh read");
    assert_eq!(
        resumed, RESUMED_ROUNDS,
        "too few rounds resumed the watch without a fresh read in {OUTAGE_ROUNDS} rounds"
    );
    for e in [&o, &a, &c] {
        e.close().await.expect("close");
    }
}
