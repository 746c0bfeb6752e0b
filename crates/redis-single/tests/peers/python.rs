//! The Python peers of `interop_python.rs`: python-redis-lock's `Lock` and pottery's
//! `Redlock` (PyPI, pinned, in a virtualenv the test makes with
//! `fencelock_testkit::python`), driven over `py_lock_peer.py`'s line protocol. A missing
//! python3/venv/pip FAILS the test with the install hint. Every wait here is bounded.

use std::path::Path;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// The packages the venv holds (pinned: the tests assert the libraries' key names).
pub const PACKAGES: [&str; 3] = ["python-redis-lock==4.0.1", "pottery==3.0.1", "redis==8.2.0"];

/// Which library a peer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lib {
    /// python-redis-lock: `lock:NAME`, waiters `BLPOP` the list `lock-signal:NAME`.
    PythonRedisLock,
    /// pottery's `Redlock`: `redlock:NAME`, waiters retry every 0–200 ms.
    Pottery,
}

impl Lib {
    /// The name on the peer's command line, which is also fencelock's `layout=` value.
    pub fn name(self) -> &'static str {
        match self {
            Lib::PythonRedisLock => "python-redis-lock",
            Lib::Pottery => "pottery",
        }
    }

    /// The Redis key the library keeps lock `name` under.
    pub fn key(self, name: &str) -> String {
        match self {
            Lib::PythonRedisLock => format!("lock:{name}"),
            Lib::Pottery => format!("redlock:{name}"),
        }
    }
}

fn python() -> &'static Path {
    static PY: OnceLock<std::path::PathBuf> = OnceLock::new();
    PY.get_or_init(|| fencelock_testkit::python::venv(env!("CARGO_TARGET_TMPDIR"), "redis-locks", &PACKAGES))
}

/// One running peer; dropping it kills it (`kill_on_drop`).
pub struct PyPeer {
    pub who: String,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl PyPeer {
    /// Starts a peer of `lib` on lock `name` at the loopback Redis `port`; returns once it
    /// is connected (`ready`).
    pub async fn start(lib: Lib, port: u16, name: &str, who: &str) -> PyPeer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/py_lock_peer.py");
        let mut child = tokio::process::Command::new(python())
            .arg(script)
            .args([lib.name(), &port.to_string(), name, who])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the {} peer: {e}: {}",
                    lib.name(),
                    fencelock_testkit::python::HINT
                )
            });
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut peer = PyPeer {
            who: who.to_owned(),
            child,
            stdin,
            lines,
        };
        assert_eq!(
            peer.line(Duration::from_secs(30)).await.as_deref(),
            Some("ready"),
            "peer {who} did not start: {}",
            fencelock_testkit::python::HINT
        );
        peer
    }

    /// Sends one command without waiting for its answer.
    pub async fn send(&mut self, cmd: &str) {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// The peer's next line, or `None` when none came within `limit`.
    pub async fn line(&mut self, limit: Duration) -> Option<String> {
        match tokio::time::timeout(limit, self.lines.next_line()).await {
            Ok(Ok(Some(l))) => Some(l),
            Ok(Ok(None)) => panic!("peer {} exited without a line", self.who),
            Ok(Err(e)) => panic!("reading peer {}: {e}", self.who),
            Err(_) => None,
        }
    }

    /// Sends `cmd` and returns its answer (waiting at most `limit`).
    pub async fn ask(&mut self, cmd: &str, limit: Duration) -> String {
        self.send(cmd).await;
        self.line(limit)
            .await
            .unwrap_or_else(|| panic!("peer {} did not answer `{cmd}` within {limit:?}", self.who))
    }

    /// Ends the peer (`quit`) and waits for it to exit.
    pub async fn quit(mut self) {
        assert_eq!(self.ask("quit", Duration::from_secs(10)).await, "bye");
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("the peer exits")
            .unwrap();
        assert!(status.success(), "peer {}: {status}", self.who);
    }
}
