//! The operating-system pieces: flock, the host-wide monotonic clock, and opening the key's
//! files without ever following a symbolic link.

use std::fs::{File, Permissions};
use std::io::{self, ErrorKind, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use rustix::fs::{flock, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

/// Nanoseconds of `CLOCK_MONOTONIC`, which every process on the host shares (and which
/// `std::time::Instant` reads on Linux). Never jumps with the wall clock.
pub(crate) fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// The flags of every open here: `O_NOFOLLOW` so a symbolic link planted under a lock
/// file's name is an error (`ELOOP`), never followed to a victim file; `O_NONBLOCK` so a
/// planted FIFO cannot block the open; close-on-exec so a command we start does not keep
/// a holder's flock alive.
fn safe(flags: OFlags) -> OFlags {
    flags | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC
}

/// Opens `path` for reading; `None` if it does not exist.
pub(crate) fn open_read(path: &Path) -> io::Result<Option<File>> {
    match rustix::fs::open(path, safe(OFlags::RDONLY), Mode::empty()) {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A file [`open_or_create`] opened.
pub(crate) struct Opened {
    pub(crate) file: File,
    /// Why it could not be opened for writing, when it is open read-only.
    pub(crate) read_only: Option<io::Error>,
}

/// Opens `path` for flocking, creating it with `mode` if missing: read-write, so that the
/// key's mutex can keep its copy of the token counter ([`write_record`]); read-only when
/// writing it is refused (`EACCES`, `EPERM`, `EROFS`: a file of another member of a
/// shared directory with odd permissions, a read-only mount), which flock does not need.
/// A process with the mutex open read-only cannot keep the copy, so it may decide
/// anything that hands out no token (an observer's read, a holder's extend or release)
/// but its grants are refused (see `KeyFiles::locked_then`).
pub(crate) fn open_or_create(path: &Path, mode: u32) -> io::Result<Opened> {
    #[cfg(test)]
    let refused = WRITE_REFUSED
        .with(std::cell::Cell::get)
        .map(io::Error::from_raw_os_error);
    #[cfg(not(test))]
    let refused: Option<io::Error> = None;
    let read_write = match refused {
        Some(e) => Err(e),
        None => open_or_create_as(path, OFlags::RDWR, mode),
    };
    match read_write {
        Err(e)
            if matches!(
                e.raw_os_error().map(Errno::from_raw_os_error),
                Some(Errno::ACCESS | Errno::PERM | Errno::ROFS)
            ) =>
        {
            let file = open_or_create_as(path, OFlags::RDONLY, mode)?;
            Ok(Opened {
                file,
                read_only: Some(e),
            })
        }
        opened => opened.map(|file| Opened { file, read_only: None }),
    }
}

#[cfg(test)]
thread_local! {
    /// Test seam: while set, [`open_or_create`]'s read-write open fails on this thread with
    /// this OS error code, as it does for a non-root member of a shared directory whose
    /// mutex another member left without group write permission (the tests run as root,
    /// which `chmod` cannot keep out), so the read-only fallback runs.
    pub(crate) static WRITE_REFUSED: std::cell::Cell<Option<i32>> = const { std::cell::Cell::new(None) };
}

fn open_or_create_as(path: &Path, access: OFlags, mode: u32) -> io::Result<File> {
    // Exclusive create first, so that we know when the file is ours to give its mode; a
    // file someone else made is opened as it is (only its owner could change its mode).
    // Bounded: the file would have to vanish between the two opens every time.
    let mut tries = 0;
    loop {
        match create(path, access, mode) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            created => return created,
        }
        match rustix::fs::open(path, safe(access), Mode::empty()) {
            Ok(fd) => return Ok(File::from(fd)),
            Err(Errno::NOENT) if tries < 3 => tries += 1, // removed meanwhile: create it
            Err(e) => return Err(e.into()),
        }
    }
}

/// Creates `path`, which must not exist (`O_EXCL`: never a link), open for writing. The
/// holder's liveness file is open for writing so its last close — release, or the kernel
/// closing it when the process dies — is reported to watchers as `IN_CLOSE_WRITE`.
pub(crate) fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    create(path, OFlags::WRONLY, mode)
}

/// Creates `path` exclusively, opened with `access`, with exactly `mode`. The mode given to
/// `open` is cut by the process's umask: a member of a shared directory with umask 077
/// would create 0600 files that lock the rest of the group out ("Permission denied" for
/// good), so the mode is set again on the open file.
fn create(path: &Path, access: OFlags, mode: u32) -> io::Result<File> {
    let flags = safe(access | OFlags::CREATE | OFlags::EXCL);
    let file = File::from(rustix::fs::open(path, flags, Mode::from_raw_mode(mode))?);
    if let Err(e) = file.set_permissions(Permissions::from_mode(mode)) {
        let _ = std::fs::remove_file(path); // ours, just made: nobody else uses it yet
        return Err(e);
    }
    Ok(file)
}

/// Replaces the file at `path` (in `dir`) with one holding `bytes`, atomically: the new
/// file `tmp` in `dir`, made by [`new_temp`] (`O_EXCL` and `O_NOFOLLOW`, so never through
/// a planted link, and exactly `mode` whatever the umask), written, then renamed over
/// `path`. With `durable`, the new file is fsynced before the rename and the directory
/// after it, so a crash or power loss leaves the old content or the new one. The lock's
/// state file and the election's value records both go through here, so both get the
/// directory's mode and the same error judgement (our own opens and writes, whose errors
/// keep their OS code: EMFILE or a full disk stay temporary, see `error::is_temporary`).
///
/// **The caller holds the key's mutex flock** (`KeyFiles::replace` is only called under
/// it), and `tmp` is one fixed name per key (`STEM.tmp`), not a fresh random one. A writer
/// killed between creating `tmp` and the rename (SIGKILL, power loss) leaves it behind;
/// with random names nothing ever found such a file again, so repeated crashes piled them
/// up in the directory for good. Under the mutex no other writer of the key is between
/// those two steps, so whatever is at `tmp` is a dead writer's leftover (or a planted
/// link): the next writer unlinks it and makes its own. A crash leaves at most one file
/// per key, gone at the key's next write (its next grant, release or proclaim), and no
/// write lists the directory, so its cost does not grow with the number of keys.
///
/// A write that fails after making `tmp` removes it (it is ours: the mutex is held).
pub(crate) fn replace(dir: &Path, path: &Path, tmp: &Path, bytes: &[u8], durable: bool, mode: u32) -> io::Result<()> {
    let mut file = new_temp(tmp, mode)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| if durable { file.sync_data() } else { Ok(()) })
        .and_then(|()| std::fs::rename(tmp, path));
    if let Err(e) = written {
        drop(file);
        let _ = std::fs::remove_file(tmp); // the next write removes it if this failed too
        return Err(e);
    }
    drop(file);
    if durable {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The first step of [`replace`]: the new file at `tmp`, created exclusively (`O_EXCL`,
/// `O_NOFOLLOW`) with exactly `mode`, open for writing.
///
/// Whatever is found at `tmp` is unlinked and the create tried again: the caller holds
/// the key's mutex, so it is a killed writer's leftover or something planted there.
/// `unlink` removes a symbolic link itself, never its target, so a planted link is
/// replaced, never written through; a directory there is an error (`EISDIR`), left alone.
/// At most three times, as [`open_or_create`] bounds its loop: only someone who is not a
/// writer of the key (none creates the name without the mutex) could put a file there
/// again each time, and then the write fails with `EEXIST`.
pub(crate) fn new_temp(tmp: &Path, mode: u32) -> io::Result<File> {
    let mut removed = 0;
    loop {
        match create_new(tmp, mode) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists && removed < 3 => {
                removed += 1;
                match std::fs::remove_file(tmp) {
                    Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            made => return made,
        }
    }
}

/// The identity (device, inode) of an open file.
pub(crate) fn file_id(f: &File) -> io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(f.as_fd())?;
    Ok((st.st_dev, st.st_ino))
}

/// The identity (device, inode) of the file at `path` itself (a link is not followed);
/// `None` if there is none.
pub(crate) fn path_id(path: &Path) -> io::Result<Option<(u64, u64)>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some((m.dev(), m.ino()))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// `true` when the open file `f` is still the file at `path` (a link is not followed): the
/// same device and inode, and not unlinked (a link count above zero).
pub(crate) fn still_at(f: &File, path: &Path) -> io::Result<bool> {
    let st = rustix::fs::fstat(f.as_fd())?;
    if st.st_nlink == 0 {
        return Ok(false);
    }
    Ok(path_id(path)? == Some((st.st_dev, st.st_ino)))
}

/// Both times of "now" for `utimensat`/`futimens`.
fn now_times() -> rustix::fs::Timestamps {
    let now = rustix::fs::Timespec {
        tv_sec: 0,
        tv_nsec: rustix::fs::UTIME_NOW,
    };
    rustix::fs::Timestamps {
        last_access: now,
        last_modification: now,
    }
}

/// Sets the access and modification times of the file at `path` (a link is not followed)
/// to now, without writing it: an age cleaner (systemd-tmpfiles, tmpreaper) then does not
/// take it for unused. `Ok` when there is no file.
pub(crate) fn touch(path: &Path) -> io::Result<()> {
    match rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &now_times(),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    ) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// [`touch`] for an open file.
pub(crate) fn touch_open(f: &File) -> io::Result<()> {
    Ok(rustix::fs::futimens(f, &now_times())?)
}

/// Takes an exclusive flock if free; `Ok(false)` if someone holds it.
pub(crate) fn try_lock_exclusive(f: &File) -> io::Result<bool> {
    match flock(f, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// `true` while some process holds an exclusive flock on the file at `path` (a live
/// holder); `false` when the file is gone or nobody holds it (the holder released or died).
pub(crate) fn held_by_someone(path: &Path) -> io::Result<bool> {
    Ok(open_if_held(path)?.is_some())
}

/// The file at `path`, open for reading, when some process holds an exclusive flock on
/// it; `None` when it is gone or nobody holds it.
fn open_if_held(path: &Path) -> io::Result<Option<File>> {
    let Some(f) = open_read(path)? else {
        return Ok(None);
    };
    match flock(&f, FlockOperation::NonBlockingLockShared) {
        Ok(()) => Ok(None),
        Err(Errno::WOULDBLOCK) => Ok(Some(f)),
        Err(e) => Err(e.into()),
    }
}

/// What a holder's liveness file says about its holder.
pub(crate) enum Liveness {
    /// Nobody holds its flock, or the file is gone: the holder released or died.
    Gone,
    /// Its holder lives; `expires_mono_ns` is the expiry it last wrote into the file
    /// (`None` if it wrote none yet: the state file's expiry holds), `token` the token of
    /// its grant (`None` from a version that did not write it).
    Held {
        expires_mono_ns: Option<u64>,
        token: Option<u64>,
    },
}

/// Bytes of one record in a lock file: 20 decimal digits (every `u64`) and a newline,
/// always the same length so a rewrite in place never leaves a longer record's tail
/// behind, and a record never written (a hole, or a shorter file) never parses.
const RECORD_LEN: usize = 21;
/// Where a liveness file keeps its grant's token: after its expiry record, at 0.
const TOKEN_AT: u64 = RECORD_LEN as u64;

/// Writes `value` as the record at byte `at` of `f`, in place and without fsync. Only
/// under the key's mutex flock, as every reader reads, so no reader sees half a record.
/// Records: a liveness file's expiry (at 0) and its grant's token (at [`TOKEN_AT`]); the
/// mutex's copy of the key's token counter (at 0).
pub(crate) fn write_record(f: &File, at: u64, value: u64) -> io::Result<()> {
    let record = format!("{value:020}\n");
    let n = rustix::io::pwrite(f, record.as_bytes(), at)?;
    if n == RECORD_LEN {
        Ok(())
    } else {
        Err(io::Error::new(
            ErrorKind::WriteZero,
            "short write of a lock file's record",
        ))
    }
}

/// The record at byte `at` of `f`; `None` when there is none (never written, or not a
/// record: a foreign or older file's content is not an error, only no information).
pub(crate) fn read_record(f: &File, at: u64) -> io::Result<Option<u64>> {
    let mut buf = [0u8; RECORD_LEN];
    let n = rustix::io::pread(f, &mut buf, at)?;
    Ok(parse_record(&buf[..n]))
}

/// The record `bytes` hold, if they are one.
fn parse_record(bytes: &[u8]) -> Option<u64> {
    match bytes {
        [digits @ .., b'\n'] if bytes.len() == RECORD_LEN => std::str::from_utf8(digits).ok()?.parse().ok(),
        _ => None,
    }
}

/// What the start of a key's mutex holds: its copy of the token counter.
pub(crate) enum CounterCopy {
    /// Nothing: never written (a key's first mutex, or one only older versions used).
    Empty,
    /// The copy: the last token handed out, as of the last grant.
    Counter(u64),
    /// Something that is not a record: garbled, or cut short.
    NotARecord,
}

/// Reads the mutex's copy of the counter (the record at 0 of `f`, see [`write_record`]).
pub(crate) fn read_counter_copy(f: &File) -> io::Result<CounterCopy> {
    let mut buf = [0u8; RECORD_LEN];
    let n = rustix::io::pread(f, &mut buf, 0)?;
    Ok(match (n, parse_record(&buf[..n])) {
        (0, _) => CounterCopy::Empty,
        (_, Some(counter)) => CounterCopy::Counter(counter),
        (_, None) => CounterCopy::NotARecord,
    })
}

/// Writes `expires_mono_ns` at the start of the holder's own liveness file ([`write_record`]):
/// the value matters only while the holder lives, so it is never fsynced.
pub(crate) fn write_expiry(live: &File, expires_mono_ns: u64) -> io::Result<()> {
    write_record(live, 0, expires_mono_ns)
}

/// Writes the grant's `token` into its new liveness file ([`write_record`]), before the
/// state names it: a key whose state file was deleted restores its counter from it (see
/// `KeyFiles::restored`).
pub(crate) fn write_token(live: &File, token: u64) -> io::Result<()> {
    write_record(live, TOKEN_AT, token)
}

/// The token written into the liveness file at `path` by [`write_token`], whether its
/// holder lives or not; `None` when the file is gone or has none.
pub(crate) fn read_token(path: &Path) -> io::Result<Option<u64>> {
    match open_read(path)? {
        Some(f) => read_record(&f, TOKEN_AT),
        None => Ok(None),
    }
}

#[cfg(test)]
thread_local! {
    /// Test seam: while set, [`read_live`] fails on this thread with this OS error code.
    pub(crate) static READ_LIVE_FAILS: std::cell::Cell<Option<i32>> = const { std::cell::Cell::new(None) };
}

/// Whether the holder of the liveness file at `path` lives, the expiry it last wrote and its
/// grant's token. A missing record reads as `None`.
pub(crate) fn read_live(path: &Path) -> io::Result<Liveness> {
    #[cfg(test)]
    {
        if let Some(code) = READ_LIVE_FAILS.with(std::cell::Cell::get) {
            return Err(io::Error::from_raw_os_error(code));
        }
    }
    let Some(f) = open_if_held(path)? else {
        return Ok(Liveness::Gone);
    };
    // Both records in one read: this is on every decision's path.
    let mut buf = [0u8; 2 * RECORD_LEN];
    let n = rustix::io::pread(&f, &mut buf, 0)?;
    let (expiry, token) = buf[..n].split_at(n.min(RECORD_LEN));
    Ok(Liveness::Held {
        expires_mono_ns: parse_record(expiry),
        token: parse_record(token),
    })
}
