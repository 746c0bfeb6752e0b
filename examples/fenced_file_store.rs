//! Fence a write into a plain file store.
//!
//! ```sh
//! cargo run --example fenced_file_store -- /tmp/store
//! ```
//!
//! The lock comes from any backend (here the file backend, in the store's directory); the
//! store checks the fencing token itself, so a holder that paused past its TTL and wakes up
//! after a newer holder wrote is refused — which the lock alone cannot ensure. The store
//! keeps, beside each value, the fence of its last writer (`NAME.fence`), and checks and
//! writes under a local `flock` of its own (`NAME.lock`), so two writers that both believe
//! they hold the lock are serialised at the store and the older one loses.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use fencelock::fencing::{admit, Admission};
use fencelock::{Fence, FenceRejection, FencingToken, GrantId, LockError, LockOptions};

/// Values in files of one directory, written only by the newest holder.
struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    fn new(dir: &Path) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(FileStore { dir: dir.to_owned() })
    }

    /// Writes `value` as `name` if `fence` is admitted (a higher token than the last
    /// writer's, or the same grant again); `Ok(Err(rejection))` when it is stale.
    fn write(&self, name: &str, fence: &Fence, value: &[u8]) -> std::io::Result<Result<Admission, FenceRejection>> {
        // Serialise check-and-write between processes on this host.
        let guard = File::create(self.dir.join(format!("{name}.lock")))?;
        rustix::fs::flock(&guard, rustix::fs::FlockOperation::LockExclusive)?;
        let last = self.last_fence(name)?;
        let admission = match admit(name, last.as_ref().map(|f| (f.token, &f.grant)), fence) {
            Ok(a) => a,
            Err(rejection) => return Ok(Err(rejection)),
        };
        // Value first, then the fence: both by rename, so a crash leaves either whole.
        replace(&self.dir.join(name), value)?;
        let record = format!("{} {}", fence.token, fence.grant.as_str());
        replace(&self.dir.join(format!("{name}.fence")), record.as_bytes())?;
        Ok(Ok(admission))
    }

    fn last_fence(&self, name: &str) -> std::io::Result<Option<Fence>> {
        let text = match fs::read_to_string(self.dir.join(format!("{name}.fence"))) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let (token, grant) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
        let token = token
            .parse()
            .map_err(|_| std::io::Error::other("corrupt fence record"))?;
        Ok(Some(Fence {
            token: FencingToken::new(token),
            grant: GrantId::from_string(grant),
        }))
    }
}

/// Replaces `path` with `bytes` atomically (a temporary file in the same directory, synced,
/// then renamed over it).
fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("fencelock-example-store"));
    let store = FileStore::new(&dir)?;
    let locks = fencelock::connect(&format!("file://{}", dir.join("locks").display())).await?;

    let first = locks.acquire("report", &LockOptions::new()).await?;
    let stale = first.fence(); // what a holder that pauses here still has
    store
        .write("report", &first.fence(), b"written by the first holder")?
        .map_err(LockError::Fenced)?;
    first.release().await?;

    let second = locks.acquire("report", &LockOptions::new()).await?;
    store
        .write("report", &second.fence(), b"written by the second holder")?
        .map_err(LockError::Fenced)?;
    // The first holder wakes up and writes with its old fence: refused.
    match store.write("report", &stale, b"stale write")? {
        Err(rejection) => println!("refused as it should be: {rejection}"),
        Ok(admission) => return Err(format!("a stale write was admitted ({admission:?})").into()),
    }
    second.release().await?;
    println!("{}", fs::read_to_string(dir.join("report")).unwrap_or_default());
    Ok(())
}
