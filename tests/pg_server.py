"""Throw-away PostgreSQL servers for the test suite.

Plain module (stdlib + psycopg).  Typical use::

    from tests.pg_server import PostgresServer

    with PostgresServer() as pg:           # start() ... cleanup()
        url = pg.create_database("t1")     # per-test database
        with psycopg.connect(url) as conn:
            ...

How it works
------------
* The PostgreSQL binaries are located (``MEMSYNC_PG_BINDIR``, the usual
  Debian/RHEL/Homebrew locations, then ``PATH``) and their major version
  checked.  Anything missing raises ``RuntimeError`` naming what is missing;
  nothing here ever skips a test.
* ``initdb`` runs once per machine and major version.  The result is cached
  in ``/tmp/memsync-pg-template-<major>`` (built in a scratch directory and
  renamed into place, under an exclusive ``flock``); servers copy it while
  holding a shared lock.  The copy is done in-process by a small thread
  pool (one directory per task), which is ~2x faster than ``cp -a`` here:
  the cost is creating ~1000 inodes, not the ~40 MB of data.
* Template = ``initdb --auth=trust --username=postgres --encoding=UTF8
  --no-locale`` run with ``TZ=UTC`` (so ``timezone = 'UTC'``).
* Postgres refuses to run as root.  When the tests run as root every server
  process (initdb, postgres) is executed directly as the ``postgres`` user
  with ``subprocess.Popen(user=..., group=..., extra_groups=...)``: no
  ``runuser``/``su`` in between, so the child's PID *is* the postmaster PID.
  As a non-root user the processes simply run as that user.
* Each server gets its own directory ``/tmp/memsync-pg-XXXXXXXX`` (owned by
  the server user) holding ``data/``, the unix socket and ``server.log``.  It
  listens on 127.0.0.1 only, on a free port, with default durability
  settings (fsync, synchronous_commit and full_page_writes on) and trust
  authentication for local connections.
* If the Python process dies without cleaning up, the postmaster receives
  SIGQUIT (``PR_SET_PDEATHSIG``, Linux only) so servers are not leaked.

Environment variables: ``MEMSYNC_PG_BINDIR`` (binaries),
``MEMSYNC_PG_USER`` (server user when running as root, default
``postgres``), ``MEMSYNC_PG_TMPDIR`` (parent of the per-server and template
directories, default ``/tmp``), ``MEMSYNC_PG_KEEP=1`` (keep server
directories after cleanup, for debugging).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = ["DEFAULT_VERSION", "PostgresServer", "ensure_template", "find_bindir"]

DEFAULT_VERSION = 15
SUPERUSER = "postgres"
HOST = "127.0.0.1"

# Bump when the way the template is built changes: stale caches are rebuilt.
_TEMPLATE_FORMAT = 1
_INITDB_ARGS = (
    "--auth=trust",
    f"--username={SUPERUSER}",
    "--encoding=UTF8",
    "--no-locale",
    "--no-instructions",
)
_STAMP = "memsync-template.json"
_LOG_TAIL_LINES = 40


# --------------------------------------------------------------------------
# Locating binaries and the server user
# --------------------------------------------------------------------------

_version_cache: dict[str, str] = {}


def _server_version(postgres_bin: Path) -> str:
    """Return e.g. ``"15.18"`` for a ``postgres`` executable."""
    key = str(postgres_bin)
    if key not in _version_cache:
        out = subprocess.run([key, "--version"], capture_output=True, text=True, check=True, timeout=30).stdout
        m = re.search(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)?)", out)
        if not m:
            raise RuntimeError(f"cannot parse `{key} --version` output: {out!r}")
        _version_cache[key] = m.group(1)
    return _version_cache[key]


def _major(version: str) -> int:
    return int(version.split(".")[0])


def _candidate_bindirs(version: int) -> Iterator[Path]:
    env = os.environ.get("MEMSYNC_PG_BINDIR")
    if env:
        yield Path(env)
        return  # an explicit setting is never second-guessed
    yield Path(f"/usr/lib/postgresql/{version}/bin")  # Debian / Ubuntu
    yield Path(f"/usr/pgsql-{version}/bin")  # RHEL / PGDG rpms
    yield Path(f"/opt/homebrew/opt/postgresql@{version}/bin")  # macOS arm
    yield Path(f"/usr/local/opt/postgresql@{version}/bin")  # macOS intel
    yield Path(f"/usr/local/pgsql-{version}/bin")
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(Exception):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30).stdout.strip()
            if out:
                yield Path(out)
    for exe in ("postgres", "initdb"):
        found = shutil.which(exe)
        if found:
            yield Path(found).resolve().parent
    yield Path("/usr/local/pgsql/bin")


def find_bindir(version: int = DEFAULT_VERSION) -> Path:
    """Directory holding ``initdb`` and ``postgres`` of the given major version.

    Raises ``RuntimeError`` that lists everything that was tried.
    """
    tried: list[str] = []
    seen: set[Path] = set()
    for d in _candidate_bindirs(version):
        if d in seen:
            continue
        seen.add(d)
        missing = [exe for exe in ("postgres", "initdb") if not os.access(d / exe, os.X_OK)]
        if missing:
            tried.append(f"{d} (missing {', '.join(missing)})")
            continue
        try:
            found = _server_version(d / "postgres")
        except Exception as exc:
            tried.append(f"{d} (`postgres --version` failed: {exc})")
            continue
        if _major(found) != version:
            tried.append(f"{d} (is PostgreSQL {found}, need {version})")
            continue
        return d
    raise RuntimeError(
        f"PostgreSQL {version} server binaries (initdb, postgres) not found. "
        f"Tried: {'; '.join(tried) or 'nothing'}. Install them (Debian: "
        f"`apt-get install postgresql-{version}`) or set MEMSYNC_PG_BINDIR."
    )


class _User:
    """Who the server processes run as."""

    def __init__(self, name: str | None) -> None:
        self.switch = os.geteuid() == 0
        if self.switch:
            name = name or os.environ.get("MEMSYNC_PG_USER") or "postgres"
            try:
                pw = pwd.getpwnam(name)
            except KeyError:
                raise RuntimeError(
                    f"running as root but the user {name!r} does not exist; PostgreSQL "
                    f"refuses to run as root. Create it (e.g. `useradd --system "
                    f"--user-group --home-dir /var/lib/postgresql {name}`; the Debian "
                    f"postgresql packages do this) or set MEMSYNC_PG_USER."
                ) from None
            if pw.pw_uid == 0:
                raise RuntimeError(f"server user {name!r} has uid 0; PostgreSQL refuses root")
        else:
            pw = pwd.getpwuid(os.geteuid())
            if name and name != pw.pw_name:
                raise RuntimeError(
                    f"cannot run the PostgreSQL server as user {name!r}: switching users "
                    f"needs root (running as {pw.pw_name!r})"
                )
        self.name = pw.pw_name
        self.uid = pw.pw_uid
        self.gid = pw.pw_gid
        self.home = pw.pw_dir
        self.groups = os.getgrouplist(pw.pw_name, pw.pw_gid) if self.switch else None

    def popen_kwargs(self) -> dict[str, Any]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.home,
            "USER": self.name,
            "LOGNAME": self.name,
            "LC_ALL": "C",
            "TZ": "UTC",
        }
        kw: dict[str, Any] = {"env": env, "cwd": "/"}
        if self.switch:
            kw.update(user=self.uid, group=self.gid, extra_groups=self.groups)
        return kw

    def chown(self, path: Path) -> None:
        if self.switch:
            os.chown(path, self.uid, self.gid, follow_symlinks=False)


def _run(cmd: list[str], user: _User, what: str, timeout: float = 300) -> None:
    try:
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            **user.popen_kwargs(),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"{what} failed: {cmd!r}: {exc}") from exc
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-4000:]}")


def _tmp_root() -> Path:
    return Path(os.environ.get("MEMSYNC_PG_TMPDIR") or "/tmp")


# --------------------------------------------------------------------------
# Template cluster (initdb once, copy many times)
# --------------------------------------------------------------------------


def _default_template_dir(major: int, user: _User) -> Path:
    suffix = "" if user.name == "postgres" else f"-{user.name}"
    return _tmp_root() / f"memsync-pg-template-{major}{suffix}"


@contextlib.contextmanager
def _flock(path: Path, mode: int, timeout: float) -> Iterator[None]:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except PermissionError:  # someone else's lock file (e.g. fs.protected_regular)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"timed out after {timeout:.0f}s waiting for lock {path} "
                        f"(another test process building the PostgreSQL template?)"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        yield
    finally:
        os.close(fd)  # releases the lock


def _template_stamp(major: int) -> dict[str, Any]:
    return {"format": _TEMPLATE_FORMAT, "major": major, "initdb_args": list(_INITDB_ARGS)}


def _template_ok(tdir: Path, major: int, user: _User) -> bool:
    try:
        st = os.lstat(tdir)
        if not (tdir.is_dir() and not tdir.is_symlink()) or st.st_uid != user.uid:
            return False
        if st.st_mode & 0o022:  # writable by others: do not trust it
            return False
        stamp = json.loads((tdir / _STAMP).read_text())
        expected = _template_stamp(major)
        if {k: stamp.get(k) for k in expected} != expected:
            return False
        return (tdir / "data" / "PG_VERSION").read_text().strip() == str(major)
    except (OSError, ValueError):
        return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _build_template(tdir: Path, bindir: Path, major: int, user: _User) -> float:
    """initdb into a scratch directory and rename it to ``tdir``.  Caller holds
    the exclusive lock.  Returns the seconds it took."""
    t0 = time.perf_counter()
    parent = tdir.parent
    # Leftovers of builds that were interrupted (we hold the lock: nobody else
    # can be building right now).
    for stale in parent.glob(tdir.name + ".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=tdir.name + ".tmp-", dir=parent))
    try:
        os.chmod(scratch, 0o755)
        user.chown(scratch)
        _run(
            [str(bindir / "initdb"), "-D", str(scratch / "data"), *_INITDB_ARGS],
            user,
            "initdb of the PostgreSQL template cluster",
        )
        stamp = dict(_template_stamp(major), version=_server_version(bindir / "postgres"))
        stamp_path = scratch / _STAMP
        with open(stamp_path, "w") as f:
            json.dump(stamp, f)
            f.flush()
            os.fsync(f.fileno())
        user.chown(stamp_path)
        _fsync_dir(scratch)
        if os.path.lexists(tdir):  # stale / foreign / corrupt: replace it
            trash = Path(tempfile.mkdtemp(prefix=tdir.name + ".tmp-old-", dir=parent))
            os.rename(tdir, trash / "t")
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(scratch, tdir)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return time.perf_counter() - t0


# How long the most recent ensure_template() call spent in initdb (0.0 if the
# cached template was reused).  Handy for measurements.
last_template_build_seconds = 0.0


@contextlib.contextmanager
def ensure_template(
    bindir: Path,
    major: int,
    user: _User,
    template_dir: Path | None = None,
    lock_timeout: float = 300.0,
) -> Iterator[Path]:
    """Context manager yielding the template directory (``<dir>/data`` is the
    cluster), built if needed.  A shared lock is held while the caller copies
    it, so it cannot be replaced underneath."""
    global last_template_build_seconds
    tdir = template_dir or _default_template_dir(major, user)
    tdir.parent.mkdir(parents=True, exist_ok=True)
    lock = tdir.with_name(tdir.name + ".lock")
    last_template_build_seconds = 0.0
    for _ in range(3):
        with _flock(lock, fcntl.LOCK_SH, lock_timeout):
            if _template_ok(tdir, major, user):
                yield tdir
                return
        with _flock(lock, fcntl.LOCK_EX, lock_timeout):
            if not _template_ok(tdir, major, user):
                last_template_build_seconds = _build_template(tdir, bindir, major, user)
        # loop: take the shared lock again and re-validate
    raise RuntimeError(f"PostgreSQL template {tdir} keeps failing validation")


# --------------------------------------------------------------------------
# /proc helpers (Linux); degrade to no-ops elsewhere
# --------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int, str] | None:
    """(state, ppid, starttime) of a process, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(")") + 2 :].split()
    return rest[0], int(rest[1]), rest[19]


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                st = _proc_stat(int(entry))
                if st and st[1] == pid:
                    out.append((int(entry), st[2]))
    return out


def _alive(pid: int, starttime: str) -> bool:
    st = _proc_stat(pid)
    return st is not None and st[0] != "Z" and st[2] == starttime


_libc_prctl = None


def _set_pdeathsig() -> None:  # runs in the forked child, before exec
    if _libc_prctl is not None:
        _libc_prctl(1, signal.SIGQUIT, 0, 0, 0)  # PR_SET_PDEATHSIG


if sys.platform.startswith("linux"):
    with contextlib.suppress(Exception):
        import ctypes

        _libc_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _copy_tree(src: Path, dst: Path, user: _User, workers: int = 0) -> None:
    """Copy a data directory (``cp -a``-like: modes, owner = server user).

    Files are created by a thread pool: on some file systems creating an
    inode costs far more than copying its few KB, and a PG 15 cluster is
    ~1000 files, so this is ~2x faster than ``cp -a`` on a 2-core VM.
    """
    files: list[tuple[str, os.stat_result]] = []
    for root, dnames, fnames in os.walk(src):
        rel = os.path.relpath(root, src)
        target = dst if rel == "." else dst / rel
        st = os.lstat(root)
        os.mkdir(target, 0o700)
        os.chmod(target, stat.S_IMODE(st.st_mode))
        user.chown(target)
        for name in fnames + [d for d in dnames if os.path.islink(os.path.join(root, d))]:
            path = os.path.join(root, name)
            files.append((os.path.relpath(path, src), os.lstat(path)))

    uid, gid = (user.uid, user.gid) if user.switch else (-1, -1)

    def copy_one(item: tuple[str, os.stat_result]) -> None:
        rel, st = item
        s, d = os.path.join(src, rel), os.path.join(dst, rel)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(s), d)
            if uid != -1:
                os.lchown(d, uid, gid)
            return
        if not stat.S_ISREG(st.st_mode):
            raise RuntimeError(f"unexpected file type in template: {s}")
        fd_out = os.open(d, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if uid != -1:
                os.fchown(fd_out, uid, gid)
            os.fchmod(fd_out, stat.S_IMODE(st.st_mode))
            if st.st_size:
                fd_in = os.open(s, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    _copy_data(fd_in, fd_out, st.st_size)
                finally:
                    os.close(fd_in)
        finally:
            os.close(fd_out)

    # One task per directory: creating files in *different* directories runs
    # in parallel, in the same directory it serialises on the directory lock.
    by_dir: dict[str, list[tuple[str, os.stat_result]]] = {}
    for item in files:
        by_dir.setdefault(os.path.dirname(item[0]), []).append(item)
    groups = sorted(by_dir.values(), key=len, reverse=True)

    def copy_group(group: list[tuple[str, os.stat_result]]) -> None:
        for item in group:
            copy_one(item)

    workers = workers or min(8, max(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers, thread_name_prefix="pg-copy") as ex:
        for _ in ex.map(copy_group, groups):
            pass


def _copy_data(fd_in: int, fd_out: int, size: int) -> None:
    copied = 0
    fast = hasattr(os, "copy_file_range")
    while copied < size:
        n = 0
        if fast:
            try:
                n = os.copy_file_range(fd_in, fd_out, size - copied)
            except OSError:
                fast = False
                os.lseek(fd_in, copied, os.SEEK_SET)
                os.lseek(fd_out, copied, os.SEEK_SET)
                continue
        else:
            buf = os.read(fd_in, min(1 << 20, size - copied))
            n = os.write(fd_out, buf) if buf else 0
        if n == 0:
            raise RuntimeError("template file shrank while being copied")
        copied += n


def _check_traversable(path: Path, user: _User) -> None:
    """Fail early (and clearly) if the server user cannot reach ``path``."""
    if not user.switch:
        return
    groups = set(user.groups or [user.gid])
    for p in [path.resolve(), *path.resolve().parents]:
        st = os.stat(p)
        if st.st_uid == user.uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            raise RuntimeError(
                f"the PostgreSQL server user {user.name!r} cannot traverse {p} "
                f"(mode {stat.filemode(st.st_mode)}); point MEMSYNC_PG_TMPDIR at a "
                f"directory it can reach, e.g. /tmp"
            )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _conf_quote(value: object) -> str:
    if isinstance(value, bool):
        value = "on" if value else "off"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


# --------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------


class _Runtime:
    """State the finalizer needs; must not reference the PostgresServer."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmpdir: Path | None = None
        self.keep = os.environ.get("MEMSYNC_PG_KEEP", "") not in ("", "0")

    def terminate(self, sig: int = signal.SIGQUIT, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()

    def remove_dir(self) -> None:
        if self.tmpdir is not None and not self.keep:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


def _finalize(rt: _Runtime) -> None:  # interpreter exit / garbage collection
    rt.terminate(signal.SIGQUIT, timeout=5.0)
    rt.remove_dir()


class PostgresServer:
    """A private PostgreSQL server on 127.0.0.1 for tests.

    Lifecycle: ``start()`` -> (``stop()`` | ``kill()``) -> ``start()``/``restart()``
    ... -> ``cleanup()``.  The data directory survives stop/kill/restart and
    is removed by ``cleanup()``.
    """

    def __init__(
        self,
        *,
        version: int = DEFAULT_VERSION,
        bindir: str | os.PathLike[str] | None = None,
        user: str | None = None,
        port: int | None = None,
        settings: Mapping[str, object] | None = None,
        template_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60.0,
        die_with_parent: bool = True,
    ) -> None:
        self.version = version
        self._bindir_arg = Path(bindir) if bindir else None
        self._user_arg = user
        self._port = port
        self._port_fixed = port is not None
        self._extra_settings = dict(settings or {})
        self._template_dir = Path(template_dir) if template_dir else None
        self.startup_timeout = startup_timeout
        self.die_with_parent = die_with_parent
        self._rt = _Runtime()
        self._finalizer = weakref.finalize(self, _finalize, self._rt)
        self._bindir: Path | None = None
        self._user: _User | None = None
        self._orphans: list[tuple[int, str]] = []
        #: seconds spent by the last start(): total, of which initdb / copy
        self.timings: dict[str, float] = {}

    # ---------------------------------------------------------------- props
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def host(self) -> str:
        return HOST

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres``"""
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{quote(dbname, safe='')}"

    @property
    def base_dir(self) -> Path:
        if self._rt.tmpdir is None:
            raise RuntimeError("server not started (or already cleaned up)")
        return self._rt.tmpdir

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        """Directory of the unix socket (use as ``host=`` in a conninfo)."""
        return self.base_dir

    @property
    def log_path(self) -> Path:
        return self.base_dir / "server.log"

    @property
    def pid(self) -> int | None:
        """PID of the running postmaster, else None."""
        proc = self._rt.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> PostgresServer:
        """Start the server (first call: fresh cluster from the template;
        later calls: the existing data directory on the same port)."""
        if self.running:
            raise RuntimeError("server already running")
        t0 = time.perf_counter()
        self.timings = {}
        if self._rt.tmpdir is None:
            self._create_cluster()
        try:
            self._launch()
        except BaseException:
            if not self._started_once:
                # a fresh cluster that never came up: nothing worth keeping
                # (the log tail is in the exception message)
                self._rt.remove_dir()
                if not self._port_fixed:
                    self._port = None
            raise
        self._started_once = True
        self.timings["start_total"] = time.perf_counter() - t0
        return self

    _started_once = False

    def stop(self, timeout: float = 60.0) -> None:
        """Fast shutdown (SIGINT: abort transactions, checkpoint, exit).
        Escalates to immediate shutdown, then SIGKILL, on timeout."""
        proc = self._rt.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._rt.terminate(signal.SIGQUIT, timeout=10.0)
        self._rt.proc = None

    def kill(self, children: bool = True) -> None:
        """Crash the server: SIGKILL the postmaster (no shutdown checkpoint).

        With ``children=True`` (default) every server process is frozen with
        SIGSTOP first and then SIGKILLed, like a machine losing power; with
        ``children=False`` only the postmaster is killed and its backends are
        left to notice and exit on their own.  The next start() waits until
        all of them are gone and then performs crash recovery.
        """
        proc = self._rt.proc
        if proc is None:
            return
        if proc.poll() is None:
            pm = proc.pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pm, signal.SIGSTOP)  # no new children from here on
            kids = _children(pm)
            if children:
                for pid, _ in kids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGSTOP)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pm, signal.SIGKILL)
            if children:
                for pid, _ in kids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            proc.wait()
            self._orphans = kids
            if children:
                self._wait_orphans(10.0)
        self._rt.proc = None

    def restart(self) -> PostgresServer:
        """stop() (if running) and start() again on the same port and data."""
        if self._rt.tmpdir is None:
            raise RuntimeError("restart() before start()")
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Stop the server (if running) and delete its directory."""
        try:
            self.stop(timeout=30.0)
        finally:
            self._rt.terminate(signal.SIGKILL)
            self._rt.proc = None
            self._rt.remove_dir()
            self._rt.tmpdir = None  # a later start() makes a fresh cluster
            self._started_once = False
            if not self._port_fixed:
                self._port = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -------------------------------------------------------------- helpers
    def connect(self, dbname: str = "postgres", **kwargs: Any) -> Any:
        """A psycopg connection to ``dbname`` (TCP, 127.0.0.1)."""
        import psycopg

        kwargs.setdefault("connect_timeout", 10)
        return psycopg.connect(self.url_for(dbname), **kwargs)

    def create_database(self, name: str, *, template: str = "template0", strategy: str | None = None) -> str:
        """CREATE DATABASE ``name`` as a copy of ``template``; returns its URL.

        ``template`` may be any database prepared earlier (e.g. with the
        schema already loaded); it must have no open connections.
        ``strategy`` is PostgreSQL 15's ``STRATEGY`` option: ``wal_log``
        (server default) or ``file_copy`` (costs a checkpoint).
        """
        from psycopg import sql

        stmt = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        if strategy is not None:
            if strategy.lower() not in ("wal_log", "file_copy"):
                raise ValueError(f"unknown CREATE DATABASE strategy {strategy!r}")
            stmt = stmt + sql.SQL(" STRATEGY " + strategy.lower())
        with self.connect(autocommit=True) as conn:
            conn.execute(stmt)
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE ... WITH (FORCE) (terminates its connections)."""
        from psycopg import sql

        with self.connect(autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode("utf-8", "replace")
        except (OSError, RuntimeError):
            return "<no server log>"
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------ internals
    def _resolve(self) -> tuple[Path, _User]:
        if self._bindir is None:
            if self._bindir_arg is not None:
                d = self._bindir_arg
                for exe in ("postgres", "initdb"):
                    if not os.access(d / exe, os.X_OK):
                        raise RuntimeError(f"{d / exe} is missing or not executable")
                found = _server_version(d / "postgres")
                if _major(found) != self.version:
                    raise RuntimeError(f"{d} holds PostgreSQL {found}, need {self.version}")
                self._bindir = d
            else:
                self._bindir = find_bindir(self.version)
        if self._user is None:
            self._user = _User(self._user_arg)
        return self._bindir, self._user

    def _create_cluster(self) -> None:
        bindir, user = self._resolve()
        root = _tmp_root()
        root.mkdir(parents=True, exist_ok=True)
        _check_traversable(root, user)
        tmp = Path(tempfile.mkdtemp(prefix="memsync-pg-", dir=root))
        self._rt.tmpdir = tmp
        try:
            os.chmod(tmp, 0o700)
            user.chown(tmp)
            t0 = time.perf_counter()
            with ensure_template(bindir, self.version, user, self._template_dir) as tdir:
                t1 = time.perf_counter()
                try:
                    _copy_tree(tdir / "data", tmp / "data", user)
                except OSError as exc:
                    raise RuntimeError(f"copying the PostgreSQL template {tdir} to {tmp} failed: {exc}") from exc
            t2 = time.perf_counter()
            self.timings["template"] = t1 - t0
            self.timings["template_initdb"] = last_template_build_seconds
            self.timings["copy"] = t2 - t1
            conf = tmp / "data" / "postgresql.conf"
            with open(conf, "a") as f:
                f.write("\n# added by memsync tests/pg_server.py\ninclude 'memsync.conf'\n")
        except BaseException:
            self._rt.remove_dir()
            raise

    def _write_settings(self) -> None:
        assert self._user is not None
        settings: dict[str, object] = {
            "listen_addresses": HOST,
            "port": self.port,
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": 100,
            # durability: the defaults, spelled out so nobody "optimises" them
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "logging_collector": "off",
            "log_destination": "stderr",
        }
        settings.update(self._extra_settings)
        path = self.data_dir / "memsync.conf"
        body = "".join(f"{k} = {_conf_quote(v)}\n" for k, v in settings.items())
        path.write_text(body)
        self._user.chown(path)

    def _wait_orphans(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._orphans = [(p, s) for p, s in self._orphans if _alive(p, s)]
            if not self._orphans:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"processes of the previous (killed) server are still running: {[p for p, _ in self._orphans]}"
                )
            time.sleep(0.01)

    def _launch(self) -> None:
        bindir, user = self._resolve()
        self._wait_orphans(30.0)
        attempts = 1 if self._port_fixed or self._started_once else 5
        for attempt in range(attempts):
            if not self._port_fixed and not self._started_once:
                self._port = _free_port()
            self._write_settings()
            log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._spawn_and_wait(bindir, user)
                return
            except RuntimeError:
                # Lost a race for the port against another process?  Retry.
                if attempt + 1 < attempts and self._log_since(log_start).find("Address already in use") >= 0:
                    continue
                raise

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _spawn_and_wait(self, bindir: Path, user: _User) -> None:
        cmd = [str(bindir / "postgres"), "-D", str(self.data_dir)]
        preexec = None
        if self.die_with_parent and _libc_prctl is not None and threading.current_thread() is threading.main_thread():
            preexec = _set_pdeathsig
        t0 = time.perf_counter()
        with open(self.log_path, "ab") as log:
            try:
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # terminal ^C must not reach it
                    preexec_fn=preexec,
                    **user.popen_kwargs(),
                )
            except OSError as exc:
                raise RuntimeError(f"cannot execute {cmd[0]}: {exc}") from exc
        self._rt.proc = proc
        try:
            self._wait_ready(proc)
        except BaseException:
            self._rt.terminate(signal.SIGQUIT, timeout=10.0)
            self._rt.proc = None
            raise
        self.timings["spawn_to_ready"] = time.perf_counter() - t0

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        pidfile = self.data_dir / "postmaster.pid"
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.002
        while True:
            rc = proc.poll()
            if rc is not None:
                raise RuntimeError(
                    f"PostgreSQL exited with code {rc} during startup "
                    f"(port {self._port}, data {self.data_dir}).\n"
                    f"--- server log tail ---\n{self.log_tail()}"
                )
            try:
                lines = pidfile.read_text().splitlines()
            except OSError:
                lines = []
            # line 1: postmaster PID, line 8: status ("ready" once accepting)
            if len(lines) >= 8 and lines[0].strip() == str(proc.pid):
                if lines[7].strip() == "ready":
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"PostgreSQL did not become ready within {self.startup_timeout:.0f}s "
                    f"(port {self._port}).\n--- server log tail ---\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)
        # Prove that the URL really works (auth, listen address, port).
        try:
            with self.connect(connect_timeout=10) as conn:
                conn.execute("SELECT 1")
        except Exception as exc:
            raise RuntimeError(
                f"PostgreSQL is up but {self.url} is not usable: {exc}\n--- server log tail ---\n{self.log_tail()}"
            ) from exc


def _main() -> None:  # python tests/pg_server.py  -> quick timing report
    t0 = time.perf_counter()
    with PostgresServer() as pg:
        t1 = time.perf_counter()
        print(f"url={pg.url} started in {t1 - t0:.3f}s timings={pg.timings}")
        with pg.connect() as conn:
            print(conn.execute("SELECT version()").fetchone()[0])
    print(f"stopped+cleaned in {time.perf_counter() - t1:.3f}s")


if __name__ == "__main__":
    _main()
