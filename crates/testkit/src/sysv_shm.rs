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
//! the orphans earlier processes left ([`remove_orphans`]): segments of the server's user
//! with nothing attached whose creator is gone — which no running server can be using.
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

/// Once per process: removes every segment owned by `uid` with nothing attached whose
/// creating process is gone (from `/proc/sysvipc/shm`). Returns how many it removed
/// (0 on the later calls).
pub(crate) fn remove_orphans(uid: u32) -> usize {
    static ONCE: Once = Once::new();
    let mut removed = 0;
    ONCE.call_once(|| {
        for id in orphans(uid) {
            remove(id);
            removed += 1;
        }
    });
    removed
}

/// The ids of `uid`'s segments that nothing is attached to and whose creator is gone.
pub(crate) fn orphans(uid: u32) -> Vec<u64> {
    let Ok(table) = std::fs::read_to_string("/proc/sysvipc/shm") else {
        return Vec::new();
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // key shmid perms size cpid lpid nattch uid gid cuid cgid …
            let f: Vec<&str> = line.split_whitespace().collect();
            let (id, cpid, nattch, owner) = (f.get(1)?, f.get(4)?, f.get(6)?, f.get(7)?);
            let gone = !Path::new(&format!("/proc/{cpid}")).exists();
            (*nattch == "0" && owner.parse::<u32>().ok()? == uid && gone).then(|| id.parse().ok())?
        })
        .collect()
}
