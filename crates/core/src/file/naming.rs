//! How a key becomes file names in the lock directory.
//!
//! Every key `validate_key` accepts gets a name: short keys of safe characters verbatim
//! (readable in `ls`), all others by hash. The two forms have different prefixes, and the
//! plain form never contains `/` or starts with a dot, so no key can name `.`, `..`, a
//! path or another key's files (up to SHA-256 collisions of 128 bits). Names stay far
//! below `NAME_MAX` (255 bytes): the longest is a plain stem of 102 bytes plus
//! `.GRANT.live` (38 bytes). The scheme is unchanged since the first release, so processes
//! of different versions still share a key's files and its token counter.

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
    grant_of_live_file(stem, name).is_some()
}

/// The grant id in `name` when it is a liveness file of the key with stem `stem` (see
/// [`is_live_file_of`]).
pub(crate) fn grant_of_live_file<'a>(stem: &str, name: &'a str) -> Option<&'a str> {
    name.strip_prefix(stem)
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.strip_suffix(".live"))
        .filter(|grant| !grant.is_empty() && grant.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The grant id in `name` when it is a file election's value record of the key with stem
/// `stem`: `STEM.GRANT.leader`, with a grant id of hex digits (written by
/// `election::file`, read by the restore of a missing state, see `KeyFiles::restored`).
pub(crate) fn grant_of_leader_record<'a>(stem: &str, name: &'a str) -> Option<&'a str> {
    name.strip_prefix(stem)
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.strip_suffix(".leader"))
        .filter(|grant| !grant.is_empty() && grant.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::{is_live_file_of, live_file, stem};
    use crate::options::{validate_key, MAX_KEY_LEN};

    #[test]
    fn plain_and_hashed() {
        assert_eq!(stem("orders-42"), "k-orders-42");
        let odd = stem("a/b");
        assert!(odd.starts_with("h-") && odd.len() == 34, "{odd}");
        assert_ne!(stem("a/b"), stem("a/c"));
        assert!(stem(&"x".repeat(256)).starts_with("h-"));
        assert!(stem("..").starts_with("h-"));
    }

    /// Keys that are awkward as file names, as the conformance suite's list and more: each
    /// gets its own stem, a single path component that is not `.` or `..`, and every file
    /// name made from it stays under NAME_MAX.
    #[test]
    fn awkward_keys_get_distinct_safe_names() {
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
            "/lead",
            "trail/",
            "a//b",
            " ",
            "a b",
            "\\",
            "a:b",
            "*",
            "?",
            "#frag",
            "ñ",
            "東京",
            "🔒",
            "a\u{200b}b",
            "NUL",
            "CON",
            "-",
            "_",
            ".hidden",
            "k-x",
            "h-0123",
            "a.b",
            "a",
            "A",
        ]
        .iter()
        .map(|k| k.to_string())
        .collect();
        keys.push("x".repeat(100));
        keys.push("x".repeat(101));
        keys.push("y".repeat(256));
        keys.push("é".repeat(MAX_KEY_LEN / 2));
        keys.push("z".repeat(MAX_KEY_LEN));
        let mut seen = HashSet::new();
        for key in &keys {
            validate_key(key).unwrap_or_else(|e| panic!("{key:?}: {e}"));
            let s = stem(key);
            assert!(seen.insert(s.clone()), "{key:?} collides: {s}");
            assert!(
                !s.contains('/') && s != "." && s != ".." && !s.starts_with('.'),
                "{key:?}: {s}"
            );
            for name in [
                format!("{s}.state"),
                format!("{s}.mutex"),
                live_file(&s, &"f".repeat(32)),
            ] {
                assert!(name.len() <= 255, "{key:?}: {} bytes", name.len());
            }
        }
    }

    #[test]
    fn live_files_of_a_key_are_told_from_a_longer_key() {
        let grant = "0123456789abcdef0123456789abcdef";
        assert!(is_live_file_of("k-a", &live_file("k-a", grant)));
        assert!(!is_live_file_of("k-a", &live_file("k-a.b", grant)));
        assert!(!is_live_file_of("k-a", "k-a.state"));
        assert!(!is_live_file_of("k-a", "k-a..live"));
        // The election's value records, read by the restore, likewise.
        let record = format!("k-a.{grant}.leader");
        assert_eq!(super::grant_of_leader_record("k-a", &record), Some(grant));
        assert_eq!(
            super::grant_of_leader_record("k-a", &format!("k-a.ff.{grant}.leader")),
            None
        );
        assert_eq!(super::grant_of_leader_record("k-a", &live_file("k-a", grant)), None);
        assert_eq!(super::grant_of_leader_record("k-a", "k-a..leader"), None);
    }
}
