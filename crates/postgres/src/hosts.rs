//! Connecting to one of the URL's hosts (`postgres://u@h1:p1,h2:p2/db`), trying them one
//! at a time, **each attempt bounded as a whole**.
//!
//! Why not tokio-postgres's own multi-host connect (`Config::connect` with several hosts):
//! it tries the hosts in order, but `connect_timeout` bounds only each TCP connect. The
//! start-up exchange (authentication, parameters), the `target_session_attrs` check and
//! our own first statements are not bounded, and tokio-postgres (0.7) has no option that
//! bounds them. So a host that accepts the TCP connection and then says nothing — a hung
//! server, a SIGSTOPped postgres, a black-hole proxy — held the whole connect until our
//! outer bound ran out, and the next host was never tried. Here every host (every address
//! a host name resolves to) gets a single-host [`tokio_postgres::Config`] of its own and a
//! `tokio::time::timeout` around the whole attempt: resolution, TCP connect, start-up, the
//! `target_session_attrs` check (done by tokio-postgres per host, so a standby is still
//! skipped when `read-write` is asked) and the caller's first statements.

use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fencelock_core::LockError;
use tokio_postgres::config::{Host, LoadBalanceHosts};
use tokio_postgres::Config;

/// The host (its place in the URL's list) whose attempt last succeeded, for one lock
/// instance: the next connection starts there, then goes on in the URL's order and
/// wraps round. libpq starts from the first host every time; a pool that opens
/// connections as it grows, and reconnects after a failover, would then pay a silent
/// first host's whole bound (`connect_timeout` + 2 × `timeout`) on every one. The
/// preference is only an order: a host that stops working is given up as before and the
/// next one that works becomes the preference. With `load_balance_hosts=random` the
/// order stays random.
#[derive(Debug, Default)]
pub(crate) struct LastGood(AtomicUsize);

impl LastGood {
    /// `hosts` in the order to try: from the last good one, wrapping round.
    fn order<T>(&self, hosts: Vec<T>) -> Vec<(usize, T)> {
        let mut hosts: Vec<(usize, T)> = hosts.into_iter().enumerate().collect();
        let start = self.0.load(Ordering::Relaxed);
        if start < hosts.len() {
            hosts.rotate_left(start);
        }
        hosts
    }

    fn worked(&self, host: usize) {
        self.0.store(host, Ordering::Relaxed);
    }
}

/// How one host's attempt failed.
#[derive(Debug)]
pub(crate) enum HostFailure {
    /// This host did not work (unreachable, silent, refused the start-up, a standby when
    /// `read-write` was asked): the next host is tried.
    Next(LockError),
    /// The host was reached and says the configuration is wrong (a standby with
    /// `target_session_attrs=any`, tables that are not ours, no privilege): no other
    /// host is tried, this is the answer.
    Final(LockError),
}

/// How a failed connect to one host counts: authentication refused (SQLSTATE class 28)
/// ends the whole connect, as libpq does ("if a connection is established successfully,
/// but authentication fails, the remaining hosts in the list are not tried") — the hosts
/// of one URL share their roles, so it is the URL's to fix, and moving on would hide it
/// behind the next host; anything else tries the next host.
pub(crate) fn connect_failed(doing: &'static str, server: &str, e: tokio_postgres::Error) -> HostFailure {
    let refused = e.code().is_some_and(|c| c.code().starts_with("28"));
    let e = crate::error::failed(doing, server, e);
    if refused {
        HostFailure::Final(e)
    } else {
        HostFailure::Next(e)
    }
}

impl HostFailure {
    /// How an error after the start-up counts (our set-up statements, a `LISTEN`): a server
    /// that says the configuration is wrong (`InvalidConfig`: a standby, tables not ours,
    /// no privilege) is the answer; anything else tries the next host.
    pub(crate) fn after_start_up(e: LockError) -> Self {
        match e {
            LockError::InvalidConfig { .. } => HostFailure::Final(e),
            e => HostFailure::Next(e),
        }
    }
}

/// One host of the URL: the name (or socket directory), its `hostaddr` if the URL gave
/// one, and its port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: Host,
    hostaddr: Option<IpAddr>,
    port: u16,
}

/// `Unavailable` without a source.
fn unavailable(message: impl Into<String>) -> LockError {
    LockError::Unavailable {
        message: message.into(),
        source: None,
    }
}

/// PostgreSQL's port when the URL gives none.
const DEFAULT_PORT: u16 = 5432;

/// The hosts of `pg` in the order libpq and tokio-postgres read them: `hostaddr` `i`
/// belongs to host `i`, port `i` to host `i` (one port: every host's). A port or hostaddr
/// count that does not match the hosts is tokio-postgres's error, kept.
fn targets(pg: &Config) -> Result<Vec<Target>, String> {
    let (hosts, addrs, ports) = (pg.get_hosts(), pg.get_hostaddrs(), pg.get_ports());
    if !addrs.is_empty() && addrs.len() != hosts.len() {
        return Err(format!(
            "number of hosts ({}) is different from number of hostaddrs ({})",
            hosts.len(),
            addrs.len()
        ));
    }
    if ports.len() > 1 && ports.len() != hosts.len() {
        let (n, hosts_word) = (hosts.len(), if hosts.len() == 1 { "host" } else { "hosts" });
        return Err(format!(
            "{} ports for {n} {hosts_word} (a `port=` in the query adds to the ports after the hosts): \
             give one port, or one per host",
            ports.len()
        ));
    }
    Ok(hosts
        .iter()
        .enumerate()
        .map(|(i, host)| Target {
            host: host.clone(),
            hostaddr: addrs.get(i).copied(),
            port: ports.get(i).or_else(|| ports.first()).copied().unwrap_or(DEFAULT_PORT),
        })
        .collect())
}

/// How a target is named in messages: `host:port` (`[v6]:port`), a socket directory with
/// its port.
fn name_of(host: &Host, addr: Option<IpAddr>, port: u16) -> String {
    let base = match host {
        Host::Tcp(h) if h.contains(':') => format!("[{h}]:{port}"),
        Host::Tcp(h) => format!("{h}:{port}"),
        #[cfg(unix)]
        Host::Unix(path) => format!("{} (port {port})", path.display()),
    };
    match addr {
        Some(ip) if !matches!(host, Host::Tcp(h) if h.parse::<IpAddr>() == Ok(ip)) => format!("{base} ({ip})"),
        _ => base,
    }
}

/// Whether `server` (the URL as shown) names the target `name` (`host:port`) itself: not
/// when the URL gives no port (5432 is used), several hosts, or the host only in its
/// query (`?host=…`).
fn shows(server: &str, name: &str) -> bool {
    server.match_indices(name).any(|(i, _)| {
        let before = server[..i].chars().next_back();
        let after = server[i + name.len()..].chars().next();
        matches!(before, Some('@' | '/' | ',')) && !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '.')
    })
}

/// How one attempt's target is named in its messages: `server`, with `(host NAME)` after
/// it when it does not show the host and the port used itself (see [`shows`]) or when
/// `name` is one of several addresses of its host.
fn label(server: &str, name: &str, one_of_several: bool) -> String {
    if !one_of_several && shows(server, name) {
        server.to_owned()
    } else {
        format!("{server} (host {name})")
    }
}

/// `pg` with only `host` (at `addr`, when given) and `port`: every other setting copied.
/// (tokio-postgres's `Config` can add hosts but not remove them, so the single-host one
/// is built anew; `single_host_copies_every_setting` checks that nothing is lost.)
fn single(pg: &Config, host: &Host, addr: Option<IpAddr>, port: u16) -> Config {
    let mut one = Config::new();
    if let Some(user) = pg.get_user() {
        one.user(user);
    }
    if let Some(password) = pg.get_password() {
        one.password(password);
    }
    if let Some(dbname) = pg.get_dbname() {
        one.dbname(dbname);
    }
    if let Some(options) = pg.get_options() {
        one.options(options);
    }
    if let Some(name) = pg.get_application_name() {
        one.application_name(name);
    }
    one.ssl_mode(pg.get_ssl_mode())
        .ssl_negotiation(pg.get_ssl_negotiation())
        .keepalives(pg.get_keepalives())
        .keepalives_idle(pg.get_keepalives_idle())
        .target_session_attrs(pg.get_target_session_attrs())
        .channel_binding(pg.get_channel_binding())
        .load_balance_hosts(pg.get_load_balance_hosts());
    if let Some(t) = pg.get_connect_timeout() {
        one.connect_timeout(*t);
    }
    if let Some(t) = pg.get_tcp_user_timeout() {
        one.tcp_user_timeout(*t);
    }
    if let Some(i) = pg.get_keepalives_interval() {
        one.keepalives_interval(i);
    }
    if let Some(r) = pg.get_keepalives_retries() {
        one.keepalives_retries(r);
    }
    match host {
        Host::Tcp(h) => one.host(h),
        #[cfg(unix)]
        Host::Unix(path) => one.host_path(path),
    };
    if let Some(ip) = addr {
        one.hostaddr(ip);
    }
    one.port(port);
    one
}

/// A random order of `items` (for `load_balance_hosts=random`).
fn shuffle<T>(items: &mut [T]) {
    use rand::seq::SliceRandom;
    items.shuffle(&mut rand::rng());
}

/// Tries the hosts of `pg` in order (shuffled with `load_balance_hosts=random`), and the
/// addresses each host name resolves to, one at a time: `attempt` gets a single-host
/// config and does the whole connection — connect, start-up, its first statements. Each
/// host's name resolution, and each address's whole attempt, may take at most `bound`;
/// past it the attempt is dropped (so `attempt` must be cancel safe: it ends whatever it
/// started when dropped) and the next is tried. Returns the first attempt that
/// succeeds, or the first [`HostFailure::Final`]. The hosts are tried from `last_good`
/// (the one that worked last time) on, in the URL's order, wrapping round; that one is
/// remembered for the next call.
///
/// `server` names the URL in messages; `doing` says what the connection is for.
///
/// # Errors
///
/// [`HostFailure::Final`]'s error as it is. When no host worked:
/// [`LockError::InvalidConfig`] when every host's failure was one (with one host: its
/// error, its kind unchanged), else [`LockError::Unavailable`] naming each host and why
/// it failed (silent for `bound`, refused, a name that does not resolve, …), on one line
/// that names the URL once and each host by `host:port` (see [`Failure::entry`]). Every
/// message names the host and the port used, also the default 5432 of a URL that gives
/// none (see [`label`]). A host list tokio-postgres would refuse (port or hostaddr
/// counts) is `InvalidConfig`.
///
/// # Time
///
/// At most `bound` per host name resolution plus `bound` per address tried.
///
/// # Cancel safety
///
/// Cancel safe when `attempt` is: nothing is kept between attempts.
pub(crate) async fn connect_each<T, F, Fut>(
    pg: &Config,
    server: &str,
    doing: &str,
    bound: Duration,
    last_good: &LastGood,
    mut attempt: F,
) -> Result<T, LockError>
where
    F: FnMut(Config, String) -> Fut,
    Fut: Future<Output = Result<T, HostFailure>>,
{
    let hosts = targets(pg).map_err(|why| LockError::invalid_config(format!("`{server}`: {why}")))?;
    let random = pg.get_load_balance_hosts() == LoadBalanceHosts::Random;
    let mut hosts = last_good.order(hosts);
    if random {
        shuffle(&mut hosts);
    }
    let several = hosts.len() > 1;
    let mut failures: Vec<Failure> = Vec::new();
    for (place, target) in hosts {
        // Its name's failures are said as its connection's are: on the URL, the host
        // and port named when the URL does not show them.
        let host_name = name_of(&target.host, None, target.port);
        let host_label = label(server, &host_name, several);
        let unresolved = |why: String, source: Option<fencelock_core::BoxError>| Failure {
            name: host_name.clone(),
            label: host_label.clone(),
            error: LockError::Unavailable {
                message: format!("postgres unreachable: {doing} on {host_label}: {why}"),
                source,
            },
        };
        let mut addrs: Vec<Option<IpAddr>> = match (&target.host, target.hostaddr) {
            (_, Some(ip)) => vec![Some(ip)],
            (Host::Tcp(name), None) => {
                match tokio::time::timeout(bound, tokio::net::lookup_host((name.as_str(), target.port))).await {
                    Ok(Ok(found)) => {
                        let mut ips: Vec<Option<IpAddr>> = Vec::new();
                        for a in found {
                            if !ips.contains(&Some(a.ip())) {
                                ips.push(Some(a.ip()));
                            }
                        }
                        ips
                    }
                    Ok(Err(e)) => {
                        let why = format!("cannot resolve the host name `{name}`: {e}");
                        failures.push(unresolved(why, Some(Box::new(e))));
                        continue;
                    }
                    Err(_) => {
                        let why = format!("its name was not resolved within {bound:?}");
                        failures.push(unresolved(why, None));
                        continue;
                    }
                }
            }
            #[cfg(unix)]
            (Host::Unix(_), None) => vec![None],
        };
        if addrs.is_empty() {
            let why = "its name resolves to no address".to_owned();
            failures.push(unresolved(why, None));
            continue;
        }
        if random {
            shuffle(&mut addrs);
        }
        let one_address = addrs.len() == 1;
        for addr in addrs {
            // A host name resolved here is named with its address only when it has
            // several (which of them hung is worth knowing).
            let shown_addr = if target.hostaddr.is_some() || !one_address {
                addr
            } else {
                None
            };
            let name = name_of(&target.host, shown_addr, target.port);
            let label = label(server, &name, several || !one_address);
            let one = single(pg, &target.host, addr, target.port);
            match tokio::time::timeout(bound, attempt(one, label.clone())).await {
                Ok(Ok(connected)) => {
                    last_good.worked(place);
                    return Ok(connected);
                }
                Ok(Err(HostFailure::Final(e))) => return Err(e),
                Ok(Err(HostFailure::Next(e))) => {
                    tracing::debug!(host = %name, error = %e, "{doing}: host failed; trying the next");
                    failures.push(Failure { name, label, error: e });
                }
                Err(_) => {
                    tracing::debug!(host = %name, ?bound, "{doing}: host silent; trying the next");
                    failures.push(Failure {
                        name,
                        label,
                        error: unavailable(format!(
                            "no ready connection within {bound:?} (silent or too slow: a hung or paused server, a black hole?)"
                        )),
                    });
                }
            }
        }
    }
    Err(none_worked(server, doing, bound, failures))
}

/// One attempt that failed: the target's name (`host:port`), the label its messages
/// name it by (see [`label`]), and its error.
#[derive(Debug)]
struct Failure {
    name: String,
    label: String,
    error: LockError,
}

impl Failure {
    /// This host's part of the error when no host worked, in one line: `NAME: WHY`. That
    /// error names the URL once, so the attempt's own error is said without it: the label
    /// it names the attempt by (`URL (host NAME)`) becomes NAME, the words the combined
    /// error says already ("postgres unreachable: DOING on NAME: ") are left out, and so
    /// is the error kind's prefix (the combined error has its own). An error whose text
    /// names the host in a sentence of its own ("the server at NAME does not answer …")
    /// is kept as that sentence.
    fn entry(&self, doing: &str) -> String {
        let text = self.error.detail().replace(&self.label, &self.name);
        let said = format!("postgres unreachable: {doing} on {}: ", self.name);
        if let Some(why) = text.strip_prefix(&said) {
            format!("{}: {why}", self.name)
        } else if text.contains(&self.name) {
            text
        } else {
            format!("{}: {text}", self.name)
        }
    }
}

/// The error when no host worked: see [`connect_each`].
fn none_worked(server: &str, doing: &str, bound: Duration, mut failures: Vec<Failure>) -> LockError {
    if failures.len() == 1 {
        // One failure: one host with one address (each host and each address of one
        // adds a failure or returns), labelled as `label(server, &name, false)`.
        let Failure {
            label: server,
            error: e,
            ..
        } = failures.remove(0);
        return match e {
            // One host, silent: the message the backend always gave.
            LockError::Unavailable { message, source } if source.is_none() && message.starts_with("no ready") => {
                LockError::Unavailable {
                    message: format!(
                        "postgres unreachable: no ready connection to {server} within {bound:?} ({doing})"
                    ),
                    source: None,
                }
            }
            e => e,
        };
    }
    let each = failures.iter().map(|f| f.entry(doing)).collect::<Vec<_>>().join("; ");
    if !failures.is_empty()
        && failures
            .iter()
            .all(|f| matches!(f.error, LockError::InvalidConfig { .. }))
    {
        return LockError::invalid_config(format!("postgres: {doing}: no host of {server} could be used: {each}"));
    }
    LockError::Unavailable {
        message: format!(
            "postgres unreachable: {doing}: no host of {server} gave a ready connection (each tried for at most {bound:?}): {each}"
        ),
        source: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use std::str::FromStr;

    #[test]
    fn single_host_copies_every_setting() {
        let pg = Config::from_str(
            "postgres://u:pw@h1:5433/db?options=-c%20a%3Db&application_name=app&sslmode=disable&connect_timeout=3\
             &keepalives=0&keepalives_idle=7&tcp_user_timeout=9&target_session_attrs=read-write\
             &channel_binding=disable&load_balance_hosts=random&hostaddr=127.0.0.2",
        )
        .unwrap();
        let hosts = targets(&pg).unwrap();
        assert_eq!(hosts.len(), 1);
        let t = &hosts[0];
        assert_eq!(single(&pg, &t.host, t.hostaddr, t.port), pg);
    }

    /// A new user's trial: `…:5432/db?port=5432` said "2 ports for 1 hosts".
    #[test]
    fn a_port_in_the_query_beside_the_hosts_port_is_named() {
        let pg = Config::from_str("postgres://u@h1:5432/db?port=5432").unwrap();
        let err = targets(&pg).unwrap_err();
        assert!(err.starts_with("2 ports for 1 host (a `port=` in the query"), "{err}");
    }

    #[test]
    fn hosts_ports_and_addresses_pair_up() {
        let pg = Config::from_str("postgres://u@h1:1,h2:2,[::1]:3/db").unwrap();
        let t = targets(&pg).unwrap();
        let names: Vec<String> = t.iter().map(|t| name_of(&t.host, t.hostaddr, t.port)).collect();
        assert_eq!(names, ["h1:1", "h2:2", "[::1]:3"]);
        let pg = Config::from_str("postgres://u@h1,h2:7/db").unwrap();
        let ports: Vec<u16> = targets(&pg).unwrap().iter().map(|t| t.port).collect();
        assert_eq!(ports, [DEFAULT_PORT, 7]);
        let pg = Config::from_str("host=h1,h2 port=5 hostaddr=127.0.0.2,127.0.0.3 user=u").unwrap();
        let t = targets(&pg).unwrap();
        assert_eq!(name_of(&t[1].host, t[1].hostaddr, t[1].port), "h2:5 (127.0.0.3)");
        let one = single(&pg, &t[1].host, t[1].hostaddr, t[1].port);
        assert_eq!(one.get_hosts(), [Host::Tcp("h2".into())]);
        assert_eq!(one.get_hostaddrs(), ["127.0.0.3".parse::<IpAddr>().unwrap()]);
        assert_eq!(one.get_ports(), [5]);
        let pg = Config::from_str("host=h1,h2 hostaddr=127.0.0.2 user=u").unwrap();
        assert!(targets(&pg).unwrap_err().contains("hostaddrs"));
    }

    /// A new-user trial: `postgres://u@127.0.0.1/db` failed "connecting on
    /// postgres://u@127.0.0.1/db", without the port it used.
    #[test]
    fn a_host_and_port_the_url_does_not_show_are_named() {
        for (server, name, shown) in [
            (
                "postgres://u@127.0.0.1:5433/db",
                "127.0.0.1:5433",
                "postgres://u@127.0.0.1:5433/db",
            ),
            ("postgres://u@[::1]:5433/db", "[::1]:5433", "postgres://u@[::1]:5433/db"),
            (
                "postgres://127.0.0.1:5433",
                "127.0.0.1:5433",
                "postgres://127.0.0.1:5433",
            ),
            (
                "postgres://u@127.0.0.1/db",
                "127.0.0.1:5432",
                "postgres://u@127.0.0.1/db (host 127.0.0.1:5432)",
            ),
            ("postgres://u@h/db", "h:5432", "postgres://u@h/db (host h:5432)"),
            (
                "postgres://u@h:54321/db",
                "h:5432",
                "postgres://u@h:54321/db (host h:5432)",
            ),
            (
                "postgres://u@xh:5432/db",
                "h:5432",
                "postgres://u@xh:5432/db (host h:5432)",
            ),
            (
                "postgres://u@h:5432.x/db",
                "h:5432",
                "postgres://u@h:5432.x/db (host h:5432)",
            ),
            (
                "postgres:///db",
                "/tmp (port 5432)",
                "postgres:///db (host /tmp (port 5432))",
            ),
        ] {
            assert_eq!(label(server, name, false), shown, "{server}");
        }
        assert_eq!(
            label("postgres://u@h1:1,h2:2/db", "h2:2", true),
            "postgres://u@h1:1,h2:2/db (host h2:2)"
        );
    }

    /// With several hosts the message names the URL once, each host by its address, on
    /// one line; before, every host's entry repeated the URL ("127.0.0.1:1: postgres
    /// unreachable: connecting on URL (host 127.0.0.1:1): …").
    #[test]
    fn no_host_working_names_the_url_once_and_each_host_by_its_address() {
        let server = "postgres://u@127.0.0.1:1,127.0.0.1:2,db:3/x";
        let failure = |name: &str, error: LockError| Failure {
            name: name.to_owned(),
            label: label(server, name, true),
            error,
        };
        let refused = failure(
            "127.0.0.1:1",
            LockError::unavailable(
                format!("postgres unreachable: connecting on {server} (host 127.0.0.1:1)"),
                std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused"),
            ),
        );
        let mysql = failure(
            "127.0.0.1:2",
            LockError::invalid_config(format!(
                "the server at {server} (host 127.0.0.1:2) does not answer in the PostgreSQL protocol \
                 (unknown message tag `74`): is the host and port right?"
            )),
        );
        let silent = failure("db:3", unavailable("no ready connection within 1s (silent)"));
        let e = none_worked(
            server,
            "connecting",
            Duration::from_secs(1),
            vec![refused, mysql, silent],
        );
        assert_eq!(
            fencelock_core::error::one_line(&e),
            "backend unavailable: postgres unreachable: connecting: no host of postgres://u@127.0.0.1:1,127.0.0.1:2,db:3/x \
             gave a ready connection (each tried for at most 1s): 127.0.0.1:1: Connection refused; \
             the server at 127.0.0.1:2 does not answer in the PostgreSQL protocol (unknown message tag `74`): \
             is the host and port right?; db:3: no ready connection within 1s (silent)"
        );
    }

    #[test]
    fn hosts_are_tried_from_the_last_good_one_wrapping_round() {
        let last = LastGood::default();
        assert_eq!(last.order(vec!['a', 'b', 'c']), [(0, 'a'), (1, 'b'), (2, 'c')]);
        last.worked(2);
        assert_eq!(last.order(vec!['a', 'b', 'c']), [(2, 'c'), (0, 'a'), (1, 'b')]);
        // A URL with fewer hosts than the remembered place (not one instance's): as given.
        assert_eq!(last.order(vec!['a', 'b']), [(0, 'a'), (1, 'b')]);
    }

    #[test]
    fn shuffle_keeps_every_item() {
        let mut v: Vec<u32> = (0..10).collect();
        shuffle(&mut v);
        v.sort_unstable();
        assert_eq!(v, (0..10).collect::<Vec<_>>());
    }
}
