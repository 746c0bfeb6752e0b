//! `fencelock lab`: safety scenarios on real servers, with timelines and a report.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use fencelock::DistributedLock;
use fencelock_testkit::history::Report;
use fencelock_testkit::lab::{paused_holder, Outcome};

use crate::args::{Cli, LabArgs};
use crate::exit;

/// The scenarios, by name.
const SCENARIOS: &[&str] = &["paused-holder"];

/// A backend under test and what keeps its servers alive.
struct Target {
    name: &'static str,
    url: String,
    ttl: Duration,
    _servers: Box<dyn std::any::Any>,
}

/// Starts every backend this build has, on servers of its own. A server that cannot start
/// (not installed) is reported and left out.
fn targets(cli: &Cli) -> Vec<Target> {
    if let Some(url) = &cli.backend {
        return vec![Target {
            name: "given",
            url: url.clone(),
            ttl: Duration::from_secs(1),
            _servers: Box::new(()),
        }];
    }
    let mut out = Vec::new();
    let mut start = |name: &'static str, ttl: Duration, make: &dyn Fn() -> (String, Box<dyn std::any::Any>)| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(make)) {
            Ok((url, servers)) => out.push(Target {
                name,
                url,
                ttl,
                _servers: servers,
            }),
            Err(e) => {
                let why = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
                eprintln!(
                    "fencelock lab: {name} left out: {}",
                    why.unwrap_or_default().lines().next().unwrap_or("")
                );
            }
        }
    };
    let short = Duration::from_millis(300);
    start("memory", short, &|| {
        (
            format!("memory://{}", fencelock_testkit::keys::unique_key("lab")),
            Box::new(()),
        )
    });
    start("file", short, &|| {
        // Launchers fail by panicking (they are test tools); `start` catches it.
        #[allow(clippy::expect_used)]
        let dir = tempfile::tempdir().expect("temp dir");
        (format!("file://{}", dir.path().display()), Box::new(dir))
    });
    start("redis", short, &|| {
        let s = fencelock_testkit::redis_server::RedisServer::start();
        (s.url(), Box::new(s))
    });
    start("redlock", short, &|| {
        let s = fencelock_testkit::redis_server::start_many(5);
        (
            fencelock_testkit::redis_server::redlock_url(&s, "per_node_timeout=50ms"),
            Box::new(s),
        )
    });
    if fencelock::schemes::find("etcd").is_some_and(|s| s.compiled) {
        start("etcd", Duration::from_secs(1), &|| {
            let c = fencelock_testkit::etcd_server::EtcdCluster::start(3);
            (c.url(""), Box::new(c))
        });
    }
    if fencelock::schemes::find("zk").is_some_and(|s| s.compiled) {
        start("zookeeper", short, &|| {
            let e = fencelock_testkit::zk_server::ZkEnsemble::start(3);
            (e.url("/lab", ""), Box::new(e))
        });
    }
    out
}

struct Row {
    scenario: &'static str,
    backend: &'static str,
    fenced: Report,
    unfenced: Report,
}

/// Runs the chosen scenarios on every target, prints timelines, writes the report.
pub async fn lab(cli: &Cli, args: &LabArgs) -> ExitCode {
    let chosen: Vec<&'static str> = match &args.scenario {
        None => SCENARIOS.to_vec(),
        Some(s) => match SCENARIOS.iter().find(|n| **n == s.as_str()) {
            Some(n) => vec![*n],
            None => {
                return exit::fail(
                    &format!("unknown scenario `{s}`; known: {}", SCENARIOS.join(", ")),
                    exit::BAD_INPUT,
                )
            }
        },
    };
    let targets = tokio::task::block_in_place(|| targets(cli));
    let mut rows = Vec::new();
    let mut failed = false;
    for scenario in chosen {
        for t in &targets {
            let (url, ttl) = (t.url.clone(), t.ttl);
            // Scenarios fail by panicking (they are test tools): run each in its own task
            // and turn a panic into a one-line message.
            let run = tokio::spawn(async move {
                #[allow(clippy::expect_used)]
                let factory = move || {
                    let url = url.clone();
                    async move { fencelock::connect(&url).await.expect("connect") as Arc<dyn DistributedLock> }
                };
                // One scenario so far; the next ones dispatch on `scenario` here.
                (
                    paused_holder(&factory, ttl, true).await,
                    paused_holder(&factory, ttl, false).await,
                )
            });
            let (fenced, unfenced): (Outcome, Outcome) = match run.await {
                Ok(outcomes) => outcomes,
                Err(e) => {
                    eprintln!("fencelock lab: {scenario} on {} failed: {e}", t.name);
                    failed = true;
                    continue;
                }
            };
            if !args.quiet {
                println!("== {scenario} on {} ({}), fenced resource", t.name, t.url);
                for line in &fenced.timeline {
                    println!("  {line}");
                }
                println!("== {scenario} on {}, unfenced resource", t.name);
                for line in &unfenced.timeline {
                    println!("  {line}");
                }
                println!();
            }
            rows.push(Row {
                scenario,
                backend: t.name,
                fenced: fenced.report,
                unfenced: unfenced.report,
            });
        }
    }
    let table = table(&rows);
    println!("{table}");
    if let Some(path) = &args.report {
        let text = format!("{}{table}{}", REPORT_HEAD, REPORT_TAIL);
        if let Err(e) = std::fs::write(path, text) {
            return exit::fail(&format!("cannot write {}: {e}", path.display()), exit::FAILURE);
        }
    }
    let bad = rows
        .iter()
        .any(|r| !r.fenced.overlaps.is_empty() || r.fenced.stale_writes_accepted > 0);
    if bad || failed {
        ExitCode::from(exit::FAILURE)
    } else {
        ExitCode::SUCCESS
    }
}

fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| scenario | backend | validity overlaps | token regressions | token reuse | late actions (belief overlaps) | stale writes accepted, fenced | stale writes accepted, unfenced | lost updates, unfenced |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.backend,
            r.fenced.overlaps.len() + r.unfenced.overlaps.len(),
            r.fenced.token_regressions.len() + r.unfenced.token_regressions.len(),
            r.fenced.token_reuse.len() + r.unfenced.token_reuse.len(),
            r.fenced.belief_overlaps + r.unfenced.belief_overlaps,
            r.fenced.stale_writes_accepted,
            r.unfenced.stale_writes_accepted,
            r.unfenced.lost_updates,
        );
    }
    t
}

const REPORT_HEAD: &str = "\
# Safety lab report

Generated by `cargo run -p fencelock-cli --all-features -- lab --quiet --report docs/safety.md`
(servers started by the command itself on loopback: redis-server 7.0, 5 redis-servers for
Redlock, a 3-member etcd 3.4 cluster, a 3-server ZooKeeper 3.8 ensemble). Each row is also
a test (`tests/safety_*.rs`) asserting the same outcome, so the table cannot silently change.

Each scenario runs twice per backend: once against a resource that checks fencing tokens,
once against one that does not. Columns:

* **validity overlaps** — two grants whose validity windows overlapped: the lock service's
  own fault;
* **token regressions / reuse** — a grant with a lower / an equal token than an earlier one;
* **late actions** — a holder acting after its validity ended while another held the lock:
  unavoidable for any lease, harmless only with fencing;
* **stale writes accepted** — writes carrying an older token that the resource took.

";

const REPORT_TAIL: &str = "
## Scenarios

* **paused-holder** (reliability matrix F1/S1; Kleppmann's GC-pause schedule): A takes the
  lock and reads a shared register, then stalls past its TTL without renewing; B takes the
  lock, increments the register and writes; A wakes and finishes its read-modify-write and
  its write with its old token. The pause is modelled in-process (A does nothing until its
  validity has ended); A's library still hands the lock back when the validity ends, which
  only makes the scenario kinder to the lock service. Every backend shows one late action;
  with fencing the late write is refused on every backend; without, it lands and B's
  increment is lost.

## Where this departs from the reliability matrix, and what is still to come

The matrix proposes sixteen scenarios (S0–S15). This report covers S1 so far. Still to come,
with the fault proxy already in the testkit (pass, delay, blackhole, reset) and the
launchers' kill / restart / pause: Redis failover before replication (F4), Redlock node
restarted without persistence with and without the delayed restart (F6, today a test in
`crates/redlock/tests/faults.rs`), a clock jump on one Redlock node under libfaketime (F7),
client partitions from a minority and a majority (F3/F3'), and a consensus leader killed
during contention (F9, today tests in `crates/etcd/tests/faults.rs` and
`crates/zk/tests/faults.rs`), plus an SVG timeline per scenario.
";
