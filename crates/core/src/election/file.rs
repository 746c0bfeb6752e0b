//! The election of the file backend (`file:///DIR`): for processes of one host.
//!
//! The seat of election `NAME` is the file lock on key `election.NAME`, so its term is that
//! lock's fencing token (kept in the fsynced state file: terms survive restarts), only one
//! process leads, and a leader whose process dies frees the seat at once (the kernel drops
//! its flock). The leader's value lives beside the lock in `STEM.GRANT.leader`, one file per
//! grant, so a deposed leader's late proclaim writes its own file and never the
//! successor's. [`leader`](super::Election::leader) reports a record only when its grant
//! is the key's live holder — the grant is compared, never the mere existence of a file. A
//! leader's record stays after it resigns or exits, until the next leader's grant removes
//! it: its term is a token handed out, which the restore of a lost state file reads
//! (`KeyFiles::restored`), so terms keep growing even with the mutex's copy lost too. The
//! campaign, `leader` and the rest are the shared seat glue of [`super::seat`]. Observers
//! poll (there is no change notification that carries values).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::seat::{seat_key, SeatBackend, SeatRead, SeatState};
use super::{ElectionCapabilities, LeaderInfo, LeaderRead, Observation, ProclaimOps};
use crate::error::{LockError, Result};
use crate::file::{blocking, io_error, FileLock, KeyFiles, BACKEND};
use crate::guarantees::TokenOrder;
use crate::lease::Lease;
use crate::lock::DistributedLock;
use crate::token::FencingToken;

/// How often a file observer reads the seat.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How long [`leader`](super::Election::leader) waits for a just-elected leader's value.
pub use super::seat::RECORD_WAIT;

/// What the file election gives.
pub const CAPABILITIES: ElectionCapabilities = ElectionCapabilities {
    backend: "file",
    terms: TokenOrder::StrictlyMonotonic,
    leader: LeaderRead::Exact,
    observe: Observation::Polled {
        interval_ms: POLL_INTERVAL.as_millis() as u64,
    },
    dead_leader_blocks: "not at all when its process dies (the kernel drops its flock); its TTL when it hangs",
};

/// A value record's content. Its `term` is also read by the restore of a key's lost state
/// (`file::state::leader_record_term`): keep the field's name.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    term: u64,
    value: Vec<u8>,
}

/// The file election service: a [`FileLock`] directory shared by the host's processes.
#[derive(Debug, Clone)]
pub struct FileElection {
    lock: FileLock,
}

/// The name of grant `grant`'s value record within the key's files: `STEM.GRANT.leader`.
fn record_name(grant: &str) -> String {
    format!("{grant}.leader")
}

fn record_path(files: &KeyFiles, grant: &str) -> PathBuf {
    files.path(&record_name(grant))
}

/// Writes `grant`'s value record if `grant` still holds the seat, as the lock's state file
/// is written and under the same mutex, in one hold with the check
/// (`KeyFiles::replace_if_holder`): other members of a shared directory can read it
/// whatever this process's umask, a full disk or EMFILE is temporary, and a writer killed
/// mid-write leaves only the key's one new file, which the key's next write removes.
/// `false` when the grant no longer holds the seat (nothing is written). Not fsynced: a
/// record counts only while its grant's holder lives (`read_seat` compares it with the
/// live holder), and after a crash or power loss that holder's flock is gone, so a lost
/// record is never read.
fn write_record(files: &KeyFiles, grant: &str, record: &Record) -> Result<bool> {
    let bytes =
        serde_json::to_vec(record).map_err(|e| LockError::backend(BACKEND, "cannot encode election record", e))?;
    files.replace_if_holder(grant, &record_name(grant), &bytes)
}

fn read_record(path: &Path) -> Result<Option<Record>> {
    // As the lock's own files are opened (`os::open_read`): never through a symbolic link,
    // and non-blocking, so a FIFO planted as a record cannot freeze the reader.
    let cannot_read = |e| io_error(format!("cannot read {}", path.display()), e);
    let Some(mut f) = crate::file::os::open_read(path).map_err(cannot_read)? else {
        return Ok(None);
    };
    let mut bytes = Vec::with_capacity(128);
    std::io::Read::read_to_end(&mut f, &mut bytes).map_err(cannot_read)?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| LockError::backend(BACKEND, format!("election record {} is corrupt", path.display()), e))
}

/// Removes the value records of grants other than `keep` (left by earlier leaders).
fn remove_other_records(dir: &Path, files: &KeyFiles, keep: &str) {
    let prefix = format!("{}.", files.stem());
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(grant) = name.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".leader")) else {
            continue;
        };
        if grant != keep && grant.bytes().all(|b| b.is_ascii_hexdigit()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Reads the seat once: the live holder's term, and its value when written. Blocking.
fn read_seat(files: &KeyFiles) -> Result<SeatState> {
    let Some((grant, term)) = files.live_grant()? else {
        return Ok(SeatState::Empty);
    };
    let term = FencingToken::new(term);
    Ok(match read_record(&record_path(files, &grant))? {
        Some(r) if r.term == term.get() => SeatState::Leader(LeaderInfo { value: r.value, term }),
        _ => SeatState::Unwritten(term),
    })
}

impl FileElection {
    /// The election over `lock`'s directory.
    pub fn new(lock: FileLock) -> Self {
        FileElection { lock }
    }

    /// Builds from `file:///DIR[?durable=false]`, as [`FileLock::from_url`].
    ///
    /// # Errors
    /// As [`FileLock::from_url`].
    pub fn from_url(url: &str) -> Result<Self> {
        Ok(Self::new(FileLock::from_url(url)?))
    }

    /// Empties the seat of `name` by hand, as an operator would (`rm DIR/STEM.*.live`);
    /// its leader learns at its next renewal or proclaim (`LeaseLost`). Returns how many
    /// files were removed.
    ///
    /// # Errors
    /// As [`FileLock::remove_grant`].
    pub fn remove_leader(&self, name: &str) -> Result<usize> {
        self.lock.remove_grant(&seat_key(name)?)
    }
}

#[async_trait]
impl SeatBackend for FileElection {
    fn seat_lock(&self) -> &dyn DistributedLock {
        &self.lock
    }

    fn election_capabilities(&self) -> ElectionCapabilities {
        CAPABILITIES
    }

    async fn seat_grant(&self, _name: &str, seat: &str, lease: &Lease) -> Result<Arc<dyn ProclaimOps>> {
        let ops = Arc::new(FileSeat {
            dir: self.lock.dir().to_path_buf(),
            files: self.lock.files(seat),
            grant: lease.grant().to_string(),
            term: lease.token().get(),
        });
        let o = Arc::clone(&ops);
        blocking(&self.lock.ops(), move || {
            remove_other_records(&o.dir, &o.files, &o.grant);
            Ok(())
        })
        .await?;
        Ok(ops)
    }

    async fn read_seat(&self, _name: &str, seat: &str) -> Result<SeatRead> {
        let files = self.lock.files(seat);
        blocking(&self.lock.ops(), move || read_seat(&files).map(SeatRead::new)).await
    }
}

/// One leader's grant of a file seat.
struct FileSeat {
    dir: PathBuf,
    files: KeyFiles,
    grant: String,
    term: u64,
}

impl FileSeat {
    /// Writes our value if our grant still holds the seat; `false` otherwise.
    fn write(&self, value: Vec<u8>) -> Result<bool> {
        let record = Record { term: self.term, value };
        write_record(&self.files, &self.grant, &record)
    }
}

#[async_trait]
impl ProclaimOps for FileSeat {
    async fn proclaim(&self, value: &[u8]) -> Result<bool> {
        let me = Arc::new(FileSeat {
            dir: self.dir.clone(),
            files: self.files.clone(),
            grant: self.grant.clone(),
            term: self.term,
        });
        let value = value.to_vec();
        blocking(&self.files.ops, move || me.write(value)).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

    use super::*;
    use crate::election::Election;
    use crate::file::tests::{child_dir, modes, run_child};
    use crate::options::LockOptions;

    fn long() -> LockOptions {
        LockOptions::new()
            .with_ttl(Duration::from_secs(60))
            .with_auto_renew(false)
    }

    /// With `shared=true` the leader's value record is group readable whatever the umask
    /// of the leader, as the lock's own files are: a leader with umask 077 must not hide
    /// its value from the other members (their `leader` failed with "Permission denied").
    #[test]
    fn shared_value_records_are_0660_whatever_the_umask() {
        let parent = tempfile::tempdir().unwrap();
        run_child(
            "election::file::tests::child_shared_value_record_under_umask_077",
            parent.path(),
        );
    }

    #[test]
    #[ignore = "run by shared_value_records_are_0660_whatever_the_umask"]
    fn child_shared_value_record_under_umask_077() {
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
        let dir = child_dir().join("shared");
        let election = FileElection::from_url(&format!("file://{}?shared=true", dir.display())).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let leadership = election.campaign("sched", b"host-a", &long()).await.unwrap();
            leadership.proclaim(b"host-b").await.unwrap();
            let modes = modes(&dir);
            assert_eq!(
                modes.iter().filter(|(name, _)| name.ends_with(".leader")).count(),
                1,
                "one value record: {modes:?}"
            );
            assert_eq!(
                modes.len(),
                4,
                "state, mutex, liveness file and value record: {modes:?}"
            );
            assert!(
                modes.iter().all(|(_, mode)| mode == "0660"),
                "files of a shared election under umask 077: {modes:?}"
            );
            leadership.resign().await.unwrap();
        });
    }

    /// Out of descriptors (EMFILE) when a value record is written: temporary, as the same
    /// failure at the lock's state file (the caller may retry), and no file is left behind.
    #[test]
    fn a_record_written_out_of_descriptors_is_temporary_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        run_child("election::file::tests::child_record_out_of_descriptors", dir.path());
        let left = modes(dir.path());
        assert!(left.is_empty(), "files left behind: {left:?}");
    }

    #[test]
    #[ignore = "run by a_record_written_out_of_descriptors_is_temporary_and_leaves_no_file"]
    fn child_record_out_of_descriptors() {
        let lock = FileLock::open_with(&child_dir(), false).unwrap();
        let seat = FileSeat {
            dir: lock.dir().to_path_buf(),
            files: lock.files("election.sched"),
            grant: "0123abcd".into(),
            term: 1,
        };
        let filler = crate::file::tests::use_up_descriptors();
        // No descriptor left: the record is written under the key's mutex (the fixed name
        // of its new file needs it), so the mutex's open is what fails.
        let outcome = seat.write(b"host-a".to_vec());
        drop(filler);
        match outcome {
            Ok(_) => panic!("the record was written with no descriptor left"),
            Err(e) => assert!(e.is_temporary(), "EMFILE should be temporary: {e}"),
        }
    }

    /// A leader killed (SIGKILL, power loss) while writing its value record leaves the
    /// record's new file behind, as a killed grant or release leaves the state's: crashes
    /// one after another must not pile them up, and the seat's next proclaim, and its next
    /// release (resign), must leave none.
    #[tokio::test]
    async fn a_leader_killed_while_writing_its_record_leaves_nothing_past_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let election = FileElection::new(FileLock::open(dir.path()).unwrap());
        let leadership = election.campaign("sched", b"host-a", &long()).await.unwrap();
        let files = election.lock.files(&seat_key("sched").unwrap());
        let (grant, _) = files.live_grant().unwrap().expect("a leader");
        let stem = files.stem().to_owned();
        let seated = |dir: &Path| {
            let mut names = vec![
                format!("{stem}.mutex"),
                format!("{stem}.state"),
                format!("{stem}.{grant}.live"),
                format!("{stem}.{grant}.leader"),
            ];
            names.sort();
            assert_eq!(names, files_in(dir), "the seat's files only");
        };
        seated(dir.path());
        for _ in 0..3 {
            files.crash_while_replacing(&record_name(&grant)).unwrap();
        }
        let left = files_in(dir.path());
        assert!(
            left.len() <= 5,
            "three crashed proclaims left more than the seat's four files and one new file: {left:?}"
        );
        leadership.proclaim(b"host-b").await.unwrap();
        seated(dir.path());

        files.crash_while_replacing(&record_name(&grant)).unwrap();
        leadership.resign().await.unwrap();
        let mut resigned = vec![
            format!("{stem}.mutex"),
            format!("{stem}.state"),
            format!("{stem}.{grant}.leader"),
        ];
        resigned.sort();
        assert_eq!(files_in(dir.path()), resigned, "after the resign");
    }

    /// A resigned leader's value record stays (`STEM.GRANT.leader`, with its term). With
    /// the state file deleted and the mutex's copy of the counter lost too (garbled, or
    /// the mutex deleted with the state while nobody leads), the record is the last trace
    /// of the terms handed out: the restore ignored it, and the next leader got term 1
    /// after term 3 — a deposed leader's writes with term 3 would then beat it.
    #[tokio::test]
    async fn a_resigned_leaders_record_keeps_terms_growing_when_the_counter_is_lost() {
        for case in ["state removed, mutex garbled", "state and mutex removed"] {
            let dir = tempfile::tempdir().unwrap();
            let election = FileElection::new(FileLock::open(dir.path()).unwrap());
            let mut last = 0;
            for _ in 0..3 {
                let leadership = election.campaign("sched", b"host-a", &long()).await.unwrap();
                last = leadership.term().get();
                leadership.resign().await.unwrap();
            }
            let files = election.lock.files(&seat_key("sched").unwrap());
            std::fs::remove_file(files.path("state")).unwrap();
            if case.contains("garbled") {
                std::fs::write(files.path("mutex"), b"garbage").unwrap();
            } else {
                std::fs::remove_file(files.path("mutex")).unwrap();
            }
            let next = election.campaign("sched", b"host-b", &long()).await.unwrap();
            assert!(
                next.term().get() > last,
                "{case}: term {} after term {last}",
                next.term().get()
            );
            next.resign().await.unwrap();
        }
    }

    /// The names of the files in `dir`, sorted.
    fn files_in(dir: &Path) -> Vec<String> {
        modes(dir).into_iter().map(|(name, _)| name).collect()
    }

    /// A record is read as the lock's files are: never through a symbolic link, and a FIFO
    /// planted in its place (a group member of a shared directory can) does not block the
    /// reader. Before, `std::fs::read` followed a link to any file, and a FIFO froze
    /// `leader` for good (a review, by reading the code).
    #[test]
    fn a_record_is_never_read_through_a_link_or_blocked_by_a_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere.json");
        std::fs::write(&elsewhere, br#"{"term":7,"value":[104,105]}"#).unwrap();
        let link = dir.path().join("k.00.leader");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let read = read_record(&link);
        assert!(read.is_err(), "a record was read through a symbolic link: {read:?}");

        let fifo = dir.path().join("k.01.leader");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success(), "mkfifo");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(read_record(&fifo).is_ok());
        });
        let answered = rx.recv_timeout(Duration::from_secs(5));
        assert!(answered.is_ok(), "reading a FIFO planted as a record blocked");
    }
}
