//! The file backend (`file:///DIR`): locks shared by the processes of one host.
//!
//! Choose it to serialise cron jobs, deploy scripts or workers on one machine without
//! running a server; it is the CLI's default. It needs a local filesystem with working
//! `flock` (not NFS).
//!
//! # How it works
//!
//! Each key has three kinds of files in `DIR`, named from the key (see `naming`):
//!
//! * `STEM.mutex` — flocked for the few microseconds of each decision, so the processes
//!   decide one at a time;
//! * `STEM.state` — the last token handed out and the holder (grant id, expiry on the
//!   host's monotonic clock, liveness file). Replaced atomically and fsynced, so tokens keep
//!   growing across restarts and power loss;
//! * `STEM.GRANT.live` — created and flocked by the holder for as long as it lives. When
//!   the holder crashes the kernel drops that flock, so its lock is free at once; when it
//!   releases, it unlocks the file, which also wakes every waiter blocked on it.
//!
//! A key is free when the state has no holder, the holder's expiry has passed (a holder
//! paused past its TTL loses the lock, as with every other backend), or nobody holds the
//! holder's liveness flock (it crashed). Waiters block on the holder's liveness file in a
//! helper thread — the kernel wakes them — and retry at the holder's expiry otherwise.
//!
//! URL: `file:///absolute/dir[?durable=false]`. `durable=false` skips fsync (tokens may go
//! back after a power loss, not after a process crash); use it only on tmpfs or in tests.

mod naming;
mod os;
mod state;

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{LockError, Result};
use crate::guarantees::{Exclusion, Guarantees, Scope, TokenOrder};
use crate::lease::{Lease, LeaseOps, LeaseParts};
use crate::lock::DistributedLock;
use crate::options::{validate_key, LockOptions};
use crate::token::{FencingToken, GrantId};
use crate::waiting::{acquire_with, Attempt, WakeFuture};
use state::{io_error, HolderRecord, KeyState, BACKEND};

/// What the file backend promises.
pub const GUARANTEES: Guarantees = Guarantees {
    backend: "file",
    exclusion: Exclusion::Strict,
    tokens: TokenOrder::StrictlyMonotonic,
    scope: Scope::Host,
    assumptions: &[
        "all clients run on this host and share the directory on a local filesystem with working flock (not NFS)",
        "tokens survive restarts and power loss (fsync) while the directory's state files are kept; durable=false keeps them only across process crashes",
    ],
};

/// The file lock service over one directory.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> fencelock_core::Result<()> {
/// use fencelock_core::{file::FileLock, DistributedLock, LockOptions};
/// let dir = std::env::temp_dir().join(format!("fencelock-doc-{}", std::process::id()));
/// let locks = FileLock::open(&dir)?;
/// let lease = locks.acquire("nightly-backup", &LockOptions::new()).await?;
/// assert!(locks.try_acquire("nightly-backup", &LockOptions::new()).await?.is_none());
/// lease.release().await?;
/// # std::fs::remove_dir_all(&dir).ok(); Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FileLock {
    dir: Arc<PathBuf>,
    durable: bool,
}

impl FileLock {
    /// Uses `dir` (created if missing) with durable state.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir.as_ref(), true)
    }

    /// Uses `dir`; `durable = false` skips fsync (see the module docs).
    pub fn open_with(dir: &Path, durable: bool) -> Result<Self> {
        if !dir.is_absolute() {
            return Err(LockError::invalid_config(format!(
                "lock directory `{}` must be an absolute path",
                dir.display()
            )));
        }
        fs::create_dir_all(dir).map_err(|e| LockError::InvalidConfig {
            message: format!("cannot create lock directory {}", dir.display()),
            source: Some(e.into()),
        })?;
        let meta = fs::metadata(dir).map_err(|e| io_error(format!("cannot read {}", dir.display()), e))?;
        if !meta.is_dir() {
            return Err(LockError::invalid_config(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        Ok(FileLock {
            dir: Arc::new(dir.to_owned()),
            durable,
        })
    }

    /// Builds from `file:///absolute/dir[?durable=true|false]`.
    pub fn from_url(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("file://")
            .ok_or_else(|| LockError::invalid_config(format!("`{url}` is not a file:// URL")))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if !path.starts_with('/') {
            return Err(LockError::invalid_config(format!(
                "`{url}`: a file URL needs an absolute path, e.g. file:///var/lock/myapp (three slashes)"
            )));
        }
        let mut durable = true;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("durable", "true")) => durable = true,
                Some(("durable", "false")) => durable = false,
                _ => {
                    return Err(LockError::invalid_config(format!(
                        "`{url}`: unknown option `{pair}` (the file backend takes durable=true|false)"
                    )))
                }
            }
        }
        Self::open_with(Path::new(path), durable)
    }

    /// The lock directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&KeyFiles) -> Result<T> + Send + 'static,
        key: &str,
    ) -> Result<T> {
        let files = KeyFiles::new(&self.dir, key, self.durable);
        match tokio::task::spawn_blocking(move || f(&files)).await {
            Ok(r) => r,
            Err(e) => Err(LockError::backend(BACKEND, "file operation task failed", e)),
        }
    }

    /// One attempt. Runs in a blocking task that completes even if the caller is dropped;
    /// an unclaimed grant closes its liveness file there, which frees the key at once.
    async fn attempt(&self, key: &str, opts: &LockOptions, waiter: &Mutex<Option<LiveWaiter>>) -> Result<Attempt> {
        let sent_at = Instant::now();
        let ttl = opts.ttl();
        let outcome = self.blocking(move |files| files.try_grant(ttl), key).await?;
        match outcome {
            Decision::Granted { grant, token, live } => {
                tracing::debug!(key, %token, "granted");
                let ops = Arc::new(FileGrant {
                    files: KeyFiles::new(&self.dir, key, self.durable),
                    grant: grant.clone(),
                    live: Mutex::new(Some(live)),
                });
                Ok(Attempt::Acquired(Lease::new(LeaseParts {
                    key: key.to_owned(),
                    token: FencingToken::new(token),
                    grant: GrantId::from_string(grant),
                    sent_at,
                    validity: ttl,
                    options: *opts,
                    ops,
                })))
            }
            Decision::Busy { live, expires_in } => {
                let mut waiter = match waiter.lock() {
                    Ok(w) => w,
                    Err(poisoned) => poisoned.into_inner(),
                };
                // One helper thread per holder we wait for, reused across retries.
                if waiter.as_ref().is_none_or(|w| w.path != live) {
                    *waiter = Some(LiveWaiter::start(live));
                }
                let wake = waiter.as_ref().map(LiveWaiter::wake);
                Ok(Attempt::Busy {
                    wake,
                    retry_at: Some(Instant::now() + expires_in),
                })
            }
        }
    }
}

#[async_trait]
impl DistributedLock for FileLock {
    #[tracing::instrument(level = "debug", skip(self, opts), fields(backend = "file"))]
    async fn try_acquire(&self, key: &str, opts: &LockOptions) -> Result<Option<Lease>> {
        validate_key(key)?;
        opts.validate_for_try()?;
        match self.attempt(key, opts, &Mutex::new(None)).await? {
            Attempt::Acquired(lease) => Ok(Some(lease.into_live()?)),
            Attempt::Busy { .. } => Ok(None),
        }
    }

    #[tracing::instrument(level = "debug", skip(self, opts), fields(backend = "file"))]
    async fn acquire(&self, key: &str, opts: &LockOptions) -> Result<Lease> {
        let waiter = Mutex::new(None);
        acquire_with(key, opts, || self.attempt(key, opts, &waiter)).await
    }

    fn guarantees(&self) -> Guarantees {
        GUARANTEES
    }

    fn describe(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}

/// The files of one key.
#[derive(Clone)]
struct KeyFiles {
    dir: PathBuf,
    stem: String,
    durable: bool,
}

enum Decision {
    Granted { grant: String, token: u64, live: File },
    Busy { live: PathBuf, expires_in: Duration },
}

impl KeyFiles {
    fn new(dir: &Path, key: &str, durable: bool) -> Self {
        KeyFiles {
            dir: dir.to_owned(),
            stem: naming::stem(key),
            durable,
        }
    }

    fn path(&self, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}.{suffix}", self.stem))
    }

    /// Runs `f` on the key's state while holding the key's mutex flock.
    fn locked<T>(&self, f: impl FnOnce(&mut KeyState) -> Result<(T, bool)>) -> Result<T> {
        let mutex_path = self.path("mutex");
        let mutex = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&mutex_path)
            .map_err(|e| io_error(format!("cannot open {}", mutex_path.display()), e))?;
        os::lock_exclusive(&mutex).map_err(|e| io_error(format!("cannot flock {}", mutex_path.display()), e))?;
        let state_path = self.path("state");
        let mut st = state::read(&state_path)?;
        let (value, changed) = f(&mut st)?;
        if changed {
            state::write(&self.dir, &state_path, &st, self.durable)?;
        }
        Ok(value)
        // `mutex` is closed here, which drops the flock.
    }

    /// `Some(holder)` when the recorded holder is live: not expired and its liveness file
    /// is flocked by someone.
    fn live_holder(&self, st: &KeyState) -> Result<Option<(PathBuf, Duration)>> {
        let Some(h) = &st.holder else { return Ok(None) };
        let now = os::mono_ns();
        if h.expires_mono_ns <= now {
            return Ok(None);
        }
        let live = self.dir.join(&h.live);
        let alive = os::held_by_someone(&live).map_err(|e| io_error(format!("cannot check {}", live.display()), e))?;
        Ok(alive.then(|| (live, Duration::from_nanos(h.expires_mono_ns - now))))
    }

    fn try_grant(&self, ttl: Duration) -> Result<Decision> {
        self.locked(|st| {
            if let Some((live, expires_in)) = self.live_holder(st)? {
                return Ok((Decision::Busy { live, expires_in }, false));
            }
            let token = st.last_token.checked_add(1).ok_or_else(|| {
                LockError::backend(
                    BACKEND,
                    "token counter exhausted",
                    std::io::Error::other("u64 overflow"),
                )
            })?;
            let grant = GrantId::random().to_string();
            let live_name = format!("{}.{grant}.live", self.stem);
            let live_path = self.dir.join(&live_name);
            let live = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&live_path)
                .map_err(|e| io_error(format!("cannot create {}", live_path.display()), e))?;
            let locked = os::try_lock_exclusive(&live)
                .map_err(|e| io_error(format!("cannot flock {}", live_path.display()), e))?;
            if !locked {
                let _ = fs::remove_file(&live_path);
                return Err(LockError::backend(
                    BACKEND,
                    "a new liveness file was already locked",
                    std::io::Error::other(live_name),
                ));
            }
            let stale = st.holder.take();
            st.last_token = token;
            let expires_mono_ns = os::mono_ns().saturating_add(ttl.as_nanos().min(u64::MAX as u128) as u64);
            st.holder = Some(HolderRecord {
                grant: grant.clone(),
                expires_mono_ns,
                live: live_name,
            });
            if let Some(stale) = stale {
                let _ = fs::remove_file(self.dir.join(stale.live));
            }
            Ok((Decision::Granted { grant, token, live }, true))
        })
    }

    fn extend(&self, grant: &str, ttl: Duration) -> Result<Option<Duration>> {
        self.locked(|st| match st.holder.as_mut() {
            Some(h) if h.grant == grant && h.expires_mono_ns > os::mono_ns() => {
                h.expires_mono_ns = os::mono_ns().saturating_add(ttl.as_nanos().min(u64::MAX as u128) as u64);
                Ok((Some(ttl), true))
            }
            _ => Ok((None, false)),
        })
    }

    fn release(&self, grant: &str) -> Result<bool> {
        self.locked(|st| match &st.holder {
            Some(h) if h.grant == grant => {
                let was_live = h.expires_mono_ns > os::mono_ns();
                let live = self.dir.join(&h.live);
                st.holder = None;
                let _ = fs::remove_file(live);
                Ok((was_live, true))
            }
            _ => Ok((false, false)),
        })
    }
}

/// One grant: its id and the open, flocked liveness file.
struct FileGrant {
    files: KeyFiles,
    grant: String,
    live: Mutex<Option<File>>,
}

#[async_trait]
impl LeaseOps for FileGrant {
    async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
        let files = self.files.clone();
        let grant = self.grant.clone();
        match tokio::task::spawn_blocking(move || files.extend(&grant, ttl)).await {
            Ok(r) => r,
            Err(e) => Err(LockError::backend(BACKEND, "file operation task failed", e)),
        }
    }

    async fn release(&self) -> Result<bool> {
        let files = self.files.clone();
        let grant = self.grant.clone();
        let result = match tokio::task::spawn_blocking(move || files.release(&grant)).await {
            Ok(r) => r,
            Err(e) => Err(LockError::backend(BACKEND, "file operation task failed", e)),
        };
        // Closing the liveness file drops its flock: waiters blocked on it wake up.
        let live = match self.live.lock() {
            Ok(mut l) => l.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        drop(live);
        result
    }
}

/// A helper thread blocked on a holder's liveness file; signals when the holder releases
/// or dies. A plain thread, not a runtime blocking task, so a runtime shutting down never
/// waits for another process to release.
struct LiveWaiter {
    path: PathBuf,
    freed: watch::Receiver<bool>,
}

impl LiveWaiter {
    fn start(path: PathBuf) -> Self {
        let (tx, freed) = watch::channel(false);
        let p = path.clone();
        let spawned = std::thread::Builder::new()
            .name("fencelock-file-wait".into())
            .spawn(move || {
                os::wait_until_free(&p);
                let _ = tx.send(true);
            });
        if spawned.is_err() {
            tracing::warn!("cannot start a wait thread; waiting for the holder's expiry instead");
        }
        LiveWaiter { path, freed }
    }

    fn wake(&self) -> WakeFuture {
        let mut rx = self.freed.clone();
        Box::pin(async move {
            if rx.wait_for(|freed| *freed).await.is_err() {
                // The thread could not start or ended without a signal: wait for retry_at.
                std::future::pending::<()>().await;
            }
        })
    }
}
