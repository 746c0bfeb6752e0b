//! Backend URLs: the one parser of every server backend's URL, and the one redaction of
//! the passwords in them.
//!
//! The form is `SCHEME://[USER[:PASSWORD]@]HOST[:PORT][,HOST[:PORT]...][/PATH][?KEY=VALUE&...]`.
//!
//! * USER, PASSWORD and query keys and values are percent-decoded (`%40` is `@`). Inside a
//!   password, `/`, `?` and `#` must be percent-encoded (`%2F`, `%3F`, `%23`), as RFC 3986
//!   says; `@` and `:` may be written as they are (the host starts after the *last* `@`,
//!   the password after the *first* `:`).
//! * A literal `@` after the hosts, or a `#` anywhere, is refused with a message that says
//!   how to encode it: such a URL would be ambiguous (is `redis://u:a/b@h` a password
//!   `a/b` or host `u` port `a`?), and an ambiguous URL cannot be redacted with certainty.
//! * Each host is parsed by the [`url`] crate (IPv6 in brackets, `[::1]:6379`; a port
//!   that is not a `u16` is refused). The `url` crate does not parse an authority that
//!   lists several hosts (`h1:1,h2:2`), so the list is split here, in this one place, and
//!   each host is handed to `url` on its own.
//!
//! Messages and `Debug` show a URL through [`BackendUrl::redacted`] (or [`redact`] for
//! text that did not parse): the password, and any `password=` query value, become `***`.

use std::borrow::Cow;
use std::fmt;

use percent_encoding::percent_decode_str;

use crate::{LockError, Result};

/// One host of a backend URL, as the [`url`] crate parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// The host name or address; an IPv6 address without its brackets.
    pub host: String,
    /// Whether `host` is an IPv6 address (written in brackets in URLs and `HOST:PORT`).
    pub ipv6: bool,
    /// The port, when the URL gives one.
    pub port: Option<u16>,
}

impl HostPort {
    /// `HOST:PORT` with `default` when the URL gives no port; an IPv6 host in brackets.
    pub fn address(&self, default: u16) -> String {
        format!("{}:{}", self.bracketed(), self.port.unwrap_or(default))
    }

    /// `HOST:PORT`, or `None` when the URL gives no port.
    pub fn address_with_port(&self) -> Option<String> {
        self.port.map(|p| format!("{}:{p}", self.bracketed()))
    }

    /// The host as written in a URL: an IPv6 address in brackets.
    pub fn bracketed(&self) -> Cow<'_, str> {
        if self.ipv6 {
            Cow::Owned(format!("[{}]", self.host))
        } else {
            Cow::Borrowed(&self.host)
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.bracketed()),
            None => f.write_str(&self.bracketed()),
        }
    }
}

/// One `KEY=VALUE` of the query.
#[derive(Clone, PartialEq, Eq)]
pub struct QueryPair {
    /// The key, percent-decoded.
    pub key: String,
    /// The value, percent-decoded (`""` for a key without `=`).
    pub value: String,
    /// The pair as written, for handing on to a client library unchanged.
    pub raw: String,
}

impl fmt::Debug for QueryPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = if is_secret_key(&self.key) { "***" } else { &self.value };
        write!(f, "{}={value:?}", self.key)
    }
}

/// A parsed backend URL (see the [module docs](self) for the form). `Debug` and
/// `Display` show it redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendUrl {
    scheme: String,
    user: Option<String>,
    password: Option<String>,
    hosts: Vec<HostPort>,
    path: String,
    query: Vec<QueryPair>,
    /// The URL as written, up to the `?`.
    raw_base: String,
    /// The user as written (percent-encoded), for the redacted form.
    raw_user: Option<String>,
    /// The hosts as written.
    raw_hosts: String,
}

impl BackendUrl {
    /// Parses `url`.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] naming the URL (redacted) and what is wrong: no
    /// `SCHEME://`, a `#`, a literal `@` after the hosts, an empty host in a list, a host
    /// or port the `url` crate refuses, a percent-encoding that is not UTF-8.
    pub fn parse(url: &str) -> Result<Self> {
        parse(url).map_err(|e| e.into_lock_error(url))
    }

    /// The scheme, lowercased.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The user, percent-decoded; `None` when the URL has none (or an empty one).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The password, percent-decoded; `None` when the URL has none.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The hosts, in order; empty when the URL has none (`postgres:///db`).
    pub fn hosts(&self) -> &[HostPort] {
        &self.hosts
    }

    /// The path as written, from its `/` on (`""` when there is none). Not decoded: a
    /// backend that takes a path (a key prefix, a chroot, a database) says how it reads it.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The path, percent-decoded; `what` names it in the error.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] when the decoded path is not UTF-8.
    pub fn path_decoded(&self, what: &str) -> Result<String> {
        decode(what, &self.path).map_err(|e| self.invalid(e.why))
    }

    /// The query's pairs, in order.
    pub fn query(&self) -> &[QueryPair] {
        &self.query
    }

    /// The URL as written up to the `?`: for a client library that parses the same form
    /// itself (it carries the password; never show it).
    pub fn raw_base(&self) -> &str {
        &self.raw_base
    }

    /// The URL as written up to the `?`, without the user and password: for a client
    /// library that parses the rest itself and takes the (decoded) credentials apart.
    pub fn raw_base_without_userinfo(&self) -> String {
        format!("{}://{}{}", self.scheme, self.raw_hosts, self.path)
    }

    /// The same URL with only host `i` (for a backend that gives each host a client).
    pub fn with_only_host(&self, i: usize) -> Option<BackendUrl> {
        let host = self.hosts.get(i)?.clone();
        let raw_hosts = host.to_string();
        let raw_base = self.raw_base.replacen(&self.raw_hosts, &raw_hosts, 1);
        Some(BackendUrl {
            hosts: vec![host],
            raw_hosts,
            raw_base,
            ..self.clone()
        })
    }

    /// The URL with the password and any `password=` query value replaced by `***`, for
    /// messages and logs.
    pub fn redacted(&self) -> String {
        let mut out = self.redacted_base();
        if !self.query.is_empty() {
            out.push('?');
            let pairs: Vec<String> = self
                .query
                .iter()
                .map(|p| {
                    if is_secret_key(&p.key) {
                        format!("{}=***", p.raw.split('=').next().unwrap_or(""))
                    } else {
                        p.raw.clone()
                    }
                })
                .collect();
            out.push_str(&pairs.join("&"));
        }
        out
    }

    /// [`redacted`](Self::redacted) without the query: what a backend shows as its server.
    pub fn redacted_base(&self) -> String {
        let mut out = format!("{}://", self.scheme);
        out.push_str(&self.redacted_userinfo());
        out.push_str(&self.raw_hosts);
        out.push_str(&self.path);
        out
    }

    /// `USER:***@`, `USER@`, `:***@` or `""`, as written but with the password hidden.
    pub fn redacted_userinfo(&self) -> String {
        let user = self.raw_user.as_deref().unwrap_or("");
        match (&self.password, user) {
            (Some(_), u) => format!("{u}:***@"),
            (None, "") => String::new(),
            (None, u) => format!("{u}@"),
        }
    }

    /// An [`LockError::InvalidConfig`] "`URL`: why", with the URL redacted.
    pub fn invalid(&self, why: impl fmt::Display) -> LockError {
        LockError::invalid_config(format!("`{}`: {why}", self.redacted()))
    }

    /// Checks the scheme is one of `schemes`.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] "a NAME URL starts with S1:// or S2://".
    pub fn expect_scheme(&self, schemes: &[&str], name: &str) -> Result<()> {
        if schemes.contains(&self.scheme.as_str()) {
            return Ok(());
        }
        let list: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
        Err(self.invalid(format!("a {name} URL starts with {}", list.join(" or "))))
    }

    /// Refuses a user or password, for a backend that takes none in the authority.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] when the URL has a user or a password.
    pub fn expect_no_userinfo(&self, instead: &str) -> Result<()> {
        if self.user.is_some() || self.password.is_some() {
            return Err(self.invalid(format!("no user or password before the host here; {instead}")));
        }
        Ok(())
    }
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BackendUrl").field(&self.redacted()).finish()
    }
}

/// `url` with any password hidden, for messages about text that may not parse: a URL that
/// parses is shown as [`BackendUrl::redacted`]. In anything else, every `password=` query
/// value is hidden up to the next `&`, and so is a password before the host: everything
/// from the first `:` after `://` up to the `@` that ends the user info (see
/// `userinfo_end`), by the parser's rule (the host starts after the last `@`, the
/// password after the first `:`). With no `:` before that `@` there is no password, only
/// a user, shown as written; with no such `@` nothing before the query is hidden.
///
/// Where the text can be read two ways — `redis://u:1/RET@h` is host `u`, port `1` and a
/// path holding an `@`, or user `u` with a password `1/RET` whose `/` was not encoded —
/// it is read the way that hides more: safety first. So a port can be hidden with a
/// password that may follow it (`redis://cache:6379?prefix=a@b` is shown
/// `redis://cache:***@b`); an `@` after the hosts hides nothing only where it certainly
/// ends no password (see `userinfo_end`).
///
/// Both spans are found in the text as given and hidden together: hidden one after the
/// other, the first could swallow what marks the second (an `@` inside a `password=`
/// value moved "the last `@`" past the `?password=` that would have hidden the rest).
pub fn redact(url: &str) -> String {
    if let Ok(parsed) = parse(url) {
        return parsed.redacted();
    }
    let mut hidden = secret_values(url); // byte ranges of `url`, end exclusive
    let start = url.find("://").map_or(0, |i| i + 3);
    if let Some(at) = userinfo_end(url, start, &hidden) {
        if let Some(colon) = url[start..at].find(':').map(|i| start + i) {
            hidden.push((colon + 1, at));
        }
    }
    hidden.sort_unstable();
    let mut out = String::with_capacity(url.len());
    let mut shown_to = 0;
    let mut spans = hidden.into_iter().peekable();
    while let Some((begin, mut end)) = spans.next() {
        while let Some(&(next_begin, next_end)) = spans.peek() {
            if next_begin > end {
                break;
            }
            end = end.max(next_end);
            spans.next();
        }
        out.push_str(&url[shown_to..begin.max(shown_to)]);
        out.push_str("***");
        shown_to = shown_to.max(end);
    }
    out.push_str(&url[shown_to..]);
    out
}

/// The byte ranges (end exclusive) of every `password=` value in `url`, each up to the
/// next `&`: after any `?` or `&`, wherever it is (in a password too: hiding more).
fn secret_values(url: &str) -> Vec<(usize, usize)> {
    let mut values = Vec::new();
    let mut from = 0;
    while let Some(sep) = url[from..].find(['?', '&']).map(|i| from + i) {
        let key = sep + 1;
        let key_end = key + url[key..].find(['=', '&']).unwrap_or(url.len() - key);
        if url[key_end..].starts_with('=') && is_secret_key(&decode_lossy(&url[key..key_end])) {
            let value = key_end + 1;
            values.push((value, value + url[value..].find('&').unwrap_or(url.len() - value)));
        }
        from = key;
    }
    values
}

/// The `@` that ends the user info of `url` (which did not parse; its authority starts
/// at `start`), read as [`redact`] says: the last `@` of the text, as the parser reads
/// it, since a password written with `/`, `?` or `#` unencoded runs past where the
/// authority would end by RFC 3986 (at the first `/`, `?` or `#`). An `@` after that
/// point is passed over only where the authority certainly ends there: it is a list of
/// hosts (after the authority's own last `@`, if any) that parses, and
///
/// * the list is empty (`postgres:///db`, `file:///tmp/a@b`), or its first host is an IP
///   address or `localhost`: the other reading would take that host for a user's name
///   (`etcd://127.0.0.1:2379/a@b` as user `127.0.0.1`, password `2379/a`); every later `@`
///   is passed over;
/// * or the `@` is inside a `password=` value after the authority (`secret_values`, hidden
///   anyway): the other reading would need a password holding `?password=`.
///
/// A host name (`redis://u:1/RET@h`) may be a user's name: an `@` after it still counts.
fn userinfo_end(url: &str, start: usize, secret_values: &[(usize, usize)]) -> Option<usize> {
    let authority_end = url[start..].find(['/', '?', '#']).map_or(url.len(), |i| start + i);
    let authority = &url[start..authority_end];
    let own_at = authority.rfind('@').map(|i| start + i);
    let hosts: Option<Vec<HostPort>> = if authority.is_empty() {
        Some(Vec::new())
    } else {
        url[own_at.map_or(start, |at| at + 1)..authority_end]
            .split(',')
            .map(|h| parse_host(h).ok())
            .collect()
    };
    let Some(hosts) = hosts else {
        return url.rfind('@').filter(|&at| at >= start);
    };
    let certain = hosts.first().is_none_or(|h| {
        h.ipv6 || h.host.parse::<std::net::Ipv4Addr>().is_ok() || h.host.eq_ignore_ascii_case("localhost")
    });
    if certain {
        return own_at;
    }
    let in_secret_value = |at: usize| {
        secret_values
            .iter()
            .any(|&(begin, end)| begin > authority_end && (begin..end).contains(&at))
    };
    url[authority_end..]
        .rmatch_indices('@')
        .map(|(i, _)| authority_end + i)
        .find(|&at| !in_secret_value(at))
        .or(own_at)
}

/// What [`with_query_option`] does when the URL already sets the option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfSet {
    /// Leave the URL's own value: the option is a default the URL may override.
    Keep,
    /// Replace the URL's value (every occurrence of the key) with the new one.
    Replace,
}

/// The characters a query key or value keeps as written; every other byte is
/// percent-encoded, so that the parser here (which percent-decodes, and reads `+` as
/// itself) reads back exactly `key` and `value`.
const QUERY_COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `url` with the query option `key=value` added, or (with [`IfSet::Replace`]) replacing
/// the value the URL gives it. Everything else stays as written, byte for byte: the user
/// and password, a host list (`h1:1,h2:2`, which the [`url`] crate cannot parse), the path
/// and the other options in their order. `key` and `value` are percent-encoded as needed.
///
/// The query starts at the first `?`, the rule of [`BackendUrl::parse`] (a `?` in a
/// password must be written `%3F`) and of `file://` URLs alike; a key is matched
/// percent-decoded, only among the query's keys (never in a password or a path). A URL
/// that does not parse is handled by the same rule, so that the backend's own parser
/// reports what is wrong with it.
pub fn with_query_option(url: &str, key: &str, value: &str, if_set: IfSet) -> String {
    let url = url.trim();
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let encode = |s: &str| percent_encoding::utf8_percent_encode(s, QUERY_COMPONENT).to_string();
    let new_pair = format!("{}={}", encode(key), encode(value));
    let is_key = |pair: &&str| decode_lossy(pair.split('=').next().unwrap_or("")) == key;
    let pairs: Vec<&str> = query.unwrap_or("").split('&').filter(|p| !p.is_empty()).collect();
    let mut out: Vec<String> = Vec::with_capacity(pairs.len() + 1);
    let mut set = false;
    for pair in &pairs {
        if !is_key(pair) {
            out.push((*pair).to_owned());
        } else if if_set == IfSet::Keep {
            return url.to_owned();
        } else if !set {
            out.push(new_pair.clone());
            set = true;
        }
    }
    if !set {
        out.push(new_pair);
    }
    format!("{base}?{}", out.join("&"))
}

fn decode_lossy(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

fn is_secret_key(key: &str) -> bool {
    key.eq_ignore_ascii_case("password")
}

/// What is wrong, before the URL is known to be safe to show.
struct ParseError {
    why: String,
    source: Option<url::ParseError>,
}

impl ParseError {
    fn new(why: impl Into<String>) -> Self {
        ParseError {
            why: why.into(),
            source: None,
        }
    }

    fn into_lock_error(self, url: &str) -> LockError {
        LockError::InvalidConfig {
            message: format!("`{}`: {}", redact(url), self.why),
            source: self.source.map(|e| Box::new(e) as crate::BoxError),
        }
    }
}

fn decode(what: &str, s: &str) -> std::result::Result<String, ParseError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|_| ParseError::new(format!("the {what} is not UTF-8 once percent-decoded")))
}

fn parse(url: &str) -> std::result::Result<BackendUrl, ParseError> {
    let url = url.trim();
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| ParseError::new("not a URL: expected SCHEME://HOST..."))?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err(ParseError::new(format!("`{scheme}` is not a URL scheme")));
    }
    if url.contains('#') {
        return Err(ParseError::new(
            "a `#` is not allowed here: in a password or an option write it as %23",
        ));
    }
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    if after.contains('@') {
        return Err(ParseError::new(
            "an `@` after the host: percent-encode `/` and `?` in a password (%2F, %3F), and write a literal `@` after the host as %40",
        ));
    }
    let (path, raw_query) = match after.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (after, None),
    };
    // The host list starts after the last `@`: a password may hold `@` and `:`.
    let (userinfo, raw_hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (mut raw_user, mut user, mut password) = (None, None, None);
    if let Some(info) = userinfo {
        let (u, p) = match info.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (info, None),
        };
        if !u.is_empty() {
            raw_user = Some(u.to_owned());
            user = Some(decode("user", u)?);
        }
        password = p.map(|p| decode("password", p)).transpose()?;
    }
    let hosts: Vec<HostPort> = if raw_hosts.is_empty() {
        Vec::new()
    } else {
        raw_hosts
            .split(',')
            .map(parse_host)
            .collect::<std::result::Result<_, _>>()?
    };
    let mut query = Vec::new();
    for raw in raw_query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = raw.split_once('=').unwrap_or((raw, ""));
        let key = decode("option name", k)?;
        let value = decode(&format!("value of `{key}`"), v)?;
        if query.iter().any(|p: &QueryPair| p.key == key) {
            return Err(ParseError::new(format!("option `{key}` is given twice; give it once")));
        }
        query.push(QueryPair {
            key,
            value,
            raw: raw.to_owned(),
        });
    }
    Ok(BackendUrl {
        scheme: scheme.to_ascii_lowercase(),
        user,
        password,
        hosts,
        path: path.to_owned(),
        query,
        raw_base: format!("{scheme}://{authority}{path}"),
        raw_user,
        raw_hosts: raw_hosts.to_owned(),
    })
}

/// One `HOST[:PORT]` of the list, given to the `url` crate on its own (it parses one
/// authority, not a list).
fn parse_host(raw: &str) -> std::result::Result<HostPort, ParseError> {
    if raw.is_empty() {
        return Err(ParseError::new("an empty host in the list: write HOST:PORT,HOST:PORT"));
    }
    let bad = |e: url::ParseError| {
        // `h:1;h:2`, `h:1 h:2`: a list written with another separator.
        let hint = if raw.contains(|c: char| c == ';' || c.is_whitespace()) {
            " (hosts are separated by commas: HOST:PORT,HOST:PORT)".to_owned()
        // `::1:6379`: an IPv6 address, whose colons cannot be told from the port's.
        } else if raw.matches(':').count() > 1 && !raw.starts_with('[') {
            let (addr, port) = raw.rsplit_once(':').unwrap_or((raw, "PORT"));
            format!(" (an IPv6 address goes in brackets: [{addr}]:{port})")
        } else {
            String::new()
        };
        ParseError {
            why: format!("bad host `{raw}`: {e}{hint}"),
            source: Some(e),
        }
    };
    // A scheme the `url` crate has no defaults for: no port is dropped as "the default",
    // no host is rewritten, an IPv6 address is checked.
    let parsed = url::Url::parse(&format!("fencelock-host://{raw}")).map_err(bad)?;
    let (host, ipv6) = match parsed.host() {
        Some(url::Host::Ipv6(a)) => (a.to_string(), true),
        Some(url::Host::Ipv4(a)) => (a.to_string(), false),
        Some(url::Host::Domain(d)) if !d.is_empty() => (d.to_owned(), false),
        _ => {
            return Err(ParseError::new(format!(
                "bad host `{raw}`: no host name before the port"
            )))
        }
    };
    if !parsed.path().is_empty() {
        return Err(ParseError::new(format!("bad host `{raw}`")));
    }
    // Port 0 asks the OS for any free port when binding: no server listens on it, so a
    // connect could only fail, as unreachable (69) rather than as the URL's mistake.
    if parsed.port() == Some(0) {
        return Err(ParseError::new(format!(
            "bad host `{raw}`: port 0 is not a server's port"
        )));
    }
    // `h:` is a valid authority to the URL standard (an empty port means the scheme's
    // default), but in a list of servers it is far more likely a port left out by mistake;
    // taking the default would point the client at another server (or none) with only a
    // warning, so it is refused. Leave out the colon too to mean the default port.
    if parsed.port().is_none() && raw.ends_with(':') {
        return Err(ParseError::new(format!(
            "bad host `{raw}`: no port after the `:` (give the port, or leave out the `:` for the default)"
        )));
    }
    Ok(HostPort {
        host,
        ipv6,
        port: parsed.port(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which of two values wins is a guess the reader should not have to make: an option
    /// given twice is refused. An IPv6 address without brackets gets the form to use.
    #[test]
    fn repeated_options_and_bare_ipv6_are_refused_with_the_fix() {
        let e = BackendUrl::parse("etcd://127.0.0.1:2379?session_ttl=2s&session_ttl=5s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`session_ttl` is given twice"), "{e}");
        let e = BackendUrl::parse("redis://::1:6379").unwrap_err().to_string();
        assert!(e.contains("[::1]:6379"), "{e}");
    }

    #[test]
    fn parses_every_part_and_decodes_credentials() {
        let u = BackendUrl::parse("redis://us%65r:p%40ss@h:1/2?prefix=a%26b&timeout=1s&flag").unwrap();
        assert_eq!(u.scheme(), "redis");
        assert_eq!(u.user(), Some("user"));
        assert_eq!(u.password(), Some("p@ss"));
        assert_eq!(
            u.hosts(),
            [HostPort {
                host: "h".into(),
                ipv6: false,
                port: Some(1)
            }]
        );
        assert_eq!(u.path(), "/2");
        let q: Vec<(&str, &str)> = u.query().iter().map(|p| (p.key.as_str(), p.value.as_str())).collect();
        assert_eq!(q, [("prefix", "a&b"), ("timeout", "1s"), ("flag", "")]);
        assert_eq!(u.redacted(), "redis://us%65r:***@h:1/2?prefix=a%26b&timeout=1s&flag");
    }

    #[test]
    fn ipv6_and_host_lists() {
        let u = BackendUrl::parse("etcd://[::1]:2379,127.0.0.1:2,name/pre").unwrap();
        let hosts: Vec<String> = u.hosts().iter().map(|h| h.address(9)).collect();
        assert_eq!(hosts, ["[::1]:2379", "127.0.0.1:2", "name:9"]);
        assert!(u.hosts()[0].ipv6);
        assert_eq!(u.hosts()[0].host, "::1");
        assert_eq!(u.path(), "/pre");
        let one = u.with_only_host(1).unwrap();
        assert_eq!(one.hosts().len(), 1);
        assert_eq!(one.raw_base(), "etcd://127.0.0.1:2/pre");
        assert!(BackendUrl::parse("postgres:///db").unwrap().hosts().is_empty());
    }

    #[test]
    fn passwords_with_special_characters_never_show() {
        // Written as they may be: `@` and `:` literally; `/`, `?`, `#` encoded.
        for (url, password) in [
            ("redis://:p@ss@h:1", "p@ss"),
            ("redis://u:p:ss@h:1/0", "p:ss"),
            ("redis://:p%2Fss@h:1", "p/ss"),
            ("redis://:p%3Fss@h:1?timeout=1s", "p?ss"),
            ("redis://:p%23ss@h:1", "p#ss"),
            ("redis://:%40%2F%3F%23%3A@[::1]:1", "@/?#:"),
        ] {
            let u = BackendUrl::parse(url).unwrap();
            assert_eq!(u.password(), Some(password), "{url}");
            for shown in [u.redacted(), format!("{u:?}"), u.to_string(), redact(url)] {
                assert!(shown.contains(":***@"), "{url}: {shown}");
                assert!(!shown.contains("ss") && !shown.contains("%40"), "{url} leaks: {shown}");
            }
        }
    }

    #[test]
    fn ambiguous_urls_are_refused_and_redacted_conservatively() {
        for (url, says) in [
            ("redis://:Sec/RET@h:1", "percent-encode"),
            ("redis://u:Sec?RET@h:1", "percent-encode"),
            ("redis://:Sec#RET@h:1", "%23"),
            ("redis://u:1/RET@h", "percent-encode"),
            ("redis://h:1?prefix=a@b", "%40"),
        ] {
            let e = BackendUrl::parse(url).unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("Sec") && !e.contains("RET"), "{url} leaks: {e}");
        }
        assert_eq!(redact("redis://:Sec/RET@h:1"), "redis://:***@h:1");
        assert_eq!(
            redact("etcd://h:1?user=u&password=x%26y&k=v"),
            "etcd://h:1?user=u&password=***&k=v"
        );
        assert_eq!(redact("etcd://h:x?password=s&k=v"), "etcd://h:x?password=***&k=v");
        assert_eq!(redact("no url at all"), "no url at all");
    }

    /// Only a password is hidden, in text that does not parse too: a user without one is
    /// shown, so the message says whose URL it is. Found by a new-user trial: a
    /// PostgreSQL URL with a bad port, `postgres://u@h:x/db`, was quoted as
    /// `postgres://***@h:x/db`, as if it held a password.
    #[test]
    fn a_user_without_a_password_is_shown_in_text_that_does_not_parse() {
        for (url, shown) in [
            ("postgres://u@h:x/db", "postgres://u@h:x/db"),
            ("redis://us%65r@h:1#x", "redis://us%65r@h:1#x"),
            ("postgres://u:Sec/RET@h:x/db", "postgres://u:***@h:x/db"),
            ("redis://:Sec#RET@h:1", "redis://:***@h:1"),
            ("redis://u:p@Sec/RET@h:1", "redis://u:***@h:1"),
        ] {
            assert!(BackendUrl::parse(url).is_err(), "{url} parses");
            assert_eq!(redact(url), shown, "{url}");
            let e = BackendUrl::parse(url).unwrap_err().to_string();
            assert!(e.contains(&format!("`{shown}`")), "{url}: {e}");
        }
    }

    /// Review: an `@` in a `password=` value makes the URL fail to parse, and the
    /// fallback's userinfo rule (first `:` to last `@`) then swallowed the `?password=`
    /// that would have hidden the rest, showing what followed the value's last `@`.
    #[test]
    fn an_at_sign_in_a_query_password_shows_none_of_it() {
        for (url, secret) in [
            ("postgres://app@db:5432/x?password=p@ssw0rd", "ssw0rd"),
            ("postgres://db:5432/x?password=@secret", "secret"),
            ("postgres://u:pw@h/db?password=se@cret", "cret"),
            ("postgres://[::1]/db?password=a@bcd", "bcd"),
            ("redis://u:pa?password=x@y@h:1", "pa"),
            ("postgres://h/db?sslmode=disable&password=q@rst&x=1", "rst"),
        ] {
            assert!(BackendUrl::parse(url).is_err(), "{url} parses");
            let shown = redact(url);
            assert!(!shown.contains(secret), "{url} shown as {shown}");
            assert!(shown.contains("***"), "{url} shown as {shown}");
        }
    }

    /// F10 (a new-user trial): `etcd://127.0.0.1:2379/a@b`, an `@` in the path and no
    /// user, was quoted `etcd://127.0.0.1:***@b` (the port to the `@` hidden as if a
    /// password). A URL without a password is shown as written, for every scheme and an
    /// `@` in the path, the query or the fragment; with one, only the password is hidden.
    #[test]
    fn an_at_sign_after_an_address_hides_nothing_but_a_password() {
        for scheme in [
            "redis",
            "rediss",
            "redlock",
            "etcd",
            "zk",
            "postgres",
            "postgresql",
            "file",
        ] {
            for host in [
                "127.0.0.1:2379",
                "[::1]:2379",
                "localhost:2379",
                "127.0.0.1",
                "127.0.0.1:1,10.0.0.1:2",
                "",
            ] {
                for rest in [
                    "/a@b",
                    "/a:b@c",
                    "?prefix=a@b",
                    "/p?k=v&j=a@b",
                    "/p#a@b",
                    "#x:y@z",
                    "/a@b/c?k=1@2",
                ] {
                    let url = format!("{scheme}://{host}{rest}");
                    assert!(BackendUrl::parse(&url).is_err(), "{url} parses");
                    assert_eq!(redact(&url), url, "{url}");
                    for (userinfo, shown) in [("u@", "u@"), ("u:Secret@", "u:***@"), (":S@cret@", ":***@")] {
                        if host.is_empty() {
                            continue;
                        }
                        let url = format!("{scheme}://{userinfo}{host}{rest}");
                        let want = format!("{scheme}://{shown}{host}{rest}");
                        assert_eq!(redact(&url), want, "{url}");
                    }
                }
            }
        }
        let e = BackendUrl::parse("etcd://127.0.0.1:2379/a@b").unwrap_err().to_string();
        assert!(e.contains("`etcd://127.0.0.1:2379/a@b`: an `@` after the host"), "{e}");
    }

    /// A `password=` value holding an `@`, in a URL with a user: only the value is hidden
    /// (it was quoted `postgres://alice@127.0.0.1:***`, the port and path hidden too).
    /// After a host name (not an address) too: a password holding `?password=` is not
    /// a reading to fear.
    #[test]
    fn an_at_sign_in_a_query_password_hides_only_that_value() {
        for (url, shown) in [
            (
                "postgres://alice@127.0.0.1:5432/db?password=p@ss",
                "postgres://alice@127.0.0.1:5432/db?password=***",
            ),
            (
                "postgres://alice@db.example:5432/db?password=p@ss&sslmode=disable",
                "postgres://alice@db.example:5432/db?password=***&sslmode=disable",
            ),
            ("postgres://db/x?a=1&password=@s@", "postgres://db/x?a=1&password=***"),
            ("postgres:///x?password=p@ss", "postgres:///x?password=***"),
        ] {
            assert!(BackendUrl::parse(url).is_err(), "{url} parses");
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    /// Where the text could be a password holding an unencoded `/`, `?` or `#` — before
    /// it a host name and a number, which could be a user and the start of a password —
    /// everything from the `:` to the last `@` stays hidden: safety first.
    #[test]
    fn an_at_sign_after_a_host_name_is_still_read_as_a_possible_password() {
        for (url, shown) in [
            ("redis://u:1/RET@h", "redis://u:***@h"),
            ("redis://cache:6379?prefix=a@b", "redis://cache:***@b"),
            ("etcd://u:1/a@b?password=x@y", "etcd://u:***@b?password=***"),
            ("etcd://127.0.0.1:x/a@b", "etcd://127.0.0.1:***@b"),
        ] {
            assert!(BackendUrl::parse(url).is_err(), "{url} parses");
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    #[test]
    fn query_options_are_added_or_replaced_and_the_rest_kept() {
        use IfSet::{Keep, Replace};
        let add = |u: &str, k: &str, v: &str| with_query_option(u, k, v, Keep);
        assert_eq!(add("etcd://h:1", "session_ttl", "3s"), "etcd://h:1?session_ttl=3s");
        assert_eq!(add("etcd://h:1/p?", "a", "1"), "etcd://h:1/p?a=1");
        assert_eq!(
            add(" etcd://u:p%3Fw@h:1,[::1]:2/p?timeout=2s ", "session_ttl", "3s"),
            "etcd://u:p%3Fw@h:1,[::1]:2/p?timeout=2s&session_ttl=3s"
        );
        // Only the query's keys count: not a password, a path, or a longer key.
        assert_eq!(add("etcd://u:k=1@h:1", "k", "2"), "etcd://u:k=1@h:1?k=2");
        assert_eq!(add("file:///tmp/k=1", "k", "2"), "file:///tmp/k=1?k=2");
        assert_eq!(add("zk://h:1?xk=1", "k", "2"), "zk://h:1?xk=1&k=2");
        // A key written encoded is the same key.
        assert_eq!(add("zk://h:1?%6B=1", "k", "2"), "zk://h:1?%6B=1");
        assert_eq!(
            with_query_option("redis://:pw@h:1/0?k=1&j=2&k=3", "k", "9", Replace),
            "redis://:pw@h:1/0?k=9&j=2"
        );
        assert_eq!(with_query_option("redis://h:1", "k", "9", Replace), "redis://h:1?k=9");
        // Encoded so that the parser reads back exactly what was given.
        let u = add("etcd://u:p%40ss@h:1,h:2/p?x=1", "password", "a&b=c d+e/%");
        assert_eq!(u, "etcd://u:p%40ss@h:1,h:2/p?x=1&password=a%26b%3Dc%20d%2Be%2F%25");
        let parsed = BackendUrl::parse(&u).unwrap();
        assert_eq!(parsed.password(), Some("p@ss"));
        assert_eq!(parsed.hosts().len(), 2);
        assert_eq!(parsed.path(), "/p");
        let last = parsed.query().last().unwrap();
        assert_eq!((last.key.as_str(), last.value.as_str()), ("password", "a&b=c d+e/%"));
        assert!(!parsed.redacted().contains("a%26b"));
    }

    #[test]
    fn bad_hosts_and_ports_are_named() {
        for (url, says) in [
            ("redis://h:notaport", "bad host `h:notaport`: invalid port number"),
            ("redis://h:70000", "invalid port number"),
            // Port 0 asks the OS for any free port: no server listens there.
            ("redis://h:0", "port 0"),
            ("redlock://h:1,h:0,h:2", "bad host `h:0`: port 0"),
            // A colon with no port after it: a port left out by mistake, not the default
            // (a trial's `redlock://127.0.0.1:,…` was taken as 6379, a bare quorum left).
            ("redis://h:", "bad host `h:`: no port after the `:`"),
            (
                "redlock://h:1,127.0.0.1:,h:2",
                "bad host `127.0.0.1:`: no port after the `:`",
            ),
            ("etcd://[::1]:", "bad host `[::1]:`: no port after the `:`"),
            // Hosts are separated by commas, not `;` or spaces (a trial got an IPv6 hint).
            ("redlock://127.0.0.1:1;127.0.0.1:2", "separated by commas"),
            ("redlock://127.0.0.1:1 127.0.0.1:2", "separated by commas"),
            ("redis://[::1:1", "bad host"),
            ("redis://:1", "bad host `:1`"),
            ("etcd://h:1,,h:2", "empty host"),
            ("redis://h:1?k=%ff", "not UTF-8"),
            ("h:1", "not a URL"),
        ] {
            let e = BackendUrl::parse(url).unwrap_err();
            assert!(matches!(e, LockError::InvalidConfig { .. }), "{url}: {e}");
            assert!(e.to_string().contains(says), "{url}: {e}");
        }
    }
}
