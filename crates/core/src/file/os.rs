//! The operating-system pieces: flock and the host-wide monotonic clock.

use std::fs::File;
use std::io::ErrorKind;
use std::path::Path;

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

/// Nanoseconds of `CLOCK_MONOTONIC`, which every process on the host shares (and which
/// `std::time::Instant` reads on Linux). Never jumps with the wall clock.
pub(crate) fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// Takes an exclusive flock, waiting for it.
pub(crate) fn lock_exclusive(f: &File) -> std::io::Result<()> {
    retry_eintr(|| flock(f, FlockOperation::LockExclusive))
}

/// Takes an exclusive flock if free; `Ok(false)` if someone holds it.
pub(crate) fn try_lock_exclusive(f: &File) -> std::io::Result<bool> {
    match flock(f, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// `true` while some process holds an exclusive flock on the file at `path` (a live
/// holder); `false` when the file is gone or nobody holds it (the holder released or died).
pub(crate) fn held_by_someone(path: &Path) -> std::io::Result<bool> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match flock(&f, FlockOperation::NonBlockingLockShared) {
        Ok(()) => Ok(false),
        Err(Errno::WOULDBLOCK) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Blocks until nobody holds an exclusive flock on `path` (or it is gone).
pub(crate) fn wait_until_free(path: &Path) {
    if let Ok(f) = File::open(path) {
        let _ = retry_eintr(|| flock(&f, FlockOperation::LockShared));
    }
}

fn retry_eintr(mut op: impl FnMut() -> rustix::io::Result<()>) -> std::io::Result<()> {
    for _ in 0..1000 {
        match op() {
            Err(Errno::INTR) => continue,
            other => return other.map_err(Into::into),
        }
    }
    Err(std::io::Error::other("flock interrupted 1000 times in a row"))
}
