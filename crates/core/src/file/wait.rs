//! Waking waiters when a holder lets go, with one inotify watch per holder and one helper
//! thread per process that exists only while someone waits.
//!
//! A holder lets go by closing its liveness file: on release, on drop, or when the kernel
//! closes it because the process died (SIGKILL included). The liveness file is open for
//! writing, and the kernel reports the *last* close of such an open file as
//! `IN_CLOSE_WRITE` — exactly when its flock, which belongs to that open file, is dropped
//! (a forked child sharing the descriptor delays both alike). Its removal (a release, or
//! an operator's `rm`) shows as `IN_ATTRIB` (link count) or `IN_DELETE_SELF`. Any event
//! wakes the waiters of that file, which try again; a spurious wake costs one attempt.
//!
//! Sharing: inotify has one watch per inode per instance, and the registry counts the
//! users of each, so every acquire in this process waiting for the same holder (key,
//! grant) shares one watch. The thread — named `fencelock-file-wait` — and its two
//! descriptors (the inotify instance and an eventfd that stops it) are created by the
//! first waiter and closed when the last one leaves: dropping, timing out or cancelling an
//! acquire returns them. A plain thread, not a runtime task, so it serves every runtime
//! of the process and a runtime shutting down never waits for it.
//!
//! Missed wakes: a waiter reads the watch's change count, then checks the holder's flock
//! once more; a release before that check is seen by the check, one after it bumps the
//! count. (Kernel interface: inotify(7), flock(2).)

use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;
use tokio::sync::watch;

use super::os;
use crate::waiting::WakeFuture;

/// The helper thread's name (the resource conformance case counts threads by name).
pub(crate) const THREAD_NAME: &str = "fencelock-file-wait";

/// What a waiter learned about the holder it waits for.
pub(crate) enum HolderWake {
    /// The holder let go already: try again now.
    Free,
    /// Wake when the holder's liveness file changes.
    Watch(Arc<Subscription>, u64),
    /// No watch could be set up (out of inotify instances, say): poll instead.
    Unavailable,
}

impl HolderWake {
    /// The wake signal for `waiting::acquire_with`; `None` for `Unavailable`.
    pub(crate) fn future(&self) -> Option<WakeFuture> {
        match self {
            HolderWake::Free => Some(Box::pin(std::future::ready(()))),
            HolderWake::Watch(sub, seen) => {
                let (sub, seen) = (Arc::clone(sub), *seen);
                let mut changes = sub.changes.clone();
                Some(Box::pin(async move {
                    let _keep = sub; // the watch lives as long as this wait
                    if changes.wait_for(|n| *n != seen).await.is_err() {
                        std::future::pending::<()>().await; // no signal: wait for retry_at
                    }
                }))
            }
            HolderWake::Unavailable => None,
        }
    }
}

/// Watches the liveness file at `live` for a waiter, reusing `cached` when it watches the
/// same file (an acquire keeps its subscription across attempts).
pub(crate) fn watch_holder(live: &Path, cached: Option<Arc<Subscription>>) -> HolderWake {
    watch_holder_with(live, cached, subscribe)
}

/// [`watch_holder`] with the way to subscribe given (tests make it fail).
fn watch_holder_with(
    live: &Path,
    cached: Option<Arc<Subscription>>,
    subscribe: impl FnOnce(&Path) -> io::Result<Option<Subscription>>,
) -> HolderWake {
    let sub = match cached.filter(|s| s.path == live) {
        Some(sub) => sub,
        None => match subscribe(live) {
            Ok(Some(sub)) => Arc::new(sub),
            Ok(None) => return HolderWake::Free,
            Err(e) => {
                no_watch(&e);
                return HolderWake::Unavailable;
            }
        },
    };
    let seen = *sub.changes.borrow();
    match os::held_by_someone(live) {
        Ok(false) => HolderWake::Free,
        _ => HolderWake::Watch(sub, seen),
    }
}

/// Logs that a waiter polls for want of a watch: at WARN the first time in this process,
/// at DEBUG after that. A polling waiter comes back here every 50 ms (`POLL_WITHOUT_WATCH`),
/// so a warning each time flooded the log (with the per-user inotify limit reached, 140
/// waiters logged 1264 lines in 6 s); the cause and its remedy are the same every time.
fn no_watch(e: &io::Error) {
    let every = super::POLL_WITHOUT_WATCH;
    if NO_WATCH_WARNED.swap(true, Ordering::Relaxed) {
        tracing::debug!(error = %e, ?every, "cannot watch the holder's liveness file; polling instead");
    } else {
        tracing::warn!(
            error = %e,
            ?every,
            "cannot watch the holder's liveness file; polling instead (if inotify instances ran out, raise fs.inotify.max_user_instances). Warned once per process; later failures are logged at debug level"
        );
    }
}

/// Whether [`no_watch`] has warned in this process.
static NO_WATCH_WARNED: AtomicBool = AtomicBool::new(false);

/// One waiter's share of a watch; dropping the last share removes the watch, and the last
/// watch stops the thread.
pub(crate) struct Subscription {
    path: PathBuf,
    wd: i32,
    /// Tells this watch from a later one that got the same descriptor number.
    id: u64,
    changes: watch::Receiver<u64>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut reg = registry();
        let last = match reg.watches.get_mut(&self.wd) {
            Some(w) if w.id == self.id => {
                w.users -= 1;
                w.users == 0
            }
            _ => false,
        };
        if last {
            reg.watches.remove(&self.wd);
            if let Some(fds) = &reg.thread {
                let _ = inotify::remove_watch(&fds.inotify, self.wd);
            }
        }
        reg.stop_if_idle();
    }
}

/// The descriptors of the running helper thread.
struct Fds {
    inotify: OwnedFd,
    stop: OwnedFd,
}

struct Watch {
    id: u64,
    users: usize,
    changes: watch::Sender<u64>,
}

#[derive(Default)]
struct Registry {
    /// The running thread's descriptors; `None` while nobody waits.
    thread: Option<Arc<Fds>>,
    watches: HashMap<i32, Watch>,
    next_id: u64,
}

impl Registry {
    /// Stops the thread when no watch is left (it closes its descriptors as it ends).
    fn stop_if_idle(&mut self) {
        if self.watches.is_empty() {
            if let Some(fds) = self.thread.take() {
                let _ = rustix::io::write(&fds.stop, &1u64.to_ne_bytes());
            }
        }
    }

    /// Wakes every waiter and forgets every watch (the thread is ending).
    fn wake_all(&mut self) {
        for (_, w) in self.watches.drain() {
            w.changes.send_modify(|n| *n += 1);
        }
    }
}

fn registry() -> MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    let m = REGISTRY.get_or_init(Default::default);
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Adds (or shares) a watch on `path`; `Ok(None)` when the file is gone already.
fn subscribe(path: &Path) -> io::Result<Option<Subscription>> {
    let mut reg = registry();
    let fds = match &reg.thread {
        Some(fds) => Arc::clone(fds),
        None => {
            let fds = Arc::new(Fds {
                inotify: inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?,
                stop: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?,
            });
            let theirs = Arc::clone(&fds);
            std::thread::Builder::new()
                .name(THREAD_NAME.into())
                .spawn(move || serve(&theirs))?;
            reg.thread = Some(Arc::clone(&fds));
            fds
        }
    };
    let mask = WatchFlags::CLOSE_WRITE
        | WatchFlags::ATTRIB
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
        | WatchFlags::DONT_FOLLOW;
    let wd = match inotify::add_watch(&fds.inotify, path, mask) {
        Ok(wd) => wd,
        Err(Errno::NOENT) => {
            reg.stop_if_idle();
            return Ok(None);
        }
        Err(e) => {
            reg.stop_if_idle();
            return Err(e.into());
        }
    };
    let next_id = reg.next_id;
    let w = reg.watches.entry(wd).or_insert_with(|| Watch {
        id: next_id,
        users: 0,
        changes: watch::channel(0).0,
    });
    w.users += 1;
    let (id, changes) = (w.id, w.changes.subscribe());
    reg.next_id += 1;
    Ok(Some(Subscription {
        path: path.to_owned(),
        wd,
        id,
        changes,
    }))
}

/// The helper thread: waits for inotify events or the stop signal. Runs while some waiter
/// of this process waits; ends when told to, or on an error, waking every waiter.
fn serve(fds: &Fds) {
    let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
    loop {
        let mut pfds = [
            PollFd::new(&fds.inotify, PollFlags::IN),
            PollFd::new(&fds.stop, PollFlags::IN),
        ];
        match poll(&mut pfds, None) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(_) => break,
        }
        if !pfds[1].revents().is_empty() {
            return; // stopped: the registry forgot this thread already
        }
        if pfds[0].revents().is_empty() {
            continue;
        }
        let mut reg = registry();
        if !reg.thread.as_ref().is_some_and(|t| std::ptr::eq(&**t, fds)) {
            return; // replaced by a newer thread; nobody waits on this one
        }
        let mut reader = inotify::Reader::new(&fds.inotify, &mut buf);
        loop {
            match reader.next() {
                Ok(ev) => {
                    let (wd, flags) = (ev.wd(), ev.events());
                    if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                        reg.watches.values().for_each(|w| w.changes.send_modify(|n| *n += 1));
                    } else if let Some(w) = reg.watches.get(&wd) {
                        w.changes.send_modify(|n| *n += 1);
                        if flags.contains(ReadFlags::IGNORED) {
                            reg.watches.remove(&wd); // the kernel dropped the watch
                        }
                    }
                }
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => continue,
                Err(_) => {
                    reg.wake_all();
                    reg.thread = None;
                    return;
                }
            }
        }
        reg.stop_if_idle();
    }
    let mut reg = registry();
    if reg.thread.as_ref().is_some_and(|t| std::ptr::eq(&**t, fds)) {
        reg.wake_all();
        reg.thread = None;
    }
}

/// How many waiters of this process share watches now (for tests).
#[cfg(test)]
pub(crate) fn waiters() -> usize {
    registry().watches.values().map(|w| w.users).sum()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use tracing::{Event, Level};

    use super::*;

    /// Counts the events logged at WARN and at DEBUG.
    #[derive(Default)]
    struct Counts {
        warn: AtomicUsize,
        debug: AtomicUsize,
    }

    impl Counts {
        /// A subscriber that counts into `self`.
        fn subscriber(&'static self) -> crate::on_event::OnEvent<impl Fn(&Event<'_>) + Send + Sync + 'static> {
            crate::on_event::OnEvent(move |event: &Event<'_>| {
                match *event.metadata().level() {
                    Level::WARN => self.warn.fetch_add(1, Ordering::Relaxed),
                    Level::DEBUG => self.debug.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
            })
        }
    }

    /// Out of inotify instances, every waiter re-checks every 50 ms: a warning each time
    /// would flood the log (1264 lines in 6 s with 140 waiters). One warning per process
    /// says what happened; the rest go to DEBUG.
    #[test]
    fn no_watch_is_warned_of_once() {
        let counts: &'static Counts = Box::leak(Box::default());
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("k-k.00.live");
        // Only this test fails watches on purpose; a real failure elsewhere in this process
        // (the host out of inotify instances) would have used up the one warning.
        let warned_before = NO_WATCH_WARNED.load(Ordering::Relaxed);
        tracing::subscriber::with_default(counts.subscriber(), || {
            for _ in 0..20 {
                let wake = watch_holder_with(&live, None, |_| {
                    Err(io::Error::from_raw_os_error(Errno::MFILE.raw_os_error()))
                });
                assert!(matches!(wake, HolderWake::Unavailable));
            }
        });
        let (warn, debug) = (
            counts.warn.load(Ordering::Relaxed),
            counts.debug.load(Ordering::Relaxed),
        );
        assert_eq!(warn, usize::from(!warned_before), "warnings for 20 failed watches");
        assert_eq!(warn + debug, 20, "every failure is logged, at WARN or DEBUG");
    }
}
