//! The etcd client with every unary call bounded by the request timeout.

use std::future::Future;

use etcd_client::{Client, ConnectOptions, KvClient, Txn, TxnResponse};
use fencelock_core::Result;

use crate::config::EtcdConfig;
use crate::error::{failed, failed_connecting, failed_first_read, kind, timed_out, Kind};
use crate::watch_stream::WatchStreams;

/// The HTTP/2 client connection preface and an empty SETTINGS frame (RFC 9113 §3.4, §6.5).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// `e`, the connect's failure, as a configuration error when an endpoint turns out to
/// answer in another protocol than HTTP/2 — the wrong service on the port. Asked only
/// after a connect found no server to talk to (`Unavailable`): the HTTP/2 client reports
/// the wrong service as a broken pipe or a protocol error indistinguishable from a dying
/// member, and `fencelock` would exit 69 after the connect's bound (docs/cli.md promises
/// 78 for it, as Redis and PostgreSQL give). Hand-written: a diagnosis of a few lines that
/// no client crate offers.
async fn wrong_service(cfg: &EtcdConfig, e: fencelock_core::LockError) -> fencelock_core::LockError {
    if !matches!(e, fencelock_core::LockError::Unavailable { .. }) {
        return e;
    }
    first_not_etcd(cfg, &cfg.endpoints).await.unwrap_or(e)
}

/// The error ([`not_etcd`]) of the first of `endpoints` that answers in another protocol
/// than HTTP/2 ([`answers_not_h2`], each asked in turn, bounded by the connect timeout
/// and at most 1 s); `None` when none does.
async fn first_not_etcd<E: AsRef<str>>(cfg: &EtcdConfig, endpoints: &[E]) -> Option<fencelock_core::LockError> {
    let limit = cfg.connect_timeout.min(std::time::Duration::from_secs(1));
    for endpoint in endpoints {
        let endpoint = endpoint.as_ref();
        if let Some(began) = answers_not_h2(endpoint, limit).await {
            return Some(not_etcd(cfg, endpoint, &began));
        }
    }
    None
}

/// The error of an endpoint that answered `began` in another protocol than HTTP/2
/// ([`answers_not_h2`]): `InvalidConfig`.
fn not_etcd(cfg: &EtcdConfig, endpoint: &str, began: &str) -> fencelock_core::LockError {
    fencelock_core::LockError::InvalidConfig {
        message: format!(
            "{endpoint} does not speak etcd's gRPC (HTTP/2): it answered `{began}` — is it etcd's client port (2379 by default)? ({})",
            cfg.display
        ),
        // Not the connect's own failure as a source: its text ("backend unavailable:
        // … connection closed") contradicts the diagnosis.
        source: None,
    }
}

/// Sends [`H2_PREFACE`] to `endpoint` and reads the first bytes back (bounded by `limit`
/// for the connect and the read each): `Some(those bytes, printable)` when they are not
/// the SETTINGS frame an HTTP/2 server begins with (type 4, stream 0); `None` when it
/// speaks HTTP/2, says nothing, or cannot be reached.
async fn answers_not_h2(endpoint: &str, limit: std::time::Duration) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::time::timeout(limit, tokio::net::TcpStream::connect(endpoint))
        .await
        .ok()?
        .ok()?;
    conn.write_all(H2_PREFACE).await.ok()?;
    // Up to a frame header's 9 bytes (or 24 of anything else): a header may arrive in
    // pieces, and a real etcd must never be taken for the wrong service.
    let mut buf = [0u8; 24];
    let mut n = 0;
    let until = tokio::time::Instant::now() + limit;
    while n < 9 {
        match tokio::time::timeout_at(until, conn.read(&mut buf[n..])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(got)) => n += got,
        }
    }
    let first = &buf[..n];
    let settings = n >= 9 && first[3] == 0x04 && first[5..9] == [0, 0, 0, 0];
    // Fewer than 9 bytes that could still begin a SETTINGS frame: not proof of anything.
    let maybe_h2 = n < 9 && (n < 4 || first[3] == 0x04);
    if n == 0 || settings || maybe_h2 {
        return None;
    }
    Some(shown(first))
}

/// The first line of what a wrong service answered, printable; ending in `…` when no line
/// end was among the bytes read (at most 24: the rest of the answer was not read, and a
/// quote cut mid-word, `'PR`, read as a broken message).
fn shown(first: &[u8]) -> String {
    let ended = first.iter().any(|b| *b == b'\r' || *b == b'\n');
    let mut text: String = String::from_utf8_lossy(first)
        .chars()
        .take_while(|c| *c != '\r' && *c != '\n')
        .map(|c| if c.is_control() { '.' } else { c })
        .collect();
    if !ended {
        text.push('…');
    }
    text
}

/// One endpoint's answer to the read of [`Cluster::check`] on a connection of its own.
type Asked = tokio::task::JoinHandle<
    std::result::Result<std::result::Result<etcd_client::GetResponse, etcd_client::Error>, tokio::time::error::Elapsed>,
>;

/// Asks every endpoint of `cfg` on a connection of its own, all at once, each bounded by
/// the connect bound: started beside the balanced client's connect and first read, so the connect
/// waits for the slower of the two, not their sum. Costs one connection (and, with a
/// user, one authentication) per endpoint, once per instance.
fn ask_each(cfg: &EtcdConfig, options: &ConnectOptions) -> Vec<Asked> {
    let limit = cfg.connect_timeout + cfg.timeout;
    let probe = format!("{}/", cfg.prefix);
    cfg.endpoints
        .iter()
        .map(|endpoint| {
            let (options, probe, url) = (options.clone(), probe.clone(), format!("http://{endpoint}"));
            tokio::spawn(tokio::time::timeout(limit, async move {
                let mut c = Client::connect([url], Some(options)).await?;
                c.get(probe, None).await
            }))
        })
        .collect()
}

/// The asks of [`ask_each`], aborted when dropped.
struct Asks(Vec<Asked>);

impl Drop for Asks {
    fn drop(&mut self) {
        self.0.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

/// The one cluster id that the URL's endpoints answer with ([`ask_each`]): `InvalidConfig`
/// naming the endpoints when they answer with different ones, or naming an endpoint whose
/// ask failed and that turns out to speak another protocol ([`answers_not_h2`], asked
/// only of such an endpoint: one more TCP connection, bounded by the connect timeout and
/// at most 1 s). An endpoint that does not answer (down, no leader, silent) cannot be
/// checked now: [`Answer`] covers it later. `met` is the id the balanced client's first
/// read saw.
async fn one_cluster(cfg: &EtcdConfig, mut asks: Asks, met: Option<u64>) -> Result<u64> {
    let mut ids: Vec<(&str, u64)> = Vec::new();
    let mut failed = Vec::new();
    for (endpoint, ask) in cfg.endpoints.iter().zip(asks.0.iter_mut()) {
        match ask.await {
            Ok(Ok(Ok(r))) => {
                if let Some((id, _)) = r.origin() {
                    ids.push((endpoint, id));
                }
            }
            other => {
                tracing::debug!(endpoint, answered = ?other.as_ref().map(|o| o.as_ref().map(|r| r.as_ref().map(drop))), "endpoint not checked at connect");
                // Failed (not silent past the bound): perhaps the wrong service on the port.
                if matches!(other, Ok(Ok(Err(_)))) {
                    failed.push(endpoint.as_str());
                }
            }
        }
    }
    if let Some(e) = first_not_etcd(cfg, &failed).await {
        return Err(e);
    }
    let first = ids.first().map(|(_, id)| *id).or(met).unwrap_or(0);
    let differ = ids.iter().any(|(_, id)| *id != first) || met.is_some_and(|m| m != first);
    if differ {
        let each: Vec<String> = ids.iter().map(|(e, id)| format!("{e} (cluster id {id:x})")).collect();
        return Err(fencelock_core::LockError::InvalidConfig {
            message: format!(
                "the endpoints {} belong to different clusters: a URL must name members of one etcd cluster only ({})",
                each.join(", "),
                cfg.display
            ),
            source: None,
        });
    }
    Ok(first)
}

/// `Err` (`InvalidConfig`) when `answer` came from another cluster than `want` (`None`:
/// not known yet, nothing to compare). `display` is the URL, for the message.
pub(crate) fn from_cluster(want: Option<u64>, display: &str, doing: &str, answer: &impl Answer) -> Result<()> {
    match (want, answer.origin()) {
        (Some(want), Some((got, member))) if got != want && got != 0 => {
            Err(other_cluster(display, doing, want, got, member))
        }
        _ => Ok(()),
    }
}

/// The error of an answer from a member of another cluster than the connect met.
fn other_cluster(display: &str, doing: &str, want: u64, got: u64, member: u64) -> fencelock_core::LockError {
    fencelock_core::LockError::InvalidConfig {
        message: format!(
            "{doing}: etcd member {member:x} of cluster {got:x} answered, but this instance connected to cluster {want:x}: the URL names members of different clusters ({display})"
        ),
        source: None,
    }
}

/// What a read of a lease tells after a request naming it was refused "lease not found"
/// ([`Cluster::lease_after_refusal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseRead {
    /// Gone in this instance's cluster too (TTL -1, or "not found"): the refusal was true.
    Gone,
    /// Alive in this instance's cluster: the refusal came from elsewhere (a lease never
    /// comes back, so one alive after it was not found was never missing here).
    Alive,
    /// The read failed: nothing learned.
    Unknown,
}

/// A connected client and the options it was made with.
#[derive(Clone)]
pub(crate) struct Cluster {
    pub client: Client,
    pub cfg: EtcdConfig,
    /// The instance's one watch stream, shared by its waits.
    pub watches: std::sync::Arc<WatchStreams>,
    /// The id of the cluster the connect met (`None` only while connecting): every answer
    /// that carries a header must come from it ([`Answer`]).
    pub cluster_id: Option<u64>,
    /// The highest revision a linearizable answer carried ([`Answer::revision`]): a later
    /// request is never answered below it, unless the cluster's history went back.
    pub highest: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

/// An answer of etcd that may say which cluster and member sent it (every response
/// header carries `cluster_id` and `member_id`).
///
/// Why it is checked: a URL that names members of two different clusters would let the
/// client's balancer send one request to each — two independent copies of every lock,
/// both granting it, tokens going backwards as requests alternate. The connect refuses
/// such a URL when its endpoints answer ([`Cluster::connect`]), but an endpoint down then
/// cannot be asked; so every answer with a header is compared (one `u64`) with the cluster
/// the connect met, and one from elsewhere fails the request before anything is granted.
pub(crate) trait Answer {
    /// `(cluster_id, member_id)` of the header, when the answer has one.
    fn origin(&self) -> Option<(u64, u64)>;

    /// The header's revision, for an answer that is linearizable (a read, a write or a
    /// transaction through Raft, a lease grant): one never below the revision of an
    /// answer received before its request was sent. `None` for the others — a watch
    /// message (a watch may start behind), keep-alive and lease reads (the leader answers
    /// from what it applied, which a new leader may not have caught up with).
    fn revision(&self) -> Option<i64> {
        None
    }
}

macro_rules! answers_with_header {
    ($($t:ty),* $(,)?) => {
        $(impl Answer for $t {
            fn origin(&self) -> Option<(u64, u64)> {
                self.header().map(|h| (h.cluster_id(), h.member_id()))
            }
        })*
    };
}

/// The linearizable answers ([`Answer::revision`]).
macro_rules! linearizable {
    ($($t:ty),* $(,)?) => {
        $(impl Answer for $t {
            fn origin(&self) -> Option<(u64, u64)> {
                self.header().map(|h| (h.cluster_id(), h.member_id()))
            }

            fn revision(&self) -> Option<i64> {
                self.header().map(|h| h.revision())
            }
        })*
    };
}

linearizable!(
    etcd_client::GetResponse,
    etcd_client::PutResponse,
    etcd_client::DeleteResponse,
    etcd_client::TxnResponse,
    etcd_client::LeaseGrantResponse,
);

answers_with_header!(
    etcd_client::LeaseRevokeResponse,
    etcd_client::LeaseTimeToLiveResponse,
    etcd_client::LeaseKeepAliveResponse,
    etcd_client::WatchResponse,
);

/// No header to check: the keep-alive opener reads its first answer itself, and a lease
/// id exists only in the cluster that granted it (another cluster answers "lease not
/// found", an error without a header, which [`Cluster::lease_after_refusal`] reads back
/// so as not to take it for the lease's end); the watch streams' answers are checked one
/// by one as they arrive ([`crate::watch_stream`]); `()` is a result already reduced.
macro_rules! answers_without_header {
    ($($t:ty),* $(,)?) => {
        $(impl Answer for $t {
            fn origin(&self) -> Option<(u64, u64)> {
                None
            }
        })*
    };
}

answers_without_header!(
    (),
    (etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream),
    etcd_client::WatchStream,
);

impl Cluster {
    /// Connects to every endpoint (the client balances over them) and checks that the
    /// cluster answers with a leader: `Unavailable` otherwise. With more than one endpoint,
    /// also that those that answer are members of one cluster ([`one_cluster`]):
    /// `InvalidConfig` otherwise; the id met is kept to check every later answer
    /// ([`Answer`]).
    pub async fn connect(cfg: EtcdConfig) -> Result<Self> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(cfg.connect_timeout)
            // HTTP/2 pings find dead connections; etcd refuses pings more often than every
            // 5 s (--grpc-keepalive-min-time) by closing the connection, so stay above that.
            .with_keep_alive(std::time::Duration::from_secs(10), cfg.timeout)
            .with_require_leader(true);
        if let Some((u, p)) = &cfg.user {
            // etcd forgets the token it hands out (a simple token after `--auth-token-ttl`
            // idle, 300 s by default, or when the member restarts; a JWT at its TTL) and
            // then refuses it `Unauthenticated`: the client authenticates again and sends
            // the request once more (etcd refused it unapplied).
            options = options.with_user(u.clone(), p.clone()).with_auto_token_refresh(true);
        }
        // Aborted when dropped: an early return leaves no ask running.
        let asks = Asks(match cfg.endpoints.len() {
            1 => Vec::new(),
            _ => ask_each(&cfg, &options),
        });
        let endpoints: Vec<String> = cfg.endpoints.iter().map(|e| format!("http://{e}")).collect();
        let connecting = Client::connect(endpoints, Some(options));
        let client = match tokio::time::timeout(cfg.connect_timeout + cfg.timeout, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let e = failed_connecting(&cfg.display, cfg.user.is_some(), e);
                return Err(wrong_service(&cfg, e).await);
            }
            Err(_) => return Err(timed_out("connecting", &cfg.display, cfg.connect_timeout + cfg.timeout)),
        };
        let mut cluster = Cluster {
            client,
            cfg,
            watches: std::sync::Arc::new(WatchStreams::new()),
            cluster_id: None,
            highest: std::sync::Arc::default(),
        };
        // The client connects lazily: one linearizable read proves a leader answers.
        let met = match cluster.read_probe().await {
            Ok(r) => r.origin().map(|(id, _)| id),
            Err(e) => {
                let e = failed_first_read(e, &cluster.cfg.display, cluster.cfg.user.is_some());
                return Err(wrong_service(&cluster.cfg, e).await);
            }
        };
        cluster.cluster_id = match asks.0.is_empty() {
            true => met,
            false => Some(one_cluster(&cluster.cfg, asks, met).await?),
        };
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
    pub async fn call<T: Answer, F, Fut>(&self, doing: &'static str, op: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.call_counting_echoes(doing, op).await.0
    }

    /// [`call`](Self::call), also saying whether some try went out without an answer (cut
    /// off by its share of the timeout, or failed on the way): such a try may still reach
    /// the server later — an *echo* of the request that the caller must allow for.
    pub async fn call_counting_echoes<T: Answer, F, Fut>(&self, doing: &'static str, op: F) -> (Result<T>, bool)
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.tries(doing, &self.client, |c, _| op(c)).await
    }

    /// One transaction, as [`call_counting_echoes`](Self::call_counting_echoes) sends a
    /// request — each try on a clone of the KV client alone, not of the whole client (eight
    /// gRPC clients; cloning them cost ~5 µs per request, on every acquire and release) —
    /// with each try's transaction built by `build` (nothing cloned; a copy made up front
    /// for the retries cost an acquire a copy of its whole request): `build(false)` for a try sent while no earlier try of
    /// this request can have landed, `build(true)` after one that went out without an
    /// answer (an echo: it may have landed, or land later), whose transaction must allow
    /// for that.
    pub async fn txn_built(&self, doing: &'static str, build: impl Fn(bool) -> Txn) -> (Result<TxnResponse>, bool) {
        let kv = self.client.kv_client();
        // A first try that lands and whose answer is lost (test): the tries below repeat it.
        #[cfg(test)]
        let lost = doing == "queueing for the lock"
            && crate::hooks::fire(self.display(), crate::hooks::Fault::LostQueueAnswer)
            && kv.clone().txn(build(false)).await.is_ok();
        #[cfg(not(test))]
        let lost = false;
        let (answer, echoes) = self
            .tries(doing, &kv, |mut kv: KvClient, again| {
                let txn = build(again || lost);
                async move { kv.txn(txn).await }
            })
            .await;
        (answer, echoes || lost)
    }

    /// [`txn_built`](Self::txn_built) of one transaction (copied for each try), without
    /// the echo flag.
    pub async fn txn(&self, doing: &'static str, txn: &Txn) -> Result<TxnResponse> {
        self.txn_built(doing, |_| txn.clone()).await.0
    }

    /// The tries of one request on clones of `handle`, bounded as [`call`](Self::call) says;
    /// `op`'s second argument says whether an earlier try went out without an answer.
    async fn tries<H, T: Answer, F, Fut>(&self, doing: &'static str, handle: &H, op: F) -> (Result<T>, bool)
    where
        H: Clone,
        F: Fn(H, bool) -> Fut,
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
            // Every answer received before this try is sent bounds its answer's revision.
            let floor = self.highest.load(std::sync::atomic::Ordering::Acquire);
            let attempt = tokio::time::timeout_at(until, op(handle.clone(), echoes)).await;
            let attempt = match attempt {
                Err(_) if tokio::time::Instant::now() < deadline && self.cfg.endpoints.len() > 1 => {
                    tracing::debug!("{doing}: no answer within {share:?}; trying again");
                    echoes = true;
                    continue;
                }
                other => other,
            };
            match attempt {
                Ok(Ok(v)) => {
                    let checked = self
                        .same_cluster(doing, &v)
                        .and_then(|()| self.not_behind(doing, floor, &v));
                    return (checked.map(|()| v), echoes);
                }
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

    /// One linearizable read (of the prefix itself, a key nobody writes): `Ok` when a
    /// leader with a quorum answers, bounded by the request timeout. Used at connect and as
    /// a waiter's last check before its wait runs out (`EtcdLock::acquire`).
    ///
    /// # Cancel safety
    /// Cancel safe: a read changes nothing.
    pub async fn check(&self) -> Result<()> {
        self.read_probe().await.map(drop)
    }

    /// The read of [`check`](Self::check), its answer kept (for the cluster id).
    async fn read_probe(&self) -> Result<etcd_client::GetResponse> {
        let probe = format!("{}/", self.cfg.prefix);
        self.call("checking the cluster", |mut c| {
            let probe = probe.clone();
            async move { c.get(probe, None).await }
        })
        .await
    }

    /// `Err` when `answer` came from another cluster than the one the connect met
    /// ([`Answer`] says why): `InvalidConfig`, final.
    pub fn same_cluster(&self, doing: &str, answer: &impl Answer) -> Result<()> {
        from_cluster(self.cluster_id, &self.cfg.display, doing, answer)
    }

    /// `Err` (`InvalidConfig`) when a linearizable `answer` ([`Answer::revision`]) carries
    /// a revision below `floor`, the highest one seen before its request was sent: the
    /// cluster's history went back — restored from a snapshot without `etcdutl snapshot
    /// restore --bump-revision` (the cluster id stays), so its tokens may repeat or fall
    /// below ones already issued. Else the answer's revision raises the highest seen.
    /// Only an instance connected across the restore can tell (docs/backends/etcd.md).
    pub fn not_behind(&self, doing: &str, floor: i64, answer: &impl Answer) -> Result<()> {
        let Some(revision) = answer.revision() else {
            return Ok(());
        };
        if revision < floor {
            return Err(fencelock_core::LockError::InvalidConfig {
                message: format!(
                    "{doing}: etcd answered at revision {revision}, below revision {floor} it had answered this instance before: the cluster's history went back (restored from a snapshot without `etcdutl snapshot restore --bump-revision`?), and its tokens may repeat ones already issued ({})",
                    self.cfg.display
                ),
                source: None,
            });
        }
        self.highest.fetch_max(revision, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// Reads lease `id` (one `LeaseTimeToLive`, bounded by the request timeout) after a
    /// request naming it was refused "lease not found". An error answer carries no header,
    /// so the refusal alone cannot say which cluster sent it ([`Answer`]); this read's
    /// answer does, and a lease found alive in the cluster the connect met proves the
    /// refusal came from a member of another one ([`refused_elsewhere`](Self::refused_elsewhere)).
    /// Costs one round trip, only after such a refusal.
    ///
    /// # Errors
    /// `InvalidConfig` when the read itself is answered by a member of another cluster.
    ///
    /// # Cancel safety
    /// Cancel safe: a read changes nothing.
    pub async fn lease_after_refusal(&self, id: i64) -> Result<LeaseRead> {
        let read = self
            .call("reading a lease a request was refused for", |mut c| async move {
                c.lease_time_to_live(id, None).await
            })
            .await;
        match read {
            // TTL -1: expired or revoked; 0 is a lease still there with under a second left.
            Ok(l) if l.ttl() < 0 => Ok(LeaseRead::Gone),
            Ok(_) => Ok(LeaseRead::Alive),
            Err(e) if crate::error::lease_gone(&e) => Ok(LeaseRead::Gone),
            Err(e @ fencelock_core::LockError::InvalidConfig { .. }) => Err(e),
            Err(e) => {
                tracing::debug!(lease = format_args!("{id:x}"), error = %e, "could not read a lease a request was refused for");
                Ok(LeaseRead::Unknown)
            }
        }
    }

    /// Whether a refusal "lease not found" of a request (`doing`) naming lease `id`
    /// (`lease`, for the message) stands: reads the lease back
    /// ([`lease_after_refusal`](Self::lease_after_refusal)). `Ok` when the refusal is taken
    /// as true — the lease is gone here too, or the read failed (nothing learned).
    ///
    /// # Errors
    /// `InvalidConfig`, final, when a member of another cluster answered: the lease is
    /// alive in the cluster the connect met ([`refused_elsewhere`](Self::refused_elsewhere)),
    /// or the read itself was answered from elsewhere.
    ///
    /// # Cancel safety
    /// Cancel safe: a read changes nothing.
    pub async fn refusal_stands(&self, id: i64, doing: &str, lease: &str) -> Result<()> {
        match self.lease_after_refusal(id).await? {
            LeaseRead::Alive => Err(self.refused_elsewhere(doing, lease)),
            LeaseRead::Gone | LeaseRead::Unknown => Ok(()),
        }
    }

    /// The error of a request (`doing`) refused "lease not found" while the leases it
    /// named (`leases`, for the message) are alive in the cluster the connect met
    /// ([`lease_after_refusal`](Self::lease_after_refusal)): `InvalidConfig`, final — a
    /// member of another cluster answered.
    pub fn refused_elsewhere(&self, doing: &str, leases: &str) -> fencelock_core::LockError {
        let cluster = self.cluster_id.map_or_else(|| "?".to_owned(), |id| format!("{id:x}"));
        fencelock_core::LockError::InvalidConfig {
            message: format!(
                "{doing}: refused \"lease not found\" for {leases}, which a read finds alive in cluster {cluster}, the one this instance connected to: a member of another cluster answered — the URL names members of different clusters ({})",
                self.cfg.display
            ),
            source: None,
        }
    }

    /// The request timeout (the URL's `timeout`).
    pub fn request_timeout(&self) -> std::time::Duration {
        self.cfg.timeout
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

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn a_wrong_services_answer_is_quoted_to_its_line_end_or_marked_cut() {
        // Redis answering the HTTP/2 preface: 24 bytes read, no line end among them.
        assert_eq!(shown(b"-ERR unknown command 'PR"), "-ERR unknown command 'PR…");
        assert_eq!(shown(b"-ERR x\r\n-ERR y"), "-ERR x");
        // A MySQL greeting: control bytes shown as dots.
        assert_eq!(shown(b"J\0\0\0\x0b8.0.36"), "J....8.0.36…");
    }
}
