//! Granting, extending and releasing one key: the decisions made under the key's mutex
//! flock, and the `LeaseOps` of a grant.

use std::cell::Cell;
use std::fs::{self, File};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::error::{io_error, BACKEND};
use super::state::{self, HolderRecord, KeyState};
use super::{naming, os};
use crate::cleanup::{CleanupGuard, Cleanups};
use crate::error::{LockError, Result};
use crate::lease::LeaseOps;
use crate::token::GrantId;

/// The files of one key, and how to write them.
#[derive(Clone)]
pub(crate) struct KeyFiles {
    dir: Arc<PathBuf>,
    stem: String,
    durable: bool,
    /// The mode of files this process creates: 0600, or 0660 in a shared directory.
    mode: u32,
    /// Liveness descriptors without close-on-exec (see `FileConfig::inherit`).
    inherit: bool,
    /// The owning instance's running operations and background releases (see
    /// [`blocking`]).
    pub(crate) ops: Cleanups,
}

/// A key's files found by listing the directory ([`KeyFiles::listed`]).
#[derive(Default)]
struct Listed {
    /// Its liveness files, `STEM.GRANT.live`.
    live: Vec<PathBuf>,
    /// Its file election's value records, `STEM.GRANT.leader`.
    records: Vec<PathBuf>,
}

/// A key's mutex, open and flocked ([`KeyFiles::lock_key_mutex`]).
struct KeyMutex {
    file: File,
    /// Why it could not be opened for writing, when it is open read-only: then this
    /// process cannot keep the copy of the counter, and may not grant.
    read_only: Option<std::io::Error>,
}

/// A live holder of a key, as [`KeyFiles::live_holder`] finds it.
struct LiveHolder {
    /// Its liveness file.
    live: PathBuf,
    /// How long until its expiry.
    left: Duration,
    /// Its grant's token.
    token: u64,
}

/// The outcome of one attempt.
pub(crate) enum Decision {
    /// Ours: the grant id, its token, the open, flocked liveness file, and the instant the
    /// grant took effect — after the mutex wait and the durable write of the state, so that
    /// local latency (a saturated disk) is not counted against the lease's validity.
    Granted {
        grant: String,
        token: u64,
        live: File,
        valid_from: std::time::Instant,
    },
    /// Held by a live holder whose liveness file is `live`, for `expires_in` at most.
    Busy { live: PathBuf, expires_in: Duration },
}

fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

impl KeyFiles {
    pub(crate) fn new(dir: &Arc<PathBuf>, key: &str, durable: bool, mode: u32) -> Self {
        KeyFiles {
            dir: Arc::clone(dir),
            stem: naming::stem(key),
            durable,
            mode,
            inherit: false,
            ops: Cleanups::new(),
        }
    }

    /// Counts this key's operations in `ops` (the instance's).
    pub(crate) fn counted_in(mut self, ops: &Cleanups) -> Self {
        self.ops = ops.clone();
        self
    }

    /// With `inherit`, each liveness file this process creates is left open across `exec`:
    /// a child started after the grant shares its open file, hence its flock.
    pub(crate) fn inheritable(mut self, inherit: bool) -> Self {
        self.inherit = inherit;
        self
    }

    /// The key's file `STEM.SUFFIX` (`mutex`, `state`, or `GRANT.leader` for the election).
    pub(crate) fn path(&self, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}.{suffix}", self.stem))
    }

    /// Replaces this key's file `STEM.NAME` (`state`, or `GRANT.leader` for the election)
    /// with `bytes` ([`os::replace`]): through the key's one new file `STEM.tmp`, with this
    /// directory's file mode whatever the umask, and errors temporary or permanent by
    /// their OS error.
    ///
    /// Only ever called under the key's mutex flock — from [`locked_then`](Self::locked_then)
    /// for the state, from [`replace_if_holder`](Self::replace_if_holder) for the
    /// election's records — which is what makes the fixed name of the new file safe: no two
    /// writers of a key are ever between its create and its rename at once, so a file
    /// found there is a killed writer's, and the next write removes it.
    fn replace(&self, name: &str, bytes: &[u8], durable: bool) -> Result<()> {
        let (path, tmp) = (self.path(name), self.tmp_path());
        os::replace(&self.dir, &path, &tmp, bytes, durable, self.mode).map_err(|e| {
            io_error(
                format!("cannot write {} (through {})", path.display(), tmp.display()),
                e,
            )
        })
    }

    /// The new file of every replacement of this key's files: `STEM.tmp`. One name for the
    /// state and the election's records alike, so a leftover of either is removed by the
    /// key's next write of any kind. No other file of any key has this name: every other
    /// name of the backend ends in `.mutex`, `.state`, `.live` or `.leader`.
    pub(crate) fn tmp_path(&self) -> PathBuf {
        self.path("tmp")
    }

    /// Replaces `STEM.NAME` with `bytes` (as [`replace`](Self::replace), without fsync) if
    /// `grant` is the key's live holder, checked and written under one hold of the key's
    /// mutex; `false`, and nothing written, otherwise. For the election's value records:
    /// they are written under the mutex as the state is, which the new file's fixed name
    /// needs (see [`replace`](Self::replace)).
    pub(crate) fn replace_if_holder(&self, grant: &str, name: &str, bytes: &[u8]) -> Result<bool> {
        self.locked(|st| {
            let live = self.live_holder(st)?.is_some();
            let ours = live && st.holder.as_ref().is_some_and(|h| h.grant == grant);
            if ours {
                self.replace(name, bytes, false)?;
            }
            Ok((ours, false))
        })
    }

    /// What a writer killed (SIGKILL, power loss) inside [`replace`](Self::replace) leaves:
    /// under the key's mutex, the new file made by the same first step
    /// ([`os::new_temp`]), then closed as the kernel closes a dead process's files, and
    /// never renamed or removed. `name` is the file the writer was replacing.
    #[cfg(test)]
    pub(crate) fn crash_while_replacing(&self, name: &str) -> Result<()> {
        self.locked(|_| {
            let made = os::new_temp(&self.tmp_path(), self.mode)
                .map_err(|e| io_error(format!("cannot write {}", self.path(name).display()), e))?;
            drop(made);
            Ok(((), false))
        })
    }

    /// The liveness files of this key now in the directory.
    pub(crate) fn live_files(&self) -> Result<Vec<PathBuf>> {
        Ok(self.listed()?.live)
    }

    /// This key's liveness files and election value records now in the directory, from
    /// one listing.
    fn listed(&self) -> Result<Listed> {
        #[cfg(test)]
        LISTINGS.with(|n| n.set(n.get() + 1));
        let cannot_list = |e| io_error(format!("cannot list {}", self.dir.display()), e);
        let mut found = Listed::default();
        for entry in fs::read_dir(&*self.dir).map_err(cannot_list)? {
            let entry = entry.map_err(cannot_list)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if naming::is_live_file_of(&self.stem, name) {
                found.live.push(entry.path());
            } else if naming::grant_of_leader_record(&self.stem, name).is_some() {
                found.records.push(entry.path());
            }
        }
        Ok(found)
    }

    /// Runs `f` on the key's state while holding the key's mutex flock; writes the state
    /// back when `f` says it changed.
    fn locked<T>(&self, f: impl FnOnce(&mut KeyState) -> Result<(T, bool)>) -> Result<T> {
        self.locked_then(f, |value| Ok(value))
    }

    /// As [`locked`](Self::locked), then `then` on the outcome after the state is written,
    /// still under the mutex: what no other process may see before it is done.
    ///
    /// A decision that hands out a token (raises the counter) also writes the mutex's copy
    /// of it, or fails: with the mutex open read-only, with `InvalidConfig` before anything
    /// is written ([`read_only_mutex`](Self::read_only_mutex)); when the copy's write fails,
    /// with that error (the token, in the state only, is never handed out).
    fn locked_then<T, U>(
        &self,
        f: impl FnOnce(&mut KeyState) -> Result<(T, bool)>,
        then: impl FnOnce(T) -> Result<U>,
    ) -> Result<U> {
        let mut mutex = self.lock_key_mutex()?;
        let copy = self.counter_copy(&mutex.file);
        let copied = copy.unwrap_or(0);
        let (mut st, repair) = match state::read(&self.path("state"), &self.stem)? {
            Some(st) if st.last_token >= copied => (st, false),
            stored => (self.restored(stored, copied)?, true),
        };
        let before = st.last_token;
        let (value, changed) = f(&mut st)?;
        let handed_out = st.last_token > before;
        if handed_out {
            // Before the state's write: a token this process could not copy is never
            // handed out (see `read_only_mutex`).
            if let Some(why) = mutex.read_only.take() {
                return Err(self.read_only_mutex(why));
            }
        }
        if changed || repair {
            // A repair (a state restored from the mutex's copy or the liveness files) is
            // written back so that the next decision needs no listing; when only a repair
            // is due, a failed write costs that and nothing else.
            match self.replace("state", &state::encode(&st)?, self.durable) {
                Err(e) if changed => return Err(e),
                Err(e) => tracing::debug!(stem = %self.stem, error = %e, "cannot write back the key's restored state"),
                Ok(()) => {}
            }
        }
        if mutex.read_only.is_none() && copy.is_none_or(|c| c < st.last_token) {
            // After the state's write, so the copy never runs ahead of a token that was
            // not handed out (a restored counter is no such token: it comes from the files of grants).
            // A new token's copy must be written, or a state file deleted later would be
            // restored without it and the token handed out again: the grant fails (its
            // token, written to the state only, is never handed out). A copy behind (a
            // mutex made again) or garbled is put right by any decision, best effort.
            let mutex_path = self.path("mutex");
            match os::write_record(&mutex.file, 0, st.last_token) {
                Err(e) if handed_out => {
                    return Err(io_error(
                        format!(
                            "cannot write the copy of the token counter into {}",
                            mutex_path.display()
                        ),
                        e,
                    ))
                }
                Err(e) => {
                    tracing::debug!(mutex = %mutex_path.display(), error = %e, "cannot put right the copy of the token counter")
                }
                Ok(()) => {}
            }
        }
        then(value)
        // `mutex` is closed here, which drops the flock.
    }

    /// The mutex's copy of the counter: `Some(0)` for a mutex never written (a key's first,
    /// or one only older versions used). `None` when it holds anything else (garbled, cut
    /// short) or cannot be read: no information — the state file is the record — but
    /// logged as a warning naming the file, because with the state file missing too the
    /// counter then rests on the key's liveness files and election records alone. A
    /// writable mutex gets its copy back in the same decision, so the warning comes once.
    fn counter_copy(&self, mutex: &File) -> Option<u64> {
        let why = match os::read_counter_copy(mutex) {
            Ok(os::CounterCopy::Counter(copied)) => return Some(copied),
            Ok(os::CounterCopy::Empty) => return Some(0),
            Ok(os::CounterCopy::NotARecord) => {
                "it holds something that is not a copy of the counter (garbled or cut short)".to_owned()
            }
            Err(e) => format!("it cannot be read ({e})"),
        };
        tracing::warn!(
            mutex = %self.path("mutex").display(),
            "the key's mutex is to keep a copy of its token counter, but {why}; it is ignored, and written again from the state file if this process can write the mutex. Did something write into the lock directory? If the state file is missing too, the counter is restored from the key's liveness files and election records alone"
        );
        None
    }

    /// The error of a grant refused because the key's mutex could be opened only read-only
    /// (`why`: `EACCES`, `EPERM`, `EROFS`). Such a process cannot keep the mutex's copy of
    /// the counter, and the liveness files cannot stand in for it: a released grant's file
    /// is removed, so after the state file is deleted nothing would remember its token and
    /// it would be handed out again. A lock that hands out a repeated token without a word
    /// breaks fencing, so the grant is refused, naming the file and the fix.
    fn read_only_mutex(&self, why: std::io::Error) -> LockError {
        let mutex = self.path("mutex");
        LockError::InvalidConfig {
            message: format!(
                "refusing to grant: this process can open the key's mutex {m} only read-only ({why}), so it cannot keep the mutex's copy of the token counter that restores the counter if the state file is lost, and tokens could repeat. Make it writable for every user of the lock directory: its owner (or root) runs `chmod 660 {m}` (`chmod 600` in a private directory); on a read-only filesystem, choose a writable lock directory",
                m = mutex.display()
            ),
            source: Some(Box::new(why)),
        }
    }

    /// Opens the key's mutex `STEM.mutex` and flocks it (waiting at most [`MUTEX_WAIT`]),
    /// then checks that the file locked is still the one at that name: same device and
    /// inode, still linked. A mutex unlinked between the open and the flock (a /tmp
    /// cleaner ageing out a file nobody writes, an operator's `rm`) is an orphan: another
    /// process makes a new one at the name and locks that, and two decisions would run at
    /// once. Then the orphan is dropped and the file now at the name opened, at most
    /// [`MUTEX_REOPENS`] times in a row.
    fn lock_key_mutex(&self) -> Result<KeyMutex> {
        let mutex_path = self.path("mutex");
        for _ in 0..MUTEX_REOPENS {
            let os::Opened { file: mutex, read_only } = os::open_or_create(&mutex_path, self.mode)
                .map_err(|e| io_error(format!("cannot open {}", mutex_path.display()), e))?;
            #[cfg(test)]
            between_open_and_lock(&mutex_path);
            lock_mutex(&mutex).map_err(|e| io_error(format!("cannot flock {}", mutex_path.display()), e))?;
            let current = os::still_at(&mutex, &mutex_path)
                .map_err(|e| io_error(format!("cannot check {}", mutex_path.display()), e))?;
            if current {
                // Its times say the key is in use, for age cleaners; a failure (a shared
                // directory's file of another owner without write permission) costs
                // nothing else.
                let _ = os::touch_open(&mutex);
                return Ok(KeyMutex { file: mutex, read_only });
            }
        }
        Err(LockError::backend(
            BACKEND,
            format!(
                "cannot lock {}: it was removed or replaced between its open and its flock {MUTEX_REOPENS} times in a row; something deletes the lock directory's files (exclude the directory from cleaners: docs/backends/file.md)",
                mutex_path.display()
            ),
            std::io::Error::other("mutex replaced"),
        ))
    }

    /// The key's state when its file is missing (`stored` is `None`) or behind `copied`, the
    /// mutex's copy of the counter (restored from an older copy). A state file deleted (by
    /// a /tmp cleaner: a holder renewing for days writes only its liveness file, so the
    /// state ages first; or by hand) takes the token counter with it: it is restored as the
    /// highest of the mutex's copy, the tokens written in the key's liveness files, live
    /// or left by dead holders (each grant writes its token into its own, see
    /// [`os::write_token`]), and the terms in a file election's value records (the last
    /// leader's stays after it resigns, see [`state::leader_record_term`]), so that tokens
    /// keep growing: a counter restarted at 1 let a paused old holder's token beat the new
    /// holder's at any fencing store. A flocked
    /// liveness file is a live holder: the state names it, with the expiry it last wrote
    /// (none written: no expiry), so that the key stays its own until it releases, dies or
    /// expires, instead of going to a second holder at once — also when an older state
    /// names an older holder. Lists the directory, so only a key without a state file (or
    /// with one behind) pays for it, once: the caller writes the state back.
    fn restored(&self, stored: Option<KeyState>, copied: u64) -> Result<KeyState> {
        let mut st = KeyState::default();
        let listed = self.listed()?;
        for live in listed.live {
            let Some(name) = live.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(grant) = naming::grant_of_live_file(&self.stem, name) else {
                continue;
            };
            let cannot_check = |e| io_error(format!("cannot check {}", live.display()), e);
            let (expires, token) = match os::read_live(&live).map_err(cannot_check)? {
                os::Liveness::Held { expires_mono_ns, token } => (Some(expires_mono_ns.unwrap_or(u64::MAX)), token),
                // A dead holder's leftover: its token still counts.
                os::Liveness::Gone => (None, os::read_token(&live).map_err(cannot_check)?),
            };
            st.last_token = st.last_token.max(token.unwrap_or(0));
            if let Some(expires) = expires {
                if st.holder.as_ref().is_none_or(|h| h.expires_mono_ns < expires) {
                    st.holder = Some(HolderRecord {
                        grant: grant.to_owned(),
                        expires_mono_ns: expires,
                        live: name.to_owned(),
                    });
                }
            }
        }
        for record in listed.records {
            // A file election's value record (`STEM.GRANT.leader`) carries its grant's
            // term, a token handed out, and outlives its leader: with the mutex's copy lost
            // as well (garbled, or deleted with the state), it is what remembers the last
            // leader's term once its liveness file is gone.
            match state::leader_record_term(&record) {
                Ok(term) => st.last_token = st.last_token.max(term.unwrap_or(0)),
                Err(e) => {
                    tracing::warn!(record = %record.display(), error = %e, "cannot read the term of an election's value record while restoring the key's counter; it is left out")
                }
            }
        }
        let missing = stored.is_none();
        if let Some(old) = stored {
            st.last_token = st.last_token.max(old.last_token);
            if st.holder.is_none() {
                st.holder = old.holder;
            }
        }
        st.last_token = st.last_token.max(copied);
        if !missing || st.last_token > 0 || st.holder.is_some() {
            tracing::warn!(
                stem = %self.stem,
                dir = %self.dir.display(),
                token = st.last_token,
                holder = ?st.holder.as_ref().map(|h| &h.live),
                "the key's state file is {}; its token counter and holder are restored from the lock files (was the lock directory cleaned, or the state restored from a backup?)",
                if missing { "missing" } else { "behind the copy of its counter in its mutex" }
            );
        }
        Ok(st)
    }

    /// The recorded holder when it is live: not expired, and its liveness file flocked by
    /// someone (not crashed, not removed by hand).
    fn live_holder(&self, st: &KeyState) -> Result<Option<LiveHolder>> {
        let Some(h) = &st.holder else { return Ok(None) };
        let live = self.dir.join(&h.live);
        let liveness = os::read_live(&live).map_err(|e| io_error(format!("cannot check {}", live.display()), e))?;
        let os::Liveness::Held { expires_mono_ns, token } = liveness else {
            return Ok(None);
        };
        let expires = expires_mono_ns.unwrap_or(h.expires_mono_ns);
        let now = os::mono_ns();
        Ok((expires > now).then(|| LiveHolder {
            live,
            left: Duration::from_nanos(expires - now),
            // The last token handed out is the holder's: no grant comes after a live one.
            // Its own record says so too (absent in files of older versions).
            token: token.unwrap_or(st.last_token),
        }))
    }

    /// The expiry of `h` now: the one its holder last wrote into its liveness file (by
    /// `extend`), else the one recorded at the grant. An error reading the file (out of
    /// descriptors or memory) is returned, as [`live_holder`](Self::live_holder) does:
    /// taking the grant-time expiry instead ended a renewed grant for good (extend said
    /// "not held", release "not ours") on a passing EMFILE.
    fn expiry(&self, h: &HolderRecord) -> Result<u64> {
        let live = self.dir.join(&h.live);
        match os::read_live(&live).map_err(|e| io_error(format!("cannot check {}", live.display()), e))? {
            os::Liveness::Held {
                expires_mono_ns: Some(at),
                ..
            } => Ok(at),
            _ => Ok(h.expires_mono_ns),
        }
    }

    /// How long the live holder's recorded expiry is from now, if there is one (tests).
    #[cfg(test)]
    pub(crate) fn expires_in(&self) -> Result<Option<Duration>> {
        self.locked(|st| Ok((self.live_holder(st)?.map(|h| h.left), false)))
    }

    /// The live holder's grant id and token, if any (for the file election, which must
    /// compare grants, not merely see that the key is taken).
    pub(crate) fn live_grant(&self) -> Result<Option<(String, u64)>> {
        self.locked(|st| {
            let live = self.live_holder(st)?;
            let grant = st.holder.as_ref().map(|h| h.grant.clone());
            Ok((live.zip(grant).map(|(live, grant)| (grant, live.token)), false))
        })
    }

    /// The key's file stem in the directory (for files kept beside the key's, like the
    /// election's value records).
    pub(crate) fn stem(&self) -> &str {
        &self.stem
    }

    /// One grant decision. The expiry recorded in the state is stamped before its durable
    /// write; once written, the expiry is stamped again, from now, into our liveness file
    /// (which readers prefer), so the validity counts from when the grant took effect.
    ///
    /// An attempt that fails after creating its liveness file (the state write failed: a
    /// full disk, out of descriptors) removes that file: nobody will ever hold or release
    /// it, and `records` would count it as a holder for good.
    pub(crate) fn try_grant(&self, ttl: Duration) -> Result<Decision> {
        let created: Cell<Option<PathBuf>> = Cell::new(None);
        let decided = self.try_grant_noting(ttl, &created);
        if decided.is_err() {
            if let Some(live_path) = created.take() {
                // The decision and its open file were dropped already, so no flock of
                // ours keeps the file. The state may name it (the write went through and
                // only its fsync or the expiry stamp failed): a missing liveness file
                // reads as a holder gone, so the key stays free either way.
                let _ = fs::remove_file(live_path);
            }
        }
        decided
    }

    /// [`try_grant`](Self::try_grant), noting in `created` the liveness file it creates.
    fn try_grant_noting(&self, ttl: Duration, created: &Cell<Option<PathBuf>>) -> Result<Decision> {
        self.locked_then(
            |st| {
                if let Some(holder) = self.live_holder(st)? {
                    let (live, expires_in) = (holder.live, holder.left);
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
                let live_name = naming::live_file(&self.stem, &grant);
                let live_path = self.dir.join(&live_name);
                let live = os::create_new(&live_path, self.mode)
                    .map_err(|e| io_error(format!("cannot create {}", live_path.display()), e))?;
                created.set(Some(live_path.clone()));
                os::write_token(&live, token)
                    .map_err(|e| io_error(format!("cannot write {}", live_path.display()), e))?;
                let locked = os::try_lock_exclusive(&live)
                    .map_err(|e| io_error(format!("cannot flock {}", live_path.display()), e))?;
                if !locked {
                    return Err(LockError::backend(
                        BACKEND,
                        "a new liveness file was already locked",
                        std::io::Error::other(live_name),
                    ));
                }
                if self.inherit {
                    rustix::io::fcntl_setfd(&live, rustix::io::FdFlags::empty())
                        .map_err(|e| io_error(format!("cannot make {} inheritable", live_path.display()), e.into()))?;
                }
                let stale = st.holder.take();
                st.last_token = token;
                st.holder = Some(HolderRecord {
                    grant: grant.clone(),
                    expires_mono_ns: os::mono_ns().saturating_add(ns(ttl)),
                    live: live_name,
                });
                if let Some(stale) = stale {
                    let _ = fs::remove_file(self.dir.join(stale.live));
                }
                let valid_from = std::time::Instant::now(); // stamped again after the write
                Ok((
                    Decision::Granted {
                        grant,
                        token,
                        live,
                        valid_from,
                    },
                    true,
                ))
            },
            |mut decision| {
                if let Decision::Granted {
                    grant,
                    live,
                    valid_from,
                    ..
                } = &mut decision
                {
                    // `valid_from` is read before the expiry's clock, so the lease never
                    // outlives the recorded expiry.
                    *valid_from = std::time::Instant::now();
                    let expires = os::mono_ns().saturating_add(ns(ttl));
                    os::write_expiry(live, expires)
                        .map_err(|e| io_error(format!("cannot write the liveness file of grant {grant}"), e))?;
                }
                Ok(decision)
            },
        )
    }

    /// `true` when the state names `grant` as holder and its liveness file is still the
    /// one we created (`live_id`): an operator's `rm` of it removed the grant.
    fn is_ours(&self, h: &HolderRecord, grant: &str, live_id: (u64, u64)) -> Result<bool> {
        if h.grant != grant {
            return Ok(false);
        }
        let live = self.dir.join(&h.live);
        let id = os::path_id(&live).map_err(|e| io_error(format!("cannot check {}", live.display()), e))?;
        Ok(id == Some(live_id))
    }

    /// Extends our grant to `ttl` from now; `None` when it is not ours any more (expired,
    /// taken over, or removed by hand). The new expiry goes into our own liveness file
    /// `live`, not the state file: it matters only while we live (a crash ends the grant
    /// through the flock whatever the file says), so a renewal costs no fsync — the durable
    /// state, with the token counter, is replaced only by grants and releases; an extend
    /// only sets its times to now, so that age cleaners do not take it for unused.
    fn extend(&self, grant: &str, live_id: (u64, u64), live: &File, ttl: Duration) -> Result<Option<Duration>> {
        self.locked(|st| {
            let now = os::mono_ns();
            match st.holder.as_ref() {
                Some(h) if self.expiry(h)? > now && self.is_ours(h, grant, live_id)? => {
                    os::write_expiry(live, now.saturating_add(ns(ttl)))
                        .map_err(|e| io_error(format!("cannot write {}", self.dir.join(&h.live).display()), e))?;
                    // The state file is not rewritten, so its times would stay those of the
                    // grant: a holder renewing for days would have it removed by an age
                    // cleaner. A failure here costs the renewal nothing (a deleted state
                    // is also caught by `restored`).
                    let _ = os::touch(&self.path("state"));
                    Ok((Some(ttl), false))
                }
                _ => Ok((None, false)),
            }
        })
    }

    /// Releases our grant: clears the holder and removes our liveness file. `true` when
    /// the grant was still ours and valid. Another holder's grant is never touched.
    fn release(&self, grant: &str, live_id: (u64, u64)) -> Result<bool> {
        self.locked(|st| match &st.holder {
            Some(h) if h.grant == grant => {
                let was_live = self.expiry(h)? > os::mono_ns() && self.is_ours(h, grant, live_id)?;
                let live = self.dir.join(&h.live);
                if os::path_id(&live).ok().flatten() == Some(live_id) {
                    let _ = fs::remove_file(live);
                }
                st.holder = None;
                Ok((was_live, true))
            }
            _ => Ok((false, false)),
        })
    }
}

/// How long one decision waits for the key's mutex flock. A live process holds it for one
/// decision: a grant or a release (two fsyncs: milliseconds, up to a few hundred on a
/// saturated disk) or an extend (a read and a 21-byte write). A process stopped while it
/// holds it (SIGSTOP, a debugger) would otherwise block every other process of the key,
/// and the thread waiting in `flock`, until it continues or dies.
const MUTEX_WAIT: Duration = Duration::from_secs(2);
/// The first pause between attempts on a busy mutex; it doubles up to [`MUTEX_PAUSE_MAX`].
const MUTEX_PAUSE_FIRST: Duration = Duration::from_micros(200);
const MUTEX_PAUSE_MAX: Duration = Duration::from_millis(20);
/// How many times in a row a decision opens the key's mutex again after finding the one it
/// locked removed or replaced (see [`KeyFiles::lock_key_mutex`]).
const MUTEX_REOPENS: usize = 4;

/// Takes the key's mutex flock, waiting at most [`MUTEX_WAIT`]: then a `TimedOut` error
/// (temporary: an acquire retries it while its wait lasts). Non-blocking attempts with a
/// doubling pause, because a blocking `flock` cannot be given a timeout.
fn lock_mutex(mutex: &File) -> std::io::Result<()> {
    let start = std::time::Instant::now();
    let mut pause = MUTEX_PAUSE_FIRST;
    loop {
        if os::try_lock_exclusive(mutex)? {
            return Ok(());
        }
        if start.elapsed() >= MUTEX_WAIT {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the key's mutex has been held by another process for {MUTEX_WAIT:?} (stopped, or hung in a disk write?); it is freed when that process continues or dies"
                ),
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(MUTEX_PAUSE_MAX);
    }
}

#[cfg(test)]
thread_local! {
    /// How many times this thread listed the lock directory for a key's liveness files.
    static LISTINGS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A hook of [`BETWEEN_OPEN_AND_LOCK`], given the mutex's path.
#[cfg(test)]
type MutexHook = Box<dyn FnMut(&std::path::Path)>;

#[cfg(test)]
thread_local! {
    /// Test seam: run on this thread between opening a key's mutex and flocking it, to play
    /// what another process or a cleaner does in that window (unlink the mutex, make a new
    /// one and lock it).
    static BETWEEN_OPEN_AND_LOCK: std::cell::RefCell<Option<MutexHook>> = const { std::cell::RefCell::new(None) };
}

/// Runs the [`BETWEEN_OPEN_AND_LOCK`] hook of this thread, if one is set.
#[cfg(test)]
fn between_open_and_lock(mutex_path: &std::path::Path) {
    // Taken out while it runs, so that a hook may itself make decisions on a key.
    if let Some(mut hook) = BETWEEN_OPEN_AND_LOCK.with(|h| h.borrow_mut().take()) {
        hook(mutex_path);
        BETWEEN_OPEN_AND_LOCK.with(|h| *h.borrow_mut() = Some(hook));
    }
}

/// One grant: its id and the open, flocked liveness file.
pub(crate) struct FileGrant {
    pub(crate) files: KeyFiles,
    pub(crate) grant: String,
    /// The liveness file's identity, to tell it from a file put in its place.
    pub(crate) live_id: (u64, u64),
    pub(crate) live: Mutex<Option<Arc<File>>>,
}

impl FileGrant {
    pub(crate) fn new(files: KeyFiles, grant: String, live: File) -> Result<Self> {
        let live_id = os::file_id(&live).map_err(|e| io_error("cannot stat a liveness file".into(), e))?;
        Ok(FileGrant {
            files,
            grant,
            live_id,
            live: Mutex::new(Some(Arc::new(live))),
        })
    }
}

/// Runs `f` in a blocking task, which completes even if the caller is dropped; counted in
/// `ops` — the clean-ups of one `FileLock`, shared by its clones, grants and elections,
/// which `close` waits for — until it has, its answer included (dropped there when the
/// caller is gone).
pub(crate) async fn blocking<T: Send + 'static>(
    ops: &Cleanups,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let running = ops.start();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        // An answer nobody waits for any more (the caller was dropped) is dropped here,
        // before the operation stops counting: an unclaimed grant has closed its liveness
        // file (freeing the key) by the time `close` sees none running.
        drop(tx.send(f()));
        drop(running);
    });
    match rx.await {
        Ok(r) => r,
        Err(e) => Err(LockError::backend(
            BACKEND,
            "file operation task failed (it panicked)",
            e,
        )),
    }
}

#[async_trait]
impl LeaseOps for FileGrant {
    async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
        let (files, grant, id) = (self.files.clone(), self.grant.clone(), self.live_id);
        let live = match self.live.lock() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let Some(live) = live else {
            return Ok(None); // released: nothing left to extend
        };
        let ops = files.ops.clone();
        blocking(&ops, move || files.extend(&grant, id, &live, ttl)).await
    }

    async fn release(&self) -> Result<bool> {
        let (files, grant, id) = (self.files.clone(), self.grant.clone(), self.live_id);
        let live = match self.live.lock() {
            Ok(mut l) => l.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        // The liveness file is closed in the task, after the state no longer names us, so
        // a release dropped in flight still ends with the file closed; closing it drops
        // its flock and wakes every waiter.
        let ops = files.ops.clone();
        blocking(&ops, move || {
            let released = files.release(&grant, id);
            drop(live);
            released
        })
        .await
    }

    /// The instance's count: a release of a dropped lease is counted from the drop, before
    /// its task has reached [`blocking`].
    fn cleanup(&self) -> Option<CleanupGuard> {
        Some(self.files.ops.start())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    fn key_files(dir: &std::path::Path) -> KeyFiles {
        KeyFiles::new(&Arc::new(dir.to_path_buf()), "k", false, 0o600)
    }

    /// The mutex unlinked between a decision's open and its flock (a /tmp cleaner ageing
    /// out a file nobody writes, an operator's `rm`) while another process makes a new
    /// mutex at the path and decides under it: the first must not decide under the
    /// orphaned inode it locked, or both read the same last token and both grant the next.
    #[test]
    fn a_mutex_unlinked_before_its_flock_is_never_decided_under() {
        let dir = tempfile::tempdir().unwrap();
        let files = key_files(dir.path());
        assert!(files.live_grant().unwrap().is_none()); // the mutex now exists
        let other: Rc<RefCell<Option<File>>> = Rc::new(RefCell::new(None));
        let calls = Rc::new(std::cell::Cell::new(0));
        {
            let (other, calls) = (Rc::clone(&other), Rc::clone(&calls));
            BETWEEN_OPEN_AND_LOCK.with(|h| {
                *h.borrow_mut() = Some(Box::new(move |path: &std::path::Path| {
                    calls.set(calls.get() + 1);
                    if calls.get() == 1 {
                        // The cleaner, then the other process entering its decision.
                        fs::remove_file(path).unwrap();
                        let theirs = os::open_or_create(path, 0o600).unwrap().file;
                        assert!(os::try_lock_exclusive(&theirs).unwrap());
                        *other.borrow_mut() = Some(theirs);
                    } else {
                        // The other process's decision ends.
                        other.borrow_mut().take();
                    }
                }));
            });
        }
        let decided = files.try_grant(TTL);
        BETWEEN_OPEN_AND_LOCK.with(|h| h.borrow_mut().take());
        assert!(
            other.borrow().is_none(),
            "decided under an unlinked mutex while another process held the key's mutex at its path"
        );
        assert!(matches!(decided, Ok(Decision::Granted { token: 1, .. })));
        assert_eq!(calls.get(), 2, "one reopen after the unlink");
    }

    /// A file election's observers read the leader's term from the key: with the state
    /// file removed while the leader holds the seat, they must still read its token, not
    /// 0. And a key without a state file is listed once, not at every decision (an
    /// observer polling a seat nobody won listed the whole directory at each poll): the
    /// first decision writes back the state it found.
    #[test]
    fn a_missing_state_is_restored_once_with_the_holders_token() {
        let dir = tempfile::tempdir().unwrap();
        let files = key_files(dir.path());
        let listings = || LISTINGS.with(std::cell::Cell::get);
        assert!(files.live_grant().unwrap().is_none());
        assert!(files.live_grant().unwrap().is_none());
        assert_eq!(listings(), 1, "a key nobody ever held was listed at every decision");
        for want in 1..=3 {
            let Ok(Decision::Granted { grant, token, live, .. }) = files.try_grant(TTL) else {
                panic!("the key was free");
            };
            assert_eq!(token, want);
            assert!(files.release(&grant, os::file_id(&live).unwrap()).unwrap());
        }
        let Ok(Decision::Granted { grant, token, live, .. }) = files.try_grant(TTL) else {
            panic!("the key was free");
        };
        assert_eq!(token, 4);
        fs::remove_file(files.path("state")).unwrap();
        let before = listings();
        assert_eq!(
            files.live_grant().unwrap(),
            Some((grant.clone(), 4)),
            "the leader's term read after its state file was removed"
        );
        assert_eq!(files.live_grant().unwrap(), Some((grant.clone(), 4)));
        assert_eq!(listings() - before, 1, "the restored state was not written back");
        assert!(files.release(&grant, os::file_id(&live).unwrap()).unwrap());
    }

    /// Grants `files`' key (free) and releases it at once; the grant's token.
    fn grant_and_release(files: &KeyFiles) -> Result<u64> {
        match files.try_grant(TTL)? {
            Decision::Granted { grant, token, live, .. } => {
                assert!(files.release(&grant, os::file_id(&live).unwrap()).unwrap());
                Ok(token)
            }
            Decision::Busy { .. } => panic!("the key was free"),
        }
    }

    /// A process that can open the key's mutex only read-only (a non-root member of a
    /// shared directory whose mutex another member left `0640`; played through
    /// `os::WRITE_REFUSED`, as root can write any file) cannot keep the mutex's copy of the
    /// counter. Its grants went through with the copy silently left behind, so after the
    /// state file was deleted the restore missed them and tokens 5 and 6 were handed out
    /// twice. Its grants are refused instead, with an error naming the file and the fix;
    /// what hands out no token (an observer's read, the holder's extend and release) still
    /// works.
    #[test]
    fn a_mutex_opened_read_only_never_lets_a_token_repeat_across_a_state_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let files = key_files(dir.path());
        let mut handed = Vec::new();
        for _ in 0..3 {
            handed.push(grant_and_release(&files).unwrap());
        }
        let Ok(Decision::Granted { grant, token, live, .. }) = files.try_grant(TTL) else {
            panic!("the key was free");
        };
        handed.push(token);
        let id = os::file_id(&live).unwrap();
        os::WRITE_REFUSED.with(|r| r.set(Some(rustix::io::Errno::ACCESS.raw_os_error())));
        let seen = files.live_grant();
        let extended = files.extend(&grant, id, &live, TTL);
        let released = files.release(&grant, id);
        let mut refused = Vec::new();
        for _ in 0..2 {
            match grant_and_release(&files) {
                Ok(token) => handed.push(token),
                Err(e) => refused.push(e),
            }
        }
        os::WRITE_REFUSED.with(|r| r.set(None));
        assert_eq!(
            seen.unwrap(),
            Some((grant.clone(), token)),
            "read through a read-only mutex"
        );
        assert_eq!(extended.unwrap(), Some(TTL), "extend through a read-only mutex");
        assert!(released.unwrap(), "release through a read-only mutex");
        fs::remove_file(files.path("state")).unwrap();
        for _ in 0..2 {
            handed.push(grant_and_release(&files).unwrap());
        }
        assert!(
            handed.windows(2).all(|w| w[0] < w[1]),
            "tokens handed out, in order, across a state deletion: {handed:?}"
        );
        let mutex = files.path("mutex").display().to_string();
        assert_eq!(refused.len(), 2, "grants through a read-only mutex: {handed:?}");
        for e in refused {
            match e {
                LockError::InvalidConfig { message, .. } => {
                    assert!(message.contains(&mutex) && message.contains("chmod"), "{message}")
                }
                other => panic!("a grant through a read-only mutex: {other:?}"),
            }
        }
        assert!(
            files.live_files().unwrap().is_empty(),
            "refused grants left liveness files"
        );
    }

    /// Runs `f`, returning what it returns and the warnings it logged.
    fn warnings_of<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
        let warnings: Arc<Mutex<Vec<String>>> = Arc::default();
        let recorder = crate::on_event::OnEvent({
            let warnings = Arc::clone(&warnings);
            move |event: &tracing::Event<'_>| {
                if *event.metadata().level() == tracing::Level::WARN {
                    warnings.lock().unwrap().push(crate::on_event::fields(event));
                }
            }
        });
        let value = tracing::subscriber::with_default(recorder, f);
        let logged = warnings.lock().unwrap().clone();
        (value, logged)
    }

    /// The mutex's copy of the counter garbled or cut short (an editor, a stray write)
    /// while the state file is missing: the copy was read as 0 without a word. The restore
    /// must still count on from the liveness file a dead holder left (token 4), and a
    /// warning must name the mutex. A garbled copy beside a sound state file is warned of
    /// once, then rewritten from the state.
    #[test]
    fn a_garbled_mutex_is_warned_of_and_tokens_do_not_go_back() {
        for garbage in [&b"not a counter"[..], b"0000000004", b""] {
            let case = String::from_utf8_lossy(garbage);
            let dir = tempfile::tempdir().unwrap();
            let files = key_files(dir.path());
            for _ in 0..3 {
                grant_and_release(&files).unwrap();
            }
            let Ok(Decision::Granted { token: 4, live, .. }) = files.try_grant(TTL) else {
                panic!("{case:?}: the fourth grant");
            };
            drop(live); // the holder dies: its liveness file stays, with token 4
            fs::write(files.path("mutex"), garbage).unwrap();
            fs::remove_file(files.path("state")).unwrap();
            let (next, warned) = warnings_of(|| grant_and_release(&files));
            assert_eq!(next.unwrap(), 5, "{case:?}: the grant after the restore");
            let mutex = files.path("mutex").display().to_string();
            if garbage.is_empty() {
                // An empty mutex is also a key's first one: nothing to warn of but the
                // missing state.
                assert!(warned.iter().any(|w| w.contains("missing")), "{case:?}: {warned:?}");
            } else {
                assert!(
                    warned.iter().any(|w| w.contains(&mutex)),
                    "{case:?}: no warning names the garbled mutex {mutex}: {warned:?}"
                );
            }
        }

        let dir = tempfile::tempdir().unwrap();
        let files = key_files(dir.path());
        grant_and_release(&files).unwrap();
        fs::write(files.path("mutex"), b"not a counter").unwrap();
        let (_, warned) = warnings_of(|| {
            for _ in 0..3 {
                assert!(files.live_grant().unwrap().is_none());
            }
        });
        assert_eq!(warned.len(), 1, "a garbled copy beside a sound state: {warned:?}");
        let mutex = File::open(files.path("mutex")).unwrap();
        assert_eq!(os::read_record(&mutex, 0).unwrap(), Some(1), "the copy rewritten");
    }

    /// An error reading our own liveness file (out of descriptors or memory) is not the
    /// end of the grant: extend and release fail, temporarily, and the grant stays ours.
    /// Before, the expiry recorded at the grant was taken instead: once a renewed grant
    /// had outlived it, extend said "not held" (the lease lost for good) and release "not
    /// ours".
    #[test]
    fn an_error_reading_the_liveness_file_is_an_error_not_a_lost_grant() {
        let dir = tempfile::tempdir().unwrap();
        let files = key_files(dir.path());
        let first = Duration::from_millis(300);
        let Ok(Decision::Granted { grant, live, .. }) = files.try_grant(first) else {
            panic!("the key was free");
        };
        let id = os::file_id(&live).unwrap();
        assert_eq!(files.extend(&grant, id, &live, TTL).unwrap(), Some(TTL));
        // The grant-time expiry passing is the condition under test, not a synchronisation.
        std::thread::sleep(first + Duration::from_millis(100));
        os::READ_LIVE_FAILS.with(|f| f.set(Some(rustix::io::Errno::MFILE.raw_os_error())));
        let extended = files.extend(&grant, id, &live, TTL);
        let released = files.release(&grant, id);
        os::READ_LIVE_FAILS.with(|f| f.set(None));
        match extended {
            Err(e) if e.is_temporary() => {}
            other => panic!("EMFILE reading our liveness file: extend answered {other:?}"),
        }
        match released {
            Err(e) if e.is_temporary() => {}
            other => panic!("EMFILE reading our liveness file: release answered {other:?}"),
        }
        assert_eq!(files.extend(&grant, id, &live, TTL).unwrap(), Some(TTL));
        assert!(files.release(&grant, id).unwrap(), "the grant was lost to the error");
    }
}
