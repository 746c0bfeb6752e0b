//! Node names: a key's node under the chroot, and our lock nodes' names inside it.
//!
//! A key becomes ONE znode name (so `a/b` is not a path of two nodes). ZooKeeper refuses
//! some names: `.` and `..` (relative paths), and the characters its `PathUtils` rejects —
//! U+0000–U+001F, U+007F–U+009F, U+D800–U+F8FF, U+FFF0–U+FFFF, and every character outside
//! the BMP (Java stores those as surrogates, which fall in the refused range). Those
//! characters, and `%` and `/`, are written as `%XX` per UTF-8 byte; `.` and `..` as
//! `%2E`/`%2E%2E`. A literal `%` is always escaped, so the encoding is injective: `a/b`
//! (`a%2Fb`) and `a%2Fb` (`a%252Fb`) stay distinct. Every other key is its own name, as
//! before this encoding existed, so nodes made by earlier versions are found again.
//! `zookeeper` needs no care: only the root's `/zookeeper` is reserved, and keys live under
//! the chroot, which is never `/`.

use std::fmt::Write as _;

/// The name of the node under which `key`'s lock nodes queue (directly under the chroot).
pub(crate) fn key_node(key: &str) -> String {
    if key == "." || key == ".." {
        return key.replace('.', "%2E");
    }
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        if c == '%' || c == '/' || refused_by_zookeeper(c) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The characters ZooKeeper's path validation refuses (server `PathUtils.validatePath`,
/// mirrored by zookeeper-client's `validate_path`).
pub(crate) fn refused_by_zookeeper(c: char) -> bool {
    matches!(u32::from(c), 0..=0x1f | 0x7f..=0x9f | 0xd800..=0xf8ff | 0xfff0..)
}

/// `/KEYNODE`: the key's node, relative to the chroot.
pub(crate) fn key_dir(key: &str) -> String {
    format!("/{}", key_node(key))
}

/// The sequence number ZooKeeper appended to a child's name: its last 10 characters
/// (`%010d`, so a negative number after the parent's counter overflowed is `-` and 9
/// digits). Every child named so counts, whatever library made it — fencelock's
/// `…-lock-SEQ`, Curator's `_c_UUID-lock-SEQ`, kazoo's `HEX__lock__SEQ` — so a foreign
/// contender is never ignored.
pub(crate) fn sequence(name: &str) -> Option<i64> {
    let tail = name.get(name.len().checked_sub(10)?..)?;
    let digits = tail.strip_prefix('-').unwrap_or(tail);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    tail.parse().ok()
}

/// Our node among `children`: the one named `prefix` (which holds our grant id) and a
/// sequence number.
pub(crate) fn find_ours(children: &[String], prefix: &str) -> Option<String> {
    children
        .iter()
        .find(|c| c.strip_prefix(prefix).is_some_and(|rest| rest.len() == 10) && sequence(c).is_some())
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_keys_are_their_own_names() {
        for k in ["orders", "a b", "東京", "zookeeper", "...", "lock-0000000001", "ñ"] {
            assert_eq!(key_node(k), k);
        }
    }

    #[test]
    fn refused_names_and_separators_are_escaped() {
        assert_eq!(key_node("."), "%2E");
        assert_eq!(key_node(".."), "%2E%2E");
        assert_eq!(key_node("a/b"), "a%2Fb");
        assert_eq!(key_node("a%2Fb"), "a%252Fb");
        assert_eq!(key_node("🔒"), "%F0%9F%94%92");
        assert_eq!(key_node("\u{e000}"), "%EE%80%80");
    }

    #[test]
    fn every_awkward_key_has_its_own_valid_name() {
        let keys = [
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
            "%2E",
            "%2E%2E",
            "🔒",
            "\u{fff0}",
            "\u{85}",
            "a\u{200b}b",
        ];
        let names: std::collections::HashSet<String> = keys.iter().map(|k| key_node(k)).collect();
        assert_eq!(names.len(), keys.len(), "two keys share a node name");
        for k in keys {
            let n = key_node(k);
            assert!(n != "." && n != ".." && !n.contains('/'), "{k:?} -> {n:?}");
            assert!(!n.chars().any(refused_by_zookeeper), "{k:?} -> {n:?}");
        }
    }

    #[test]
    fn finds_our_node_by_grant_id_only() {
        let children = vec![
            "lock-abcd-lock-0000000001".to_owned(),
            "lock-abc-lock-0000000002".to_owned(),
        ];
        assert_eq!(
            find_ours(&children, "lock-abc-lock-").as_deref(),
            Some("lock-abc-lock-0000000002")
        );
        assert_eq!(find_ours(&children[..1], "lock-abc-lock-"), None);
    }

    #[test]
    fn every_library_s_sequence_counts() {
        for (name, seq) in [
            ("lock-abc-lock-0000000002", Some(2)),
            ("lock-abc-0000000007", Some(7)), // fencelock before issue 17
            ("_c_0f7c1a4e-1111-2222-3333-444455556666-lock-0000000013", Some(13)),
            ("5f1d3a6c2e8b4f0a9c7d1e2f3a4b5c6d__lock__0000000021", Some(21)),
            ("x-lock--000000005", Some(-5)),
            ("lease_holder", None),
            ("123456789", None),
            ("lock-+000000001", None),
            ("ñ00000000", None),
        ] {
            assert_eq!(sequence(name), seq, "{name}");
        }
    }
}
