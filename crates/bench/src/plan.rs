//! What a run measures, and the run itself.

use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::contention::{self, Counter};
use crate::dead_waiter;
use crate::error::Result;
use crate::failover;
use crate::machine::Machine;
use crate::report::{BackendReport, ContentionRow, FailedRow, Report, Role, Settings, SubjectLatency};
use crate::scale;
use crate::subject::{Ours, Subject, TTL};
use crate::targets::{Kind, Target};
use crate::uncontended;

/// The knobs of a run. [`Plan::full`] is what `docs/benchmarks.md` comes from;
/// [`Plan::quick`] runs in seconds (tests, a first look).
#[derive(Debug, Clone)]
pub struct Plan {
    /// Backends named by URL; empty: start our own servers for each of `only`.
    pub urls: Vec<String>,
    /// Which backends to start when no URL is given (all four by default).
    pub only: Vec<Kind>,
    /// Uncontended cycles per subject.
    pub cycles: usize,
    /// Interleaved rounds those cycles are split into.
    pub rounds: usize,
    /// Client counts for the contention runs.
    pub clients: Vec<usize>,
    /// Grants per contention run (at most).
    pub grants: usize,
    /// Time per contention run (at most).
    pub contention_limit: Duration,
    /// Held-lock counts for the scale runs (empty: skip).
    pub scale_counts: Vec<usize>,
    /// How long each scale run holds its locks while measuring.
    pub hold: Duration,
    /// Keys contended at once in the many-keys run (0: skip it).
    pub many_keys: usize,
    /// Clients contending for each of those keys.
    pub many_keys_clients: usize,
    /// Time per many-keys run (at most).
    pub many_keys_limit: Duration,
    /// Dead-waiter trials per subject (0: skip).
    pub dead_waiter_trials: usize,
    /// Failovers per backend: leader killed → successor elected (0: skip).
    pub failovers: usize,
    /// Measure the failover row only (`--failover-only`): nothing else per backend.
    pub failover_only: bool,
    /// Full measurements per backend, for the spread across runs (at least 1).
    pub runs: usize,
    /// Measure the peer crates too.
    pub peers: bool,
    /// The command line, for the report's header.
    pub command: String,
}

impl Plan {
    /// The full run behind `docs/benchmarks.md` (a few minutes).
    pub fn full() -> Plan {
        Plan {
            urls: Vec::new(),
            only: Kind::ALL.to_vec(),
            cycles: 3000,
            // 10 cycles of each subject in turn: machine noise (five servers and the client
            // share two cores here) then hits every subject alike, not one block of them.
            rounds: 300,
            clients: vec![8, 64],
            grants: 1000,
            contention_limit: Duration::from_secs(10),
            scale_counts: vec![100, 1000, 10_000],
            hold: Duration::from_secs(6),
            many_keys: 1000,
            many_keys_clients: 4,
            many_keys_limit: Duration::from_secs(4),
            dead_waiter_trials: 5,
            failovers: 50,
            failover_only: false,
            runs: 1,
            peers: true,
            command: String::new(),
        }
    }

    /// A run of seconds: few cycles, short contention, small scale.
    pub fn quick() -> Plan {
        Plan {
            cycles: 200,
            rounds: 20,
            clients: vec![8],
            grants: 100,
            contention_limit: Duration::from_secs(3),
            scale_counts: vec![100],
            hold: Duration::from_secs(2),
            many_keys: 100,
            many_keys_limit: Duration::from_secs(2),
            dead_waiter_trials: 2,
            failovers: 5,
            ..Plan::full()
        }
    }
}

/// Runs `plan`, telling `progress` what it is doing.
pub async fn run(plan: &Plan, progress: &(dyn Fn(&str) + Sync)) -> Result<Report> {
    let mut backends = Vec::new();
    if plan.urls.is_empty() {
        for kind in &plan.only {
            progress(&format!("{}: starting servers", kind.name()));
            // Started just before and stopped just after, so only one backend's servers
            // share the machine with the measurement.
            let target = Target::start(*kind).await?;
            backends.push(measure_runs(plan, &target, progress).await?);
        }
    } else {
        for url in &plan.urls {
            let target = Target::from_url(url)?;
            backends.push(measure_runs(plan, &target, progress).await?);
        }
    }
    // backends[b][r] → runs[r][b]
    let runs = plan.runs.max(1);
    let mut by_run: Vec<Vec<BackendReport>> = (0..runs).map(|_| Vec::new()).collect();
    for per_backend in backends {
        for (r, b) in per_backend.into_iter().enumerate() {
            by_run[r].push(b);
        }
    }
    let mut by_run = by_run.into_iter();
    let backends = by_run.next().unwrap_or_default();
    Ok(Report {
        later_runs: by_run.collect(),
        command: plan.command.clone(),
        machine: Machine::describe(),
        settings: Settings {
            ttl_secs: TTL.as_secs_f64(),
            cycles: plan.cycles,
            rounds: plan.rounds,
            grants: plan.grants,
            contention_limit_secs: plan.contention_limit.as_secs_f64(),
            scale_ttl_secs: scale::SCALE_TTL.as_secs_f64(),
            hold_secs: plan.hold.as_secs_f64(),
            many_keys_limit_secs: plan.many_keys_limit.as_secs_f64(),
            dead_waiter_trials: plan.dead_waiter_trials,
            failovers: plan.failovers,
            failover_ttl_secs: failover::FAILOVER_TTL.as_secs_f64(),
            runs: plan.runs.max(1),
        },
        backends,
    })
}

/// `plan.runs` full measurements of one backend, on the same servers.
async fn measure_runs(plan: &Plan, target: &Target, progress: &(dyn Fn(&str) + Sync)) -> Result<Vec<BackendReport>> {
    let runs = plan.runs.max(1);
    let mut out = Vec::with_capacity(runs);
    for r in 1..=runs {
        let tell = |step: &str| {
            if runs > 1 {
                progress(&format!("run {r} of {runs}: {step}"))
            } else {
                progress(step)
            }
        };
        out.push(measure(plan, target, &tell).await?);
    }
    Ok(out)
}

/// What becomes of a row that failed: it is recorded in its run's report ([`FailedRow`])
/// and the run goes on. A full bench takes half an hour, and one row that failed (a server
/// that stalled, a peer that gave up) must not throw the others away; with several runs the
/// report matches the runs' rows by what they measure, so the row's figures come from the
/// runs that measured it, saying how many.
struct Rows<'a> {
    failed: Vec<FailedRow>,
    progress: &'a (dyn Fn(&str) + Sync),
}

impl Rows<'_> {
    /// Tells `progress` the row starts; its result, `None` when it failed and was recorded.
    async fn row<T>(&mut self, row: String, measure: impl std::future::Future<Output = Result<T>>) -> Option<T> {
        (self.progress)(&row);
        match measure.await {
            Ok(v) => Some(v),
            Err(e) => {
                // With its causes, on one line: the top-level message alone ("fencelock
                // connect failed") does not say why.
                let error = crate::error::one_line(&e);
                (self.progress)(&format!("{row}: failed, left out of the report: {error}"));
                self.failed.push(FailedRow { row, error });
                None
            }
        }
    }
}

/// One shape of contention: `clients` clients taking each of `keys` keys in turns, until
/// `grants` grants or `limit` (see [`contention::measure`]).
struct Shape {
    keys: usize,
    clients: usize,
    grants: usize,
    limit: Duration,
}

impl Shape {
    /// A row for fencelock and, with `plan.peers`, one for each peer of `target`, named
    /// `label("")` and `label("PEER ")`; a row that failed is left out (see [`Rows`]).
    async fn measure(
        &self,
        rows: &mut Rows<'_>,
        plan: &Plan,
        target: &Target,
        label: impl Fn(&str) -> String,
        counter: Counter<'_>,
    ) -> Vec<ContentionRow> {
        let mut out = Vec::new();
        let url = target.url.clone();
        let ours = || {
            let url = url.clone();
            async move { Ok(Box::new(Ours::connect(&url).await?) as Box<dyn Subject>) }
        };
        let (keys, clients, grants, limit) = (self.keys, self.clients, self.grants, self.limit);
        let measured = rows
            .row(
                label(""),
                contention::measure(ours, keys, clients, grants, limit, counter),
            )
            .await;
        if let Some(result) = measured {
            out.push(ContentionRow {
                subject: "fencelock".into(),
                role: Role::Ours,
                result,
            });
        }
        if plan.peers {
            for peer in target.peer_names() {
                let connect = || target.peer(peer);
                let measured = rows
                    .row(
                        label(&format!("{peer} ")),
                        contention::measure(connect, keys, clients, grants, limit, counter),
                    )
                    .await;
                if let Some(result) = measured {
                    out.push(ContentionRow {
                        subject: peer.to_string(),
                        role: Role::Peer,
                        result,
                    });
                }
            }
        }
        out
    }
}

async fn measure(plan: &Plan, target: &Target, progress: &(dyn Fn(&str) + Sync)) -> Result<BackendReport> {
    let name = target.label.clone();
    let mut rows = Rows {
        failed: Vec::new(),
        progress,
    };
    let failover = if plan.failovers > 0 {
        let row = format!("{name}: {} failovers (leader killed)", plan.failovers);
        rows.row(row, failover::measure(target, plan.failovers)).await
    } else {
        None
    };
    if plan.failover_only {
        return Ok(BackendReport {
            backend: name,
            kind: target.kind,
            server: target.server_version().await,
            started_here: target.started_here(),
            request_unit: target.request_unit(),
            command_unit: target.command_unit(),
            many_keys: Vec::new(),
            dead_waiter: Vec::new(),
            failover,
            uncontended: Vec::new(),
            contention: Vec::new(),
            scale: Vec::new(),
            failed: rows.failed,
        });
    }
    // A row like the others: a server that stalls here loses this run's uncontended
    // figures, not the bench.
    let row = format!("{name}: uncontended acquire + release");
    let uncontended = rows
        .row(row, measure_uncontended(plan, target))
        .await
        .unwrap_or_default();

    let counter = || -> BoxFuture<'_, Option<u64>> { Box::pin(target.server_commands()) };
    let mut contention_rows = Vec::new();
    for &clients in &plan.clients {
        let shape = Shape {
            keys: 1,
            clients,
            grants: plan.grants,
            limit: plan.contention_limit,
        };
        let label = |who: &str| format!("{name}: {clients} {who}clients on one key");
        contention_rows.extend(shape.measure(&mut rows, plan, target, label, &counter).await);
    }

    let mut many_keys = Vec::new();
    if plan.many_keys > 0 {
        let (keys, clients) = (plan.many_keys, plan.many_keys_clients);
        let shape = Shape {
            keys,
            clients,
            // Bounded by time: a grant cap no run of a few seconds reaches.
            grants: keys * 1000,
            limit: plan.many_keys_limit,
        };
        let label = |who: &str| format!("{name}: {keys} keys × {clients} {who}clients");
        many_keys = shape.measure(&mut rows, plan, target, label, &counter).await;
    }

    let mut dead_waiter = Vec::new();
    if plan.dead_waiter_trials > 0 {
        let row = format!("{name}: a waiter dies while queued");
        dead_waiter.extend(
            rows.row(row, dead_waiter::measure_ours(target, plan.dead_waiter_trials))
                .await,
        );
        if plan.peers {
            for peer in target.peer_names() {
                let row = format!("{name}: a {peer} waiter dies while queued");
                let measured = dead_waiter::measure_peer(target, peer, plan.dead_waiter_trials);
                dead_waiter.extend(rows.row(row, measured).await);
            }
        }
    }

    let mut scale_points = Vec::new();
    for &locks in &plan.scale_counts {
        let row = format!("{name}: {locks} locks held with auto-renew");
        scale_points.extend(rows.row(row, scale::measure(target, locks, plan.hold)).await);
    }
    Ok(BackendReport {
        backend: name,
        kind: target.kind,
        server: target.server_version().await,
        started_here: target.started_here(),
        request_unit: target.request_unit(),
        command_unit: target.command_unit(),
        many_keys,
        dead_waiter,
        failover,
        uncontended,
        contention: contention_rows,
        scale: scale_points,
        failed: rows.failed,
    })
}

/// The uncontended rows: fencelock, the raw minimum and (with `plan.peers`) each peer,
/// interleaved (see [`uncontended::measure`]), each with its ratio to the raw minimum.
async fn measure_uncontended(plan: &Plan, target: &Target) -> Result<Vec<SubjectLatency>> {
    let ours = Ours::connect(&target.url).await?;
    let raw = target.raw().await?;
    let mut subjects: Vec<(String, Role, Box<dyn Subject>)> = vec![
        ("fencelock".into(), Role::Ours, Box::new(ours)),
        ("raw minimum".into(), Role::Raw, raw),
    ];
    if plan.peers {
        for peer in target.peer_names() {
            subjects.push((peer.to_string(), Role::Peer, target.peer(peer).await?));
        }
    }
    let refs: Vec<&dyn Subject> = subjects.iter().map(|(_, _, s)| s.as_ref()).collect();
    let latencies = uncontended::measure(&refs, plan.cycles, plan.rounds).await?;
    let raw_p50 = latencies[1].0.p50_us;
    Ok(subjects
        .iter()
        .zip(&latencies)
        .map(|((name, role, _), (l, a))| SubjectLatency {
            subject: name.clone(),
            role: *role,
            latency: *l,
            acquire: *a,
            vs_raw: l.p50_us / raw_p50,
        })
        .collect())
}
