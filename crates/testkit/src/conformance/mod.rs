//! The conformance suite: one public async function per behaviour of the
//! [`DistributedLock`] contract, each taking a [`ClientFactory`] (the hardening cases: a
//! [`Fixture`], which adds hooks into the real server) and a [`SuiteConfig`].
//!
//! Every function panics (fails the test) when the backend breaks the contract. Backend
//! differences are arguments ([`SuiteConfig`]) or read from
//! [`Guarantees`](fencelock_core::Guarantees), never `if backend == …`.
//!
//! Run them all with [`conformance_suite!`](crate::conformance_suite) (one `#[tokio::test]`
//! each, on a multi-threaded runtime) or [`run_all`].

mod acquire;
mod awkward;
mod cancel;
mod closing;
pub mod election;
mod expiry;
mod fixture;
mod holder;
mod input;
mod removal;
mod reserved;
mod resources;
mod tokens;
mod unanswered;
mod validity;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fencelock_core::DistributedLock;

pub use acquire::{
    acquire_is_woken_by_release, acquire_times_out_after_wait, cancelled_acquire_leaves_nothing_held,
    dropped_lease_is_released, release_frees_the_key, try_acquire_never_waits,
};
pub use awkward::awkward_keys_work;
pub use cancel::cancelled_methods_leave_nothing_held;
pub use closing::{
    acquire_dropped_in_flight_is_undone_before_close_returns, close_ends_waits_and_refuses_later_calls,
    concurrent_closes_both_wait_for_the_end, dropped_lease_is_released_before_close_returns,
};
pub use expiry::{
    auto_renew_keeps_lease, extend_after_expiry_fails, extend_prolongs_lease, loss_is_observable,
    release_after_expiry_spares_new_holder, renewal_never_undoes_a_later_extend, validity_counts_from_send,
};
pub use fixture::{BoxFuture, Fixture, Proxied};
pub use input::{bad_input_is_rejected, keys_are_independent, refused_extend_keeps_the_validity};
pub use removal::removed_grant_is_noticed;
pub use reserved::election_seat_keys_are_reserved;
pub use resources::resources_do_not_grow;
pub use tokens::{mutual_exclusion_under_contention, tokens_increase_with_each_grant};
pub use unanswered::{
    queued_waiter_cut_off_gives_back_what_it_was_given, release_whose_answer_is_lost_is_not_reported_lost,
    unanswered_request_leaves_nothing_behind,
};
pub use validity::{
    dead_on_arrival_grant_is_not_handed_out, long_wait_grants_full_validity, tiny_ttl_try_acquire_is_not_temporary,
};

/// Makes independent clients of one backend: each call is a new connection (or instance)
/// to the same lock space, as separate processes would have.
pub trait ClientFactory: Send + Sync {
    /// A new client.
    fn client(&self) -> Pin<Box<dyn Future<Output = Arc<dyn DistributedLock>> + Send + '_>>;
}

impl<F, Fut> ClientFactory for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Arc<dyn DistributedLock>> + Send + 'static,
{
    fn client(&self) -> Pin<Box<dyn Future<Output = Arc<dyn DistributedLock>> + Send + '_>> {
        Box::pin(self())
    }
}

/// Timing of the suite, set per backend.
#[derive(Debug, Clone, Copy)]
pub struct SuiteConfig {
    /// The TTL used by tests that wait for a lease to expire. Must be at least the backend's
    /// minimum (etcd: 1 s) and long enough that a renewal round trip fits in a third of it.
    pub short_ttl: Duration,
    /// How late a timed event may be on a loaded 2-core machine before the test fails.
    pub slack: Duration,
    /// Independent clients in the contention test.
    pub clients: usize,
    /// Tasks per client in the contention test.
    pub tasks_per_client: usize,
    /// Grants per task in the contention test.
    pub rounds: usize,
    /// How long the server keeps a vanished client's grants and queue entries: the session
    /// timeout of etcd and ZooKeeper, the TTL elsewhere. The long-wait case waits longer
    /// than this and the TTL together.
    pub session_timeout: Duration,
}

impl Default for SuiteConfig {
    fn default() -> Self {
        SuiteConfig {
            short_ttl: Duration::from_millis(300),
            slack: Duration::from_secs(2),
            clients: 3,
            tasks_per_client: 4,
            rounds: 5,
            session_timeout: Duration::from_millis(300),
        }
    }
}

/// The names of every test, in the order [`run_all`] runs them.
pub const ALL: &[&str] = &[
    "try_acquire_never_waits",
    "acquire_times_out_after_wait",
    "acquire_is_woken_by_release",
    "cancelled_acquire_leaves_nothing_held",
    "dropped_lease_is_released",
    "release_frees_the_key",
    "tokens_increase_with_each_grant",
    "mutual_exclusion_under_contention",
    "release_after_expiry_spares_new_holder",
    "extend_after_expiry_fails",
    "extend_prolongs_lease",
    "auto_renew_keeps_lease",
    "renewal_never_undoes_a_later_extend",
    "loss_is_observable",
    "validity_counts_from_send",
    "bad_input_is_rejected",
    "keys_are_independent",
    "refused_extend_keeps_the_validity",
    "election_seat_keys_are_reserved",
    "long_wait_grants_full_validity",
    "dead_on_arrival_grant_is_not_handed_out",
    "tiny_ttl_try_acquire_is_not_temporary",
    "removed_grant_is_noticed",
    "unanswered_request_leaves_nothing_behind",
    "release_whose_answer_is_lost_is_not_reported_lost",
    "queued_waiter_cut_off_gives_back_what_it_was_given",
    "cancelled_methods_leave_nothing_held",
    "close_ends_waits_and_refuses_later_calls",
    "concurrent_closes_both_wait_for_the_end",
    "dropped_lease_is_released_before_close_returns",
    "acquire_dropped_in_flight_is_undone_before_close_returns",
    "resources_do_not_grow",
    "awkward_keys_work",
];

/// Runs every test of the suite in turn.
pub async fn run_all(f: &dyn Fixture, cfg: &SuiteConfig) {
    try_acquire_never_waits(f, cfg).await;
    acquire_times_out_after_wait(f, cfg).await;
    acquire_is_woken_by_release(f, cfg).await;
    cancelled_acquire_leaves_nothing_held(f, cfg).await;
    dropped_lease_is_released(f, cfg).await;
    release_frees_the_key(f, cfg).await;
    tokens_increase_with_each_grant(f, cfg).await;
    mutual_exclusion_under_contention(f, cfg).await;
    release_after_expiry_spares_new_holder(f, cfg).await;
    extend_after_expiry_fails(f, cfg).await;
    extend_prolongs_lease(f, cfg).await;
    auto_renew_keeps_lease(f, cfg).await;
    renewal_never_undoes_a_later_extend(f, cfg).await;
    loss_is_observable(f, cfg).await;
    validity_counts_from_send(f, cfg).await;
    bad_input_is_rejected(f, cfg).await;
    keys_are_independent(f, cfg).await;
    refused_extend_keeps_the_validity(f, cfg).await;
    election_seat_keys_are_reserved(f, cfg).await;
    long_wait_grants_full_validity(f, cfg).await;
    dead_on_arrival_grant_is_not_handed_out(f, cfg).await;
    tiny_ttl_try_acquire_is_not_temporary(f, cfg).await;
    removed_grant_is_noticed(f, cfg).await;
    unanswered_request_leaves_nothing_behind(f, cfg).await;
    release_whose_answer_is_lost_is_not_reported_lost(f, cfg).await;
    queued_waiter_cut_off_gives_back_what_it_was_given(f, cfg).await;
    cancelled_methods_leave_nothing_held(f, cfg).await;
    close_ends_waits_and_refuses_later_calls(f, cfg).await;
    concurrent_closes_both_wait_for_the_end(f, cfg).await;
    dropped_lease_is_released_before_close_returns(f, cfg).await;
    acquire_dropped_in_flight_is_undone_before_close_returns(f, cfg).await;
    resources_do_not_grow(f, cfg).await;
    awkward_keys_work(f, cfg).await;
}

/// Generates one `#[tokio::test]` per conformance test.
///
/// `$factory` is an expression of a future that yields a [`Fixture`] (so a test can
/// start or connect to a server first); it is evaluated once per test. `$config` is a
/// [`SuiteConfig`]. The calling crate needs `tokio` (with `macros` and `rt-multi-thread`)
/// among its dev-dependencies.
#[macro_export]
macro_rules! conformance_suite {
    ($factory:expr, $config:expr) => {
        $crate::conformance_suite!(@each_of $crate::conformance; $factory, $config;
            try_acquire_never_waits, acquire_times_out_after_wait, acquire_is_woken_by_release,
            cancelled_acquire_leaves_nothing_held, dropped_lease_is_released, release_frees_the_key,
            tokens_increase_with_each_grant, mutual_exclusion_under_contention,
            release_after_expiry_spares_new_holder, extend_after_expiry_fails, extend_prolongs_lease,
            auto_renew_keeps_lease, renewal_never_undoes_a_later_extend, loss_is_observable,
            validity_counts_from_send,
            bad_input_is_rejected, keys_are_independent, refused_extend_keeps_the_validity, election_seat_keys_are_reserved, long_wait_grants_full_validity,
            dead_on_arrival_grant_is_not_handed_out, tiny_ttl_try_acquire_is_not_temporary, removed_grant_is_noticed,
            unanswered_request_leaves_nothing_behind, release_whose_answer_is_lost_is_not_reported_lost,
            queued_waiter_cut_off_gives_back_what_it_was_given, cancelled_methods_leave_nothing_held,
            close_ends_waits_and_refuses_later_calls, concurrent_closes_both_wait_for_the_end,
            dropped_lease_is_released_before_close_returns,
            acquire_dropped_in_flight_is_undone_before_close_returns,
            resources_do_not_grow, awkward_keys_work);
    };
    // One test per name, each calling that function of `$module` (also the election suite's).
    (@each_of $module:path; $factory:expr, $config:expr; $($name:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                use $module as suite;
                let factory = $factory.await;
                suite::$name(&factory, &$config).await;
            }
        )+
    };
}

/// Tests of one process share servers' CPU and the process's threads and files; the
/// resource-counting case must run alone. Every case holds this gate shared, that one
/// exclusively. (A tokio lock: it is held across awaits, by tests on separate runtimes.)
static SUITE_GATE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The gate held by every case but the resource count.
pub(crate) async fn shared_gate() -> tokio::sync::RwLockReadGuard<'static, ()> {
    SUITE_GATE.read().await
}

/// The gate held by the resource count: no other case of this process runs meanwhile.
pub(crate) async fn exclusive_gate() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    SUITE_GATE.write().await
}

/// Awaits `fut` for at most `limit`, failing the test with `what` if it takes longer: every
/// wait in the suite is bounded.
pub(crate) async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {limit:?}"),
    }
}

/// A TTL long enough that no test outlives it: anything freed before it ran out was freed
/// by the code under test, not by expiry.
pub(crate) const LONG_TTL: Duration = Duration::from_secs(60);
