//! Safety scenarios: the background document's claims as runnable, checked histories.
//!
//! Each scenario takes a [`ClientFactory`] (independent clients of one backend on real
//! servers), plays a fault, records a [`History`] and returns the checker's [`Report`] with a
//! timeline a person can follow.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use fencelock_core::fencing::FencingChecker;
use fencelock_core::{DistributedLock, Fence, GrantId, Lease, LockOptions};

use crate::conformance::election::ElectionFactory;
use crate::conformance::ClientFactory;
use crate::history::{Event, History, Report};
use crate::keys::unique_key;

/// What a scenario run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The checker's findings.
    pub report: Report,
    /// One line per event, in order, relative to the start.
    pub timeline: Vec<String>,
    /// The recorded events and the instant the scenario started, for pictures.
    pub events: Vec<Event>,
    /// When the scenario started.
    pub start: Instant,
    /// What went wrong with the run itself, not with the lock service: a client that did
    /// not finish in time or panicked, a client with no grant after the fault (a run that
    /// showed nothing about the backend after it). Empty when the run exercised what it says; the lab fails otherwise.
    pub problems: Vec<String>,
}

impl Outcome {
    fn of(history: &History, log: &Log) -> Outcome {
        Outcome {
            report: history.check(),
            timeline: log.lines.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            events: history.events(),
            start: log.start,
            problems: Vec::new(),
        }
    }

    /// An SVG timeline: one lane per client, a bar per grant from acquisition to its release
    /// or the end of its validity (cut at the right edge), a dot per write (green: accepted,
    /// red: refused), a cross per shadow-register write.
    pub fn svg(&self, title: &str) -> String {
        use std::fmt::Write as _;
        let ms = |t: Instant| t.saturating_duration_since(self.start).as_secs_f64() * 1000.0;
        let releases: Vec<(fencelock_core::GrantId, Instant)> = self
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Released { grant, at } => Some((grant.clone(), *at)),
                _ => None,
            })
            .collect();
        // The scale covers what happened (grants, writes, releases), not validities that run
        // on long after: bars that reach past the last event are cut at the right edge.
        let mut end_ms: f64 = 1.0;
        let mut lanes = 0usize;
        for e in &self.events {
            match e {
                Event::Granted { client, at, .. }
                | Event::FencedWrite { client, at, .. }
                | Event::ShadowIncrement { client, at, .. } => {
                    lanes = lanes.max(client + 1);
                    end_ms = end_ms.max(ms(*at));
                }
                Event::Released { at, .. } => end_ms = end_ms.max(ms(*at)),
            }
        }
        let end_ms = end_ms * 1.3 + 20.0;
        let (width, lane_h, left) = (960.0, 40.0, 90.0);
        let height = 60.0 + lane_h * lanes as f64;
        let x = |t: f64| left + (width - left - 20.0) * (t / end_ms).min(1.0);
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"18\" font-weight=\"bold\">{}</text>\n",
            title.replace('&', "&amp;").replace('<', "&lt;")
        );
        for lane in 0..lanes {
            let y = 40.0 + lane_h * lane as f64;
            let _ = writeln!(
                svg,
                "<text x=\"10\" y=\"{}\">client {}</text>",
                y + 18.0,
                (b'A' + lane as u8) as char
            );
        }
        for e in &self.events {
            match e {
                Event::Granted {
                    client,
                    token,
                    grant,
                    at,
                    valid_until,
                } => {
                    let y = 40.0 + lane_h * *client as f64 + 6.0;
                    let released = releases.iter().find(|(g, _)| g == grant).map(|(_, r)| ms(*r));
                    let valid_end = ms(*valid_until).min(end_ms);
                    let held_end = released.map_or(valid_end, |r| r.min(valid_end));
                    let _ = writeln!(
                        svg,
                        "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"18\" fill=\"#7fb2e5\"/>",
                        x(ms(*at)),
                        (x(held_end) - x(ms(*at))).max(1.0)
                    );
                    let _ = writeln!(
                        svg,
                        "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"black\">token {token}</text>",
                        x(ms(*at)) + 8.0,
                        y + 13.0
                    );
                }
                Event::FencedWrite {
                    client, at, accepted, ..
                } => {
                    let y = 40.0 + lane_h * *client as f64 + 15.0;
                    let color = if *accepted { "#2e9e44" } else { "#d0021b" };
                    let _ = writeln!(
                        svg,
                        "<circle cx=\"{:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"{color}\" stroke=\"black\"/>",
                        x(ms(*at))
                    );
                }
                Event::ShadowIncrement { client, at, .. } => {
                    let (cx, cy) = (x(ms(*at)), 40.0 + lane_h * *client as f64 + 32.0);
                    let _ = writeln!(
                        svg,
                        "<path d=\"M{:.1} {:.1} l8 8 m0 -8 l-8 8\" stroke=\"#f5a623\" stroke-width=\"2\"/>",
                        cx - 4.0,
                        cy - 4.0
                    );
                }
                Event::Released { .. } => {}
            }
        }
        let _ = writeln!(
            svg,
            "<text x=\"10\" y=\"{:.1}\" fill=\"#555\">0 … {:.0} ms · bar: grant, until its release or the end of its validity · dot: write (green accepted, red refused) · cross: shadow-register write</text>\n</svg>",
            height - 8.0,
            end_ms
        );
        svg
    }
}

/// The protected resource: fenced (refuses stale tokens) or not (last write wins).
enum Resource {
    Fenced(FencingChecker),
    Unfenced,
}

impl Resource {
    fn write(&self, fence: &Fence) -> bool {
        match self {
            Resource::Fenced(c) => c.check("resource", fence).is_ok(),
            Resource::Unfenced => true,
        }
    }
}

struct Log {
    start: Instant,
    lines: Mutex<Vec<String>>,
}

impl Log {
    fn new() -> Self {
        Log {
            start: Instant::now(),
            lines: Mutex::default(),
        }
    }

    fn say(&self, what: String) {
        let ms = self.start.elapsed().as_millis();
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{ms:>6} ms  {what}"));
    }
}

/// A's options in the scenarios where A stalls: `ttl`, a 30 s wait, no auto-renew.
fn unrenewed(ttl: Duration) -> LockOptions {
    LockOptions::new()
        .with_ttl(ttl)
        .with_wait(Duration::from_secs(30))
        .with_auto_renew(false)
}

/// Client A (client 0) takes `key`: recorded in `history` and said on the timeline.
async fn a_acquires(a: &dyn DistributedLock, key: &str, opts: &LockOptions, history: &History, log: &Log) -> Lease {
    let la = a.acquire(key, opts).await.expect("A acquires");
    history.granted(0, &la);
    log.say(format!(
        "A acquired, token {}, valid for {:?}",
        la.token(),
        la.remaining()
    ));
    la
}

/// How the timeline words a write's verdict: a current holder's write is expected to land,
/// a stale one's to be refused; the unexpected outcome is in capitals.
#[derive(Clone, Copy)]
enum Writer {
    Current,
    Stale,
}

/// `client` writes to `resource` with `lease`'s fence: recorded in `history`, and said on
/// the timeline as `said(verdict)`.
fn write_and_say(
    resource: &Resource,
    history: &History,
    log: &Log,
    client: usize,
    lease: &Lease,
    writer: Writer,
    said: impl FnOnce(&str) -> String,
) {
    let ok = resource.write(&lease.fence());
    history.fenced_write(client, lease, ok);
    let verdict = match (writer, ok) {
        (Writer::Current, true) => "accepted",
        (Writer::Current, false) => "REFUSED",
        (Writer::Stale, true) => "ACCEPTED (stale)",
        (Writer::Stale, false) => "refused",
    };
    log.say(said(verdict));
}

/// A release (or resignation) of `grant` that ended now: recorded in `history`, and said
/// on the timeline as `what: ok` or `what: lost`.
fn say_ended(history: &History, log: &Log, grant: GrantId, what: &str, ok: bool, lost: &str) {
    history.record(Event::Released {
        grant,
        at: Instant::now(),
    });
    log.say(format!("{what}: {}", if ok { "ok" } else { lost }));
}

/// **Holder paused past its TTL, then writes** (Kleppmann's scenario, matrix F1/S1).
///
/// Client A takes the lock (`ttl`, no auto-renew) and reads the shadow register, then
/// stalls — a stop-the-world pause, modelled by A doing nothing until its validity has run
/// out (its library still hands the lock back, which only makes the scenario kinder to the
/// lock service). Client B then takes the lock, increments the register and writes to the
/// resource. A wakes up and finishes its read-modify-write and its write, with its old token.
///
/// With `fenced`, the resource checks tokens: A's write is refused. Without, A's write
/// lands and B's increment is lost. No backend can prevent A's late action (a belief
/// overlap); only the token can make it harmless.
pub async fn paused_holder(f: &dyn ClientFactory, ttl: Duration, fenced: bool) -> Outcome {
    let (a, b) = (f.client().await, f.client().await);
    let key = unique_key("lab-paused");
    let history = History::new();
    let log = Log::new();
    let resource = if fenced {
        Resource::Fenced(FencingChecker::new())
    } else {
        Resource::Unfenced
    };
    let shadow = Mutex::new(0u64);
    let opts = unrenewed(ttl);

    let la = a_acquires(&*a, &key, &opts, &history, &log).await;
    let a_read = *shadow.lock().unwrap_or_else(|p| p.into_inner());
    log.say(format!("A read the shadow register: {a_read}; A pauses"));

    let lost = tokio::time::timeout(ttl + Duration::from_secs(5), la.lost())
        .await
        .expect("A's validity ends");
    log.say(format!(
        "A's lease ended ({lost}) — A is still paused and does not know"
    ));

    let lb = b
        .acquire(&key, &opts.with_ttl(Duration::from_secs(30)))
        .await
        .expect("B acquires after A's TTL");
    history.granted(1, &lb);
    log.say(format!("B acquired, token {}", lb.token()));
    let b_read = {
        let mut v = shadow.lock().unwrap_or_else(|p| p.into_inner());
        let read = *v;
        *v = read + 1;
        read
    };
    history.record(Event::ShadowIncrement {
        client: 1,
        grant: lb.grant().clone(),
        read: b_read,
        at: Instant::now(),
    });
    log.say(format!("B incremented the shadow register: {b_read} -> {}", b_read + 1));
    write_and_say(&resource, &history, &log, 1, &lb, Writer::Current, |v| {
        format!("B wrote to the resource with token {}: {v}", lb.token())
    });

    // A wakes up and finishes what it was doing, with what it had.
    *shadow.lock().unwrap_or_else(|p| p.into_inner()) = a_read + 1;
    history.record(Event::ShadowIncrement {
        client: 0,
        grant: la.grant().clone(),
        read: a_read,
        at: Instant::now(),
    });
    log.say(format!(
        "A wakes up and writes the shadow register: {a_read} -> {} (overwriting B's)",
        a_read + 1
    ));
    write_and_say(&resource, &history, &log, 0, &la, Writer::Stale, |v| {
        format!("A writes to the resource with its old token {}: {v}", la.token())
    });

    let b_grant = lb.grant().clone();
    let released = lb.release().await.is_ok();
    say_ended(&history, &log, b_grant, "B released", released, "lease lost");
    let _ = la.release().await;
    Outcome::of(&history, &log)
}

/// **Leader paused past its validity, then writes** (issue 16; the election form of
/// [`paused_holder`]).
///
/// Client A campaigns (`ttl`, no auto-renew) and writes to a fenced resource with its term,
/// then stalls — modelled by A doing nothing until its leadership's validity has run out.
/// Client B's campaign then wins, and B writes with its term. A wakes up and writes with
/// its old term: the resource ([`FencingChecker`]) refuses it, while B's writes before and
/// after are accepted. No election can stop A's late write from being sent (a belief
/// overlap); only the term makes it harmless.
pub async fn paused_leader(f: &dyn ElectionFactory, ttl: Duration) -> Outcome {
    let (a, b) = (f.election().await, f.election().await);
    let name = unique_key("lab-leader");
    let history = History::new();
    let log = Log::new();
    let resource = Resource::Fenced(FencingChecker::new());
    let opts = unrenewed(ttl);

    let la = a.campaign(&name, b"A", &opts).await.expect("A is elected");
    history.granted(0, la.lease());
    log.say(format!(
        "A elected, term {}, valid for {:?}",
        la.term(),
        la.lease().remaining()
    ));
    write_and_say(&resource, &history, &log, 0, la.lease(), Writer::Current, |v| {
        format!("A wrote with term {}: {v}; A pauses", la.term())
    });

    let lost = tokio::time::timeout(ttl + Duration::from_secs(5), la.lost())
        .await
        .expect("A's validity ends");
    log.say(format!(
        "A's leadership ended ({lost}) — A is still paused and does not know"
    ));

    let lb = b
        .campaign(&name, b"B", &opts.with_ttl(Duration::from_secs(30)))
        .await
        .expect("B is elected after A's validity");
    history.granted(1, lb.lease());
    log.say(format!("B elected, term {}", lb.term()));
    write_and_say(&resource, &history, &log, 1, lb.lease(), Writer::Current, |v| {
        format!("B wrote with term {}: {v}", lb.term())
    });

    write_and_say(&resource, &history, &log, 0, la.lease(), Writer::Stale, |v| {
        format!("A wakes up and writes with its old term {}: {v}", la.term())
    });
    write_and_say(&resource, &history, &log, 1, lb.lease(), Writer::Current, |v| {
        format!("B writes again with term {}: {v}", lb.term())
    });

    let b_grant = lb.lease().grant().clone();
    let resigned = lb.resign().await.is_ok();
    say_ended(&history, &log, b_grant, "B resigned", resigned, "leadership lost");
    let _ = la.resign().await;
    let _ = a.close().await;
    let _ = b.close().await;
    Outcome::of(&history, &log)
}

/// **A fault strikes while the lock is held** (servers restarted empty, failed over,
/// partitioned): client A takes the lock for 30 s, `fault` runs, and client B tries to take
/// the lock within `wait` — long before A's validity ends. A correct lock service makes B
/// wait (or fail); if B gets it, the checker reports a validity overlap, and usually a token
/// regression or reuse. Both holders then write to a fenced resource in turn (B first).
pub async fn fault_while_held<F, Fut>(f: &dyn ClientFactory, fault: F, wait: Duration) -> Outcome
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    fault_while_held_for(f, fault, wait, Duration::from_secs(30)).await
}

/// [`fault_while_held`] with A's lease for `ttl` instead of 30 s: for a backend that
/// refuses a TTL above its own bound (Redlock's `restart_delay`).
pub async fn fault_while_held_for<F, Fut>(f: &dyn ClientFactory, fault: F, wait: Duration, ttl: Duration) -> Outcome
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let a = f.client().await;
    let key = unique_key("lab-fault");
    let history = History::new();
    let log = Log::new();
    let resource = FencingChecker::new();
    let opts = unrenewed(ttl);
    let la = a_acquires(&*a, &key, &opts, &history, &log).await;
    let ok = resource.check("resource", &la.fence()).is_ok();
    history.fenced_write(0, &la, ok);
    log.say(format!("A wrote to the resource with token {}", la.token()));
    fault().await;
    log.say("FAULT injected".to_owned());
    let b = f.client().await;
    match b.acquire(&key, &opts.with_wait(wait)).await {
        Ok(lb) => {
            history.granted(1, &lb);
            log.say(format!(
                "B acquired, token {} — while A's lease is still valid for {:?}",
                lb.token(),
                la.remaining()
            ));
            let ok = resource.check("resource", &lb.fence()).is_ok();
            history.fenced_write(1, &lb, ok);
            log.say(format!(
                "B wrote to the resource with token {}: {}",
                lb.token(),
                if ok {
                    "accepted"
                } else {
                    "refused (token not above A's)"
                }
            ));
            let _ = lb.release().await;
        }
        Err(e) => log.say(format!("B could not acquire within {wait:?}: {e}")),
    }
    let a_grant = la.grant().clone();
    let released = la.release().await.is_ok();
    say_ended(&history, &log, a_grant, "A released", released, "lease lost");
    Outcome::of(&history, &log)
}

/// **A fault during contention** (F9: a consensus leader killed; Redlock losing a minority):
/// `clients` clients take turns on one key for `rounds` grants each, writing to a fenced
/// resource under every grant, while `fault` runs once the first grant is in. Records
/// every grant's validity window; the checker reports overlaps, regressions and stale
/// writes. Attempts that fail (the backend unavailable for a moment) are retried. A client
/// done with its `rounds` before the fault is over waits for its end, then takes one more
/// grant: every client must get a grant asked for after the fault, within 60 s of its end.
///
/// The timeline ends with the number of grants after the fault; [`Outcome::problems`]
/// says when a client got none (the run showed nothing about the backend after the
/// fault), did not end within 120 s, or panicked.
///
/// # Panics
/// When no client got a first grant within 60 s (the fault would strike nothing).
pub async fn contention_with_fault<F, Fut>(f: &dyn ClientFactory, clients: usize, rounds: usize, fault: F) -> Outcome
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    contention_with_fault_within(f, clients, rounds, fault, Duration::from_secs(60)).await
}

/// [`contention_with_fault`] with the clients' time to get their grant after the fault:
/// `recover` from the end of the fault (instead of 60 s).
pub async fn contention_with_fault_within<F, Fut>(
    f: &dyn ClientFactory,
    clients: usize,
    rounds: usize,
    fault: F,
    recover: Duration,
) -> Outcome
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use std::sync::Arc;

    const FIRST_GRANT: Duration = Duration::from_secs(60);
    const JOIN: Duration = Duration::from_secs(120);
    let key = unique_key("lab-contention");
    let history = Arc::new(History::new());
    let log = Arc::new(Log::new());
    let resource = Arc::new(FencingChecker::new());
    let opts = LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(30));
    let granted = Arc::new(tokio::sync::Notify::new());
    // When the fault was over: a grant asked for after it counts as "after the fault".
    let (fault_over_tx, fault_over) = tokio::sync::watch::channel(None::<Instant>);
    // Aborted on every way out (a panicking fault too): no client spins on after the run.
    struct Clients(Vec<tokio::task::JoinHandle<(usize, usize)>>);
    impl Drop for Clients {
        fn drop(&mut self) {
            for t in &self.0 {
                t.abort();
            }
        }
    }
    let mut tasks = Clients(Vec::new());
    for c in 0..clients {
        let lock = f.client().await;
        let (key, history, log, resource, granted, fault_over) = (
            key.clone(),
            Arc::clone(&history),
            Arc::clone(&log),
            Arc::clone(&resource),
            Arc::clone(&granted),
            fault_over.clone(),
        );
        let mut fault_over = fault_over;
        tasks.0.push(tokio::spawn(async move {
            // (grants, grants asked for after the fault)
            let (mut done, mut after) = (0usize, 0usize);
            loop {
                if done >= rounds && after > 0 {
                    break;
                }
                if done >= rounds {
                    // Our rounds are done: wait for the end of the fault (the sender lives
                    // until then), not spin on grants while it runs.
                    let _ = fault_over.wait_for(Option::is_some).await;
                }
                let over = *fault_over.borrow();
                if over.is_some_and(|t| t.elapsed() > recover) {
                    break;
                }
                let lease = match lock.acquire(&key, &opts).await {
                    Ok(l) => l,
                    Err(e) => {
                        log.say(format!("client {c}: acquire failed: {e}"));
                        // A backend that refuses at once (a server restarting) must not
                        // make this loop spin (a pause between attempts, not a wait for a
                        // state); the loop's bounds are FIRST_GRANT before the fault and
                        // `recover` after it.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                history.granted(c, &lease);
                let ok = resource.check("resource", &lease.fence()).is_ok();
                history.fenced_write(c, &lease, ok);
                log.say(format!(
                    "client {c}: holds token {} (write {})",
                    lease.token(),
                    if ok { "accepted" } else { "refused" }
                ));
                granted.notify_one();
                tokio::task::yield_now().await;
                let g = lease.grant().clone();
                let released_at = Instant::now();
                let _ = lease.release().await;
                history.record(Event::Released {
                    grant: g,
                    at: released_at,
                });
                done += 1;
                if over.is_some() {
                    after += 1;
                }
            }
            (done, after)
        }));
    }
    if tokio::time::timeout(FIRST_GRANT, granted.notified()).await.is_err() {
        panic!("no client got the lock within {FIRST_GRANT:?}: the fault would strike nothing");
    }
    log.say("FAULT injected".to_owned());
    fault().await;
    fault_over_tx.send_replace(Some(Instant::now()));
    log.say("fault over".to_owned());
    let mut problems = Vec::new();
    let mut after_fault = 0;
    let join_by = tokio::time::Instant::now() + JOIN;
    for (c, t) in tasks.0.iter_mut().enumerate() {
        match tokio::time::timeout_at(join_by, t).await {
            Ok(Ok((done, after))) => {
                after_fault += after;
                if after == 0 {
                    problems.push(format!(
                        "client {c} got no grant after the fault ({done} before it) within {recover:?}"
                    ));
                }
            }
            Ok(Err(e)) => problems.push(format!("client {c} failed: {e}")),
            Err(_) => problems.push(format!("client {c} did not finish within {JOIN:?}")),
        }
    }
    log.say(format!("grants after the fault: {after_fault}"));
    let mut outcome = Outcome::of(&history, &log);
    outcome.problems = problems;
    outcome
}

/// One phase of a partition scenario: cut some links, try to lock, report.
pub struct Phase<'a> {
    /// What the phase does, for the timeline.
    pub name: String,
    /// Applied before the phase's attempt (cuts or heals links).
    pub apply: Box<dyn FnOnce() + Send + 'a>,
}

/// **The client partitioned from some nodes** (F3/F3'): for each phase, apply it (cut or
/// heal proxy links between client A and the servers), then A tries the lock (`try_acquire`,
/// bounded by the backend's own timeouts) while client B, never partitioned, checks that it
/// cannot get the lock A holds. Records grants; the timeline says which phases were
/// available and how long each attempt took.
pub async fn client_partition(a: &dyn ClientFactory, b: &dyn ClientFactory, phases: Vec<Phase<'_>>) -> Outcome {
    let (a, b) = (a.client().await, b.client().await);
    let key = unique_key("lab-partition");
    let history = History::new();
    let log = Log::new();
    let opts = LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_auto_renew(false);
    for phase in phases {
        (phase.apply)();
        log.say(format!("{}:", phase.name));
        let started = Instant::now();
        match a.try_acquire(&key, &opts).await {
            Ok(Some(la)) => {
                history.granted(0, &la);
                log.say(format!("  A acquired in {:?}, token {}", started.elapsed(), la.token()));
                match b.try_acquire(&key, &opts).await {
                    Ok(Some(lb)) => {
                        history.granted(1, &lb);
                        log.say(format!("  B ALSO acquired, token {}", lb.token()));
                        let _ = lb.release().await;
                    }
                    Ok(None) => log.say("  B (not partitioned) could not take it: exclusive".to_owned()),
                    Err(e) => log.say(format!("  B: {e}")),
                }
                let g = la.grant().clone();
                let at = Instant::now();
                let released = la.release().await;
                history.record(Event::Released { grant: g, at });
                log.say(format!(
                    "  A released: {}",
                    if released.is_ok() {
                        "ok"
                    } else {
                        "not confirmed by a quorum"
                    }
                ));
            }
            Ok(None) => log.say(format!("  A: busy after {:?}", started.elapsed())),
            Err(e) => log.say(format!("  A: unavailable after {:?}: {e}", started.elapsed())),
        }
    }
    Outcome::of(&history, &log)
}
