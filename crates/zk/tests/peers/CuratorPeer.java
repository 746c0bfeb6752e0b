// A Curator InterProcessMutex peer for fencelock's interop tests (issue 17).
//
// Usage: java CuratorPeer CONNECT_STRING LOCK_PATH NAME LOG_FILE
// Reads commands from stdin, one per line, and answers on stdout, one line each:
//   acquire MS     -> "acquired" or "timeout" (InterProcessMutex.acquire(MS, ms))
//   release        -> "released"
//   loop N HOLD_MS -> N rounds of acquire / log "enter" / hold / log "exit" / release, then "done"
//   quit           -> closes the client and exits
// Prints "ready" once connected. Log lines: "<epoch µs> <NAME> enter <czxid>" and
// "<epoch µs> <NAME> exit", appended with one write each to the shared LOG_FILE (enter
// after the grant, exit before the release). The czxid of the holder's own node is the
// token a Curator user can read (getLockPath() is protected, hence the subclass).
// Exits (status 2) when stdin closes, so a test that dies leaves no JVM behind.

import java.io.BufferedReader;
import java.io.FileOutputStream;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.time.temporal.ChronoUnit;
import java.util.concurrent.TimeUnit;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.retry.RetryNTimes;

public final class CuratorPeer {
    /** Exposes the protected path of the node this thread holds. */
    static final class TokenMutex extends InterProcessMutex {
        TokenMutex(CuratorFramework client, String path) {
            super(client, path);
        }

        String heldNode() {
            return getLockPath();
        }
    }

    private static FileOutputStream log;
    private static String name;

    private static void logLine(String what) throws Exception {
        long micros = ChronoUnit.MICROS.between(Instant.EPOCH, Instant.now());
        log.write((micros + " " + name + " " + what + "\n").getBytes(StandardCharsets.UTF_8));
    }

    public static void main(String[] args) throws Exception {
        String connect = args[0];
        String path = args[1];
        name = args[2];
        log = new FileOutputStream(args[3], true);
        CuratorFramework client = CuratorFrameworkFactory.builder()
                .connectString(connect)
                .sessionTimeoutMs(10_000)
                .connectionTimeoutMs(5_000)
                .retryPolicy(new RetryNTimes(3, 100))
                .build();
        client.start();
        if (!client.blockUntilConnected(20, TimeUnit.SECONDS)) {
            System.out.println("error: not connected");
            System.exit(1);
        }
        TokenMutex mutex = new TokenMutex(client, path);
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        System.out.println("ready");
        System.out.flush();
        String line;
        while ((line = in.readLine()) != null) {
            String[] cmd = line.trim().split(" ");
            switch (cmd[0]) {
                case "acquire":
                    boolean got = mutex.acquire(Long.parseLong(cmd[1]), TimeUnit.MILLISECONDS);
                    System.out.println(got ? "acquired" : "timeout");
                    break;
                case "release":
                    mutex.release();
                    System.out.println("released");
                    break;
                case "loop":
                    int rounds = Integer.parseInt(cmd[1]);
                    long hold = Long.parseLong(cmd[2]);
                    for (int i = 0; i < rounds; i++) {
                        if (!mutex.acquire(60, TimeUnit.SECONDS)) {
                            System.out.println("error: no grant within 60 s");
                            System.exit(1);
                        }
                        long czxid = client.checkExists().forPath(mutex.heldNode()).getCzxid();
                        logLine("enter " + czxid);
                        Thread.sleep(hold); // the work done while holding
                        logLine("exit");
                        mutex.release();
                    }
                    System.out.println("done");
                    break;
                case "quit":
                    client.close();
                    System.out.println("bye");
                    System.out.flush();
                    System.exit(0);
                    break;
                default:
                    System.out.println("error: unknown command " + cmd[0]);
            }
            System.out.flush();
        }
        client.close();
        System.exit(2);
    }
}
