//! fencelock's etcd election in `layout=go` shares its seat with Go's
//! `concurrency.Election`, tested against the real `etcdctl elect` (Debian's etcd-client):
//! candidates are `DIR/<lease hex>` keys holding the value, the lowest create revision
//! leads, and the term is that key's create revision on both sides. In `layout=go` election
//! `NAME` is Go's election `NAME` (`etcdctl elect NAME`), under the URL's prefix if any.
//!
//! Run: `cargo test -p fencelock-etcd --test interop_go_election`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::time::Duration;

use fencelock_core::election::Election;
use fencelock_core::LockOptions;
use fencelock_etcd::EtcdElection;
use fencelock_testkit::etcd_server::EtcdCluster;
use fencelock_testkit::keys::unique_key;
use tokio::io::{BufReader, Lines};
use tokio::process::{Child, ChildStdout};
use tokio::time::timeout;

mod go_peer;
use go_peer::{client, etcdctl_lines, interrupt, queue as candidates, until_queued as until_candidates, STEP};

/// `etcdctl elect ARGS…` with its stdout piped.
fn etcdctl_elect(ep: &str, args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    etcdctl_lines(ep, &[&["elect"][..], args].concat())
}

async fn next_line(out: &mut Lines<BufReader<ChildStdout>>, what: &str) -> String {
    timeout(STEP, out.next_line())
        .await
        .unwrap_or_else(|_| panic!("etcdctl printed no line within {STEP:?}: {what}"))
        .unwrap()
        .unwrap_or_else(|| panic!("etcdctl ended before {what}"))
}

fn opts() -> LockOptions {
    LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(Duration::from_secs(20))
}

/// Go leads: fencelock reads Go's value and term, campaigns behind it, and leads once Go
/// resigns, with a higher term. Then a Go observer (`etcdctl elect -l`) sees fencelock's
/// value, and a Go candidate waits behind fencelock until it resigns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_and_fencelock_share_one_election() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints()[0].clone();
    let elections = EtcdElection::connect(&format!("etcd://{ep}/?layout=go")).await.unwrap();
    let name = unique_key("goelect");
    let go_name = name.clone();
    let dir = elections.seat_dir(&name).unwrap();
    assert_eq!(
        dir,
        format!("{go_name}/"),
        "the seat is Go's election directory, named as Go names it"
    );
    let mut c = client(&cluster).await;

    // Go campaigns first and leads: it prints its key, then its value.
    let (go, mut out) = etcdctl_elect(&ep, &[&go_name, "GOVAL"]);
    let go_key = next_line(&mut out, "Go's leader key").await;
    assert_eq!(next_line(&mut out, "Go's value").await, "GOVAL");
    assert!(go_key.starts_with(&dir), "Go's key {go_key} is in {dir}");
    let go_rev = candidates(&mut c, &dir).await[0].1;
    let seen = elections.leader(&name).await.unwrap().expect("Go leads");
    assert_eq!(seen.value, b"GOVAL");
    assert_eq!(
        seen.term.get(),
        u64::try_from(go_rev).unwrap(),
        "term = Go's key's create revision"
    );

    // fencelock campaigns behind Go, and leads when Go resigns.
    let campaign = tokio::spawn({
        let (elections, name) = (elections.clone(), name.clone());
        async move { elections.campaign(&name, b"FLVAL", &opts()).await }
    });
    until_candidates(&mut c, &dir, 2).await;
    assert!(!campaign.is_finished(), "fencelock leads while Go does");
    interrupt(go).await;
    let leadership = timeout(STEP, campaign)
        .await
        .expect("fencelock leads after Go resigned")
        .unwrap()
        .unwrap();
    assert!(
        leadership.term().get() > u64::try_from(go_rev).unwrap(),
        "terms grow across Go and fencelock leaders"
    );

    // A Go observer sees fencelock's value; a Go candidate waits behind fencelock.
    let (listener, mut heard) = etcdctl_elect(&ep, &["-l", &go_name]);
    let fl_key = next_line(&mut heard, "the leader's key").await;
    assert!(fl_key.starts_with(&dir), "fencelock's key {fl_key} is in {dir}");
    assert_eq!(next_line(&mut heard, "the leader's value").await, "FLVAL");
    let (go2, mut out2) = etcdctl_elect(&ep, &[&go_name, "GO2"]);
    until_candidates(&mut c, &dir, 2).await;
    let fl_term = leadership.term().get();
    leadership.resign().await.unwrap();
    let go2_key = next_line(&mut out2, "the second Go candidate's key").await;
    assert_eq!(next_line(&mut out2, "its value").await, "GO2");
    let go2_rev = candidates(&mut c, &dir).await[0].1;
    assert_eq!(candidates(&mut c, &dir).await[0].0, go2_key);
    assert!(u64::try_from(go2_rev).unwrap() > fl_term, "terms grow across leaders");
    let seen = elections.leader(&name).await.unwrap().expect("Go leads again");
    assert_eq!(seen.value, b"GO2");
    interrupt(go2).await;
    interrupt(listener).await;
    elections.close().await.unwrap();
}
