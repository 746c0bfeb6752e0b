"""A Python Redis-lock peer for fencelock's interop tests (issue 17): python-redis-lock's
`Lock` or pottery's `Redlock` on one Redis, with the library's own key names (`lock:NAME`,
`redlock:NAME`). Run by crates/redis-single/tests/interop_python.rs from a virtualenv the
test makes (fencelock_testkit::python).

Usage: python py_lock_peer.py LIB PORTS NAME WHO
  LIB: python-redis-lock | pottery; PORTS: the loopback Redis port (pottery: one or several,
  comma-separated, its Redlock masters; python-redis-lock: one); NAME: the lock name as
  the library takes it; WHO: this peer's name in the shared log.
Prints "ready" once connected, then one line per stdin command:
  acquire MS         -> "acquired" | "timeout"   (waits at most about MS; python-redis-lock
                        counts whole seconds, at least 1)
  release            -> "released"
  loop N HOLD_MS LOG -> N rounds of: acquire (at most 10 s, else exit 1), append
                        "enter WHO -" to LOG, hold HOLD_MS, append "exit WHO", release;
                        then "done"
  quit               -> "bye"
Log lines are single writes to a file opened for appending (fencelock_testkit::interop's
SharedLog format; "-": a peer has no fencing token). Exits when stdin closes, so a test
that dies leaves no peer behind.
"""

import math
import os
import sys
import time

import redis

TTL_S = 10  # the lock's expiry; every wait below is shorter


def main():
    lib, ports, name, who = sys.argv[1:5]
    # socket_timeout above any BLPOP python-redis-lock sends (redis-py 8's default of 5 s
    # would cut a waiter's 10 s BLPOP short with a TimeoutError).
    clients = [
        redis.Redis(host="127.0.0.1", port=int(p), socket_connect_timeout=5, socket_timeout=30)
        for p in ports.split(",")
    ]
    for c in clients:
        c.ping()
    client = clients[0]

    if lib == "python-redis-lock":
        import redis_lock

        if len(clients) != 1:
            sys.exit("python-redis-lock takes one Redis")

        lock = redis_lock.Lock(client, name, expire=TTL_S)

        def acquire(ms):
            # Whole seconds (the library's int(timeout)); 0 would mean "no timeout".
            return lock.acquire(blocking=True, timeout=max(1, math.ceil(ms / 1000)))

    elif lib == "pottery":
        from pottery import Redlock

        lock = Redlock(key=name, masters=set(clients), auto_release_time=TTL_S)

        def acquire(ms):
            return lock.acquire(blocking=True, timeout=ms / 1000)

    else:
        sys.exit("unknown library %r" % lib)

    def say(text):
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    say("ready")
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "acquire":
            say("acquired" if acquire(int(cmd[1])) else "timeout")
        elif cmd[0] == "release":
            lock.release()
            say("released")
        elif cmd[0] == "loop":
            rounds, hold, log_path = int(cmd[1]), int(cmd[2]), cmd[3]
            fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
            for _ in range(rounds):
                if not acquire(TTL_S * 1000):
                    say("error: no grant within %d s" % TTL_S)
                    sys.exit(1)
                os.write(fd, ("enter %s -\n" % who).encode())
                time.sleep(hold / 1000)
                os.write(fd, ("exit %s\n" % who).encode())
                lock.release()
            os.close(fd)
            say("done")
        elif cmd[0] == "quit":
            say("bye")
            return
        else:
            say("error: unknown command %r" % cmd[0])
    sys.exit(2)  # stdin closed: the test is gone


if __name__ == "__main__":
    main()
