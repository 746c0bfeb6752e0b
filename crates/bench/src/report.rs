//! The report: data (JSON), Markdown, and charts.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::contention::Contention;
use crate::error::{BenchError, Result};
use crate::machine::Machine;
use crate::scale::ScalePoint;
use crate::stats::Latency;
use crate::svg;
use crate::targets::Kind;

/// The target ours must meet against the raw minimum, uncontended (issue 8).
pub const RATIO_TARGET: f64 = 1.15;

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
    /// Uncontended, ours first, then the raw minimum, then peers.
    pub uncontended: Vec<SubjectLatency>,
    /// Contention runs.
    pub contention: Vec<ContentionRow>,
    /// Scale runs.
    pub scale: Vec<ScalePoint>,
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
    /// Per backend.
    pub backends: Vec<BackendReport>,
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
        std::fs::write(path, self.markdown(&stem)).map_err(io(path))
    }

    /// The charts: (file name, SVG).
    pub fn charts(&self) -> Vec<(&'static str, String)> {
        let latency: Vec<svg::Group> = self
            .backends
            .iter()
            .map(|b| {
                let bars = b
                    .uncontended
                    .iter()
                    .map(|s| (s.subject.clone(), s.latency.p50_us))
                    .collect();
                (b.backend.clone(), bars)
            })
            .collect();
        let hand_off: Vec<svg::Group> = self
            .backends
            .iter()
            .map(|b| {
                let bars = b
                    .contention
                    .iter()
                    .map(|c| (format!("{} ×{}", c.subject, c.result.clients), c.result.hand_off.p50_us))
                    .collect();
                (b.backend.clone(), bars)
            })
            .collect();
        let mut renewals: Vec<svg::Series> = self
            .backends
            .iter()
            .filter(|b| !b.scale.is_empty())
            .map(|b| {
                let points = b
                    .scale
                    .iter()
                    .filter_map(|p| Some((p.locks as f64, p.server_requests_per_sec?)))
                    .collect();
                (format!("{} ({})", b.backend, b.request_unit), points)
            })
            .collect();
        if let Some(b) = self.backends.iter().find(|b| !b.scale.is_empty()) {
            let needed = b
                .scale
                .iter()
                .map(|p| (p.locks as f64, p.renewals_needed_per_sec))
                .collect();
            renewals.push(("one request per lock per renewal".into(), needed));
        }
        vec![
            (
                "latency.svg",
                svg::bar_chart("Uncontended acquire + release, median (log scale)", "µs", &latency),
            ),
            (
                "handoff.svg",
                svg::bar_chart(
                    "Hand-off under contention, median release → next holder (log scale)",
                    "µs",
                    &hand_off,
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

    /// The Markdown report; charts are linked as `CHARTS/*.svg`.
    pub fn markdown(&self, charts: &str) -> String {
        let m = &self.machine;
        let s = &self.settings;
        let mut out = String::new();
        let _ = writeln!(out, "# Benchmarks\n");
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
        let _ = writeln!(out, "Every lock has a {:.0} s TTL. Latencies are wall-clock on loopback, client and server together. Also as JSON: the same command with `--json`.\n", s.ttl_secs);
        self.verdicts(&mut out);
        self.uncontended_section(&mut out, charts);
        self.contention_section(&mut out, charts);
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

    fn verdicts(&self, out: &mut String) {
        let _ = writeln!(out, "## At a glance\n");
        if let Some((backend, worst)) = self.worst_ratio() {
            let ok = if worst <= RATIO_TARGET { "met" } else { "**not met**" };
            let _ = writeln!(
                out,
                "* fencelock ÷ raw minimum, uncontended median: at most {worst:.2}× (worst: {backend}); target ≤ {RATIO_TARGET}× — {ok}."
            );
        }
        for b in &self.backends {
            if let Some(c) = b
                .contention
                .iter()
                .find(|c| c.role == Role::Ours && c.result.clients == 8)
            {
                let _ = writeln!(
                    out,
                    "* {}: hand-off with 8 clients, median {:.0} µs; Jain's index {:.3}, longest wait {:.1} ms.",
                    b.backend, c.result.hand_off.p50_us, c.result.jain, c.result.max_wait_ms
                );
            }
        }
        for b in &self.backends {
            if let Some(p) = b.scale.iter().max_by_key(|p| p.locks) {
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

    fn uncontended_section(&self, out: &mut String, charts: &str) {
        let s = &self.settings;
        let _ = writeln!(
            out,
            "## Uncontended acquire + release, one client\n\n{} cycles per subject after 100 of warm-up, in {} interleaved rounds. \
             The raw minimum is the fewest client-crate requests a correct lock needs, with nothing else \
             (see `crates/bench/src/raw.rs`); peers are measured as their documentation shows.\n",
            s.cycles, s.rounds
        );
        let _ = writeln!(
            out,
            "| backend | subject | p50 | p99 | cycles/s | ÷ raw (p50) |\n|---|---|---|---|---|---|"
        );
        for b in &self.backends {
            for u in &b.uncontended {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} µs | {:.0} µs | {:.0} | {:.2}× |",
                    b.backend, u.subject, u.latency.p50_us, u.latency.p99_us, u.latency.per_sec, u.vs_raw
                );
            }
        }
        let _ = writeln!(out, "\n![uncontended latency]({charts}/latency.svg)\n");
    }

    fn contention_section(&self, out: &mut String, charts: &str) {
        let s = &self.settings;
        let _ = writeln!(
            out,
            "## Contention: clients taking turns on one key\n\nEach client its own connection; each run stops after {} grants or {:.0} s. \
             Hand-off: from the holder's release call to the next holder's acquire returning, counted when the next holder is another client. \
             Fairness: Jain's index over grants per client (1 = even) and the longest any one acquire waited.\n",
            s.grants, s.contention_limit_secs
        );
        let _ = writeln!(
            out,
            "| backend | subject | clients | hand-off p50 | p99 | grants/s | Jain | longest wait | grants per client (min–max) | clients that gave up |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        for b in &self.backends {
            for c in &b.contention {
                let r = &c.result;
                let min = r.per_client.iter().min().copied().unwrap_or(0);
                let max = r.per_client.iter().max().copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.0} µs | {:.0} µs | {:.0} | {:.3} | {:.1} ms | {min}–{max} of {} | {} |",
                    b.backend,
                    c.subject,
                    r.clients,
                    r.hand_off.p50_us,
                    r.hand_off.p99_us,
                    r.grants_per_sec,
                    r.jain,
                    r.max_wait_ms,
                    r.grants,
                    match &r.gave_up_because {
                        None => "none".to_owned(),
                        Some(why) => format!("{}: {}", r.gave_up, why.replace('|', "/")),
                    }
                );
            }
        }
        let _ = writeln!(out, "\n![hand-off under contention]({charts}/handoff.svg)\n");
    }

    fn scale_section(&self, out: &mut String, charts: &str) {
        if self.backends.iter().all(|b| b.scale.is_empty()) {
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
        for b in &self.backends {
            for p in &b.scale {
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
        let _ = writeln!(out, "\n![renewal cost vs locks held]({charts}/renewals.svg)\n");
    }
}

impl BackendReport {
    /// Our own uncontended row.
    pub fn ours(&self) -> Option<&SubjectLatency> {
        self.uncontended.iter().find(|u| u.role == Role::Ours)
    }
}
