//! Fan-out to every node in parallel, each bounded by the per-node timeout.

use std::future::Future;
use std::time::Duration;

use fencelock_core::Result;
use fencelock_redis::RedisNode;

/// One node's answer, or why there was none.
pub(crate) type Answer<T> = std::result::Result<T, String>;

/// How long answers still count after `per_node_timeout` while fewer than a quorum of
/// nodes have answered, as a multiple of it, at most [`LATE_CAP`] (issue 14). A busy client reads its answers
/// late — its runtime lags behind the socket — and counting those as silence turned
/// every round into an undo and a retry, more work for the already busy client, until no
/// acquire succeeded at all. Safety does not rest on it: a grant counts only with validity
/// left, measured from the round's start.
pub(crate) const LATE_FACTOR: u32 = 10;
/// The most [`late`] stretches the wait (never below `per_node_timeout` itself).
pub(crate) const LATE_CAP: Duration = Duration::from_secs(1);

/// How long a late answer still counts: [`LATE_FACTOR`] × `per_node`, at most
/// [`LATE_CAP`] or `per_node` if that is longer (500 ms with the default 50 ms).
pub(crate) fn late(per_node: Duration) -> Duration {
    (per_node * LATE_FACTOR).min(per_node.max(LATE_CAP))
}

/// One node's failure for the list in a quorum's error: the node's own error names its
/// server and what failed, without its kind's words ("backend unavailable: ") said again
/// for every node, and the server named once.
pub(crate) fn node_failure(server: &str, e: &fencelock_core::LockError) -> String {
    let why = e.detail();
    let why = if why.contains(server) {
        why
    } else {
        format!("{server}: {why}")
    };
    // Kept marked, first: a round tells refused settings and permanent errors from lost
    // nodes by it.
    match e {
        fencelock_core::LockError::InvalidConfig { .. } => format!("{CONFIG_REFUSED}{why}"),
        fencelock_core::LockError::Backend { temporary: false, .. } => format!("{PERMANENT}{why}"),
        _ => why,
    }
}

/// How [`node_failure`] marks a node's refusal of the settings ([`LockError::InvalidConfig`]:
/// the user's rights, the login).
///
/// [`LockError::InvalidConfig`]: fencelock_core::LockError::InvalidConfig
const CONFIG_REFUSED: &str = "invalid configuration: ";

/// How [`node_failure`] marks a node's error that the same request meets again (a
/// permanent [`LockError::Backend`]: a key of the wrong type, a script error).
///
/// [`LockError::Backend`]: fencelock_core::LockError::Backend
const PERMANENT: &str = "permanent error: ";

/// A permanent [`LockError::Backend`] when so many nodes answered with a permanent error
/// that the rest cannot make `quorum` (more than `answers.len() - quorum`): retrying the
/// round cannot grant, so it is not "no quorum answered" (temporary). The message says
/// what every node answered. `None` otherwise.
///
/// [`LockError::Backend`]: fencelock_core::LockError::Backend
pub(crate) fn refused_for_good<T>(
    doing: &str,
    answers: &[Answer<T>],
    quorum: usize,
) -> Option<fencelock_core::LockError> {
    let permanent = permanent_errors(answers);
    let others: Vec<&str> = answers
        .iter()
        .filter_map(|a| a.as_ref().err())
        .filter(|e| !e.starts_with(PERMANENT))
        .map(String::as_str)
        .collect();
    (permanent.len() > answers.len().saturating_sub(quorum)).then(|| fencelock_core::LockError::Backend {
        backend: "redlock",
        message: format!(
            "{doing} refused for good: {} of {} nodes answered with an error retrying cannot fix (a quorum is {quorum}): {}{}",
            permanent.len(),
            answers.len(),
            permanent.join("; "),
            if others.is_empty() {
                String::new()
            } else {
                format!("; others: {}", others.join("; "))
            }
        ),
        source: None,
        temporary: false,
    })
}

/// Why a round that fewer than `quorum` nodes answered cannot succeed if sent again:
/// nodes refused the settings ([`refused_config`], the URL's fault) or answered with
/// errors that rule out a quorum ([`refused_for_good`]). `None` when silence, or errors
/// that pass, lack the quorum: sending again may succeed. Every round asks it — acquire,
/// extend, release — so they class the same answers the same way.
///
/// Only when the refusals together — of the settings and permanent — leave fewer nodes
/// than a quorum: one node that refuses the settings beside nodes that are merely silent
/// for now is not a reason to give up (review: a single NOPERM node with one other node
/// briefly unreachable ended auto-renew's extend as `InvalidConfig`, though the next
/// round would reach the quorum without it); its refusal is logged when a round succeeds
/// ([`warn_refused_config`]).
pub(crate) fn refused<T>(doing: &str, answers: &[Answer<T>], quorum: usize) -> Option<fencelock_core::LockError> {
    if config_refusals(answers).len() + permanent_errors(answers).len() <= answers.len().saturating_sub(quorum) {
        return None;
    }
    refused_config(answers).or_else(|| refused_for_good(doing, answers, quorum))
}

/// The permanent errors among `answers` (marked by [`node_failure`]), unmarked.
fn permanent_errors<T>(answers: &[Answer<T>]) -> Vec<&str> {
    answers
        .iter()
        .filter_map(|a| a.as_ref().err())
        .filter_map(|e| e.strip_prefix(PERMANENT))
        .collect()
}

fn config_refusals<T>(answers: &[Answer<T>]) -> Vec<&str> {
    answers
        .iter()
        .filter_map(|a| a.as_ref().err())
        .filter_map(|e| e.strip_prefix(CONFIG_REFUSED))
        .collect()
}

/// The nodes' refusals of the settings among `answers`, as one
/// [`LockError::InvalidConfig`]; `None` when no node refused them.
///
/// [`LockError::InvalidConfig`]: fencelock_core::LockError::InvalidConfig
pub(crate) fn refused_config<T>(answers: &[Answer<T>]) -> Option<fencelock_core::LockError> {
    let refused = config_refusals(answers);
    (!refused.is_empty()).then(|| {
        fencelock_core::LockError::invalid_config(format!(
            "{} of {} nodes refused the settings: {}",
            refused.len(),
            answers.len(),
            refused.join("; ")
        ))
    })
}

/// Warns about nodes that refused the settings in a round a quorum answered: they never
/// vote until the settings change.
pub(crate) fn warn_refused_config<T>(answers: &[Answer<T>]) {
    let refused = config_refusals(answers);
    if !refused.is_empty() {
        tracing::warn!(
            nodes = %refused.join("; "),
            "nodes refused the settings and will not vote until they are fixed (a refused INFO with restart_delay: ACL +info)"
        );
    }
}

/// When a fan-out stops waiting for the nodes that have not answered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bound {
    /// The wait for every node.
    pub(crate) per_node: Duration,
    /// Past `per_node`, the wait goes on while fewer than this many nodes said yes (what
    /// counts as a yes is the caller's: see [`fan_out_counting`]; an error is never one,
    /// nor a "no": see [`settled`]) and the nodes still out could make it…
    pub(crate) quorum: usize,
    /// …up to this much in all.
    pub(crate) late: Duration,
}

impl Bound {
    /// Each node bounded by `per_node`, whatever the others do.
    pub(crate) fn strict(per_node: Duration) -> Self {
        Bound {
            per_node,
            quorum: 0,
            late: per_node,
        }
    }

    /// `per_node` once `quorum` nodes said yes, else up to [`late`]`(per_node)` while the
    /// nodes still out could make `quorum` ([`settled`]).
    pub(crate) fn quorum(per_node: Duration, quorum: usize) -> Self {
        Bound {
            per_node,
            quorum,
            late: late(per_node),
        }
    }
}

/// Whether a fan-out past its `per_node` wait stops waiting for the `pending` nodes that
/// have not answered, with `yes` nodes having answered what the caller counts as a yes:
/// once `quorum` of them did, or when the pending ones could no longer bring the yeses up
/// to `quorum` (waiting longer cannot change the outcome). Neither an error nor a "no"
/// (an extend's `false`, an acquire's `Busy`) counts towards `quorum`. Errors counted
/// (before 7 Dec 2026, review): a node that failed at once — `NOPERM` from an ACL, a
/// refused connection — made the fan-out stop at `per_node` and cut off a slow but live
/// node whose vote the quorum needed and would have had within the late bound; every
/// retry met the same cut-off (one refusal beside a silent node is temporary,
/// [`refused`]), so an acquire never succeeded and an auto-renewed lease's extend failed
/// until its validity ran out. "No"s counted (before 8 Dec 2026, review): the same with
/// a node answering "no" at once (an extend whose copy was gone there, an acquire whose
/// key another grant held there) — the extend reported the lease lost and the acquire
/// busy, though the slow node's yes would have made the quorum.
fn settled(yes: usize, pending: usize, quorum: usize) -> bool {
    yes >= quorum || yes + pending < quorum
}

/// [`fan_out_counting`] with every answer a yes: for strict bounds (quorum 0, where
/// nothing is counted), and for callers whose outcome any answer decides (a release's).
pub(crate) async fn fan_out<T, F, Fut>(nodes: &[RedisNode], bound: Bound, op: F) -> Vec<Answer<T>>
where
    F: Fn(usize, RedisNode) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    fan_out_counting(nodes, bound, |_| true, op).await
}

/// Runs `op` on every node at once (with the node's index) and returns the answers in
/// node order. A node that does not answer within `bound.per_node` counts as silent —
/// unless fewer than `bound.quorum` nodes have answered a yes (`yes` of the answer: the
/// vote the caller counts; an error is never one) by then and the nodes still out could
/// make it: then the wait goes on until they have, a quorum of yeses is out of reach, or
/// `bound.late` has passed ([`settled`]). The whole call takes at most about
/// `bound.late`, whatever the nodes do.
pub(crate) async fn fan_out_counting<T, Y, F, Fut>(nodes: &[RedisNode], bound: Bound, yes: Y, op: F) -> Vec<Answer<T>>
where
    Y: Fn(&T) -> bool,
    F: Fn(usize, RedisNode) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let Bound { per_node, quorum, late } = bound;
    let late = late.max(per_node);
    // Polled together in this task (no spawn per node): one wake-up per answer, no hop to
    // another worker thread.
    let mut pending: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let fut = op(i, n.clone());
            let server = n.server(); // named only in a failure, borrowed till then
            Some(Box::pin(async move {
                match tokio::time::timeout(late, fut).await {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) => Err(node_failure(server, &e)),
                    Err(_) => Err(format!("{server}: no answer within {late:?}")),
                }
            }))
        })
        .collect();
    let mut answers: Vec<Option<Answer<T>>> = (0..pending.len()).map(|_| None).collect();
    let mut on_time = Box::pin(tokio::time::sleep(per_node));
    let mut past_per_node = false;
    std::future::poll_fn(|cx| {
        let mut open = false;
        for (slot, fut) in answers.iter_mut().zip(pending.iter_mut()) {
            if let Some(f) = fut {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(a) => {
                        *slot = Some(a);
                        *fut = None;
                    }
                    std::task::Poll::Pending => open = true,
                }
            }
        }
        if !open {
            return std::task::Poll::Ready(());
        }
        if !past_per_node && on_time.as_mut().poll(cx).is_ready() {
            past_per_node = true;
        }
        let yeses = answers.iter().filter(|a| matches!(a, Some(Ok(v)) if yes(v))).count();
        let pending = answers.iter().filter(|a| a.is_none()).count();
        if past_per_node && settled(yeses, pending, quorum) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    answers
        .into_iter()
        .zip(nodes)
        .map(|(a, n)| a.unwrap_or_else(|| Err(format!("{}: no answer within {per_node:?}", n.server()))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permanent(server: &str) -> Answer<()> {
        let e = fencelock_core::LockError::backend("redis", "acquire failed", std::io::Error::other("WRONGTYPE"));
        Err(node_failure(server, &e))
    }

    #[test]
    fn permanent_errors_end_the_round_only_when_the_rest_cannot_make_a_quorum() {
        let silent: Answer<()> = Err("c: no answer within 50ms".to_owned());
        // One of three: the other two can still grant.
        assert!(refused_for_good("acquire", &[permanent("a"), Ok(()), silent.clone()], 2).is_none());
        let err = refused_for_good("acquire", &[permanent("a"), permanent("b"), silent], 2).expect("refused");
        assert!(!err.is_temporary());
        let text = err.to_string();
        assert!(
            text.contains("2 of 3") && text.contains("WRONGTYPE") && text.contains("no answer"),
            "{text}"
        );
    }

    /// One node refusing the settings beside a silent one (3 nodes, quorum 2) is not a
    /// reason to give up: the silent node may answer the next round, and the quorum does
    /// not need the refusing one. Failed before the change (review): `InvalidConfig`,
    /// not temporary, at the first such round of an extend, a release or an acquire.
    #[test]
    fn a_refusal_of_the_settings_ends_the_round_only_when_the_rest_cannot_make_a_quorum() {
        let e = fencelock_core::LockError::invalid_config("NOPERM this user has no permissions to run 'evalsha'");
        let config = |server: &str| -> Answer<()> { Err(node_failure(server, &e)) };
        let silent: Answer<()> = Err("c: no answer within 50ms".to_owned());
        assert!(
            refused("extend", &[config("a"), silent.clone(), Ok(())], 2).is_none(),
            "one NOPERM node beside a silent one ended the round"
        );
        let err = refused("extend", &[config("a"), config("b"), silent.clone()], 2).expect("refused");
        assert!(matches!(err, fencelock_core::LockError::InvalidConfig { .. }), "{err}");
        // A refusal of the settings and a permanent error together rule the quorum out.
        let err = refused("extend", &[config("a"), permanent("b"), silent], 2).expect("refused");
        assert!(!err.is_temporary(), "{err}");
    }

    /// The stopping rule past `per_node`, case by case (written out, not recomputed with
    /// the rule's own formula): it stops exactly when waiting longer cannot change whether
    /// a quorum said yes. `no` is every answer that is not a yes — an error, an extend's
    /// `false`, an acquire's `Busy` — which the rule no longer tells apart. Failed before
    /// the changes (reviews): errors, then "no"s, counted as answers, so 1 no + 1 yes of 3
    /// stopped with a quorum still reachable.
    #[test]
    fn a_fan_out_stops_only_once_the_pending_nodes_cannot_change_the_outcome() {
        // (n, yes, no, pending, stops)
        let cases = [
            // One node (quorum 1).
            (1, 0, 0, 1, false),
            (1, 1, 0, 0, true),
            (1, 0, 1, 0, true),
            // Two nodes (quorum 2): one no rules the quorum out.
            (2, 1, 0, 1, false),
            (2, 0, 0, 2, false),
            (2, 0, 1, 1, true),
            (2, 1, 1, 0, true),
            (2, 2, 0, 0, true),
            // Three nodes (quorum 2).
            (3, 0, 0, 3, false),
            (3, 1, 0, 2, false),
            (3, 1, 1, 1, false), // the reviews' cases: a fast no (or refusal), a fast yes, one late
            (3, 0, 1, 2, false),
            (3, 0, 2, 1, true), // two no: no quorum whatever the third says
            (3, 2, 0, 1, true),
            (3, 2, 1, 0, true),
            (3, 1, 2, 0, true),
            // Five nodes (quorum 3).
            (5, 2, 2, 1, false),
            (5, 2, 0, 3, false),
            (5, 1, 2, 2, false),
            (5, 0, 2, 3, false),
            (5, 3, 0, 2, true),
            (5, 3, 2, 0, true),
            (5, 1, 3, 1, true),
            (5, 0, 3, 2, true),
            (5, 2, 3, 0, true),
        ];
        for (n, yes, no, pending, stops) in cases {
            assert_eq!(yes + no + pending, n, "case ({n}, {yes}, {no}, {pending})");
            let quorum = n / 2 + 1;
            assert_eq!(
                settled(yes, pending, quorum),
                stops,
                "n={n} quorum={quorum} yes={yes} no={no} pending={pending}"
            );
        }
        // A strict bound (quorum 0) always stops at `per_node`.
        for n in [1, 3, 5] {
            assert!(settled(0, n, 0));
        }
    }

    /// The review's interleaving with "no"s (time paused, so exact): n = 3, quorum 2,
    /// per_node 50 ms, late 500 ms; node 0 answers `false` in 1 ms, node 1 `true` in 2 ms,
    /// node 2 `true` in 120 ms. Node 2's answer counts. Failed before: at 50 ms "2
    /// answered" stopped the wait; node 2 was "no answer within 50ms".
    #[tokio::test(start_paused = true)]
    async fn a_fast_no_does_not_cut_off_a_late_yes_the_quorum_needs() {
        let per_node = Duration::from_millis(50);
        let at = [1u64, 2, 120];
        let start = tokio::time::Instant::now();
        let answers = fan_out_counting(
            &nodes(3),
            Bound::quorum(per_node, 2),
            |v: &bool| *v,
            |i, _| async move {
                tokio::time::sleep(Duration::from_millis(at[i])).await;
                Ok(i != 0)
            },
        )
        .await;
        assert_eq!(
            answers,
            vec![Ok(false), Ok(true), Ok(true)],
            "the late node was cut off"
        );
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(120) && took < per_node * 3, "{took:?}");
        // Two fast "no"s: out of reach, the wait ends at `per_node`.
        let start = tokio::time::Instant::now();
        let answers = fan_out_counting(
            &nodes(3),
            Bound::quorum(per_node, 2),
            |v: &bool| *v,
            |i, _| async move {
                tokio::time::sleep(Duration::from_millis(if i == 2 { 10_000 } else { 1 })).await;
                Ok(i == 2)
            },
        )
        .await;
        assert!(answers[2].is_err(), "{answers:?}");
        let took = start.elapsed();
        assert!(took >= per_node && took < per_node * 2, "{took:?}");
    }

    /// Three nodes with no server behind them (the fan-out's `op` never uses them).
    fn nodes(n: usize) -> Vec<RedisNode> {
        (0..n)
            .map(|i| {
                let cfg = fencelock_redis::RedisConfig::from_url(&format!("redis://127.0.0.1:{}", 1 + i)).expect("url");
                RedisNode::lazy(cfg).expect("node")
            })
            .collect()
    }

    /// The review's interleaving on the fan-out itself (time paused, so exact): n = 3,
    /// quorum 2, per_node 50 ms, late 500 ms; node 0 refuses in 1 ms (`NOPERM`), node 1
    /// answers in 2 ms, node 2 in 120 ms. Node 2's answer counts. Failed before: at 50 ms
    /// "2 answered" (the refusal counted) stopped the wait; node 2 was "no answer within
    /// 50ms" and the round had 1 answer of the 2 it needed.
    #[tokio::test(start_paused = true)]
    async fn a_refusal_does_not_cut_off_a_late_answer_the_quorum_needs() {
        let per_node = Duration::from_millis(50);
        let at = [1u64, 2, 120];
        let start = tokio::time::Instant::now();
        let answers = fan_out(&nodes(3), Bound::quorum(per_node, 2), |i, _| async move {
            tokio::time::sleep(Duration::from_millis(at[i])).await;
            if i == 0 {
                Err(fencelock_core::LockError::invalid_config(
                    "NOPERM no scripts for this user",
                ))
            } else {
                Ok(i)
            }
        })
        .await;
        assert!(answers[0].as_ref().is_err_and(|e| e.contains("NOPERM")), "{answers:?}");
        assert_eq!(answers[1], Ok(1));
        assert_eq!(answers[2], Ok(2), "the late node was cut off");
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(120) && took < per_node * 3, "{took:?}");
    }

    /// When the nodes still out cannot make a quorum, the wait stops at `per_node`, not at
    /// the late bound: n = 2 (quorum 2) with one node refusing at once; n = 3 with two.
    #[tokio::test(start_paused = true)]
    async fn a_quorum_out_of_reach_ends_the_wait_at_the_per_node_timeout() {
        let per_node = Duration::from_millis(50);
        for (n, refusing) in [(2usize, 1usize), (3, 2), (5, 3)] {
            let start = tokio::time::Instant::now();
            let answers = fan_out(&nodes(n), Bound::quorum(per_node, n / 2 + 1), |i, _| async move {
                if i < refusing {
                    Err(fencelock_core::LockError::invalid_config(
                        "NOPERM no scripts for this user",
                    ))
                } else {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    Ok(())
                }
            })
            .await;
            let took = start.elapsed();
            // Not the late bound (500 ms).
            assert!(
                took >= per_node && took < per_node * 2,
                "n={n} took {took:?}: {answers:?}"
            );
            assert!(answers.iter().all(Result::is_err), "n={n}: {answers:?}");
        }
    }
}
