//! The file backend (`file:///DIR`): locks shared by the processes of one host.
//!
//! Choose it to serialise cron jobs, deploy scripts or workers on one machine without
//! running a server; it is the CLI's default. It needs a local filesystem with working
//! `flock` (not NFS). Guide: `docs/backends/file.md`.
//!
//! # How it works
//!
//! Each key has three kinds of files in `DIR`, named from the key (see `naming`), and a
//! fourth for a moment:
//!
//! * `STEM.mutex` — flocked for the few microseconds of each decision, so the processes
//!   decide one at a time;
//! * `STEM.state` — the last token handed out and the holder (grant id, expiry on the
//!   host's monotonic clock, liveness file). Replaced atomically and fsynced, so tokens keep
//!   growing across restarts and power loss;
//! * `STEM.GRANT.live` — created and flocked by the holder for as long as it lives. When
//!   the holder crashes the kernel drops that flock, so its lock is free at once; when it
//!   releases, it closes the file, which wakes every waiter watching it (`wait`);
//! * `STEM.tmp` — the new file of each replacement of the state (and of the election's
//!   value records), renamed into place under the key's mutex. A writer killed before the
//!   rename leaves it; the key's next write removes it (`os::replace`).
//!
//! A key is free when the state has no holder, the holder's expiry has passed (a holder
//! paused past its TTL loses the lock, as with every other backend), or nobody holds the
//! holder's liveness flock (it crashed, or an operator removed the file). Extend and
//! release check that the liveness file is still the one the holder created, so a grant
//! removed by hand is noticed (`LeaseLost`) even before anyone else takes the key.
//!
//! No file is ever opened through a symbolic link (`O_NOFOLLOW`, and `O_EXCL` for every file
//! we create; a link at `STEM.tmp` is unlinked, not followed), and the directory must be
//! private to the user unless `shared=true` (`config`).
//!
//! Files: `config` (URL, default directory, directory checks) · `grant` (the decisions
//! under the key's mutex, `LeaseOps`) · `wait` (waking waiters) · `state` · `naming` · `os`
//! · `error`.

mod config;
mod error;
mod grant;
mod naming;
pub(crate) mod os;
mod state;
mod wait;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

pub use config::{default_dir, FileConfig};

use crate::cleanup::Cleanups;
use crate::closing::CloseGate;
use crate::error::Result;
use crate::guarantees::{Exclusion, Guarantees, Scope, TokenOrder};
use crate::lease::{Lease, LeaseParts};
use crate::lock::DistributedLock;
use crate::options::{check_key_shape, validate_key, LockOptions};
use crate::token::{FencingToken, GrantId};
use crate::waiting::{acquire_with, Attempt};
pub(crate) use error::{io_error, BACKEND};
pub(crate) use grant::{blocking, KeyFiles};
use grant::{Decision, FileGrant};
use wait::{HolderWake, Subscription};

/// What the file backend promises.
pub const GUARANTEES: Guarantees = Guarantees {
    backend: "file",
    exclusion: Exclusion::Strict,
    tokens: TokenOrder::StrictlyMonotonic,
    scope: Scope::Host,
    assumptions: &[
        "all clients run on this host and share the directory on a local filesystem with working flock (NFS, SMB/CIFS, 9p, Ceph, AFS, Lustre, GPFS, GFS2 and OCFS2 are refused)",
        "tokens survive restarts and power loss (fsync) while the directory's state files are kept; durable=false keeps them only across process crashes",
        "nothing deletes the directory's files while processes use it: exclude it from /tmp cleaners (systemd-tmpfiles: an `x` line, docs/backends/file.md)",
    ],
};

/// How often a waiter re-checks a holder when no inotify watch can be set up.
const POLL_WITHOUT_WATCH: Duration = Duration::from_millis(50);

/// The file lock service over one directory.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> fencelock::Result<()> {
/// use fencelock::{file::FileLock, DistributedLock, LockOptions};
/// let dir = std::env::temp_dir().join(format!("fencelock-doc-{}", std::process::id()));
/// let locks = FileLock::open(&dir)?;
/// let lease = locks.acquire("nightly-backup", &LockOptions::new()).await?;
/// assert!(locks.try_acquire("nightly-backup", &LockOptions::new()).await?.is_none());
/// lease.release().await?;
/// # std::fs::remove_dir_all(&dir).ok(); Ok(()) }
/// ```
///
/// # Cancel safety
///
/// Every async method is cancel safe: each decision (grant, extend, release) runs to its
/// end in a blocking task even when the caller's future is dropped. A grant nobody claims
/// closes its liveness file there, which frees the key at once; a release dropped in
/// flight still completes; a dropped `acquire` removes its watch of the holder.
///
/// The operator tools [`remove_grant`](Self::remove_grant) and
/// [`records`](Self::records) are synchronous (a directory listing).
#[derive(Debug, Clone)]
pub struct FileLock {
    dir: Arc<PathBuf>,
    durable: bool,
    mode: u32,
    /// Liveness descriptors inheritable by children ([`FileConfig::inherit`]).
    inherit: bool,
    /// The file operations of this instance (and its clones) still running, and the
    /// background releases of its dropped leases.
    ops: Cleanups,
    /// Shut by [`close`](DistributedLock::close); shared by clones.
    gate: Arc<CloseGate>,
}

/// How long [`FileLock::close`] waits for running file operations: a decision waits at most
/// its mutex wait (2 s), then does a few writes.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

impl FileLock {
    /// Uses `dir` (created 0700 if missing) with durable state.
    ///
    /// # Errors
    /// `InvalidConfig` when `dir` is relative, cannot be created, is a symbolic link or not a
    /// directory, is owned by another user, or is writable by group or others (see
    /// [`FileConfig`]; `shared` relaxes the last two).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::connect_with(FileConfig::new(dir.as_ref()))
    }

    /// Uses `dir`; `durable = false` skips fsync (see [`FileConfig::durable`]). Errors as
    /// [`open`](Self::open).
    pub fn open_with(dir: &Path, durable: bool) -> Result<Self> {
        Self::connect_with(FileConfig {
            durable,
            ..FileConfig::new(dir)
        })
    }

    /// Uses the [`default_dir`]: `$TMPDIR/fencelock-UID` (`/tmp/fencelock-UID` without
    /// `TMPDIR`), the same for every process of the user. Errors as [`open`](Self::open).
    pub fn open_default() -> Result<Self> {
        Self::open(default_dir())
    }

    /// The default directory (see [`default_dir`]), for callers that build a URL from it.
    pub fn default_dir() -> PathBuf {
        default_dir()
    }

    /// Builds from a configuration, with the same checks as a URL. Errors as
    /// [`open`](Self::open).
    pub fn connect_with(config: FileConfig) -> Result<Self> {
        let config = config.normalised();
        config.prepare_dir()?;
        Ok(FileLock {
            dir: Arc::new(config.dir.clone()),
            durable: config.durable,
            mode: config.file_mode(),
            inherit: config.inherit,
            ops: Cleanups::new(),
            gate: Arc::default(),
        })
    }

    /// Builds from `file:///absolute/dir[?durable=true|false][&shared=true|false][&inherit=true|false]`
    /// (see [`FileConfig`]).
    ///
    /// # Errors
    /// `InvalidConfig` for a malformed URL or an unknown option, and as [`open`](Self::open).
    pub fn from_url(url: &str) -> Result<Self> {
        Self::connect_with(FileConfig::from_url(url)?)
    }

    /// The lock directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The instance's running file operations (see [`blocking`]).
    pub(crate) fn ops(&self) -> Cleanups {
        self.ops.clone()
    }

    pub(crate) fn files(&self, key: &str) -> KeyFiles {
        KeyFiles::new(&self.dir, key, self.durable, self.mode)
            .inheritable(self.inherit)
            .counted_in(&self.ops)
    }

    /// Breaks `key`'s lock by hand, as an operator would with `rm DIR/STEM.*.live`: removes
    /// the liveness file(s) of its holder, keeping the state file and its token counter.
    /// The key is free at once; the holder learns of it at its next extend or renewal
    /// (`LeaseLost`). Returns how many files were removed.
    ///
    /// Any key, an election's seat (`election.NAME`) included.
    ///
    /// # Errors
    /// `InvalidInput` for a key `validate_key` refuses for its shape (empty, too long, a
    /// control character); `Backend` when the directory cannot be listed or a file cannot
    /// be removed.
    pub fn remove_grant(&self, key: &str) -> Result<usize> {
        check_key_shape(key)?;
        let mut removed = 0;
        for path in self.files(key).live_files()? {
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(format!("cannot remove {}", path.display()), e)),
            }
        }
        Ok(removed)
    }

    /// How many files in the directory stand for a holder of `key` now (its liveness
    /// files; waiters leave no files); `0` when nobody holds it. The state and mutex files,
    /// which keep the token counter, are not counted.
    ///
    /// # Errors
    /// As [`remove_grant`](Self::remove_grant).
    pub fn records(&self, key: &str) -> Result<usize> {
        check_key_shape(key)?;
        Ok(self.files(key).live_files()?.len())
    }

    /// One attempt. Runs in a blocking task that completes even if the caller is dropped;
    /// an unclaimed grant closes its liveness file there, which frees the key at once.
    /// `watch` is the acquire's subscription to the holder it waits for (`None` for
    /// try_acquire, which never waits and so watches nothing).
    async fn attempt(
        &self,
        key: &str,
        opts: &LockOptions,
        watch: Option<&Mutex<Option<Arc<Subscription>>>>,
    ) -> Result<Attempt> {
        let ttl = opts.ttl();
        let files = self.files(key);
        let cached = watch.and_then(|w| lock(w).clone());
        let want_watch = watch.is_some();
        let outcome = blocking(&self.ops, move || {
            Ok(match files.try_grant(ttl)? {
                Decision::Granted {
                    grant,
                    token,
                    live,
                    valid_from,
                } => {
                    let ops = FileGrant::new(files, grant.clone(), live)?;
                    Ok((ops, grant, token, Instant::from_std(valid_from)))
                }
                Decision::Busy { live, expires_in } => {
                    let wake = want_watch.then(|| wait::watch_holder(&live, cached));
                    Err((wake, expires_in))
                }
            })
        })
        .await?;
        match outcome {
            Ok((ops, grant, token, sent_at)) => {
                tracing::debug!(key, %token, "granted");
                Ok(Attempt::Acquired(Lease::new(LeaseParts {
                    key: key.to_owned(),
                    token: FencingToken::new(token),
                    grant: GrantId::from_string(grant),
                    sent_at,
                    validity: ttl,
                    options: *opts,
                    ops: Arc::new(ops),
                })))
            }
            Err((wake, expires_in)) => {
                let now = Instant::now();
                let mut retry_at = now + expires_in;
                if let (Some(w), Some(wake)) = (watch, &wake) {
                    *lock(w) = match wake {
                        HolderWake::Watch(sub, _) => Some(Arc::clone(sub)),
                        _ => None,
                    };
                    if matches!(wake, HolderWake::Unavailable) {
                        retry_at = retry_at.min(now + POLL_WITHOUT_WATCH);
                    }
                }
                Ok(Attempt::Busy {
                    wake: wake.as_ref().and_then(HolderWake::future),
                    retry_at: Some(retry_at),
                })
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait]
impl DistributedLock for FileLock {
    #[tracing::instrument(level = "debug", skip(self, opts), fields(backend = "file"))]
    async fn try_acquire(&self, key: &str, opts: &LockOptions) -> Result<Option<Lease>> {
        self.gate
            .pass(async {
                validate_key(key)?;
                opts.validate_for_try()?;
                match self.attempt(key, opts, None).await? {
                    Attempt::Acquired(lease) => Ok(Some(lease.into_live_for_try()?)),
                    Attempt::Busy { .. } => Ok(None),
                }
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip(self, opts), fields(backend = "file"))]
    async fn acquire(&self, key: &str, opts: &LockOptions) -> Result<Lease> {
        // The holder watch is kept across attempts and dropped with the call (returned,
        // timed out or cancelled), which removes it and, if it was the last, ends the
        // helper thread.
        let watch = Mutex::new(None);
        let wait = acquire_with(key, opts, || self.attempt(key, opts, Some(&watch)));
        self.gate.pass(wait).await
    }

    fn guarantees(&self) -> Guarantees {
        GUARANTEES
    }

    fn describe(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    /// Shuts this instance and its clones (waiting acquires end with
    /// [`LockError::Closed`](crate::LockError::Closed), later calls fail with it), then
    /// waits (at most 5 s) until their file operations have ended — those of dropped
    /// acquires and releases go on in blocking threads — and the releases of leases
    /// dropped before it (counted from the drop: a lease dropped just before `close()` is
    /// released when it returns). Nothing else is closed: a file lock holds no
    /// connection, and leases still held stay held until released.
    /// Afterwards no thread of the instance holds a key's mutex, so the process may stop
    /// (`fencelock run` does on Ctrl-Z) without freezing the key for other processes.
    ///
    /// # Errors
    /// [`LockError::Unavailable`](crate::LockError::Unavailable) when some still ran after
    /// 5 s (a key's mutex held by a stopped process, a hung disk).
    ///
    /// # Cancel safety
    /// Cancel safe: the gate is shut before the first await; the rest only waits.
    async fn close(&self) -> Result<()> {
        let _closing = self.gate.close(CLOSE_WAIT).await;
        if self.ops.idle(CLOSE_WAIT).await {
            return Ok(());
        }
        Err(crate::error::LockError::Unavailable {
            message: format!(
                "file operations on {} still running after {CLOSE_WAIT:?} (a key's mutex held by a stopped process, or a hung disk?)",
                self.dir.display()
            ),
            source: None,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
