//! Fan-out to every node in parallel, each bounded by the per-node timeout.

use std::future::Future;
use std::time::Duration;

use fencelock_core::Result;
use fencelock_redis::RedisNode;

/// One node's answer, or why there was none.
pub(crate) type Answer<T> = std::result::Result<T, String>;

/// Runs `op` on every node at once (with the node's index) and returns the answers in
/// node order. A node that does
/// not answer within `per_node` counts as silent; the whole call takes at most about
/// `per_node`, whatever the nodes do.
pub(crate) async fn fan_out<T, F, Fut>(nodes: &[RedisNode], per_node: Duration, op: F) -> Vec<Answer<T>>
where
    F: Fn(usize, RedisNode) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    // Polled together in this task (no spawn per node): one wake-up per answer, no hop to
    // another worker thread.
    let mut pending: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let fut = op(i, n.clone());
            let server = n.server(); // named only in a failure, borrowed till then
            Some(Box::pin(async move {
                match tokio::time::timeout(per_node, fut).await {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) => Err(format!("{server}: {}", fencelock_core::error::one_line(&e))),
                    Err(_) => Err(format!("{server}: no answer within {per_node:?}")),
                }
            }))
        })
        .collect();
    let mut answers: Vec<Option<Answer<T>>> = (0..pending.len()).map(|_| None).collect();
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
        if open {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err("no answer".into())))
        .collect()
}
