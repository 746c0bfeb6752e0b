//! The System V shared memory segments PostgreSQL servers leave behind when killed.
//!
//! Every postmaster makes one small System V segment (56 bytes), whatever its
//! `shared_memory_type`: an interlock by which a new server on the same data directory
//! tells whether old backends still run. A postmaster that exits cleanly removes it; one
//! killed (as [`crate::pg_server::PgServer`]'s `kill`, restart and drop do, and as every
//! test process killed mid-run leaves its servers) never does. The kernel allows 4,096
//! segments in all (`kernel.shmmni`): once 4,096 killed servers had left theirs, every
//! `initdb` failed with "could not create shared memory segment: No space left on device"
//! and every PostgreSQL test with it.
//!
//! So a killed server's segment is removed with it ([`remove`], the id read from its
//! `postmaster.pid` by [`segment_of`]), and the first server a test process starts removes
//! the orphans earlier processes left ([`remove_orphans`]): segments that look like a
//! postmaster's interlock (56 bytes, under a key of `port × 1000 + n`, as PostgreSQL
//! makes them) of the server's user, with nothing attached, whose creator is gone — which
//! no running server can be using. Other programs' segments are left alone, even when
//! nothing is attached to them (System V segments may outlive their users on purpose).
//! Removal is by `ipcrm` (util-linux, in every Debian): the standard library has no
//! `shmctl`, and the workspace allows no `unsafe` to call it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Once;

/// The id of the segment the postmaster of `data_dir` made: the second field of the 7th
/// line of its `postmaster.pid` (`key id`); `None` before the server wrote it.
pub(crate) fn segment_of(data_dir: &Path) -> Option<u64> {
    let pid_file = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    pid_file.lines().nth(6)?.split_whitespace().nth(1)?.parse().ok()
}

/// Removes segment `id`; a segment already gone is no error. Failures are printed, not
/// raised: a leftover segment costs the machine 4 KB, not this test its result.
pub(crate) fn remove(id: u64) {
    match Command::new("ipcrm")
        .args(["-m", &id.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            if !err.contains("invalid id") {
                eprintln!("testkit: could not remove shared memory segment {id}: {}", err.trim());
            }
        }
        Err(e) => eprintln!("testkit: could not run ipcrm to remove shared memory segment {id}: {e}"),
    }
}

/// Once per process: removes the [`orphans`] of `uid` (from `/proc/sysvipc/shm`).
pub(crate) fn remove_orphans(uid: u32) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| orphans(uid).into_iter().for_each(remove));
}

/// The size of a postmaster's interlock segment (`PGShmemHeader`, 64-bit builds).
const INTERLOCK_BYTES: &str = "56";

/// The ids of `uid`'s postmaster interlock segments that nothing is attached to and whose
/// creator is gone.
fn orphans(uid: u32) -> Vec<u64> {
    let Ok(table) = std::fs::read_to_string("/proc/sysvipc/shm") else {
        return Vec::new();
    };
    orphans_in(&table, uid, |pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// [`orphans`] of a `/proc/sysvipc/shm` table, `alive` telling whether a pid runs.
fn orphans_in(table: &str, uid: u32, alive: impl Fn(&str) -> bool) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // key shmid perms size cpid lpid nattch uid gid cuid cgid …
            let f: Vec<&str> = line.split_whitespace().collect();
            let (key, id, size, cpid, nattch, owner) =
                (f.first()?, f.get(1)?, f.get(3)?, f.get(4)?, f.get(6)?, f.get(7)?);
            // PostgreSQL's key: the server's port × 1000, plus one per key already taken.
            let port = key.parse::<u64>().ok()? / 1000;
            let postgres_like = *size == INTERLOCK_BYTES && (1..=65535).contains(&port);
            let orphaned = *nattch == "0" && owner.parse::<u32>().ok()? == uid && !alive(cpid);
            (postgres_like && orphaned).then(|| id.parse().ok())?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "       key      shmid perms       size  cpid  lpid nattch   uid   gid  cuid  cgid
  10025205     163840   600         56  1294  1309      0   101   104   101   104
  10025206     163841   600         56  1295  1309      1   101   104   101   104
  10025207     163842   600         56  4242  1309      0   101   104   101   104
  10025208     163843   600         56  1296  1309      0     0     0     0     0
  10025209     163844   600       4096  1297  1309      0   101   104   101   104
 912345678     163845   600         56  1298  1309      0   101   104   101   104
         0     163846   600         56  1299  1309      0   101   104   101   104
";

    // A review: the sweep removed every detached segment of the user, another program's
    // 4 KB and 1 MB segments made with `ipcmk` among them.
    #[test]
    fn only_detached_postgres_interlocks_of_dead_creators_and_our_user_are_orphans() {
        let orphans = orphans_in(TABLE, 101, |pid| pid == "4242");
        // 163841 attached, 163842 its creator alive, 163843 another user's, 163844 not
        // 56 bytes, 163845 and 163846 under keys PostgreSQL does not make.
        assert_eq!(orphans, vec![163840]);
    }
}
