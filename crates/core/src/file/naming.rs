//! How a key becomes file names in the lock directory.

use sha2::{Digest, Sha256};

/// The longest key used verbatim in a file name; longer or unusual keys are hashed.
const MAX_PLAIN: usize = 100;

/// The stem of every file of `key`: `k-KEY` for short keys made of `[A-Za-z0-9._-]`
/// (readable in `ls`), `h-HASH` (SHA-256, 128 bits in hex) for all others. The prefixes keep
/// the two forms from ever colliding.
pub(crate) fn stem(key: &str) -> String {
    let plain = key.len() <= MAX_PLAIN
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if plain {
        return format!("k-{key}");
    }
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("h-{hex}")
}

/// The liveness file name of grant `grant` of the key with stem `stem`.
pub(crate) fn live_file(stem: &str, grant: &str) -> String {
    format!("{stem}.{grant}.live")
}

/// `true` when `name` is a liveness file of the key with stem `stem`: `STEM.GRANT.live`
/// with a grant id of hex digits (so the files of key `a` never match those of `a.b`).
pub(crate) fn is_live_file_of(stem: &str, name: &str) -> bool {
    name.strip_prefix(stem)
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.strip_suffix(".live"))
        .is_some_and(|grant| !grant.is_empty() && grant.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::stem;

    #[test]
    fn plain_and_hashed() {
        assert_eq!(stem("orders-42"), "k-orders-42");
        let odd = stem("a/b");
        assert!(odd.starts_with("h-") && odd.len() == 34, "{odd}");
        assert_ne!(stem("a/b"), stem("a/c"));
        assert!(stem(&"x".repeat(256)).starts_with("h-"));
        assert!(stem("..").starts_with("h-"));
    }
}
