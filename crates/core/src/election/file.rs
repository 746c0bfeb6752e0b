//! The election of the file backend (`file:///DIR`): for processes of one host.
//!
//! The seat of election `NAME` is the file lock on key `election.NAME`, so its term is that
//! lock's fencing token (kept in the fsynced state file: terms survive restarts), only one
//! process leads, and a leader whose process dies frees the seat at once (the kernel drops
//! its flock). The leader's value lives beside the lock in `STEM.GRANT.leader`, one file per
//! grant, so a deposed leader's late proclaim writes its own file and never the
//! successor's. [`leader`](Election::leader) reports a record only when its grant is the
//! key's live holder — the grant is compared, never the mere existence of a file.
//! Observers poll (there is no change notification that carries values).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{
    validate_value, Election, ElectionCapabilities, LeaderInfo, LeaderRead, Leadership, Observation, Observer,
    ProclaimOps,
};
use crate::error::{LockError, Result};
use crate::file::{blocking, FileLock, KeyFiles};
use crate::guarantees::TokenOrder;
use crate::lock::DistributedLock;
use crate::options::{validate_key, LockOptions};
use crate::token::FencingToken;

/// How often a file observer reads the seat.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How long [`leader`](Election::leader) waits for a just-elected leader to write its
/// value before reporting its term with an empty value.
pub const RECORD_WAIT: Duration = Duration::from_millis(200);

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

fn seat_key(name: &str) -> Result<String> {
    validate_key(name)?;
    let key = format!("election.{name}");
    validate_key(&key)?;
    Ok(key)
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

/// Reads the seat: the live holder's term and value. Blocking.
fn read_leader(dir: &Path, files: &KeyFiles) -> Result<Option<LeaderInfo>> {
    let deadline = std::time::Instant::now() + RECORD_WAIT;
    // Bounded: RECORD_WAIT / 5 ms turns at most.
    loop {
        let Some((grant, term)) = files.live_grant()? else {
            return Ok(None);
        };
        let term = FencingToken::new(term);
        match read_record(&record_path(dir, files, &grant))? {
            Some(r) if r.term == term.get() => return Ok(Some(LeaderInfo { value: r.value, term })),
            _ if std::time::Instant::now() >= deadline => {
                return Ok(Some(LeaderInfo {
                    value: Vec::new(),
                    term,
                }))
            }
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
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
impl Election for FileElection {
    #[tracing::instrument(level = "debug", skip(self, value, opts), fields(backend = "file"))]
    async fn campaign(&self, name: &str, value: &[u8], opts: &LockOptions) -> Result<Leadership> {
        validate_value(value)?;
        let key = seat_key(name)?;
        let lease = self.lock.acquire(&key, opts).await?;
        let ops = Arc::new(FileSeat {
            dir: self.lock.dir().to_path_buf(),
            files: self.lock.files(&key),
            grant: lease.grant().to_string(),
            term: lease.token().get(),
        });
        // Dropping the future here drops the lease, which releases the seat.
        let (o, value) = (Arc::clone(&ops), value.to_vec());
        blocking(move || {
            remove_other_records(&o.dir, &o.files, &o.grant);
            o.write(value)
        })
        .await?;
        tracing::debug!(name, term = %lease.token(), "elected");
        Ok(Leadership::new(name, lease, ops))
    }

    async fn leader(&self, name: &str) -> Result<Option<LeaderInfo>> {
        let files = self.lock.files(&seat_key(name)?);
        let dir = self.lock.dir().to_path_buf();
        blocking(move || read_leader(&dir, &files)).await
    }

    async fn observe(&self, name: &str) -> Result<Observer> {
        let files = self.lock.files(&seat_key(name)?);
        let dir = self.lock.dir().to_path_buf();
        Ok(super::polled(POLL_INTERVAL, move || {
            let (d, f) = (dir.clone(), files.clone());
            blocking(move || read_leader(&d, &f))
        }))
    }

    fn capabilities(&self) -> ElectionCapabilities {
        CAPABILITIES
    }

    fn describe(&self) -> String {
        self.lock.describe()
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
