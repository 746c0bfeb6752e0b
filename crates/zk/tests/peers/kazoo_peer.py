"""A kazoo Lock peer for fencelock's interop tests (issue 17).

Usage: python kazoo_peer.py HOSTS LOCK_PATH NAME LOG_FILE [EXTRA_PATTERN]
Same line protocol as CuratorPeer.java (stdin commands, one stdout line each):
  acquire MS -> "acquired" | "timeout";  release -> "released";
  loop N HOLD_MS -> N rounds of acquire / log enter / hold / log exit / release, "done";
  quit -> "bye".
Prints "ready" once connected. Log lines: "<epoch us> NAME enter <czxid>" (after the
grant, the czxid of kazoo's own node) and "<epoch us> NAME exit" (before the release). EXTRA_PATTERN is passed to Lock(extra_lock_patterns=[...])
(kazoo >= 2.7.1), e.g. "-lock-" to see fencelock's default nodes.
Exits (status 2) when stdin closes, so a test that dies leaves no peer behind.
"""

import os
import sys
import time

from kazoo.client import KazooClient
from kazoo.exceptions import LockTimeout


def main():
    hosts, path, name, log_path = sys.argv[1:5]
    extra = sys.argv[5:6]
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def log(what):
        line = "%d %s %s\n" % (time.time_ns() // 1000, name, what)
        os.write(log_fd, line.encode())  # one write per line

    client = KazooClient(hosts=hosts, timeout=10.0)
    client.start(timeout=20)
    lock = client.Lock(path, name, extra_lock_patterns=extra)

    def say(text):
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    say("ready")
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "acquire":
            try:
                got = lock.acquire(blocking=True, timeout=int(cmd[1]) / 1000.0)
            except LockTimeout:  # kazoo raises rather than returning False
                got = False
            say("acquired" if got else "timeout")
        elif cmd[0] == "release":
            lock.release()
            say("released")
        elif cmd[0] == "loop":
            rounds, hold = int(cmd[1]), int(cmd[2])
            for _ in range(rounds):
                if not lock.acquire(blocking=True, timeout=60):  # LockTimeout ends the peer
                    say("error: no grant within 60 s")
                    sys.exit(1)
                # The czxid of kazoo's own node: the token a kazoo user can read.
                czxid = client.exists(lock.path + "/" + lock.node).czxid
                log("enter %d" % czxid)
                time.sleep(hold / 1000.0)  # the work done while holding
                log("exit")
                lock.release()
            say("done")
        elif cmd[0] == "quit":
            client.stop()
            client.close()
            say("bye")
            return
        else:
            say("error: unknown command " + cmd[0])
    client.stop()
    client.close()
    sys.exit(2)


if __name__ == "__main__":
    main()
