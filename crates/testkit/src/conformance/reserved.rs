//! The reserved key prefix of election seats (`election.`): a plain lock on such a key is
//! refused on every backend, a campaign's acquire of it is not.

use std::time::Duration;

use fencelock_core::election::{as_campaign, SEAT_PREFIX};
use fencelock_core::{LockError, LockOptions};

use super::{shared_gate, within, Fixture, SuiteConfig, LONG_TTL};
use crate::keys::unique_key;
use crate::proxy::Mode;

/// `acquire` and `try_acquire` of a key beginning with `election.` fail with
/// `InvalidInput` before anything is sent (a client whose network is cut off answers at
/// once, and the server keeps no record of the key), and the same calls inside
/// [`as_campaign`] are granted.
pub async fn election_seat_keys_are_reserved(f: &dyn Fixture, cfg: &SuiteConfig) {
    let _gate = shared_gate().await;
    let key = format!("{SEAT_PREFIX}{}", unique_key("seat"));
    let opts = LockOptions::new()
        .with_ttl(LONG_TTL)
        .with_auto_renew(false)
        .with_wait(Duration::from_secs(1));
    // Cut off: a call that sent its request would wait for the answer until its request
    // timeout; one refused up front answers at once.
    let request_timeout = cfg.slack * 4;
    let cut_off = f.proxied_client(request_timeout).await;
    if let Some(p) = &cut_off {
        p.set(Mode::Blackhole);
    }
    let a = match &cut_off {
        Some(p) => p.client.clone(),
        None => f.client().await,
    };
    let quick = cfg.slack;
    let refused = within(quick, "try_acquire of a seat key", a.try_acquire(&key, &opts)).await;
    assert!(
        matches!(refused, Err(LockError::InvalidInput(_))),
        "try_acquire({key:?}) outside a campaign: expected InvalidInput, got {refused:?}"
    );
    let refused = within(quick, "acquire of a seat key", a.acquire(&key, &opts)).await;
    assert!(
        matches!(refused, Err(LockError::InvalidInput(_))),
        "acquire({key:?}) outside a campaign: expected InvalidInput, got {refused:?}"
    );
    assert_eq!(
        f.records(&key).await,
        0,
        "a refused seat key left a record on the server"
    );
    drop(a);
    drop(cut_off);

    let b = f.client().await;
    let seat = as_campaign(b.try_acquire(&key, &opts))
        .await
        .expect("try_acquire of a seat key inside as_campaign")
        .expect("the seat key is free");
    seat.release().await.expect("release");
    let seat = as_campaign(b.acquire(&key, &opts))
        .await
        .expect("acquire of a seat key inside as_campaign");
    seat.release().await.expect("release");
}
