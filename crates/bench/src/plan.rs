//! What a run measures, and the run itself.

use std::time::Duration;

use crate::contention::{self, Contention};
use crate::error::Result;
use crate::machine::Machine;
use crate::report::{BackendReport, ContentionRow, Report, Role, Settings, SubjectLatency};
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
            backends.push(measure(plan, &target, progress).await?);
        }
    } else {
        for url in &plan.urls {
            let target = Target::from_url(url)?;
            backends.push(measure(plan, &target, progress).await?);
        }
    }
    Ok(Report {
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
        },
        backends,
    })
}

async fn measure(plan: &Plan, target: &Target, progress: &(dyn Fn(&str) + Sync)) -> Result<BackendReport> {
    let name = target.label.clone();
    progress(&format!("{name}: uncontended acquire + release"));
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
    let raw_p50 = latencies[1].p50_us;
    let uncontended = subjects
        .iter()
        .zip(&latencies)
        .map(|((name, role, _), l)| SubjectLatency {
            subject: name.clone(),
            role: *role,
            latency: *l,
            vs_raw: l.p50_us / raw_p50,
        })
        .collect();
    drop(subjects);

    let mut contention_rows = Vec::new();
    for &clients in &plan.clients {
        progress(&format!("{name}: {clients} clients on one key"));
        let url = target.url.clone();
        let result: Contention = contention::measure(
            || {
                let url = url.clone();
                async move { Ok(Box::new(Ours::connect(&url).await?) as Box<dyn Subject>) }
            },
            clients,
            plan.grants,
            plan.contention_limit,
        )
        .await?;
        contention_rows.push(ContentionRow {
            subject: "fencelock".into(),
            role: Role::Ours,
            result,
        });
        if plan.peers {
            for peer in target.peer_names() {
                progress(&format!("{name}: {clients} {peer} clients on one key"));
                let result =
                    contention::measure(|| target.peer(peer), clients, plan.grants, plan.contention_limit).await?;
                contention_rows.push(ContentionRow {
                    subject: peer.to_string(),
                    role: Role::Peer,
                    result,
                });
            }
        }
    }

    let mut scale_points = Vec::new();
    for &locks in &plan.scale_counts {
        progress(&format!("{name}: {locks} locks held with auto-renew"));
        scale_points.push(scale::measure(target, locks, plan.hold).await?);
    }
    Ok(BackendReport {
        backend: name,
        kind: target.kind,
        server: target.server_version().await,
        started_here: target.started_here(),
        request_unit: target.request_unit(),
        uncontended,
        contention: contention_rows,
        scale: scale_points,
    })
}
