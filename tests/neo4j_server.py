"""A real Neo4j Community 5.26 server for the test suite: no Docker, no manual setup.

The server is an embedded Neo4j DBMS (``tools/neo4j-server``) run in its own JVM,
exposing Bolt on ``127.0.0.1:<port>`` only, with authentication disabled.

First use on a machine (needs Java 17+ JDK and Maven; Maven Central reachable):

1. ``mvn dependency:build-classpath`` on ``tools/neo4j-server/pom.xml`` resolves
   ``org.neo4j:neo4j`` into ``~/.m2`` and writes the runtime classpath;
2. ``javac`` compiles ``Neo4jLauncher.java`` into a small launcher jar;
3. a short training run records a JVM class-data-sharing archive (AppCDS), which
   takes ~1.5 s off every later JVM start.

All of it is cached in ``~/.cache/memsync/neo4j-5.26/<key>/`` (override with
``MEMSYNC_NEO4J_CACHE``), keyed by a hash of the pom, the launcher source and the
JVM, so later starts run no Maven and no javac at all.

Usage::

    from tests.neo4j_server import Neo4jServer

    with Neo4jServer() as server:                  # start() ... close()
        driver = neo4j.GraphDatabase.driver(server.uri, auth=None)
        ...
        server.clear()       # delete all data + user constraints/indexes
        server.restart()     # same port, same data dir: clients can reconnect
        server.kill()        # SIGKILL, for fault tests; start() recovers the store

Command line (handy in CI or by hand)::

    python tests/neo4j_server.py build          # resolve + compile + CDS, print cache dir
    python tests/neo4j_server.py serve [--port N] [--data-dir D]

Environment knobs: ``MEMSYNC_NEO4J_CACHE`` (cache root), ``MEMSYNC_NEO4J_CDS=0``
(no class-data-sharing archive), ``MEMSYNC_NEO4J_JAVA_OPTS`` (extra JVM flags),
``MEMSYNC_MVN`` (Maven executable), ``JAVA_HOME`` (JDK to use).

Only the standard library is imported at module import time; the ``neo4j`` driver is
imported lazily by :meth:`Neo4jServer.clear`, :meth:`Neo4jServer.driver` and the
CDS training run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["NEO4J_SERIES", "Artifacts", "Neo4jServer", "build"]

NEO4J_SERIES = "5.26"

# Bump when the build recipe below changes in a way that invalidates caches.
_RECIPE_VERSION = "1"

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOL_DIR = REPO_ROOT / "tools" / "neo4j-server"
POM = TOOL_DIR / "pom.xml"
LAUNCHER_SRC = TOOL_DIR / "src" / "main" / "java" / "memsync" / "Neo4jLauncher.java"
LAUNCHER_CLASS = "memsync.Neo4jLauncher"

# Neo4j's usual flags (from its neo4j.conf / launcher) plus a modest heap. SerialGC:
# a 512 MiB heap on a 2-core box gains nothing from G1 and starts faster.
BASE_JVM_OPTS: tuple[str, ...] = (
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:+ExitOnOutOfMemoryError",
    "-XX:-OmitStackTraceInFastThrow",
    "-Djdk.nio.maxCachedBufferSize=1024",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dlog4j2.disable.jmx=true",
    "-Dfile.encoding=UTF-8",
    "--add-opens",
    "java.base/java.nio=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.io=ALL-UNNAMED",
    "--add-opens",
    "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.lang=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.util=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.util.concurrent=ALL-UNNAMED",
)
# CDS diagnostics ("Skipping ... Signed JAR", path mismatch after ~/.m2 changes) are
# noise: a missing/stale archive only costs speed, never correctness.
_QUIET_CDS = "-Xlog:cds*=off"

MAVEN_TIMEOUT_S = 30 * 60
DEFAULT_START_TIMEOUT_S = 120.0
DEFAULT_STOP_TIMEOUT_S = 30.0


# --------------------------------------------------------------------------- helpers


def _log(msg: str) -> None:
    sys.stderr.write(f"[neo4j_server] {msg}\n")
    sys.stderr.flush()


def _tail(path: Path, start: int = 0, max_lines: int = 60, max_bytes: int = 64 * 1024) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(start, size - max_bytes))
            data = f.read()
    except OSError:
        return "<no output>"
    lines = data.decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-max_lines:]) or "<no output>"


def _java_home() -> Path:
    """The JDK to use: $JAVA_HOME, else the one owning `javac`/`java` on PATH."""
    env = os.environ.get("JAVA_HOME")
    if env and (Path(env) / "bin" / "java").exists():
        return Path(env)
    for tool in ("javac", "java"):
        found = shutil.which(tool)
        if found:
            return Path(os.path.realpath(found)).parent.parent
    raise RuntimeError("Neo4j test server: no Java found (set JAVA_HOME or put a JDK 17+ on PATH)")


def _jvm_identity(java_home: Path) -> str:
    """Cheap fingerprint of the JVM (path + libjvm size/mtime): keys the CDS archive."""
    parts = [str(java_home.resolve())]
    for rel in ("lib/server/libjvm.so", "lib/modules", "bin/java"):
        p = java_home / rel
        with contextlib.suppress(OSError):
            st = p.stat()
            parts.append(f"{rel}:{st.st_size}:{int(st.st_mtime)}")
    return "|".join(parts)


def _cache_root() -> Path:
    env = os.environ.get("MEMSYNC_NEO4J_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "memsync" / f"neo4j-{NEO4J_SERIES}"


def _cds_enabled() -> bool:
    return os.environ.get("MEMSYNC_NEO4J_CDS", "1").strip().lower() not in ("0", "false", "no", "off")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _listening_addresses(pid: int) -> list[tuple[str, int]]:
    """TCP (v4+v6) sockets in LISTEN state owned by ``pid``, from /proc (Linux only)."""
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    out: list[tuple[str, int]] = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        with contextlib.suppress(OSError), open(table) as f:
            next(f, None)
            for line in f:
                cols = line.split()
                if len(cols) < 10 or cols[3] != "0A" or cols[9] not in inodes:
                    continue
                hexaddr, hexport = cols[1].split(":")
                raw = bytes.fromhex(hexaddr)
                if v6:
                    # /proc stores 4 little-endian 32-bit words.
                    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    addr = socket.inet_ntop(socket.AF_INET6, raw)
                else:
                    addr = socket.inet_ntop(socket.AF_INET, raw[::-1])
                out.append((addr, int(hexport, 16)))
    return out


# --------------------------------------------------------------------------- build


class Artifacts:
    """What a start needs: java, classpath, optional CDS archive (all cached)."""

    def __init__(self, cache_dir: Path, java: Path, classpath: str, cds_archive: Path | None, meta: dict[str, Any]):
        self.cache_dir = cache_dir
        self.java = java
        self.classpath = classpath
        self.cds_archive = cds_archive
        self.meta = meta

    def jvm_command(
        self, launcher_args: Sequence[str], extra_jvm_opts: Sequence[str] = (), use_cds: bool = True
    ) -> list[str]:
        cmd = [str(self.java), *BASE_JVM_OPTS, _QUIET_CDS]
        if use_cds and self.cds_archive is not None and self.cds_archive.exists():
            cmd.append(f"-XX:SharedArchiveFile={self.cds_archive}")
        env_opts = os.environ.get("MEMSYNC_NEO4J_JAVA_OPTS")
        if env_opts:
            cmd.extend(shlex.split(env_opts))
        cmd.extend(extra_jvm_opts)
        cmd.extend([f"@{self.cache_dir / 'classpath.args'}", LAUNCHER_CLASS, *launcher_args])
        return cmd


def _argfile_quote(arg: str) -> str:
    """Quote one argument for a java/javac @argfile."""
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _cache_key(java_home: Path) -> str:
    h = hashlib.sha256()
    for part in (
        _RECIPE_VERSION.encode(),
        POM.read_bytes(),
        LAUNCHER_SRC.read_bytes(),
        " ".join(BASE_JVM_OPTS).encode(),
        _jvm_identity(java_home).encode(),
    ):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:20]


def _load_cached(cache_dir: Path, java: Path) -> Artifacts | None:
    meta_path = cache_dir / "build.json"
    try:
        meta = json.loads(meta_path.read_text())
        classpath = (cache_dir / "classpath.txt").read_text().strip()
        if not (cache_dir / "classpath.args").is_file():
            return None
    except (OSError, ValueError):
        return None
    # ~/.m2 may have been wiped or re-downloaded since: every jar must still exist,
    # unchanged (the CDS archive is only valid for the exact same jars).
    if meta.get("classpath_fingerprint") != _classpath_fingerprint(classpath):
        return None
    with contextlib.suppress(OSError):
        os.utime(meta_path)  # "last used", for _prune_stale()
    cds = cache_dir / "neo4j.jsa"
    return Artifacts(cache_dir, java, classpath, cds if cds.exists() and _cds_enabled() else None, meta)


def _prune_stale(root: Path, keep: Path, max_age_days: float = 14.0) -> None:
    """Delete other cache entries (old pom/launcher/JVM versions) unused for a while."""
    cutoff = time.time() - max_age_days * 86400
    for d in root.iterdir():
        if d == keep or not d.is_dir():
            continue
        if d.name.startswith("."):  # build dir left by a killed build
            with contextlib.suppress(OSError):
                if d.stat().st_mtime < time.time() - 86400:
                    shutil.rmtree(d, ignore_errors=True)
            continue
        marker = d / "build.json"
        try:
            last = marker.stat().st_mtime if marker.exists() else d.stat().st_mtime
        except OSError:
            continue
        if last < cutoff:
            shutil.rmtree(d, ignore_errors=True)
            with contextlib.suppress(OSError):
                (root / f"{d.name}.lock").unlink()


def _classpath_fingerprint(classpath: str) -> str | None:
    h = hashlib.sha256()
    for entry in classpath.split(os.pathsep):
        try:
            st = os.stat(entry)
        except OSError:
            return None
        h.update(f"{entry}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _run_logged(cmd: Sequence[str], log: Path, timeout: float, cwd: Path | None = None) -> None:
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}\n".encode())
        out.flush()
        try:
            proc = subprocess.run(
                cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"Neo4j test server build: timed out after {timeout:.0f}s: {cmd[0]} ...\n--- {log} ---\n{_tail(log)}"
            ) from None
        except FileNotFoundError as e:
            raise RuntimeError(f"Neo4j test server build: {e}") from None
    if proc.returncode != 0:
        raise RuntimeError(
            f"Neo4j test server build failed (exit {proc.returncode}): "
            f"{' '.join(cmd[:3])} ...\n--- {log} ---\n{_tail(log)}"
        )


def _mvn() -> str:
    mvn = os.environ.get("MEMSYNC_MVN") or shutil.which("mvn")
    if not mvn:
        raise RuntimeError(
            "Neo4j test server build: Maven (`mvn`) not found on PATH "
            "(needed once, to resolve org.neo4j:neo4j from Maven Central)"
        )
    return mvn


def _build_into(work: Path, java_home: Path, log: Path) -> dict[str, Any]:
    """Resolve the classpath and compile the launcher into ``work`` (a fresh dir)."""
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    cp_file = work / "maven-classpath.txt"
    _run_logged(
        [
            _mvn(),
            "-B",
            "-q",
            "-f",
            str(POM),
            "dependency:build-classpath",
            "-Dmdep.includeScope=runtime",
            f"-Dmdep.outputFile={cp_file}",
        ],
        log,
        MAVEN_TIMEOUT_S,
        cwd=TOOL_DIR,
    )
    maven_cp = cp_file.read_text().strip()
    if "neo4j-kernel" not in maven_cp:
        raise RuntimeError(f"Neo4j test server build: unexpected classpath from Maven:\n{maven_cp[:500]}")
    timings["maven_s"] = round(time.monotonic() - t0, 2)

    t1 = time.monotonic()
    javac = java_home / "bin" / "javac"
    if not javac.exists():
        found = shutil.which("javac")
        if not found:
            raise RuntimeError("Neo4j test server build: `javac` not found (a JDK 17+, not a JRE, is needed)")
        javac = Path(found)
    classes = work / "classes"
    classes.mkdir()
    argfile = work / "javac.args"  # keeps the ~20 KB classpath out of logs and `ps`
    argfile.write_text(f"-cp\n{_argfile_quote(maven_cp)}\n")
    _run_logged(
        [
            str(javac),
            "--release",
            "17",
            "-nowarn",
            "-encoding",
            "UTF-8",
            f"@{argfile}",
            "-d",
            str(classes),
            str(LAUNCHER_SRC),
        ],
        log,
        300,
    )
    argfile.unlink()
    # A jar, not a directory: AppCDS only archives classes loaded from jars.
    jar = work / "launcher.jar"
    with zipfile.ZipFile(jar, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nCreated-By: memsync tests/neo4j_server.py\n\n")
        for f in sorted(classes.rglob("*.class")):
            zf.write(f, f.relative_to(classes).as_posix())
    shutil.rmtree(classes)
    timings["javac_s"] = round(time.monotonic() - t1, 2)
    return {"maven_classpath": maven_cp, "timings": timings}


def _train_cds(artifacts: Artifacts, log: Path) -> Path | None:
    """One start/query/stop cycle with -XX:ArchiveClassesAtExit; returns the archive or None."""
    target = artifacts.cache_dir / "neo4j.jsa"
    tmp_jsa = artifacts.cache_dir / f"neo4j.jsa.tmp-{os.getpid()}"
    data = Path(tempfile.mkdtemp(prefix="memsync-neo4j-cds-"))
    try:
        srv = Neo4jServer(
            data_dir=data, _artifacts=artifacts, extra_jvm_opts=[f"-XX:ArchiveClassesAtExit={tmp_jsa}"], _use_cds=False
        )
        srv.start(timeout=DEFAULT_START_TIMEOUT_S)
        try:
            # Exercise Bolt + Cypher (parser, planner, runtime, schema commands) so
            # their classes land in the archive too.
            with contextlib.suppress(Exception), srv.driver() as drv:
                drv.execute_query("RETURN 1 AS x")
                drv.execute_query("CREATE CONSTRAINT cds_c IF NOT EXISTS FOR (n:CdsT) REQUIRE n.id IS UNIQUE")
                drv.execute_query("CREATE INDEX cds_i IF NOT EXISTS FOR (n:CdsT) ON (n.v)")
                drv.execute_query(
                    "UNWIND range(1, 50) AS i MERGE (a:CdsT {id: i}) SET a.v = i "
                    "MERGE (b:CdsT {id: i + 1}) MERGE (a)-[r:NEXT]->(b) SET r.w = i"
                )
                drv.execute_query("MATCH p=(a:CdsT)-[:NEXT*1..3]->(b) WHERE a.v > $v RETURN count(p)", v=3)
                srv.clear()
        finally:
            t_stop = time.monotonic()
            srv.stop(timeout=120)  # the archive is written while the JVM exits
            with open(log, "a") as f:
                f.write(
                    f"CDS training: start {srv.last_start_seconds or 0:.1f}s, "
                    f"stop+dump {time.monotonic() - t_stop:.1f}s\n"
                )
        if tmp_jsa.exists() and tmp_jsa.stat().st_size > 0:
            os.replace(tmp_jsa, target)
            return target
        with open(log, "a") as f:
            f.write("CDS: no archive was written; continuing without it\n")
        return None
    except Exception as e:  # CDS is only an optimisation
        with open(log, "a") as f:
            f.write(f"CDS training failed, continuing without it: {e}\n")
        return None
    finally:
        with contextlib.suppress(OSError):
            tmp_jsa.unlink()
        shutil.rmtree(data, ignore_errors=True)


def build(force: bool = False, verbose: bool = True) -> Artifacts:
    """Return cached launcher artifacts, building them first if needed (process-safe)."""
    java_home = _java_home()
    java = java_home / "bin" / "java"
    key = _cache_key(java_home)
    root = _cache_root()
    cache_dir = root / key
    if not force:
        art = _load_cached(cache_dir, java)
        if art is not None:
            return art

    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other pytest-xdist workers wait here
        if not force:
            art = _load_cached(cache_dir, java)
            if art is not None:
                return art
        t0 = time.monotonic()
        if verbose:
            _log(
                f"building Neo4j {NEO4J_SERIES} test server into {cache_dir} "
                "(first time only: Maven resolves ~150 MB of jars) ..."
            )
        work = Path(tempfile.mkdtemp(prefix=f".{key}.build-", dir=root))
        log = work / "build.log"
        try:
            info = _build_into(work, java_home, log)
            # Classpath with absolute paths; the launcher jar lives in the final dir.
            classpath = os.pathsep.join([str(cache_dir / "launcher.jar"), info["maven_classpath"]])
            (work / "classpath.txt").write_text(classpath + "\n")
            (work / "classpath.args").write_text(f"-cp\n{_argfile_quote(classpath)}\n")
            (work / "maven-classpath.txt").unlink()
            if cache_dir.exists():
                shutil.rmtree(cache_dir)
            os.replace(work, cache_dir)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        log = cache_dir / "build.log"
        meta: dict[str, Any] = {
            "key": key,
            "neo4j_series": NEO4J_SERIES,
            "java_home": str(java_home),
            "timings": info["timings"],
            "classpath_fingerprint": _classpath_fingerprint(classpath),
        }
        art = Artifacts(cache_dir, java, classpath, None, meta)
        if _cds_enabled():
            t1 = time.monotonic()
            art.cds_archive = _train_cds(art, log)
            meta["timings"]["cds_s"] = round(time.monotonic() - t1, 2)
        meta["timings"]["total_s"] = round(time.monotonic() - t0, 2)
        meta["cds"] = art.cds_archive is not None
        # Written last: its presence marks a complete cache entry.
        (cache_dir / "build.json").write_text(json.dumps(meta, indent=2) + "\n")
        if verbose:
            _log(f"built in {meta['timings']['total_s']}s {meta['timings']}")
        with contextlib.suppress(OSError):
            _prune_stale(root, keep=cache_dir)
        return art


# --------------------------------------------------------------------------- server


class Neo4jServer:
    """A Neo4j Community server (Bolt on 127.0.0.1, no auth) in a child JVM.

    ``port``/``data_dir`` default to a free port (picked at first start) and a fresh
    temporary directory (deleted by :meth:`close` / the context manager). Both are
    kept across :meth:`stop`/:meth:`start`/:meth:`restart`/:meth:`kill`.
    """

    def __init__(
        self,
        port: int | None = None,
        data_dir: os.PathLike[str] | str | None = None,
        *,
        pagecache: str = "64m",
        extra_jvm_opts: Sequence[str] = (),
        start_timeout: float = DEFAULT_START_TIMEOUT_S,
        _artifacts: Artifacts | None = None,
        _use_cds: bool = True,
    ) -> None:
        self._port = port
        self._port_fixed = port is not None
        self._owns_data_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="memsync-neo4j-"))
        self.pagecache = pagecache
        self.extra_jvm_opts = list(extra_jvm_opts)
        self.start_timeout = start_timeout
        self._artifacts = _artifacts
        self._use_cds = _use_cds
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._driver: Any = None
        self.last_start_seconds: float | None = None
        self.last_stop_seconds: float | None = None

    # -- properties ---------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("Neo4jServer: no port yet (call start() first)")
        return self._port

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def uri(self) -> str:
        return f"bolt://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """JVM stdout/stderr (READY/STOPPED lines, stack traces); Neo4j's own log is ``debug_log_path``."""
        return self.data_dir / "launcher.log"

    @property
    def debug_log_path(self) -> Path:
        return self.data_dir / "logs" / "debug.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle ----------------------------------------------------------------

    def start(self, timeout: float | None = None) -> Neo4jServer:
        """Build/cache if needed, launch the JVM, wait for READY and an open Bolt port."""
        if self.is_running():
            return self
        self._reap()  # a JVM that died on its own
        timeout = self.start_timeout if timeout is None else timeout
        if self._artifacts is None:
            self._artifacts = build()
        attempts = 1 if self._port_fixed else 3
        for attempt in range(1, attempts + 1):
            if self._port is None:
                self._port = free_port()
            try:
                self._launch_and_wait(timeout)
                self._port_fixed = True  # restarts must reuse this port
                return self
            except _PortInUse:
                if attempt == attempts:
                    raise RuntimeError(
                        f"Neo4jServer: port {self._port} already in use\n"
                        f"--- {self.log_path} ---\n{_tail(self.log_path, self._log_offset)}"
                    ) from None
                _log(f"port {self._port} was taken meanwhile; retrying on another port")
                self._port = None
        raise AssertionError("unreachable")

    def _launch_and_wait(self, timeout: float) -> None:
        assert self._artifacts is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = self._artifacts.jvm_command(
            [
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                "--pagecache",
                self.pagecache,
                "--watch-stdin",
            ],
            self.extra_jvm_opts,
            use_cds=self._use_cds,
        )
        t0 = time.monotonic()
        with open(self.log_path, "ab") as out:
            out.write(f"\n===== start {time.strftime('%Y-%m-%d %H:%M:%S')} port={self.port} =====\n".encode())
            out.flush()
            self._log_offset = out.tell()
            # stdin stays an open pipe: the launcher exits when it hits EOF, i.e. when
            # this Python process dies without stopping it. Own session: a Ctrl-C in the
            # terminal goes to pytest (which then stops us cleanly), not to the JVM.
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(self.data_dir),
                start_new_session=True,
            )
        deadline = t0 + timeout
        ready = False
        while True:
            text = self._read_log()
            if not ready and "\nREADY " in "\n" + text:
                ready = True
            if ready and _port_accepts(self.host, self.port):
                break
            rc = self._proc.poll()
            if rc is not None or "\nFAILED " in "\n" + text:
                self._reap(grace=15.0)
                if "Address already in use" in text or "BindException" in text:
                    raise _PortInUse()
                raise RuntimeError(
                    f"Neo4jServer failed to start (exit code {rc}) on {self.uri}\n"
                    f"--- {self.log_path} (tail) ---\n{_tail(self.log_path, self._log_offset)}\n"
                    f"--- {self.debug_log_path} (tail) ---\n{_tail(self.debug_log_path, max_lines=25)}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"Neo4jServer did not become ready within {timeout:.0f}s on {self.uri}\n"
                    f"--- {self.log_path} (tail) ---\n{_tail(self.log_path, self._log_offset)}\n"
                    f"--- {self.debug_log_path} (tail) ---\n{_tail(self.debug_log_path, max_lines=25)}"
                )
            time.sleep(0.05)
        self.last_start_seconds = time.monotonic() - t0

    def _read_log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Graceful shutdown (SIGTERM -> checkpoint, close); SIGKILL if it takes too long."""
        self._close_driver()
        proc = self._proc
        if proc is None:
            return
        t0 = time.monotonic()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _log(f"Neo4j (pid {proc.pid}) did not stop within {timeout:.0f}s; sending SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(30)
        self._reap()
        self.last_stop_seconds = time.monotonic() - t0

    def kill(self) -> None:
        """SIGKILL the JVM (no checkpoint): simulates a crash. ``start()`` recovers."""
        self._close_driver()
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(30)
        self._reap()

    def restart(self, timeout: float | None = None) -> Neo4jServer:
        """stop() + start() on the same port and data dir."""
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        """stop(), and delete the data dir if this object created it."""
        self.stop()
        if self._owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _reap(self, grace: float = 5.0) -> None:
        """Forget the process; it must be gone (SIGKILL if not within ``grace`` s)."""
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # EOF: the launcher shuts itself down
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(30)
        self._proc = None

    def __enter__(self) -> Neo4jServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # last resort; the stdin pipe also stops the JVM
        with contextlib.suppress(Exception):
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<Neo4jServer {state} port={self._port} data_dir={str(self.data_dir)!r}>"

    # -- client helpers -------------------------------------------------------------

    def driver(self, **kwargs: Any) -> Any:
        """A new ``neo4j`` driver for this server (caller closes it)."""
        from neo4j import GraphDatabase  # lazy: keep module import stdlib-only

        return GraphDatabase.driver(self.uri, auth=None, **kwargs)

    def _shared_driver(self) -> Any:
        if self._driver is None:
            self._driver = self.driver()
        return self._driver

    def _close_driver(self) -> None:
        drv, self._driver = self._driver, None
        if drv is not None:
            with contextlib.suppress(Exception):
                drv.close()

    def clear(self, database: str = "neo4j") -> None:
        """Delete all nodes and relationships and drop all constraints and user indexes.

        The two built-in token LOOKUP indexes are kept (Neo4j creates them with every
        database). Goes through Bolt like any client.
        """
        drv = self._shared_driver()
        with drv.session(database=database) as s:
            s.run("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 10000 ROWS").consume()
            for rec in list(s.run("SHOW CONSTRAINTS YIELD name")):
                s.run(f"DROP CONSTRAINT {_quote_name(rec['name'])} IF EXISTS").consume()
            for rec in list(
                s.run(
                    "SHOW INDEXES YIELD name, type, owningConstraint "
                    "WHERE owningConstraint IS NULL AND type <> 'LOOKUP' RETURN name"
                )
            ):
                s.run(f"DROP INDEX {_quote_name(rec['name'])} IF EXISTS").consume()

    def listening_addresses(self) -> list[tuple[str, int]]:
        """(address, port) of every TCP socket the JVM listens on (Linux /proc)."""
        if not self.is_running():
            return []
        return _listening_addresses(self.pid)  # type: ignore[arg-type]


class _PortInUse(Exception):
    pass


def _quote_name(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


@contextlib.contextmanager
def running_server(**kwargs: Any) -> Iterator[Neo4jServer]:
    """``with running_server() as srv:`` — same as ``with Neo4jServer(**kwargs) as srv``."""
    with Neo4jServer(**kwargs) as srv:
        yield srv


# --------------------------------------------------------------------------- CLI


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="resolve/compile/cache (no-op when cached)")
    b.add_argument("--force", action="store_true")
    s = sub.add_parser("serve", help="run a server until Ctrl-C")
    s.add_argument("--port", type=int)
    s.add_argument("--data-dir")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        t0 = time.monotonic()
        art = build(force=args.force)
        print(f"{art.cache_dir} ({time.monotonic() - t0:.1f}s, cds={art.cds_archive is not None})")
        return 0
    srv = Neo4jServer(port=args.port, data_dir=args.data_dir)
    with srv:
        print(f"{srv.uri} ready in {srv.last_start_seconds:.1f}s (data: {srv.data_dir}); Ctrl-C to stop", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while srv.is_running():
                time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
