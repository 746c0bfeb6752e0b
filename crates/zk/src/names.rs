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

/// The sequence number ZooKeeper appended to a child's name: `%010d` of the parent's
/// `cversion`, a signed 32-bit counter that wraps past 2147483647 to -2147483648. So the
/// suffix is 10 characters — 10 digits, or `-` and 9 digits (-999999999 to -1) — or, after
/// the wrap, 11: `-` and 10 digits (-2147483648 to -1000000000). The 11-character form is
/// read only after a separator (`-` or `_`), which every layout's prefix ends with (`-lock-`,
/// `__lock__`): `…-lock--1234567890` is -1234567890, `…-lock-1234567890` is 1234567890.
/// Every child named so counts, whatever library made it — fencelock's `…-lock-SEQ`,
/// Curator's `_c_UUID-lock-SEQ`, kazoo's `HEX__lock__SEQ` — so a foreign contender is never
/// ignored. A number outside `i32` is no sequence ZooKeeper made (`None`).
pub(crate) fn sequence(name: &str) -> Option<i32> {
    split_sequence(name).map(|(_, seq)| seq)
}

/// A sequenced child's name split into the prefix its creator gave and the sequence
/// number ZooKeeper appended ([`sequence`]).
pub(crate) fn split_sequence(name: &str) -> Option<(&str, i32)> {
    let len = name.len();
    // After the wrap: `-` and 10 digits, after a separator (or alone).
    if let Some(at) = len.checked_sub(11) {
        let b = name.as_bytes();
        let after_separator = at == 0 || matches!(b[at - 1], b'-' | b'_');
        if after_separator && b[at] == b'-' && b[at + 1..].iter().all(u8::is_ascii_digit) {
            if let Ok(seq) = name[at..].parse::<i32>() {
                if seq <= -1_000_000_000 {
                    return Some((&name[..at], seq));
                }
            }
        }
    }
    let at = len.checked_sub(10)?;
    let tail = name.get(at..)?;
    let digits = tail.strip_prefix('-').unwrap_or(tail);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((&name[..at], tail.parse().ok()?))
}

/// Whether sequence `a` was given before `b` under one parent: serial-number arithmetic
/// (RFC 1982) over the wrapping 32-bit counter, so -2147483648 (given right after the
/// wrap) comes after 2147483647. Right while the live nodes of one key span fewer than
/// 2^31 changes of the parent's children (each create and each delete counts one): far
/// beyond any queue, but not checked.
pub(crate) fn precedes(a: i32, b: i32) -> bool {
    b.wrapping_sub(a) > 0
}

/// The sequenced children among `children`, oldest first: the queue. Ordered by
/// [`precedes`] from the oldest (a total order, whatever the numbers: sorting never
/// panics); equal numbers by name.
pub(crate) fn queue_order(children: Vec<String>) -> Vec<String> {
    let mut queue: Vec<(i32, String)> = children
        .into_iter()
        .filter_map(|c| sequence(&c).map(|s| (s, c)))
        .collect();
    let Some(oldest) = queue
        .iter()
        .map(|(s, _)| *s)
        .reduce(|m, s| if precedes(s, m) { s } else { m })
    else {
        return Vec::new();
    };
    let since_oldest = |s: i32| (i64::from(s) - i64::from(oldest)).rem_euclid(1 << 32);
    queue.sort_by(|(a, x), (b, y)| since_oldest(*a).cmp(&since_oldest(*b)).then_with(|| x.cmp(y)));
    queue.into_iter().map(|(_, c)| c).collect()
}

/// Our node among `children`: the one named `prefix` (which holds our grant id) and a
/// sequence number.
pub(crate) fn find_ours(children: &[String], prefix: &str) -> Option<String> {
    children
        .iter()
        .find(|c| split_sequence(c).is_some_and(|(stem, _)| stem == prefix))
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
            ("x-lock--999999999", Some(-999_999_999)),
            ("x-lock-2147483647", Some(2_147_483_647)),
            ("x-lock-2147483648", None), // not a 32-bit counter's
            ("kazoo__lock__-2147483647", Some(-2_147_483_647)),
            ("old-abc--1000000000", Some(-1_000_000_000)),
            ("old-abc-1000000000", Some(1_000_000_000)),
            ("lease_holder", None),
            ("123456789", None),
            ("lock-+000000001", None),
            ("ñ00000000", None),
        ] {
            assert_eq!(sequence(name), seq, "{name}");
        }
    }

    /// ZooKeeper's suffix is `%010d` of a signed 32-bit counter that wraps: after
    /// 2147483647 comes `-2147483648`, 11 characters (a review; ZooKeeper's programmer's
    /// guide: "the counter will overflow when incremented beyond 2147483647 (resulting in a
    /// name "<path>-2147483648")"). Taking the last 10 characters read it as +2147483648,
    /// and the next ones as ever smaller numbers.
    #[test]
    fn a_sequence_after_the_counter_wrapped_has_eleven_characters() {
        assert_eq!(sequence("lock-g-lock--2147483648"), Some(-2_147_483_648));
        assert_eq!(sequence("lock-g-lock--2147483647"), Some(-2_147_483_647));
        assert_eq!(sequence("lock-g-lock--1000000000"), Some(-1_000_000_000));
        assert_eq!(sequence("lock-g-lock-2147483647"), Some(2_147_483_647));
        assert_eq!(sequence("lock-g-lock-1000000000"), Some(1_000_000_000));
    }

    #[test]
    fn our_node_is_found_after_the_counter_wrapped() {
        let children = vec!["lock-g-lock--2147483648".to_owned()];
        assert_eq!(
            find_ours(&children, "lock-g-lock-").as_deref(),
            Some("lock-g-lock--2147483648")
        );
        // Not a node of grant `g-lock-` (whose name would be `…-lock--lock-SEQ`).
        assert_eq!(find_ours(&children, "lock-g-lock--"), None);
    }

    /// The queue runs on across the wrap: 2147483647 before -2147483648 before -2147483646.
    #[test]
    fn the_queue_is_ordered_across_the_counter_s_wrap() {
        let listed = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let want = listed(&["a-lock-2147483647", "b-lock--2147483648", "c-lock--2147483646"]);
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]] {
            let children = order.iter().map(|i| want[*i].clone()).collect();
            assert_eq!(queue_order(children), want);
        }
        // Across the sign change near zero too, and the unsequenced left out.
        let children = listed(&["x-lock-0000000001", "lease", "y-lock--000000001", "z-lock-0000000000"]);
        assert_eq!(
            queue_order(children),
            listed(&["y-lock--000000001", "z-lock-0000000000", "x-lock-0000000001"])
        );
        assert!(precedes(i32::MAX, i32::MIN) && !precedes(i32::MIN, i32::MAX));
    }
}
