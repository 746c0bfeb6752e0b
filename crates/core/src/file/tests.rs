//! Tests of the file backend on a real directory: resources of waiting (K5), grants
//! removed by hand (K2), and the directory's privacy (symbolic links, foreign and shared
//! directories).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use super::FileLock;
use crate::error::LockError;
use crate::lock::DistributedLock;
use crate::options::LockOptions;

/// Tests that count this process's wait threads run one at a time.
static COUNTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn long() -> LockOptions {
    LockOptions::new()
        .with_ttl(Duration::from_secs(60))
        .with_auto_renew(false)
}

/// Threads of this process named like the backend's wait helper (`comm` keeps the first
/// 15 bytes of a thread's name).
fn wait_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|n| n.starts_with("fencelock-file-")))
        .count()
}

/// Open descriptors of this process that point into `dir`.
fn files_in(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(dir)))
        .count()
}

/// Re-reads `read` until it returns `want` or 5 s pass; returns the last value.
async fn settles_to(want: usize, read: impl Fn() -> usize) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = read();
        if now == want || tokio::time::Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_acquire_and_timed_out_acquire_leave_no_thread_or_file() {
    let _one = COUNTING.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (FileLock::open(dir.path()).unwrap(), FileLock::open(dir.path()).unwrap());
    let held = a.acquire("k", &long()).await.unwrap();
    let files_before = files_in(dir.path());
    for _ in 0..50 {
        assert!(b.try_acquire("k", &long()).await.unwrap().is_none());
    }
    for _ in 0..20 {
        let e = b
            .acquire("k", &long().with_wait(Duration::from_millis(10)))
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "{e}");
    }
    assert_eq!(settles_to(0, wait_threads).await, 0, "wait threads left behind");
    let files = settles_to(files_before, || files_in(dir.path())).await;
    assert_eq!(files, files_before, "open files left behind");
    held.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_one_holder_share_one_thread_which_ends_with_them() {
    let _one = COUNTING.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let a = FileLock::open(dir.path()).unwrap();
    let held = a.acquire("k", &long()).await.unwrap();
    let waiters: Vec<_> = (0..6)
        .map(|_| {
            let b = FileLock::open(dir.path()).unwrap();
            tokio::spawn(async move {
                let lease = b.acquire("k", &long().with_wait(Duration::from_secs(30))).await?;
                lease.release().await
            })
        })
        .collect();
    // Every waiter holds a share of the holder's watch once it waits.
    assert_eq!(settles_to(6, super::wait::waiters).await, 6, "not every waiter waits");
    assert_eq!(wait_threads(), 1, "waiters of one holder did not share one thread");
    held.release().await.unwrap();
    for w in waiters {
        tokio::time::timeout(Duration::from_secs(20), w)
            .await
            .expect("a waiter was not woken")
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        settles_to(0, wait_threads).await,
        0,
        "the wait thread outlived its waiters"
    );
}

#[tokio::test]
async fn removed_grant_is_noticed_by_extend_and_release() {
    let dir = tempfile::tempdir().unwrap();
    let locks = FileLock::open(dir.path()).unwrap();
    let lease = locks.acquire("k", &long()).await.unwrap();
    assert_eq!(locks.records("k").unwrap(), 1);
    assert_eq!(locks.remove_grant("k").unwrap(), 1);
    assert_eq!(locks.records("k").unwrap(), 0);
    // Nobody took the key meanwhile: only the missing liveness file tells.
    let e = lease.extend(Duration::from_secs(60)).await.unwrap_err();
    assert!(e.is_lease_lost(), "extend of a removed grant: {e}");
    let e = lease.release().await.unwrap_err();
    assert!(e.is_lease_lost(), "release of a removed grant: {e}");
    let next = locks.try_acquire("k", &long()).await.unwrap().expect("the key is free");
    assert!(next.token().get() > 1, "the token counter was kept");
    next.release().await.unwrap();
}

/// A cleaner (systemd-tmpfiles' age limit on /tmp) removes the key's state and mutex
/// while a holder, renewing for days, still holds it: its liveness file is written at
/// each extend, the state file only at grants and releases, so the state ages first. The
/// next decision must not take the missing state for a fresh key while the holder's
/// liveness file is held — that granted token 1 to a second holder at once.
#[tokio::test]
async fn a_state_file_removed_while_held_does_not_free_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (FileLock::open(dir.path()).unwrap(), FileLock::open(dir.path()).unwrap());
    let lease = a.acquire("k", &long()).await.unwrap();
    for name in ["k-k.state", "k-k.mutex"] {
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
    let second = b.try_acquire("k", &long()).await.unwrap();
    assert!(
        second.is_none(),
        "a second holder was granted token {} while the first held the key",
        second.as_ref().map_or(0, |l| l.token().get())
    );
    // The holder keeps its lease; once it releases, the key is free again.
    assert!(
        lease.extend(Duration::from_secs(60)).await.is_ok(),
        "the holder lost its lease"
    );
    lease.release().await.unwrap();
    let next = b.try_acquire("k", &long()).await.unwrap();
    assert!(next.is_some(), "the key stayed busy after its holder released it");
}

/// The token counter lives in the state file, which a cleaner (or an operator) may remove
/// while a holder holds the key, or between grants. The key's next grant must still get a
/// token above every token handed out before: the counter is also recorded in the key's
/// mutex and in each holder's liveness file, and restored from the highest found. Before,
/// the next grant after the holder's release got token 1 — and a paused old holder with
/// token 4 then beat the new holder's token 1 at any fencing store.
#[tokio::test]
async fn tokens_keep_growing_after_the_state_file_is_removed() {
    let short = LockOptions::new()
        .with_ttl(Duration::from_millis(200))
        .with_auto_renew(false);
    for case in [
        "state removed while held",
        "state and mutex removed while held",
        "state removed after the release",
        "state removed while an expired holder still lives",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (FileLock::open(dir.path()).unwrap(), FileLock::open(dir.path()).unwrap());
        for _ in 0..3 {
            a.acquire("k", &long()).await.unwrap().release().await.unwrap();
        }
        let expiring = case.contains("expired");
        let opts = if expiring { short } else { long() };
        let lease = a.acquire("k", &opts).await.unwrap();
        let held = lease.token().get();
        assert_eq!(held, 4, "{case}: the fourth grant");
        let remove = |names: &[&str]| {
            for name in names {
                std::fs::remove_file(dir.path().join(name)).unwrap();
            }
        };
        match case {
            "state removed while held" => remove(&["k-k.state"]),
            "state and mutex removed while held" => remove(&["k-k.state", "k-k.mutex"]),
            "state removed while an expired holder still lives" => {
                remove(&["k-k.state"]);
                // The holder's TTL running out is the condition under test, not a
                // synchronisation: it lives (its liveness file flocked), paused.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            _ => {}
        }
        let _paused = if expiring {
            Some(lease)
        } else {
            lease.release().await.unwrap();
            None
        };
        if case == "state removed after the release" {
            remove(&["k-k.state"]);
        }
        let next = b.try_acquire("k", &long()).await.unwrap().expect("the key is free");
        assert!(
            next.token().get() > held,
            "{case}: the next grant got token {} after token {held} was handed out",
            next.token().get()
        );
        next.release().await.unwrap();
    }
}

/// A state file restored from an older copy (an operator's backup) names an old holder
/// and an old counter. The counter counts on from the mutex's copy — and the holder now
/// holding the key, found by its flocked liveness file, must stay the holder: the key must
/// not go to a second process while it holds it.
#[tokio::test]
async fn a_state_restored_from_an_older_copy_keeps_the_live_holder() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (FileLock::open(dir.path()).unwrap(), FileLock::open(dir.path()).unwrap());
    let state = dir.path().join("k-k.state");
    let first = a.acquire("k", &long()).await.unwrap();
    let saved = std::fs::read(&state).unwrap();
    first.release().await.unwrap();
    let holder = b.acquire("k", &long()).await.unwrap();
    std::fs::write(&state, &saved).unwrap();
    let second = a.try_acquire("k", &long()).await.unwrap();
    assert!(
        second.is_none(),
        "a state restored from an older copy: the key was granted (token {}) while token {}'s holder held it",
        second.as_ref().map_or(0, |l| l.token().get()),
        holder.token().get()
    );
    let held = holder.token().get();
    holder.release().await.unwrap();
    let next = a
        .try_acquire("k", &long())
        .await
        .unwrap()
        .expect("free after the release");
    assert!(next.token().get() > held, "tokens went back after the restore");
}

/// A holder renewing for days must keep its state file from looking unused to an age
/// cleaner (systemd-tmpfiles removes files whose times are all older than its limit): each
/// extend sets the state's times to now, without rewriting it.
#[tokio::test]
async fn extend_keeps_the_state_file_from_ageing() {
    let dir = tempfile::tempdir().unwrap();
    let locks = FileLock::open(dir.path()).unwrap();
    let lease = locks.acquire("k", &long()).await.unwrap();
    let state = dir.path().join("k-k.state");
    let old = std::time::SystemTime::now() - Duration::from_secs(30 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&state)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_accessed(old).set_modified(old))
        .unwrap();
    lease.extend(Duration::from_secs(60)).await.unwrap();
    let modified = std::fs::symlink_metadata(&state).unwrap().modified().unwrap();
    assert!(
        modified.elapsed().unwrap_or_default() < Duration::from_secs(3600),
        "the state file of a renewed holder kept its old time ({:?} ago)",
        modified.elapsed().unwrap_or_default()
    );
    lease.release().await.unwrap();
}

/// Renewal must not wait for the disk: an extend changes only how long the holder stays
/// valid, which matters only while the holder lives, so it is never fsynced. (CI caught
/// `auto_renew_keeps_lease` losing a 300 ms lease when two fsyncs per renewal outran the
/// 200 ms left on a busy disk.) The state file, which holds the token counter and is
/// replaced durably, stays untouched; the new expiry is seen by other holders.
#[tokio::test]
async fn extend_leaves_the_durable_state_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (FileLock::open(dir.path()).unwrap(), FileLock::open(dir.path()).unwrap());
    let short = LockOptions::new()
        .with_ttl(Duration::from_millis(300))
        .with_auto_renew(false);
    let lease = a.acquire("k", &short).await.unwrap();
    let state = dir.path().join("k-k.state");
    let before = std::fs::symlink_metadata(&state).unwrap();
    let bytes_before = std::fs::read(&state).unwrap();
    lease.extend(Duration::from_secs(60)).await.unwrap();
    let after = std::fs::symlink_metadata(&state).unwrap();
    assert_eq!(
        (before.ino(), std::fs::read(&state).unwrap()),
        (after.ino(), bytes_before),
        "extend replaced the state file (a durable write on the renewal path)"
    );
    // The first TTL passing is the condition under test, not a synchronisation.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        b.try_acquire("k", &short).await.unwrap().is_none(),
        "another holder did not see the extended expiry"
    );
    // Shortened to 100 ms: long enough for the extend's own decision on a loaded machine
    // (a 1 ms extend was lost before its answer came: "the extend got no answer"), far
    // short of the 60 s before it.
    lease.extend(Duration::from_millis(100)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if b.try_acquire("k", &short).await.unwrap().is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a shortened expiry was not seen by another holder"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // polling a condition, bounded
    }
}

/// A process stopped (SIGSTOP, a debugger) while it holds a key's mutex flock — for the
/// microseconds of a decision — must not freeze every other process of the key: each
/// decision waits for the mutex a bounded time and then fails, temporarily, so
/// `try_acquire` answers and `acquire` gives up at its wait. (A newcomer froze `fencelock
/// leader` and `run --no-wait` for good by stopping a renewing holder inside it.) The
/// stopped process is played by this test holding the flock through its own descriptor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutex_held_by_a_stopped_process_delays_but_never_freezes() {
    let dir = tempfile::tempdir().unwrap();
    let locks = FileLock::open(dir.path()).unwrap();
    let held = locks.acquire("k", &long()).await.unwrap();
    let mutex = hold_mutex_of_k(dir.path());
    let bound = Duration::from_secs(10);
    let tried = tokio::time::timeout(bound, locks.try_acquire("k", &long())).await;
    let err = tried
        .expect("try_acquire froze behind a stopped mutex holder")
        .expect_err("try_acquire decided without the key's mutex");
    assert!(err.is_temporary(), "a busy mutex is a temporary failure: {err}");
    assert!(err.to_string().contains("mutex"), "the message names the mutex: {err}");
    let waited = tokio::time::timeout(bound, locks.acquire("k", &long().with_wait(Duration::from_millis(300)))).await;
    assert!(
        waited.expect("acquire froze behind a stopped mutex holder").is_err(),
        "acquire decided without the key's mutex"
    );
    let extended = tokio::time::timeout(bound, held.extend(Duration::from_secs(60))).await;
    assert!(
        extended.expect("extend froze behind a stopped mutex holder").is_err(),
        "extend decided without the key's mutex"
    );
    drop(mutex); // the stopped process continues
    let next = locks.try_acquire("other", &long()).await.unwrap();
    assert!(next.is_some(), "another key was affected");
}

/// A grant's validity counts from the moment the grant took effect, not from before the
/// local work that precedes it: waiting for the key's mutex (another process's decision,
/// up to a few hundred milliseconds on a saturated disk) or the durable write of the state.
/// CI lost 700 ms of a 1 s lease that way after a long wait. The slow disk is played by
/// this test holding the mutex flock for 1.2 s of a 2 s TTL, the fault's duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validity_counts_from_the_grant_not_from_the_mutex_wait() {
    let dir = tempfile::tempdir().unwrap();
    let locks = FileLock::open(dir.path()).unwrap();
    locks.acquire("k", &long()).await.unwrap().release().await.unwrap();
    let mutex = hold_mutex_of_k(dir.path());
    let ttl = Duration::from_secs(2);
    let opts = LockOptions::new().with_ttl(ttl).with_auto_renew(false);
    let attempt = {
        let locks = locks.clone();
        tokio::spawn(async move { locks.try_acquire("k", &opts).await })
    };
    tokio::time::sleep(Duration::from_millis(1200)).await;
    drop(mutex);
    let lease = attempt.await.unwrap().unwrap().expect("the key was free");
    let left = lease.remaining();
    assert!(
        left >= ttl - Duration::from_millis(500),
        "a grant made after a 1.2 s mutex wait came with {left:?} of its {ttl:?} TTL left"
    );
    // Nobody else may see the key free before our validity ends: the recorded expiry is
    // no earlier than the lease's.
    let other = FileLock::open(dir.path()).unwrap();
    assert!(other.try_acquire("k", &long()).await.unwrap().is_none());
    let files = super::grant::KeyFiles::new(&std::sync::Arc::new(dir.path().to_path_buf()), "k", true, 0o600);
    let recorded = files.expires_in().unwrap().expect("a live holder");
    assert!(
        recorded + Duration::from_millis(50) >= lease.remaining(),
        "the recorded expiry ({recorded:?} from now) is earlier than the lease's ({:?})",
        lease.remaining()
    );
}

/// A file outside the lock directory that a planted link points at.
fn victim(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("victim");
    std::fs::write(&path, "precious").unwrap();
    path
}

#[tokio::test]
async fn planted_links_are_never_followed() {
    let outside = tempfile::tempdir().unwrap();
    let victim = victim(outside.path());
    // The name of the state's new file in early versions (a link there was followed):
    // taking the lock must work and leave the victim untouched. For today's name, see
    // `a_link_planted_at_the_new_file_name_is_replaced_never_followed`.
    let dir = tempfile::tempdir().unwrap();
    symlink(&victim, dir.path().join("k-job.state-tmp")).unwrap();
    let locks = FileLock::open(dir.path()).unwrap();
    let lease = locks.acquire("job", &long()).await.unwrap();
    lease.release().await.unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    // Links in place of the state or mutex file: a permanent error, victim untouched.
    for name in ["k-job.state", "k-job.mutex"] {
        let dir = tempfile::tempdir().unwrap();
        symlink(&victim, dir.path().join(name)).unwrap();
        let locks = FileLock::open(dir.path()).unwrap();
        let e = locks.try_acquire("job", &long()).await.unwrap_err();
        assert!(!e.is_temporary(), "a planted {name} link gave a temporary error: {e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious", "{name}");
    }
}

#[tokio::test]
async fn world_writable_directory_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let victim = victim(outside.path());
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("fencelock-shared");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    symlink(&victim, dir.join("k-job.state-tmp")).unwrap();
    for url in [
        format!("file://{}", dir.display()),
        format!("file://{}?shared=true", dir.display()),
    ] {
        match FileLock::from_url(&url) {
            Err(LockError::InvalidConfig { message, .. }) => {
                assert!(message.contains("every user can write"), "{message}")
            }
            other => panic!("{url}: a 0777 directory was accepted: {other:?}"),
        }
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
}

#[tokio::test]
async fn group_writable_directory_needs_shared() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("group");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o770)).unwrap();
    let e = FileLock::open(&dir).unwrap_err();
    assert!(matches!(e, LockError::InvalidConfig { .. }), "{e}");
    let shared = FileLock::from_url(&format!("file://{}?shared=true", dir.display())).unwrap();
    let lease = shared.acquire("job", &long()).await.unwrap();
    lease.release().await.unwrap();
    // A shared directory it creates is group writable whatever the umask.
    use std::os::unix::fs::MetadataExt;
    let created = parent.path().join("new-shared");
    FileLock::from_url(&format!("file://{}?shared=true", created.display())).unwrap();
    assert_eq!(std::fs::metadata(&created).unwrap().mode() & 0o777, 0o770);
}

#[test]
fn directory_of_another_user_is_refused() {
    let parent = tempfile::tempdir().unwrap();
    let dir = if rustix::process::geteuid().is_root() {
        let dir = parent.path().join("theirs");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        // nobody (65534): what another user's pre-created directory looks like.
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        dir
    } else {
        Path::new("/usr").to_owned() // owned by root, not by us
    };
    match FileLock::open(&dir) {
        Err(LockError::InvalidConfig { message, .. }) => assert!(message.contains("owned by uid"), "{message}"),
        other => panic!("a directory of another user was accepted: {other:?}"),
    }
}

#[test]
fn created_directory_and_files_are_private() {
    use std::os::unix::fs::MetadataExt;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("new").join("locks");
    let locks = FileLock::open(&dir).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let lease = locks.acquire("job", &long()).await.unwrap();
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            assert_eq!(mode(&entry.path()), 0o600, "{:?}", entry.file_name());
        }
        lease.release().await.unwrap();
    });
}

#[tokio::test]
async fn corrupt_state_is_a_permanent_error_not_retried_for_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k-job.state"), b"{not json").unwrap();
    let locks = FileLock::open(dir.path()).unwrap();
    let started = std::time::Instant::now();
    let e = locks
        .acquire("job", &long().with_wait(Duration::from_secs(20)))
        .await
        .unwrap_err();
    assert!(!e.is_temporary(), "{e}");
    assert!(e.to_string().contains("corrupt"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a corrupt state file was retried for {:?}",
        started.elapsed()
    );
}

/// Whether this process's descriptors of `.live` files in `dir` are close-on-exec, from
/// /proc/self/fdinfo (`flags:` in octal; O_CLOEXEC is 02000000).
fn live_fds_cloexec(dir: &Path) -> Vec<bool> {
    let mut found = Vec::new();
    for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let is_live = std::fs::read_link(fd.path())
            .is_ok_and(|t| t.starts_with(dir) && t.extension().is_some_and(|e| e == "live"));
        if !is_live {
            continue;
        }
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.file_name().to_string_lossy()))
            .unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok());
        if let Some(flags) = flags {
            found.push(flags & 0o2_000_000 != 0);
        }
    }
    found
}

#[tokio::test]
async fn inherit_leaves_the_liveness_file_open_across_exec_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("locks");
    let plain = FileLock::from_url(&format!("file://{}", d.display())).unwrap();
    let lease = plain.acquire("k", &long()).await.unwrap();
    assert_eq!(
        live_fds_cloexec(&d),
        [true],
        "by default a liveness file is close-on-exec"
    );
    lease.release().await.unwrap();
    let inherit = FileLock::from_url(&format!("file://{}?inherit=true", d.display())).unwrap();
    let lease = inherit.acquire("k", &long()).await.unwrap();
    assert_eq!(live_fds_cloexec(&d), [false], "inherit=true: children share the flock");
    lease.release().await.unwrap();
}

/// A state file names its holder's liveness file, and a grant removes a stale holder's
/// one: a member of a shared directory's group who crafts the state could otherwise make
/// the next process that takes the key delete (or open, and be held up by) any file it
/// can reach. Only a liveness file name of this key, for the recorded grant, is accepted;
/// anything else makes the state corrupt, and nothing is opened or removed.
#[tokio::test]
async fn a_state_naming_another_file_as_liveness_file_is_corrupt_and_nothing_is_removed() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("locks");
    let locks = FileLock::open(&dir).unwrap();
    std::fs::create_dir(parent.path().join("vhome")).unwrap();
    let precious = parent.path().join("vhome").join("precious");
    std::fs::write(&precious, "precious").unwrap();
    // The key's own files: removing the mutex would let two processes decide at once.
    locks.acquire("job", &long()).await.unwrap().release().await.unwrap();
    let mutex = dir.join("k-job.mutex");
    let lives = [
        "../vhome/precious".to_owned(),
        precious.display().to_string(),
        "k-job.mutex".to_owned(),
        ".".to_owned(),
        "..".to_owned(),
        "".to_owned(),
        "k-other.00.live".to_owned(),
        "k-job.ff.live".to_owned(), // another grant's name than the recorded "00"
        "k-job.00.live/../k-job.mutex".to_owned(),
    ];
    for live in lives {
        let state = serde_json::json!({
            "last_token": 7,
            "holder": {"grant": "00", "expires_mono_ns": 1, "live": live},
        });
        std::fs::write(dir.join("k-job.state"), state.to_string()).unwrap();
        let e = locks
            .acquire("job", &long().with_wait(Duration::from_secs(20)))
            .await
            .map(|lease| lease.token())
            .expect_err(&format!("a state naming {live:?} as liveness file was accepted"));
        assert!(
            !e.is_temporary() && e.to_string().contains("corrupt"),
            "{live:?}: not the corrupt-state error: {e}"
        );
        assert!(
            precious.exists(),
            "{live:?}: the file outside the directory was removed"
        );
        assert!(mutex.exists(), "{live:?}: the key's mutex file was removed");
    }
    // The liveness name the backend itself writes is still accepted.
    let state = serde_json::json!({
        "last_token": 7,
        "holder": {"grant": "00", "expires_mono_ns": 1, "live": "k-job.00.live"},
    });
    std::fs::write(dir.join("k-job.state"), state.to_string()).unwrap();
    let lease = locks
        .try_acquire("job", &long())
        .await
        .unwrap()
        .expect("the key is free");
    assert_eq!(lease.token().get(), 8);
    lease.release().await.unwrap();
}

/// The environment variable that tells a `child_*` test (run by its parent test in a
/// process of its own) which directory to use.
const CHILD_DIR: &str = "FENCELOCK_FILE_TEST_DIR";

/// Runs the ignored test `name` (its full path, as `file::tests::child_x`) of this test
/// binary in a child process with `dir`, and fails with its output unless it ran and
/// passed. For tests that change what is process-wide (the umask, the descriptor limit)
/// and must not disturb the others; the election's tests use it too.
pub(crate) fn run_child(name: &str, dir: &Path) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child {name} failed:\n{stdout}\n{stderr}"
    );
}

/// For a child process only: lowers its descriptor limit (to 64, so that filling it takes
/// few files) and opens `/dev/null` until no descriptor is left; returns the files, to be
/// dropped (or truncated) to free some.
pub(crate) fn use_up_descriptors() -> Vec<std::fs::File> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(limit.maximum.map_or(64, |max| max.min(64))),
            maximum: limit.maximum,
        },
    )
    .unwrap();
    let mut filler = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => filler.push(f),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::MFILE.raw_os_error()) => return filler,
            Err(e) => panic!("{e}"),
        }
    }
}

/// The modes of the files in `dir`, by name (sorted), as `0600`-style text.
pub(crate) fn modes(dir: &Path) -> Vec<(String, String)> {
    let mut modes: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let mode = e.metadata().unwrap().mode() & 0o777;
            (e.file_name().to_string_lossy().into_owned(), format!("{mode:04o}"))
        })
        .collect();
    modes.sort();
    modes
}

/// Takes key `k`'s mutex flock in `dir` through a descriptor of its own, as another
/// process stopped (or slow) inside a decision holds it; dropping the file frees it.
fn hold_mutex_of_k(dir: &Path) -> std::fs::File {
    let mutex = std::fs::File::open(dir.join("k-k.mutex")).unwrap();
    rustix::fs::flock(&mutex, rustix::fs::FlockOperation::LockExclusive).unwrap();
    mutex
}

pub(crate) fn child_dir() -> std::path::PathBuf {
    std::env::var_os(CHILD_DIR)
        .expect("run by its parent test, with FENCELOCK_FILE_TEST_DIR set")
        .into()
}

/// Out of descriptors (EMFILE) when the state is written: it must count as temporary (an
/// acquire retries it while its wait lasts; `tempfile`, which once made the state's new
/// file, wrapped the error so that its code was hidden), and the liveness file the attempt
/// created must not be left behind (it would be counted by `records` as a holder, forever).
#[test]
fn a_grant_out_of_descriptors_is_temporary_and_leaves_no_liveness_file() {
    let dir = tempfile::tempdir().unwrap();
    let locks = FileLock::open(dir.path()).unwrap();
    run_child("file::tests::child_grant_out_of_descriptors", dir.path());
    assert_eq!(locks.records("k").unwrap(), 0, "a failed grant left a liveness file");
}

#[test]
#[ignore = "run by a_grant_out_of_descriptors_is_temporary_and_leaves_no_liveness_file"]
fn child_grant_out_of_descriptors() {
    let dir = std::sync::Arc::new(child_dir());
    let files = super::grant::KeyFiles::new(&dir, "k", false, 0o600);
    let mut filler = use_up_descriptors();
    // Two descriptors free: the key's mutex and the new liveness file. The state file is
    // missing (a fresh key), so reading it takes none, and the state's replacement fails.
    assert!(filler.len() >= 2, "too few descriptors to free: {}", filler.len());
    filler.truncate(filler.len() - 2);
    let outcome = files.try_grant(Duration::from_secs(60));
    drop(filler);
    let e = match outcome {
        Ok(_) => panic!("the grant succeeded with no descriptor left for the state file"),
        Err(e) => e,
    };
    let left = files.live_files().unwrap().len();
    assert!(
        e.is_temporary() && left == 0,
        "temporary: {}, liveness files left: {left}; error: {e}",
        e.is_temporary()
    );
}

/// With `shared=true` the files are group readable and writable whatever the umask of
/// the process that creates them: a member with umask 077 must not lock the others out.
#[test]
fn shared_files_are_0660_whatever_the_umask() {
    let parent = tempfile::tempdir().unwrap();
    run_child("file::tests::child_shared_files_under_umask_077", parent.path());
}

#[test]
#[ignore = "run by shared_files_are_0660_whatever_the_umask"]
fn child_shared_files_under_umask_077() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let dir = child_dir().join("shared");
    let locks = FileLock::from_url(&format!("file://{}?shared=true", dir.display())).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let lease = locks.acquire("job", &long()).await.unwrap();
        let modes = modes(&dir);
        assert_eq!(modes.len(), 3, "state, mutex and liveness file: {modes:?}");
        assert!(
            modes.iter().all(|(_, mode)| mode == "0660"),
            "files of a shared directory under umask 077: {modes:?}"
        );
        lease.release().await.unwrap();
    });
}

/// A symlinked directory is refused, however spelled: the directory checks look at the
/// path as it will be used, and a trailing `/` or `/.` makes `symlink_metadata` follow a
/// link.
#[test]
fn symlinked_directory_is_refused_however_spelled() {
    let parent = tempfile::tempdir().unwrap();
    let real = parent.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = parent.path().join("link");
    symlink(&real, &link).unwrap();
    let link = link.display();
    for spelled in [
        format!("{link}"),
        format!("{link}/"),
        format!("{link}//"),
        format!("{link}/."),
        format!("{link}/./"),
        format!("{link}/../link/"),
    ] {
        match FileLock::open(&spelled) {
            Err(LockError::InvalidConfig { message, .. }) => {
                assert!(message.contains("symbolic link"), "{spelled}: {message}")
            }
            other => panic!("{spelled}: a symlinked directory was accepted: {other:?}"),
        }
        match FileLock::from_url(&format!("file://{spelled}?durable=false")) {
            Err(LockError::InvalidConfig { message, .. }) => {
                assert!(message.contains("symbolic link"), "file://{spelled}: {message}")
            }
            other => panic!("file://{spelled}: a symlinked directory was accepted: {other:?}"),
        }
    }
}

/// `close` returns only once the instance's file operations have ended. A dropped
/// acquire's attempt goes on in its blocking thread (waiting for the key's mutex here, held
/// by this test as a stopped process would hold it, or in the middle of a decision); and
/// `fencelock run` stops itself after `close` on Ctrl-Z: stopped while such a thread held
/// the key's mutex, it froze every other process of the key until continued (a CLI test
/// saw the next waiter wait out the holder's TTL, 2 of about 20 runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_the_file_operations_still_running() {
    let dir = tempfile::tempdir().unwrap();
    let locks = FileLock::open(dir.path()).unwrap();
    locks.acquire("k", &long()).await.unwrap().release().await.unwrap();
    let mutex = hold_mutex_of_k(dir.path());
    let attempt = tokio::spawn({
        let locks = locks.clone();
        async move { locks.try_acquire("k", &long()).await }
    });
    // Its blocking thread has the mutex file open (and polls its flock).
    assert_eq!(
        settles_to(2, || files_in(dir.path())).await,
        2,
        "the attempt never started"
    );
    attempt.abort(); // the caller gives up; the blocking thread goes on
    let mut closing = tokio::spawn({
        let locks = locks.clone();
        async move { locks.close().await }
    });
    let early = tokio::time::timeout(Duration::from_millis(300), &mut closing).await;
    assert!(
        early.is_err(),
        "close returned while a file operation still ran: {early:?}"
    );
    drop(mutex); // the stopped process continues
    let closed = tokio::time::timeout(Duration::from_secs(10), closing).await;
    assert!(matches!(closed, Ok(Ok(Ok(())))), "{closed:?}");
    assert_eq!(files_in(dir.path()), 0, "close left a file of the key open");
}

/// The names of the files in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    modes(dir).into_iter().map(|(name, _)| name).collect()
}

/// A writer killed (SIGKILL, power loss) between creating the state's new file and
/// renaming it into place leaves that file behind. Crashes one after another must not
/// pile them up, and the key's next grant, and its next release, must leave none.
#[tokio::test]
async fn a_writer_killed_while_replacing_leaves_nothing_past_the_next_grant_or_release() {
    let dir = tempfile::tempdir().unwrap();
    let locks = FileLock::open(dir.path()).unwrap();
    let files = locks.files("job");
    for _ in 0..3 {
        files.crash_while_replacing("state").unwrap();
    }
    let left = names(dir.path());
    assert!(
        left.iter()
            .all(|n| ["k-job.mutex", "k-job.state", "k-job.tmp"].contains(&n.as_str())),
        "three crashed writers left more than the mutex, the state and one new file: {left:?}"
    );

    let lease = locks.try_acquire("job", &long()).await.unwrap().expect("free");
    let mut held = vec![
        "k-job.mutex".to_owned(),
        "k-job.state".to_owned(),
        super::naming::live_file("k-job", &lease.grant().to_string()),
    ];
    held.sort();
    assert_eq!(names(dir.path()), held, "after the next grant");

    files.crash_while_replacing("state").unwrap(); // a release killed while writing
    lease.release().await.unwrap();
    assert_eq!(
        names(dir.path()),
        ["k-job.mutex", "k-job.state"],
        "after the next release"
    );
}

/// The new file of a key's writes has a fixed name (`STEM.tmp`, see `os::replace`), and a
/// writer removes whatever it finds there. A symbolic link planted at that name — to a
/// victim file, or dangling to where a file would be created — is removed, never written
/// through: the grant and the release go through, the victim keeps its content, nothing
/// is created outside the directory, and no link is left.
#[tokio::test]
async fn a_link_planted_at_the_new_file_name_is_replaced_never_followed() {
    let outside = tempfile::tempdir().unwrap();
    let victim = victim(outside.path());
    let dangling = outside.path().join("would-be-created");
    let dir = tempfile::tempdir().unwrap();
    let locks = FileLock::open(dir.path()).unwrap();
    let tmp = locks.files("job").tmp_path();
    assert_eq!(tmp, dir.path().join("k-job.tmp"));

    symlink(&victim, &tmp).unwrap();
    let lease = locks.try_acquire("job", &long()).await.unwrap().expect("free");
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "precious",
        "written through the link"
    );
    assert!(std::fs::symlink_metadata(&tmp).is_err(), "the link is still there");

    symlink(&dangling, &tmp).unwrap();
    lease.release().await.unwrap();
    assert!(
        std::fs::symlink_metadata(&dangling).is_err(),
        "a file was created through a dangling link"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert_eq!(names(dir.path()), ["k-job.mutex", "k-job.state"], "after the release");
    let state = std::fs::read_to_string(dir.path().join("k-job.state")).unwrap();
    assert!(state.contains(r#""last_token":1"#), "the release's state: {state}");
}
