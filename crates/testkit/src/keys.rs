//! Unique names for tests that share a server.

use std::sync::atomic::{AtomicU64, Ordering};

/// `PREFIX-PID-N-RANDOM`: unique within this process and, with overwhelming probability,
/// across processes and earlier runs against the same server.
pub fn unique_key(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{salt:08x}", std::process::id())
}
