//! Waiting, in an async test, for a state the code under test brings about on a server (a
//! key written, a waiter queued): the state is polled every [`EVERY`], for at most a bound,
//! and a test that never sees it fails saying what it waited for and what it saw last.
//! A poll ends as soon as the state holds; it is not a sleep that guesses how long the
//! code takes.

use std::fmt::Debug;
use std::time::Duration;

use tokio::time::Instant;

/// How often [`until`], [`until_async`] and [`until_eq`] look.
pub const EVERY: Duration = Duration::from_millis(5);

/// Polls `ready` every [`EVERY`] until it returns `true`.
///
/// # Panics
/// When `ready` has not returned `true` within `limit`, with `what` in the message.
pub async fn until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(EVERY).await; // polling a condition with a deadline
    }
}

/// [`until`] with a probe that asks a server itself (an `async` closure).
///
/// # Panics
/// When `ready` has not returned `true` within `limit`, with `what` in the message.
pub async fn until_async(what: &str, limit: Duration, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(EVERY).await; // polling a condition with a deadline
    }
}

/// Polls `probe` every [`EVERY`] until it returns `want`.
///
/// # Panics
/// When `probe` has not returned `want` within `limit`, with `what` and the last value seen
/// in the message.
pub async fn until_eq<T: PartialEq + Debug>(what: &str, limit: Duration, want: T, mut probe: impl FnMut() -> T) {
    let deadline = Instant::now() + limit;
    loop {
        let seen = probe();
        if seen == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not within {limit:?}: {what} (wanted {want:?}, last saw {seen:?})"
        );
        tokio::time::sleep(EVERY).await; // polling a condition with a deadline
    }
}

/// Waits for the task `handle` (an acquire, say) to end, for at most `limit`, and returns
/// its `Ok` value.
///
/// # Panics
/// When the task has not ended within `limit`, panicked, or returned an error; `what` in
/// the message.
pub async fn served<T, E: Debug>(what: &str, limit: Duration, handle: tokio::task::JoinHandle<Result<T, E>>) -> T {
    match tokio::time::timeout(limit, handle).await {
        Err(_) => panic!("not within {limit:?}: {what}"),
        Ok(Err(e)) => panic!("{what}: the task failed: {e}"),
        Ok(Ok(Err(e))) => panic!("{what}: it returned an error: {e:?}"),
        Ok(Ok(Ok(v))) => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn until_eq_returns_once_the_probe_gives_the_value() {
        let mut n = 0;
        until_eq("the third look", Duration::from_secs(5), 3, || {
            n += 1;
            n
        })
        .await;
        assert_eq!(n, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "wanted 1, last saw 0")]
    async fn until_eq_fails_with_what_it_saw_after_the_limit() {
        until_eq("a value that never comes", Duration::from_millis(20), 1, || 0).await;
    }

    #[tokio::test]
    async fn until_async_returns_once_the_probe_holds() {
        let mut n = 0;
        until_async("the second look", Duration::from_secs(5), async || {
            n += 1;
            n == 2
        })
        .await;
        assert_eq!(n, 2);
    }

    #[tokio::test]
    #[should_panic(expected = "not within 20ms: never")]
    async fn until_fails_with_what_it_waited_for() {
        until("never", Duration::from_millis(20), || false).await;
    }

    #[tokio::test]
    async fn served_returns_the_task_s_value() {
        let v = served(
            "a task that answers",
            Duration::from_secs(5),
            tokio::spawn(async { Ok::<_, String>(7) }),
        )
        .await;
        assert_eq!(v, 7);
    }

    #[tokio::test]
    #[should_panic(expected = "not within 20ms: a task that never ends")]
    async fn served_fails_after_the_limit() {
        let never = tokio::spawn(std::future::pending::<Result<(), String>>());
        served("a task that never ends", Duration::from_millis(20), never).await;
    }

    #[tokio::test]
    #[should_panic(expected = "a refused task: it returned an error: \"no\"")]
    async fn served_fails_on_the_task_s_error() {
        let refused = tokio::spawn(async { Err::<(), _>("no".to_owned()) });
        served("a refused task", Duration::from_secs(5), refused).await;
    }
}
