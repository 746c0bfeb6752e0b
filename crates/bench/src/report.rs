//! The report: data (JSON), Markdown, and charts.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::contention::Contention;
use crate::dead_waiter::DeadWaiter;
use crate::error::{BenchError, Result};
use crate::failover::Failover;
use crate::machine::Machine;
use crate::scale::ScalePoint;
use crate::stats::{median, spread, Latency};
use crate::svg;
use crate::targets::Kind;

/// The target ours must meet against the raw minimum, uncontended: the median over runs
/// (issue 14).
pub const RATIO_TARGET: f64 = 1.05;

/// The ratio no single run may exceed (issue 14).
pub const RATIO_CEILING: f64 = 1.10;

/// Under contention, Jain's index at least this (issue 14).
pub const JAIN_TARGET: f64 = 0.95;

/// Under contention, the longest wait at most this many median hand-offs (issue 14).
pub const LONGEST_WAIT_HAND_OFFS: f64 = 20.0;

/// Redis and Redlock: hand-off p50 at most this many uncontended acquire p50s (issue 14).
pub const HAND_OFF_VS_ACQUIRE: f64 = 2.0;

/// etcd and ZooKeeper: hand-off p50 at most this share of the uncontended acquire +
/// release cycle p50 (issue 14).
pub const HAND_OFF_VS_CYCLE: f64 = 0.6;

/// Server commands per grant count as constant in the number of waiters when the most
/// clients' figure is within this factor of the fewest clients' figure.
pub const COMMANDS_CONSTANT_WITHIN: f64 = 1.25;

/// Who a measured subject is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// fencelock.
    Ours,
    /// The raw minimum with the client crate.
    Raw,
    /// A peer crate.
    Peer,
}

/// One subject's uncontended latency.
#[derive(Debug, Clone, Serialize)]
pub struct SubjectLatency {
    /// `fencelock`, `raw minimum`, or the peer crate's name.
    pub subject: String,
    /// Who it is.
    pub role: Role,
    /// Acquire + release.
    pub latency: Latency,
    /// Acquire alone (the first part of the same cycles).
    pub acquire: Latency,
    /// Median ÷ the raw minimum's median.
    pub vs_raw: f64,
}

/// One subject's contention run.
#[derive(Debug, Clone, Serialize)]
pub struct ContentionRow {
    /// `fencelock` or the peer crate's name.
    pub subject: String,
    /// Who it is.
    pub role: Role,
    /// What was measured.
    pub result: Contention,
}

/// Everything measured on one backend.
#[derive(Debug, Clone, Serialize)]
pub struct BackendReport {
    /// e.g. `redlock (5 nodes)`.
    pub backend: String,
    /// Its kind.
    pub kind: Kind,
    /// The server's version, when it could be read.
    pub server: Option<String>,
    /// Whether the run started the servers (on loopback) itself.
    pub started_here: bool,
    /// What the scale run's server request counter counts.
    pub request_unit: &'static str,
    /// What the contention runs' server command counter counts.
    pub command_unit: &'static str,
    /// Uncontended, ours first, then the raw minimum, then peers.
    pub uncontended: Vec<SubjectLatency>,
    /// Contention runs.
    pub contention: Vec<ContentionRow>,
    /// Many keys at once, each contended by a few clients.
    pub many_keys: Vec<ContentionRow>,
    /// A waiter dies while queued.
    pub dead_waiter: Vec<DeadWaiter>,
    /// Leader killed → successor elected (`None`: not measured).
    pub failover: Option<Failover>,
    /// Scale runs.
    pub scale: Vec<ScalePoint>,
    /// Rows of this run that failed and were left out (the other runs' figures of the
    /// same row still show; see [`Measured`]).
    pub failed: Vec<FailedRow>,
}

/// A row of the report that could not be measured.
#[derive(Debug, Clone, Serialize)]
pub struct FailedRow {
    /// Which row, as the progress lines name it (`redis: 64 clients on one key`).
    pub row: String,
    /// The error, on one line.
    pub error: String,
}

/// The settings a run used.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// TTL of the uncontended and contention locks, seconds.
    pub ttl_secs: f64,
    /// Uncontended cycles per subject.
    pub cycles: usize,
    /// Interleaved rounds.
    pub rounds: usize,
    /// Grants per contention run (at most).
    pub grants: usize,
    /// Seconds per contention run (at most).
    pub contention_limit_secs: f64,
    /// TTL of the held locks in the scale runs, seconds.
    pub scale_ttl_secs: f64,
    /// Seconds each scale run measured.
    pub hold_secs: f64,
    /// Seconds per many-keys run (at most).
    pub many_keys_limit_secs: f64,
    /// Dead-waiter trials per subject.
    pub dead_waiter_trials: usize,
    /// Failovers per backend.
    pub failovers: usize,
    /// TTL and session bound of the failover row's campaigns, seconds.
    pub failover_ttl_secs: f64,
    /// Full measurements per backend.
    pub runs: usize,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The command that produced it.
    pub command: String,
    /// Where it ran.
    pub machine: Machine,
    /// Its settings.
    pub settings: Settings,
    /// Per backend: the first run.
    pub backends: Vec<BackendReport>,
    /// The runs after the first (`--runs N`), each per backend in the same order. A run's
    /// rows line up with another's by what they measure (see [`Measured`]), not by
    /// position: a row that failed in one run is missing from its lists.
    pub later_runs: Vec<Vec<BackendReport>>,
}

impl Report {
    /// As JSON.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The worst ours ÷ raw ratio (uncontended medians), with its backend.
    pub fn worst_ratio(&self) -> Option<(&str, f64)> {
        self.backends
            .iter()
            .filter_map(|b| Some((b.backend.as_str(), b.ours()?.vs_raw)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// Writes the Markdown to `path` and the charts beside it, in a folder named after
    /// the file (`docs/benchmarks.md` → `docs/benchmarks/*.svg`).
    pub fn write(&self, path: &Path) -> Result<()> {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("benchmarks")
            .to_owned();
        let dir = path.parent().unwrap_or(Path::new(".")).join(&stem);
        let io = |p: &Path| {
            let p = p.to_owned();
            move |source| BenchError::Write { path: p, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        for (name, svg) in self.charts() {
            let file = dir.join(name);
            std::fs::write(&file, svg).map_err(io(&file))?;
        }
        std::fs::write(path, self.markdown(Some(&stem))).map_err(io(path))
    }

    /// Every subject in the report, in first-seen order: the charts' one legend, so each
    /// subject has the same colour in every chart.
    pub fn subjects(&self) -> Vec<String> {
        let mut out: Vec<String> = vec!["fencelock".into()];
        for b in self.all_runs().flatten() {
            let names = b
                .uncontended
                .iter()
                .map(|u| &u.subject)
                .chain(b.contention.iter().map(|c| &c.subject))
                .chain(b.many_keys.iter().map(|c| &c.subject))
                .chain(b.dead_waiter.iter().map(|d| &d.subject));
            for n in names {
                if !out.contains(n) {
                    out.push(n.clone());
                }
            }
        }
        out
    }

    /// The charts: (file name, SVG).
    pub fn charts(&self) -> Vec<(&'static str, String)> {
        let legend = self.subjects();
        let latency: Vec<svg::Group> = self
            .backends
            .iter()
            .map(|b| {
                let bars = b
                    .uncontended
                    .iter()
                    .map(|s| (s.subject.clone(), s.subject.clone(), s.latency.p50_us))
                    .collect();
                (b.backend.clone(), bars)
            })
            .collect();
        // Each bar from the first run that measured its row (the tables give the spread).
        let hand_off: Vec<svg::Group> = self
            .backends
            .iter()
            .enumerate()
            .map(|(bi, b)| {
                let bars = self
                    .table_rows(bi, |b| b.contention.as_slice())
                    .into_iter()
                    .map(|c| {
                        (
                            format!("{} ×{}", c.subject, c.result.clients),
                            c.subject.clone(),
                            c.result.hand_off.p50_us,
                        )
                    })
                    .collect();
                (b.backend.clone(), bars)
            })
            .collect();
        let many_keys: Vec<svg::Group> = self
            .backends
            .iter()
            .enumerate()
            .map(|(bi, b)| (b, self.table_rows(bi, |b| b.many_keys.as_slice())))
            .filter(|(_, rows)| !rows.is_empty())
            .map(|(b, rows)| {
                let bars = rows
                    .into_iter()
                    .map(|c| (c.subject.clone(), c.subject.clone(), c.result.grants_per_sec))
                    .collect();
                (b.backend.clone(), bars)
            })
            .collect();
        let mut renewals: Vec<svg::Series> = self
            .backends
            .iter()
            .enumerate()
            .map(|(bi, b)| (b, self.scale_of(bi)))
            .filter(|(_, scale)| !scale.is_empty())
            .map(|(b, scale)| {
                let points = scale
                    .iter()
                    .filter_map(|p| Some((p.locks as f64, p.server_requests_per_sec?)))
                    .collect();
                (format!("{} ({})", b.backend, b.request_unit), points)
            })
            .collect();
        if let Some(scale) = (0..self.backends.len())
            .map(|bi| self.scale_of(bi))
            .find(|s| !s.is_empty())
        {
            let needed = scale
                .iter()
                .map(|p| (p.locks as f64, p.renewals_needed_per_sec))
                .collect();
            renewals.push(("one request per lock per renewal".into(), needed));
        }
        vec![
            (
                "latency.svg",
                svg::bar_chart(
                    "Uncontended acquire + release, median (log scale)",
                    "µs",
                    &latency,
                    &legend,
                ),
            ),
            (
                "handoff.svg",
                svg::bar_chart(
                    "Hand-off under contention, median release → next holder (log scale)",
                    "µs",
                    &hand_off,
                    &legend,
                ),
            ),
            (
                "manykeys.svg",
                svg::bar_chart(
                    "Many keys at once, each contended by a few clients: grants per second (log scale)",
                    "grants/s",
                    &many_keys,
                    &legend,
                ),
            ),
            (
                "renewals.svg",
                svg::line_chart(
                    "Renewal cost at the server vs locks held (auto-renew on)",
                    "locks held by one process",
                    "server requests per second",
                    &renewals,
                ),
            ),
        ]
    }

    /// The Markdown report; charts are linked as `CHARTS/*.svg` (`charts`), or left out
    /// when `None` (printed to stdout, no chart files are written).
    pub fn markdown(&self, charts: Option<&str>) -> String {
        let m = &self.machine;
        let s = &self.settings;
        let mut out = String::new();
        match self.backends.as_slice() {
            [one] => {
                let _ = writeln!(out, "# Benchmarks: {}\n", one.backend);
            }
            _ => {
                let _ = writeln!(out, "# Benchmarks\n");
            }
        }
        let _ = writeln!(
            out,
            "Generated by one command — re-run it rather than editing this file:\n\n```sh\n{}\n```\n",
            self.command
        );
        let _ = writeln!(
            out,
            "Run on {}: {} ({} cores available), {} GiB, {}, {} build. {}: {}.\n",
            m.date,
            m.cpu,
            m.cores,
            m.memory_gib,
            m.os,
            m.profile,
            if !self.backends.iter().all(|b| b.started_here) {
                "Servers given by URL (--backend), not started by the command"
            } else {
                "Servers on loopback, started by the command and stopped after their backend's measurements, so \
                 one backend's servers share the machine at a time"
            },
            self.backends
                .iter()
                .map(|b| format!("{} — {}", b.backend, b.server.as_deref().unwrap_or("version unknown")))
                .collect::<Vec<_>>()
                .join("; ")
        );
        if let Some([one, five, fifteen]) = m.load_average {
            let _ = writeln!(
                out,
                "Load average when the run ended (1, 5, 15 min): {one:.2}, {five:.2}, {fifteen:.2}. It counts the run's own client and servers too; compare it between reports: a higher one means other work competed for the cores, and the figures move with it.\n"
            );
        }
        let _ = writeln!(out, "Every lock has a {:.0} s TTL. Latencies are wall-clock on loopback, client and server together. Also as JSON: the same command with `--json`.\n", s.ttl_secs);
        self.verdicts(&mut out);
        self.failed_section(&mut out);
        self.uncontended_section(&mut out, charts);
        self.contention_section(&mut out, charts);
        self.failover_section(&mut out);
        self.scale_section(&mut out, charts);
        self.reading(&mut out);
        out
    }

    /// What the numbers mean, and what they do not.
    fn reading(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "## Reading it
"
        );
        let lines = [
            "* **Same servers, same run.** Every subject of a backend ran against the same server processes, interleaved ten cycles at a time, so the ratios compare like with like; absolute figures move with the machine (here two cores are shared by the client and up to five servers).",
            "* **The raw minimum** is what a hand-written lock with the client crate costs: Redis `SET NX PX` + compare-and-delete; Redlock the same to every node at once; etcd a create-if-absent transaction + a delete guarded by create revision; ZooKeeper create ephemeral-sequential + list + delete. fencelock adds a fencing token (Redis `INCR`, etcd/ZooKeeper revisions), a lease with a loss signal and auto-renewal, waiting by server notification, and cancel safety.",
            "* **Hand-off** is measured from the holder's release call to another client's acquire returning (a client that takes the lock straight back is no hand-off: it shows in Jain's index). fencelock's waiters are woken by the server (Redis pub/sub, etcd and ZooKeeper watches on the predecessor only), so it is about one round trip plus the acquire; the peers poll (`rslock` retries after a random delay of up to 200 ms, `distributed-lock` makes one attempt per call and the bench retries it after 1–10 ms), which shows in their longest waits and in Jain's index — whoever polls at the right moment wins again.",
            "* **`distributed-lock` on Redlock under contention** stalls: its acquire does not release the nodes it did get when it misses the quorum, so contenders hold minorities of the nodes until their keys expire (10 s). The clients that gave up are counted in the table.",
            "* **Not measured here**: `memory://` and `file://`, which need no server (`distributed-lock`'s file backend would be the peer of the latter); the four server backends are what this report compares.",
            "* **Renewals at scale**: etcd's locks ride on one session lease, renewed by one keep-alive stream whatever the number of locks; Redis and Redlock batch the renewals due within a window into one script per node (up to 500 locks each); ZooKeeper checks the nodes due within a window in one multi-read (up to 500). The dashed line is what one request per lock per renewal would cost.",
        ];
        for l in lines {
            let _ = writeln!(out, "{l}");
        }
        out.push('\n');
    }

    /// Every run's backends, the first first.
    pub fn all_runs(&self) -> impl Iterator<Item = &[BackendReport]> {
        std::iter::once(self.backends.as_slice()).chain(self.later_runs.iter().map(Vec::as_slice))
    }

    /// `f` of each run (runs where it is `None` left out).
    fn across(&self, f: impl Fn(&[BackendReport]) -> Option<f64>) -> Vec<f64> {
        self.all_runs().filter_map(f).collect()
    }

    /// The rows of `rows(backend bi)` over every run, each once, in the order first seen:
    /// a row that failed in the first run still has a line when a later run measured it.
    fn table_rows<R: Measured>(&self, bi: usize, rows: fn(&BackendReport) -> &[R]) -> Vec<&R> {
        let mut out: Vec<&R> = Vec::new();
        for run in self.all_runs() {
            for r in run.get(bi).map(rows).unwrap_or_default() {
                if !out.iter().any(|o| o.same(r)) {
                    out.push(r);
                }
            }
        }
        out
    }

    /// The failover row of backend `bi`, from the first run that measured it (a section
    /// shown for one run only).
    fn failover_of(&self, bi: usize) -> Option<&Failover> {
        self.all_runs().find_map(|run| run.get(bi)?.failover.as_ref())
    }

    /// The scale points of backend `bi`, each from the first run that measured it (a
    /// section shown for one run only), by locks held.
    fn scale_of(&self, bi: usize) -> Vec<&ScalePoint> {
        let mut points = self.table_rows(bi, |b| b.scale.as_slice());
        points.sort_by_key(|p| p.locks);
        points
    }

    /// `row` (see [`Measured`]) in `rows(backend bi)` of each run that measured it.
    fn in_runs<'a, R: Measured>(&'a self, bi: usize, row: &R, rows: fn(&BackendReport) -> &[R]) -> Vec<&'a R> {
        self.all_runs()
            .filter_map(|run| rows(run.get(bi)?).iter().find(|r| r.same(row)))
            .collect()
    }

    /// `f` of `row` (see [`Measured`]) in `rows(backend bi)` of each run that measured it,
    /// shown as its spread, and how many runs that was when not all.
    fn cell<R: Measured>(
        &self,
        bi: usize,
        row: &R,
        rows: fn(&BackendReport) -> &[R],
        f: impl Fn(&R) -> Option<f64>,
        fmt: impl Fn(f64) -> String,
    ) -> String {
        let found = self.in_runs(bi, row, rows);
        let values: Vec<f64> = found.iter().filter_map(|r| f(r)).collect();
        with_runs(spread(&values, fmt), found.len(), self.settings.runs)
    }

    fn verdicts(&self, out: &mut String) {
        let _ = writeln!(out, "## At a glance\n");
        let runs = self.settings.runs;
        let met = |ok: bool| if ok { "met" } else { "**not met**" };
        let _ = writeln!(
            out,
            "Each target is checked on the data below{}.\n",
            if runs > 1 {
                format!(" of all {runs} runs (figures: median over runs, then min–max)")
            } else {
                String::new()
            }
        );
        for (bi, b) in self.backends.iter().enumerate() {
            let ratios = self.across(|run| Some(run.get(bi)?.ours()?.vs_raw));
            if ratios.is_empty() {
                continue;
            }
            let worst = ratios.iter().copied().fold(0.0, f64::max);
            let _ = writeln!(
                out,
                "* {}: fencelock ÷ raw minimum, uncontended median {} — target ≤ {RATIO_TARGET:.2}× ({}), never above {RATIO_CEILING:.2}× in a run ({}).",
                b.backend,
                with_runs(spread(&ratios, |v| format!("{v:.2}×")), ratios.len(), runs),
                met(median(&ratios) <= RATIO_TARGET),
                met(worst <= RATIO_CEILING),
            );
        }
        for (bi, b) in self.backends.iter().enumerate() {
            let mut clients: Vec<usize> = self
                .table_rows(bi, |b| b.contention.as_slice())
                .into_iter()
                .filter(|c| c.role == Role::Ours)
                .map(|c| c.result.clients)
                .collect();
            clients.sort_unstable();
            clients.dedup();
            for &n in &clients {
                self.contention_verdict(out, bi, n);
            }
            let per_grant: Vec<(usize, Vec<f64>)> = clients
                .iter()
                .map(|&n| {
                    let v = self.across(|run| {
                        run.get(bi)?
                            .contention
                            .iter()
                            .find(|c| c.role == Role::Ours && c.result.clients == n)?
                            .result
                            .commands_per_grant
                    });
                    (n, v)
                })
                .collect();
            if let (Some((lo_n, lo)), Some((hi_n, hi))) = (per_grant.first(), per_grant.last()) {
                if lo_n != hi_n && !lo.is_empty() && !hi.is_empty() {
                    let ratio = median(hi) / median(lo);
                    let _ = writeln!(
                        out,
                        "* {}: server {} per grant {} with {lo_n} clients, {} with {hi_n} — constant in the number of waiters (within {COMMANDS_CONSTANT_WITHIN}×): {} ({ratio:.2}×).",
                        b.backend,
                        b.command_unit,
                        with_runs(spread(lo, |v| format!("{v:.1}")), lo.len(), runs),
                        with_runs(spread(hi, |v| format!("{v:.1}")), hi.len(), runs),
                        met(ratio <= COMMANDS_CONSTANT_WITHIN),
                    );
                }
            }
        }
        for (bi, b) in self.backends.iter().enumerate() {
            let rows: fn(&BackendReport) -> &[DeadWaiter] = |b| b.dead_waiter.as_slice();
            if let Some(d) = self.table_rows(bi, rows).into_iter().find(|d| d.role == Role::Ours) {
                let _ = writeln!(
                    out,
                    "* {}: a waiter that dies while queued delays the next live waiter's grant (release → grant): median {}; at most {}.",
                    b.backend,
                    self.cell(bi, d, rows, |d| d.p50_ms, |v| format!("{v:.1} ms")),
                    self.cell(bi, d, rows, |d| d.max_ms, |v| format!("{v:.1} ms")),
                );
            }
        }
        for (bi, b) in self.backends.iter().enumerate() {
            if let Some(p) = self.scale_of(bi).into_iter().max_by_key(|p| p.locks) {
                if let Some(r) = p.server_requests_per_sec {
                    let _ = writeln!(
                        out,
                        "* {}: {} locks held — {:.1} {}/s at the server for {:.0} renewals/s due ({:.0} locks per request).",
                        b.backend,
                        p.locks,
                        r,
                        b.request_unit,
                        p.renewals_needed_per_sec,
                        if r > 0.0 { p.renewals_needed_per_sec / r } else { f64::INFINITY }
                    );
                }
            }
        }
        out.push('\n');
    }

    /// The contention targets for ours with `n` clients on backend `bi`, checked in every run.
    fn contention_verdict(&self, out: &mut String, bi: usize, n: usize) {
        let b = &self.backends[bi];
        let runs = self.settings.runs;
        let met = |ok: bool| if ok { "met" } else { "**not met**" };
        let mut ours_rate = Vec::new();
        let mut peer_rate = Vec::new();
        let mut jains = Vec::new();
        let mut waits = Vec::new();
        let mut hand_offs = Vec::new();
        let mut base = Vec::new();
        let (mut beats_peers, mut fair, mut bounded, mut quick) = (true, true, true, true);
        // Where waiters queue at the server (etcd, ZooKeeper, and PostgreSQL's lock queue), a
        // hand-off should cost about one commit plus the wake-up: under the uncontended cycle.
        let queued = matches!(b.kind, Kind::Etcd | Kind::Zookeeper | Kind::Postgres);
        for run in self.all_runs() {
            let Some(rb) = run.get(bi) else { continue };
            let rows = rb.contention.iter().filter(|c| c.result.clients == n);
            let Some(ours) = rows.clone().find(|c| c.role == Role::Ours) else {
                continue;
            };
            let r = &ours.result;
            let best_peer = rows
                .filter(|c| c.role == Role::Peer)
                .map(|c| c.result.grants_per_sec)
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
            if let Some(p) = best_peer {
                beats_peers &= r.grants_per_sec >= p;
                peer_rate.push(p);
            }
            ours_rate.push(r.grants_per_sec);
            jains.push(r.jain);
            fair &= r.jain >= JAIN_TARGET;
            waits.push(r.max_wait_ms * 1000.0 / r.hand_off.p50_us.max(f64::MIN_POSITIVE));
            bounded &= r.max_wait_ms * 1000.0 <= LONGEST_WAIT_HAND_OFFS * r.hand_off.p50_us;
            hand_offs.push(r.hand_off.p50_us);
            if let Some(u) = rb.ours() {
                let (limit, against) = if queued {
                    (HAND_OFF_VS_CYCLE * u.latency.p50_us, u.latency.p50_us)
                } else {
                    (HAND_OFF_VS_ACQUIRE * u.acquire.p50_us, u.acquire.p50_us)
                };
                base.push(r.hand_off.p50_us / against);
                quick &= r.hand_off.p50_us <= limit;
            }
        }
        if ours_rate.is_empty() {
            return;
        }
        let rate = |v: f64| format!("{v:.0}/s");
        let peers = if peer_rate.is_empty() {
            "no peer".to_owned()
        } else {
            format!(
                "best peer {} — grants/s ≥ best peer in every run: {}",
                with_runs(spread(&peer_rate, rate), peer_rate.len(), runs),
                met(beats_peers)
            )
        };
        let _ = writeln!(
            out,
            "* {} with {n} clients on one key: {} grants/s ({peers}); Jain {} — ≥ {JAIN_TARGET}: {}; longest wait {} median hand-offs — ≤ {LONGEST_WAIT_HAND_OFFS:.0}: {}; hand-off p50 {} µs = {} {} — ≤ {}: {}.",
            b.backend,
            with_runs(spread(&ours_rate, |v| format!("{v:.0}")), ours_rate.len(), runs),
            spread(&jains, |v| format!("{v:.3}")),
            met(fair),
            spread(&waits, |v| format!("{v:.1}")),
            met(bounded),
            spread(&hand_offs, |v| format!("{v:.0}")),
            spread(&base, |v| format!("{v:.2}×")),
            if queued { "the uncontended acquire + release p50" } else { "the uncontended acquire p50" },
            if queued { HAND_OFF_VS_CYCLE } else { HAND_OFF_VS_ACQUIRE },
            met(quick),
        );
    }

    fn uncontended_section(&self, out: &mut String, charts: Option<&str>) {
        let s = &self.settings;
        let _ = writeln!(
            out,
            "## Uncontended acquire + release, one client\n\n{} cycles per subject after 100 of warm-up, in {} interleaved rounds. \
             The raw minimum is the fewest client-crate requests a correct lock needs, with nothing else \
             (see `crates/bench/src/raw.rs`); peers are measured as their documentation shows.{}\n",
            s.cycles,
            s.rounds,
            runs_note(s.runs)
        );
        let _ = writeln!(
            out,
            "| backend | subject | p50 | p99 | acquire p50 | cycles/s | ÷ raw (p50) |\n|---|---|---|---|---|---|---|"
        );
        let rows: fn(&BackendReport) -> &[SubjectLatency] = |b| b.uncontended.as_slice();
        let us = |v: f64| format!("{v:.0} µs");
        for (bi, b) in self.backends.iter().enumerate() {
            for u in self.table_rows(bi, rows) {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    b.backend,
                    u.subject,
                    self.cell(bi, u, rows, |u| Some(u.latency.p50_us), us),
                    self.cell(bi, u, rows, |u| Some(u.latency.p99_us), us),
                    self.cell(bi, u, rows, |u| Some(u.acquire.p50_us), us),
                    self.cell(bi, u, rows, |u| Some(u.latency.per_sec), |v| format!("{v:.0}")),
                    self.cell(bi, u, rows, |u| Some(u.vs_raw), |v| format!("{v:.2}×")),
                );
            }
        }
        chart(out, charts, "uncontended latency", "latency");
    }

    /// One table row per contention run of `rows`, each figure's spread across runs.
    fn contention_table(&self, out: &mut String, rows: fn(&BackendReport) -> &[ContentionRow]) {
        let _ = writeln!(
            out,
            "| backend | subject | keys × clients | hand-off p50 | p99 | grants/s | Jain | longest wait | server commands per grant | grants per client (min–max) | clients that gave up |\n|---|---|---|---|---|---|---|---|---|---|---|"
        );
        let us = |v: f64| format!("{v:.0} µs");
        for (bi, b) in self.backends.iter().enumerate() {
            for c in self.table_rows(bi, rows) {
                let r = &c.result;
                let min = r.per_client.iter().min().copied().unwrap_or(0);
                let max = r.per_client.iter().max().copied().unwrap_or(0);
                let gave_up: Vec<f64> = self
                    .in_runs(bi, c, rows)
                    .iter()
                    .map(|o| o.result.gave_up as f64)
                    .collect();
                let _ = writeln!(
                    out,
                    "| {} | {} | {} × {} | {} | {} | {} | {} | {} | {} | {min}–{max} of {} | {} |",
                    b.backend,
                    c.subject,
                    r.keys,
                    r.clients,
                    self.cell(bi, c, rows, |c| Some(c.result.hand_off.p50_us), us),
                    self.cell(bi, c, rows, |c| Some(c.result.hand_off.p99_us), us),
                    self.cell(bi, c, rows, |c| Some(c.result.grants_per_sec), |v| format!("{v:.0}")),
                    self.cell(bi, c, rows, |c| Some(c.result.jain), |v| format!("{v:.3}")),
                    self.cell(bi, c, rows, |c| Some(c.result.max_wait_ms), |v| format!("{v:.1} ms")),
                    self.cell(bi, c, rows, |c| c.result.commands_per_grant, |v| format!("{v:.1}")),
                    r.grants,
                    match &r.gave_up_because {
                        None if gave_up.iter().all(|g| *g == 0.0) => "none".to_owned(),
                        None => spread(&gave_up, |v| format!("{v:.0}")),
                        Some(why) => format!("{}: {}", spread(&gave_up, |v| format!("{v:.0}")), why.replace('|', "/")),
                    }
                );
            }
        }
    }

    fn contention_section(&self, out: &mut String, charts: Option<&str>) {
        let s = &self.settings;
        let _ = writeln!(
            out,
            "## Contention: clients taking turns on one key\n\nEach client its own connection; each run stops after {} grants or {:.0} s. \
             Hand-off: from the holder's release call to the next holder's acquire returning, counted when the next holder is another client. \
             Fairness: Jain's index over grants per client (1 = even) and the longest any one acquire waited. \
             Server commands per grant: the servers' own counters over the run ({}), divided by the grants — \
             flat in the number of clients when a release wakes one waiter, growing with it when every waiter races.{}\n",
            s.grants,
            s.contention_limit_secs,
            self.backends
                .iter()
                .map(|b| format!("{}: {}", b.backend, b.command_unit))
                .collect::<Vec<_>>()
                .join("; "),
            runs_note(s.runs)
        );
        self.contention_table(out, |b| b.contention.as_slice());
        chart(out, charts, "hand-off under contention", "handoff");
        if (0..self.backends.len()).any(|bi| !self.table_rows(bi, |b| b.many_keys.as_slice()).is_empty()) {
            let _ = writeln!(
                out,
                "## Many keys at once\n\nThe shape of a real service: a few client processes (each one connection) and many keys, each key contended by every client at once; each run stops after {:.0} s. \
                 Jain's index is over every (key, client) pair; the longest wait is the longest any one acquire waited on any key.\n",
                s.many_keys_limit_secs
            );
            self.contention_table(out, |b| b.many_keys.as_slice());
            chart(out, charts, "many keys at once", "manykeys");
        }
        if (0..self.backends.len()).any(|bi| !self.table_rows(bi, |b| b.dead_waiter.as_slice()).is_empty()) {
            let _ = writeln!(
                out,
                "## A waiter dies while queued\n\n{} trials per subject. A holder takes a fresh key; the victim, connected through a fault proxy, queues for it, and two live clients (each through a proxy of its own) queue behind it. \
                 The victim then dies as a SIGKILLed process does: the proxy resets its connections, its acquire is aborted and its client dropped, with no clean-up. \
                 The holder releases; the figure is release call → the next live waiter's acquire returning (compare the hand-off p50 above). \
                 A trial where no live waiter got the lock within one TTL + 5 s counts as stuck. \
                 Each client counts as queued once the server answered its acquire (bytes back through its proxy; the victim took and gave back another key first) and 50 ms more; \
                 a trial whose victim was not still waiting when it died is left out of the figures and counted.\n",
                s.dead_waiter_trials
            );
            let _ = writeln!(
                out,
                "| backend | subject | release → next live grant, median | max | stuck trials | trials left out (victim not queued) |\n|---|---|---|---|---|---|"
            );
            let rows: fn(&BackendReport) -> &[DeadWaiter] = |b| b.dead_waiter.as_slice();
            for (bi, b) in self.backends.iter().enumerate() {
                for d in self.table_rows(bi, rows) {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {} | {} | {} |",
                        b.backend,
                        d.subject,
                        self.cell(bi, d, rows, |d| d.p50_ms, |v| format!("{v:.1} ms")),
                        self.cell(bi, d, rows, |d| d.max_ms, |v| format!("{v:.1} ms")),
                        self.cell(bi, d, rows, |d| Some(d.stuck as f64), |v| format!("{v:.0}")),
                        self.cell(bi, d, rows, |d| Some(d.left_out as f64), |v| format!("{v:.0}")),
                    );
                }
            }
            out.push('\n');
        }
    }

    /// The rows that could not be measured, so a reader sees a row is missing, and why.
    fn failed_section(&self, out: &mut String) {
        let failed: Vec<(usize, &FailedRow)> = self
            .all_runs()
            .enumerate()
            .flat_map(|(i, run)| run.iter().flat_map(move |b| b.failed.iter().map(move |f| (i + 1, f))))
            .collect();
        if failed.is_empty() {
            return;
        }
        if self.settings.runs > 1 {
            let _ = writeln!(
                out,
                "## Rows that failed\n\nThese rows could not be measured in the run named; the rest of that run went on, and the tables below show the row's figures from the runs that did measure it, saying how many (none: the row is missing).\n\n| run | row | error |\n|---|---|---|"
            );
        } else {
            let _ = writeln!(
                out,
                "## Rows that failed\n\nThese rows could not be measured and are missing below (the rest of the run went on):\n\n| row | error |\n|---|---|"
            );
        }
        for (run, f) in failed {
            let error = f.error.replace('|', "\\|");
            if self.settings.runs > 1 {
                let _ = writeln!(out, "| {run} | {} | {error} |", f.row);
            } else {
                let _ = writeln!(out, "| {} | {error} |", f.row);
            }
        }
        out.push('\n');
    }

    /// Failover time per backend (issue 16), from the first run that measured it (the
    /// spread of several runs is not shown for this row).
    fn failover_section(&self, out: &mut String) {
        if (0..self.backends.len()).all(|bi| self.failover_of(bi).is_none()) {
            return;
        }
        let s = &self.settings;
        let _ = writeln!(
            out,
            "## Failover: leader killed → successor elected\n\n{} failovers per backend. A leader, connected through a fault proxy, wins a campaign on a fresh election name; a successor campaigns and waits. \
             The leader then dies as a SIGKILLed process does: the proxy resets its connections and refuses new ones, and its client is dropped without resigning. \
             The figure is kill → the successor's campaign returning. For this row only, every campaign has a {:.0} s TTL and the session-based backends a {:.0} s session bound (set in the URL; PostgreSQL a statement timeout of half the TTL, which its TTL check asks for), so the figures are that bound plus the detection and wake-up; with the defaults they grow with the TTL or session bound. \
             A failover that took longer than the bound + 10 s counts as stuck (at that bound).\n",
            s.failovers, s.failover_ttl_secs, s.failover_ttl_secs
        );
        let _ = writeln!(
            out,
            "| backend | failovers | median | p99 | max | stuck | how the leader died, what bounds it |\n|---|---|---|---|---|---|---|"
        );
        for (bi, b) in self.backends.iter().enumerate() {
            if let Some(f) = self.failover_of(bi) {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {} | {} |",
                    b.backend, f.failovers, f.p50_ms, f.p99_ms, f.max_ms, f.stuck, f.note
                );
            }
        }
        out.push('\n');
    }

    fn scale_section(&self, out: &mut String, charts: Option<&str>) {
        if (0..self.backends.len()).all(|bi| self.scale_of(bi).is_empty()) {
            return;
        }
        let s = &self.settings;
        let _ = writeln!(
            out,
            "## Scale: locks held at once by one process, auto-renew on\n\n{:.0} s TTL, so each lock is due a renewal every {:.0} s. \
             Measured over {:.0} s of holding, after one renewal period of settling. Server requests come from the servers' own counters; \
             client CPU is this process's (the servers are other processes); memory is resident-set growth per held lock.\n",
            s.scale_ttl_secs,
            s.scale_ttl_secs / 3.0,
            s.hold_secs
        );
        let _ = writeln!(
            out,
            "| backend | locks | acquired in | renewals due/s | server requests/s | counted as | client CPU | memory per lock | all still held |\n|---|---|---|---|---|---|---|---|---|"
        );
        for (bi, b) in self.backends.iter().enumerate() {
            for p in self.scale_of(bi) {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} ms | {:.0} | {} | {} | {:.1} % | {:.0} B | {} |",
                    b.backend,
                    p.locks,
                    p.acquire_secs * 1000.0,
                    p.renewals_needed_per_sec,
                    p.server_requests_per_sec.map_or("n/a".into(), |r| format!("{r:.1}")),
                    b.request_unit,
                    p.client_cpu_percent,
                    p.rss_bytes_per_lock,
                    if p.all_held { "yes" } else { "**no**" }
                );
            }
        }
        chart(out, charts, "renewal cost vs locks held", "renewals");
    }
}

/// The note under a table when several runs were made.
/// What a table row measures, the same in every run: how the runs' rows are matched (a
/// row that failed in one run leaves the others' positions unchanged in meaning).
pub trait Measured {
    /// Whether `other` measured the same thing (in another run).
    fn same(&self, other: &Self) -> bool;
}

impl Measured for SubjectLatency {
    fn same(&self, other: &Self) -> bool {
        self.subject == other.subject
    }
}

impl Measured for ContentionRow {
    fn same(&self, other: &Self) -> bool {
        (&self.subject, self.result.keys, self.result.clients)
            == (&other.subject, other.result.keys, other.result.clients)
    }
}

impl Measured for ScalePoint {
    fn same(&self, other: &Self) -> bool {
        self.locks == other.locks
    }
}

impl Measured for DeadWaiter {
    fn same(&self, other: &Self) -> bool {
        self.subject == other.subject
    }
}

/// `shown`, and ", k of n runs" when the figure rests on fewer runs than all (a row that
/// failed in the others).
fn with_runs(shown: String, measured: usize, runs: usize) -> String {
    if measured == 0 || measured >= runs {
        shown
    } else {
        format!("{shown}, {measured} of {runs} runs")
    }
}

fn runs_note(runs: usize) -> String {
    if runs > 1 {
        format!(" Each figure: the median of {runs} runs, then their min–max.")
    } else {
        String::new()
    }
}

impl BackendReport {
    /// Our own uncontended row.
    pub fn ours(&self) -> Option<&SubjectLatency> {
        self.uncontended.iter().find(|u| u.role == Role::Ours)
    }
}

/// Links a chart of the report's charts directory, when there is one.
fn chart(out: &mut String, charts: Option<&str>, alt: &str, file: &str) {
    match charts {
        Some(dir) => {
            let _ = writeln!(out, "\n![{alt}]({dir}/{file}.svg)\n");
        }
        // The blank line that ends the table before the next heading.
        None => out.push('\n'),
    }
}
