//! A history of what lock clients did, and a checker that finds what went wrong in it.
//!
//! Clients record events with timestamps (monotonic) and tokens; [`History::check`]
//! reports:
//!
//! * **overlaps** — two grants of the key whose *validity windows* overlap (from the grant
//!   to the earlier of its validity's end and its release). That is the lock service's
//!   fault: it let two clients believe, rightly by its own promise, that they held the lock;
//! * **belief overlaps** — a holder acting after its validity ended while another grant's
//!   window was open. Unavoidable for any lease (a paused holder); reported for information;
//!   fencing is what makes them harmless;
//! * **token regressions** — a grant whose token is below an earlier grant's;
//! * **token reuse** — equal tokens on different grants;
//! * **stale writes accepted** — a fenced resource accepted a write whose token was below
//!   the highest it had accepted before (or equal, from another grant);
//! * **lost updates** — increments of an unfenced shadow register that read a value another
//!   increment had already read (one of them was overwritten).

use std::sync::Mutex;
use std::time::Instant;

use fencelock_core::{FencingToken, GrantId};

/// One thing a client did.
#[derive(Debug, Clone)]
pub enum Event {
    /// A grant: `at` is when acquire returned, `valid_until` the lease's validity end.
    Granted {
        /// Who.
        client: usize,
        /// Token.
        token: FencingToken,
        /// Grant id.
        grant: GrantId,
        /// When acquire returned.
        at: Instant,
        /// When the validity ends.
        valid_until: Instant,
    },
    /// The holder called release (its window ends here if not before).
    Released {
        /// The grant.
        grant: GrantId,
        /// When release was called.
        at: Instant,
    },
    /// A write to the fenced resource, and whether the resource accepted it.
    FencedWrite {
        /// Who.
        client: usize,
        /// The fence presented.
        token: FencingToken,
        /// The grant presented.
        grant: GrantId,
        /// When.
        at: Instant,
        /// Whether the resource accepted it.
        accepted: bool,
    },
    /// A read-modify-write of the unfenced shadow register: read `read`, wrote `read + 1`.
    ShadowIncrement {
        /// Who.
        client: usize,
        /// The grant it acted under.
        grant: GrantId,
        /// The value read.
        read: u64,
        /// When it wrote.
        at: Instant,
    },
}

/// What the checker found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Grants (by token) whose validity windows overlapped.
    pub overlaps: Vec<(FencingToken, FencingToken)>,
    /// Actions after the actor's validity ended while another grant was valid.
    pub belief_overlaps: usize,
    /// (earlier, later) tokens where the later grant's token was lower.
    pub token_regressions: Vec<(FencingToken, FencingToken)>,
    /// Tokens handed to two different grants.
    pub token_reuse: Vec<FencingToken>,
    /// Fenced writes accepted although stale.
    pub stale_writes_accepted: usize,
    /// Fenced writes refused.
    pub writes_refused: usize,
    /// Shadow-register increments lost.
    pub lost_updates: usize,
}

impl Report {
    /// `true` when the lock service itself misbehaved (overlap, regression, reuse) or a
    /// stale write got through.
    pub fn has_violations(&self) -> bool {
        !self.overlaps.is_empty()
            || !self.token_regressions.is_empty()
            || !self.token_reuse.is_empty()
            || self.stale_writes_accepted > 0
    }
}

/// A shared, append-only history.
#[derive(Debug, Default)]
pub struct History {
    events: Mutex<Vec<Event>>,
}

struct Window {
    token: FencingToken,
    grant: GrantId,
    client: usize,
    start: Instant,
    valid_until: Instant,
    end: Instant,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an event.
    pub fn record(&self, e: Event) {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(e);
    }

    /// Records a grant of `lease` to `client`, now.
    pub fn granted(&self, client: usize, lease: &fencelock_core::Lease) {
        self.record(Event::Granted {
            client,
            token: lease.token(),
            grant: lease.grant().clone(),
            at: Instant::now(),
            valid_until: lease.valid_until().into_std(),
        });
    }

    /// Records a write to the fenced resource under `lease`, now.
    pub fn fenced_write(&self, client: usize, lease: &fencelock_core::Lease, accepted: bool) {
        self.record(Event::FencedWrite {
            client,
            token: lease.token(),
            grant: lease.grant().clone(),
            at: Instant::now(),
            accepted,
        });
    }

    /// A copy of the events.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn windows(events: &[Event]) -> Vec<Window> {
        let mut out = Vec::new();
        for e in events {
            if let Event::Granted {
                client,
                token,
                grant,
                at,
                valid_until,
            } = e
            {
                let released = events.iter().find_map(|r| match r {
                    Event::Released { grant: g, at } if g == grant => Some(*at),
                    _ => None,
                });
                let end = released.map_or(*valid_until, |r| r.min(*valid_until));
                out.push(Window {
                    token: *token,
                    grant: grant.clone(),
                    client: *client,
                    start: *at,
                    valid_until: *valid_until,
                    end,
                });
            }
        }
        out.sort_by_key(|w| w.start);
        out
    }

    /// Checks the history.
    pub fn check(&self) -> Report {
        let events = self.events();
        let windows = Self::windows(&events);
        let mut report = Report::default();
        for (i, a) in windows.iter().enumerate() {
            for b in &windows[i + 1..] {
                if b.start < a.end && a.start < b.end {
                    report.overlaps.push((a.token, b.token));
                }
            }
        }
        let mut highest: Option<&Window> = None;
        for w in &windows {
            if let Some(h) = highest {
                if w.token < h.token {
                    report.token_regressions.push((h.token, w.token));
                } else if w.token == h.token && w.grant != h.grant {
                    report.token_reuse.push(w.token);
                }
            }
            if highest.is_none_or(|h| w.token >= h.token) {
                highest = Some(w);
            }
        }
        // Actions after the actor's own validity, while another window was open.
        let acted = |client: usize, grant: &GrantId, at: Instant| {
            let mine = windows.iter().find(|w| &w.grant == grant && w.client == client);
            let late = mine.is_some_and(|w| at > w.valid_until);
            late && windows
                .iter()
                .any(|o| &o.grant != grant && o.start <= at && at <= o.end)
        };
        let mut accepted: Vec<(FencingToken, &GrantId)> = Vec::new();
        let mut reads: Vec<u64> = Vec::new();
        let mut ordered: Vec<&Event> = events.iter().collect();
        ordered.sort_by_key(|e| match e {
            Event::Granted { at, .. }
            | Event::Released { at, .. }
            | Event::FencedWrite { at, .. }
            | Event::ShadowIncrement { at, .. } => *at,
        });
        for e in ordered {
            match e {
                Event::FencedWrite {
                    client,
                    token,
                    grant,
                    at,
                    accepted: ok,
                } => {
                    if acted(*client, grant, *at) {
                        report.belief_overlaps += 1;
                    }
                    if *ok {
                        let stale = accepted.iter().any(|(t, g)| token < t || (token == t && *g != grant));
                        if stale {
                            report.stale_writes_accepted += 1;
                        }
                        accepted.push((*token, grant));
                    } else {
                        report.writes_refused += 1;
                    }
                }
                Event::ShadowIncrement {
                    client,
                    grant,
                    read,
                    at,
                } => {
                    if acted(*client, grant, *at) {
                        report.belief_overlaps += 1;
                    }
                    if reads.contains(read) {
                        report.lost_updates += 1;
                    }
                    reads.push(*read);
                }
                _ => {}
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn t(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    fn grant(h: &History, base: Instant, client: usize, token: u64, id: &str, from: u64, until: u64) -> GrantId {
        let g = GrantId::from_string(id);
        h.record(Event::Granted {
            client,
            token: FencingToken::new(token),
            grant: g.clone(),
            at: t(base, from),
            valid_until: t(base, until),
        });
        g
    }

    /// Records a fenced write by `client` with `token` of grant `g` at `base` + `at` ms.
    fn write(h: &History, base: Instant, client: usize, token: u64, g: GrantId, at: u64, accepted: bool) {
        h.record(Event::FencedWrite {
            client,
            token: FencingToken::new(token),
            grant: g,
            at: t(base, at),
            accepted,
        });
    }

    #[test]
    fn a_clean_history_passes() {
        let (h, b) = (History::new(), Instant::now());
        let g1 = grant(&h, b, 0, 1, "a", 0, 100);
        write(&h, b, 0, 1, g1.clone(), 10, true);
        h.record(Event::Released {
            grant: g1,
            at: t(b, 20),
        });
        let g2 = grant(&h, b, 1, 2, "b", 30, 130);
        write(&h, b, 1, 2, g2, 40, true);
        let r = h.check();
        assert!(!r.has_violations(), "{r:?}");
        assert_eq!(r.belief_overlaps, 0);
    }

    #[test]
    fn planted_overlap_regression_and_reuse_are_found() {
        let (h, b) = (History::new(), Instant::now());
        grant(&h, b, 0, 5, "a", 0, 100);
        grant(&h, b, 1, 3, "b", 50, 150); // overlaps "a", and its token went back
        grant(&h, b, 2, 5, "c", 200, 300); // reuses 5 after 5 was the highest
        let r = h.check();
        assert_eq!(r.overlaps, vec![(FencingToken::new(5), FencingToken::new(3))]);
        assert_eq!(r.token_regressions, vec![(FencingToken::new(5), FencingToken::new(3))]);
        assert_eq!(r.token_reuse, vec![FencingToken::new(5)]);
        assert!(r.has_violations());
    }

    #[test]
    fn a_release_ends_the_window() {
        let (h, b) = (History::new(), Instant::now());
        let g = grant(&h, b, 0, 1, "a", 0, 1000);
        h.record(Event::Released { grant: g, at: t(b, 10) });
        grant(&h, b, 1, 2, "b", 20, 1000);
        assert!(h.check().overlaps.is_empty());
    }

    #[test]
    fn late_actions_stale_writes_and_lost_updates_are_found() {
        let (h, b) = (History::new(), Instant::now());
        let g1 = grant(&h, b, 0, 1, "a", 0, 100);
        let g2 = grant(&h, b, 1, 2, "b", 150, 300);
        h.record(Event::ShadowIncrement {
            client: 1,
            grant: g2.clone(),
            read: 7,
            at: t(b, 160),
        });
        write(&h, b, 1, 2, g2, 170, true);
        // The paused first holder wakes at 200, past its validity, while "b" holds:
        h.record(Event::ShadowIncrement {
            client: 0,
            grant: g1.clone(),
            read: 7,
            at: t(b, 200),
        });
        write(&h, b, 0, 1, g1, 210, true);
        let r = h.check();
        assert!(r.overlaps.is_empty(), "validity windows did not overlap: {r:?}");
        assert_eq!(r.belief_overlaps, 2);
        assert_eq!(r.lost_updates, 1);
        assert_eq!(
            r.stale_writes_accepted, 1,
            "an unfenced resource accepted the stale write"
        );
        assert!(r.has_violations());
    }

    #[test]
    fn a_refused_stale_write_is_no_violation() {
        let (h, b) = (History::new(), Instant::now());
        let g1 = grant(&h, b, 0, 1, "a", 0, 100);
        let g2 = grant(&h, b, 1, 2, "b", 150, 300);
        write(&h, b, 1, 2, g2, 170, true);
        write(&h, b, 0, 1, g1, 210, false);
        let r = h.check();
        assert!(!r.has_violations(), "{r:?}");
        assert_eq!(r.writes_refused, 1);
        assert_eq!(r.belief_overlaps, 1);
    }
}
