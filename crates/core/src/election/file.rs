//! The election of the file backend (`file:///DIR`): for processes of one host.
//!
//! The seat of election `NAME` is the file lock on key `election.NAME`, so its term is that
//! lock's fencing token (kept in the fsynced state file: terms survive restarts), only one
//! process leads, and a leader whose process dies frees the seat at once (the kernel drops
//! its flock). The leader's value lives beside the lock in `STEM.GRANT.leader`, one file per
//! grant, so a deposed leader's late proclaim writes its own file and never the
//! successor's. [`leader`](Election::leader) reports a record only when its grant is the
//! key's live holder — the grant is compared, never the mere existence of a file. The
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
use crate::file::{blocking, FileLock, KeyFiles};
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

fn record_path(dir: &Path, files: &KeyFiles, grant: &str) -> PathBuf {
    dir.join(format!("{}.{grant}.leader", files.stem()))
}

fn io_error(what: String, e: impl Into<crate::error::BoxError>) -> LockError {
    LockError::backend("file", what, e)
}

fn write_record(dir: &Path, path: &Path, record: &Record) -> Result<()> {
    use std::io::Write;
    let bytes = serde_json::to_vec(record).map_err(|e| io_error("cannot encode election record".into(), e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| io_error(format!("cannot create a file in {}", dir.display()), e))?;
    tmp.write_all(&bytes)
        .map_err(|e| io_error(format!("cannot write {}", tmp.path().display()), e))?;
    tmp.persist(path)
        .map_err(|e| io_error(format!("cannot write {}", path.display()), e.error))?;
    Ok(())
}

fn read_record(path: &Path) -> Result<Option<Record>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io_error(format!("election record {} is corrupt", path.display()), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(format!("cannot read {}", path.display()), e)),
    }
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
fn read_seat(dir: &Path, files: &KeyFiles) -> Result<SeatState> {
    let Some((grant, term)) = files.live_grant()? else {
        return Ok(SeatState::Empty);
    };
    let term = FencingToken::new(term);
    Ok(match read_record(&record_path(dir, files, &grant))? {
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
        blocking(move || {
            remove_other_records(&o.dir, &o.files, &o.grant);
            Ok(())
        })
        .await?;
        Ok(ops)
    }

    async fn read_seat(&self, _name: &str, seat: &str) -> Result<SeatRead> {
        let files = self.lock.files(seat);
        let dir = self.lock.dir().to_path_buf();
        blocking(move || read_seat(&dir, &files).map(SeatRead::new)).await
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
    fn write(&self, value: Vec<u8>) -> Result<()> {
        let record = Record { term: self.term, value };
        write_record(&self.dir, &record_path(&self.dir, &self.files, &self.grant), &record)
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
        blocking(move || {
            let ours = me.files.live_grant()?.is_some_and(|(g, _)| g == me.grant);
            if ours {
                me.write(value)?;
            }
            Ok(ours)
        })
        .await
    }
}
