//! Configuration-driven construction: URLs and `LockConfig`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::time::Duration;

use fencelock::{LockConfig, LockError, Requirement};

#[tokio::test]
async fn every_documented_scheme_is_known() {
    for scheme in fencelock::schemes::SCHEMES {
        for name in scheme.names {
            assert!(
                scheme.form.contains(&format!("{name}://")) || *name == "rediss",
                "{name}"
            );
        }
    }
}

#[tokio::test]
async fn a_scheme_without_its_feature_names_the_feature() {
    for (url, scheme, feature) in [
        ("redis://127.0.0.1:1", "redis", "redis"),
        ("redlock://127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", "redlock", "redlock"),
        ("etcd://127.0.0.1:1", "etcd", "etcd"),
        ("zk://127.0.0.1:1/app", "zk", "zookeeper"),
    ] {
        let compiled = fencelock::schemes::find(scheme).expect("listed").compiled;
        match fencelock::connect(url).await {
            Err(LockError::FeatureDisabled { feature: f, .. }) => {
                assert!(!compiled, "{url}: compiled in, yet FeatureDisabled");
                assert_eq!(f, feature);
            }
            // Compiled in: nothing listens on port 1, so the backend is unavailable.
            Err(LockError::Unavailable { .. }) if compiled => {}
            Err(other) => panic!("{url}: unexpected {other}"),
            // Backends that connect lazily (Redlock) say so on first use.
            Ok(lock) => match lock.try_acquire("k", &fencelock::LockOptions::new()).await {
                Err(LockError::Unavailable { .. }) => assert!(compiled),
                other => panic!("{url}: expected Unavailable from a lazy backend, got {other:?}"),
            },
        }
    }
}

#[tokio::test]
async fn malformed_urls_say_what_is_wrong() {
    let cases = [
        ("nope://x", "unknown backend scheme `nope://`"),
        ("/tmp/locks", "not a backend URL"),
        ("", "not a backend URL"),
        ("file://relative/dir", "absolute path"),
        ("file:///tmp/x?fsync=no", "unknown option"),
        ("memory://a/b", "plain name"),
    ];
    for (url, expected) in cases {
        match fencelock::connect(url).await {
            Err(e @ LockError::InvalidConfig { .. }) => {
                assert!(
                    e.to_string().contains(expected),
                    "{url}: `{e}` does not say `{expected}`"
                )
            }
            Err(e) => panic!("{url}: expected InvalidConfig, got {e}"),
            Ok(_) => panic!("{url}: accepted"),
        }
    }
}

#[tokio::test]
async fn toml_and_json_configs_build_the_same_backend() {
    // The wait bounds a durable file grant, which fsyncs twice: a few hundred ms on a
    // saturated CI disk (CI timed out once at 500 ms), so it is 30 s, well past any disk
    // stall; an uncontended grant returns as soon as it is made either way.
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file://{}", dir.path().display());
    let toml = format!(
        "backend = \"{url}\"\nrequire = \"strict\"\n[defaults]\nttl = \"30s\"\nwait = \"30s\"\nauto_renew = false\n"
    );
    let json = format!(
        r#"{{"backend":"{url}","require":"strict","defaults":{{"ttl":"30s","wait":"30s","auto_renew":false}}}}"#
    );
    let a = LockConfig::from_toml(&toml).expect("toml");
    let b = LockConfig::from_json(&json).expect("json");
    assert_eq!(a, b);
    assert_eq!(a.require, Requirement::Strict);
    assert_eq!(a.defaults.ttl(), Duration::from_secs(30));
    assert_eq!(a.defaults.wait(), Duration::from_secs(30));
    let locks = a.connect().await.expect("connect");
    assert_eq!(locks.describe(), url);
    let lease = locks.acquire("cfg", &a.defaults).await.expect("acquire");
    lease.release().await.expect("release");

    let path = dir.path().join("locks.json");
    std::fs::write(&path, json).expect("write");
    assert_eq!(LockConfig::from_path(&path).expect("from_path"), b);
}

#[tokio::test]
async fn config_errors_are_clear() {
    let e = LockConfig::from_toml("backend = \"memory://\"\nttl = \"5s\"\n").expect_err("unknown field accepted");
    assert!(e.to_string().contains("unknown field"), "{e}");
    let e = LockConfig::from_toml("backend = \"memory://\"\n[defaults]\nttl = \"5 parsecs\"\n")
        .expect_err("bad duration accepted");
    assert!(e.to_string().contains("unknown time unit"), "{e}");
    // A bare number: seconds or milliseconds? Refused, naming the unit to add.
    let e = LockConfig::from_json(r#"{"backend":"memory://","defaults":{"wait":500}}"#).expect_err("bare number");
    assert!(e.to_string().contains("defaults.wait = 500 has no unit"), "{e}");
    let e = LockConfig::from_toml("backend = \"memory://\"\n[defaults]\nttl = \"0s\"\n").expect("parses");
    // A configuration's value: a configuration error, naming the field.
    let refused = e.connect().await.expect_err("ttl 0s passed connect");
    assert!(matches!(refused, LockError::InvalidConfig { .. }), "{refused:?}");
    assert!(refused.to_string().contains("defaults.ttl: "), "{refused}");
    let e = LockConfig::from_path(std::path::Path::new("/nonexistent/fencelock.toml")).expect_err("missing file");
    assert!(e.to_string().contains("/nonexistent/fencelock.toml"), "{e}");
}

#[tokio::test]
async fn memory_urls_with_the_same_name_share_locks() {
    let opts = fencelock::LockOptions::new();
    let a = fencelock::connect("memory://shared-by-name").await.expect("a");
    let b = fencelock::connect("memory://shared-by-name").await.expect("b");
    let c = fencelock::connect("memory://another-name").await.expect("c");
    let lease = a.acquire("k", &opts).await.expect("acquire");
    assert!(b.try_acquire("k", &opts).await.expect("b").is_none());
    assert!(c.try_acquire("k", &opts).await.expect("c").is_some());
    lease.release().await.expect("release");
}

/// `require = "strict"` on a stock (durable) PostgreSQL: `connect()` accepted it, while
/// `connect_election()` checked the scheme's weaker promise (exclusion conditional on a
/// server whose settings it had not read) and refused the same server with
/// `GuaranteeNotMet` — `fencelock elect` and `leader` exited 78 where `run` worked (a
/// review). Both now check the connected lock's guarantees.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_accepts_a_durable_postgres_for_locks_and_elections_alike() {
    let pg = fencelock_testkit::pg_server::PgServer::start();
    let config = LockConfig {
        require: Requirement::Strict,
        ..LockConfig::new(pg.url())
    };
    let locks = config.connect().await.expect("connect");
    locks.close().await.expect("close the lock client");
    let elections = config.connect_election().await.expect("connect_election");
    elections.close().await.expect("close the election client");
}
