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

/// Keys that `validate_key` accepts but that servers treat specially: path segments and
/// separators, percent signs (so an escape cannot collide with a literal), names the
/// servers reserve, other libraries' node-name markers, non-ASCII, the maximum length.
/// Each is used as it is (no unique prefix), so a test using them owns its server.
pub fn awkward_keys() -> Vec<String> {
    let mut keys: Vec<String> = [
        ".",
        "..",
        "...",
        "/",
        "//",
        "a/b",
        "a%2Fb",
        "a%2fb",
        "%",
        "%%",
        "/lead",
        "trail/",
        "a//b",
        " ",
        "a b",
        " pad ",
        "\\",
        "a:b",
        "*",
        "?",
        "#frag",
        "[x]",
        "{x}",
        "'\"",
        "~",
        "-",
        "_",
        "zookeeper",
        "lock-0000000001",
        "_c_0f7c1a4e-lock-",
        "x__lock__0000000001",
        "ñ",
        "東京",
        "🔒",
        "a\u{200b}b",
        "NUL",
        "CON",
    ]
    .iter()
    .map(|k| (*k).to_owned())
    .collect();
    keys.push("k".repeat(fencelock_core::options::MAX_KEY_LEN));
    keys.push("é".repeat(fencelock_core::options::MAX_KEY_LEN / 2));
    keys.push(format!("{}/{}", "d".repeat(120), "e".repeat(120)));
    keys
}
