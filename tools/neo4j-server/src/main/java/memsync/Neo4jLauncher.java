package memsync;

import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;

import org.neo4j.configuration.GraphDatabaseInternalSettings;
import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.connectors.BoltConnectorInternalSettings;
import org.neo4j.configuration.connectors.HttpConnector;
import org.neo4j.configuration.connectors.HttpsConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.graphdb.GraphDatabaseService;
import org.neo4j.io.ByteUnit;

/**
 * Test-only launcher: an embedded Neo4j Community DBMS that exposes Bolt on
 * 127.0.0.1 only, with authentication disabled and no HTTP/HTTPS connectors.
 *
 * <pre>
 * java [jvm flags] -cp CLASSPATH memsync.Neo4jLauncher --port PORT --data-dir DIR
 *      [--pagecache 64m] [--watch-stdin]
 * </pre>
 *
 * Prints exactly one line starting with {@code READY } once the default database is
 * available (and Bolt is bound). On SIGTERM/SIGINT a shutdown hook stops the DBMS
 * cleanly (checkpoint + store flush) and prints {@code STOPPED}. With
 * {@code --watch-stdin}, the launcher also shuts down when its stdin reaches EOF, so
 * the JVM never outlives a parent (test runner) that died without stopping it.
 * Exit codes: 0 stdin EOF, 143 after SIGTERM (JVM convention), 2 bad arguments,
 * 3 startup failure.
 */
public final class Neo4jLauncher {
    private static final String LOOPBACK = "127.0.0.1";

    private Neo4jLauncher() {}

    public static void main(String[] args) {
        int port = -1;
        Path dataDir = null;
        String pagecache = "64m";
        boolean watchStdin = false;
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            switch (a) {
                case "--port" -> port = Integer.parseInt(need(args, ++i, a));
                case "--data-dir" -> dataDir = Path.of(need(args, ++i, a)).toAbsolutePath();
                case "--pagecache" -> pagecache = need(args, ++i, a);
                case "--watch-stdin" -> watchStdin = true;
                default -> usage("unknown argument: " + a);
            }
        }
        if (port <= 0 || port > 65535) {
            usage("--port is required (1..65535)");
        }
        if (dataDir == null) {
            usage("--data-dir is required");
        }

        final long startNanos = System.nanoTime();
        if (watchStdin) {
            // Started first, so a parent that dies during startup is noticed too.
            Thread watcher = new Thread(() -> {
                try {
                    InputStream in = System.in;
                    byte[] buf = new byte[256];
                    while (in.read(buf) >= 0) {
                        // Ignore input; only EOF matters.
                    }
                } catch (IOException ignored) {
                    // Treat a broken stdin like EOF.
                }
                System.out.println("STDIN-EOF parent went away, shutting down");
                System.out.flush();
                System.exit(0); // runs the shutdown hook, if the DBMS is up
            }, "neo4j-launcher-stdin-watch");
            watcher.setDaemon(true);
            watcher.start();
        }
        final DatabaseManagementService dbms;
        final GraphDatabaseService db;
        try {
            Files.createDirectories(dataDir);
            dbms = new DatabaseManagementServiceBuilder(dataDir)
                    // Network: Bolt only, loopback only, no auth.
                    .setConfig(GraphDatabaseSettings.default_listen_address, new SocketAddress(LOOPBACK))
                    .setConfig(BoltConnector.enabled, true)
                    .setConfig(BoltConnector.listen_address, new SocketAddress(LOOPBACK, port))
                    .setConfig(BoltConnector.advertised_address, new SocketAddress(LOOPBACK, port))
                    .setConfig(BoltConnector.encryption_level, BoltConnector.EncryptionLevel.DISABLED)
                    .setConfig(HttpConnector.enabled, false)
                    .setConfig(HttpsConnector.enabled, false)
                    .setConfig(GraphDatabaseSettings.routing_enabled, false)
                    .setConfig(GraphDatabaseSettings.auth_enabled, false)
                    .setConfig(GraphDatabaseSettings.udc_enabled, false)
                    // Small footprint for tests.
                    .setConfig(GraphDatabaseSettings.pagecache_memory, ByteUnit.parse(pagecache))
                    .setConfig(GraphDatabaseSettings.keep_logical_logs, "2 files")
                    .setConfig(GraphDatabaseSettings.logical_log_rotation_threshold, ByteUnit.mebiBytes(1))
                    .setConfig(GraphDatabaseSettings.preallocate_logical_logs, false)
                    .setConfig(GraphDatabaseSettings.pagecache_warmup_enabled, false)
                    // Fast shutdown: the databases are checkpointed and closed *before* Bolt's
                    // thread pool / Netty loops stop, so there is nothing left to wait for
                    // (defaults add ~10 s of idle waiting to every stop).
                    .setConfig(BoltConnectorInternalSettings.thread_pool_shutdown_wait_time, Duration.ofMillis(200))
                    .setConfig(BoltConnectorInternalSettings.connection_shutdown_wait_time, Duration.ofMillis(200))
                    .setConfig(GraphDatabaseInternalSettings.netty_server_shutdown_quiet_period, 0)
                    .setConfig(GraphDatabaseInternalSettings.netty_server_shutdown_timeout, Duration.ofSeconds(1))
                    .build();
            db = dbms.database(GraphDatabaseSettings.DEFAULT_DATABASE_NAME);
        } catch (Throwable t) {
            System.out.println("FAILED " + t);
            t.printStackTrace(System.out);
            System.out.flush();
            System.exit(3);
            return;
        }

        final CountDownLatch stopped = new CountDownLatch(1);
        final AtomicBoolean shuttingDown = new AtomicBoolean(false);
        final Runnable shutdown = () -> {
            if (!shuttingDown.compareAndSet(false, true)) {
                return;
            }
            System.out.println("STOPPING");
            System.out.flush();
            try {
                dbms.shutdown();
            } catch (Throwable t) {
                System.out.println("SHUTDOWN-ERROR " + t);
                t.printStackTrace(System.out);
            }
            System.out.println("STOPPED");
            System.out.flush();
            stopped.countDown();
        };
        Runtime.getRuntime().addShutdownHook(new Thread(shutdown, "neo4j-launcher-shutdown"));

        if (!db.isAvailable(Duration.ofMinutes(5).toMillis())) {
            System.out.println("FAILED database '" + db.databaseName() + "' not available");
            System.out.flush();
            System.exit(3);
        }
        long ms = (System.nanoTime() - startNanos) / 1_000_000L;
        System.out.println("READY bolt://" + LOOPBACK + ":" + port + " neo4j=" + neo4jVersion()
                + " startup_ms=" + ms + " pid=" + ProcessHandle.current().pid());
        System.out.flush();

        try {
            stopped.await();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    private static String neo4jVersion() {
        Package p = DatabaseManagementService.class.getPackage();
        String v = p == null ? null : p.getImplementationVersion();
        return v == null ? "unknown" : v;
    }

    private static String need(String[] args, int i, String flag) {
        if (i >= args.length) {
            usage(flag + " needs a value");
        }
        return args[i];
    }

    private static void usage(String msg) {
        System.err.println("Neo4jLauncher: " + msg);
        System.err.println("usage: memsync.Neo4jLauncher --port PORT --data-dir DIR [--pagecache 64m] [--watch-stdin]");
        System.exit(2);
    }
}
