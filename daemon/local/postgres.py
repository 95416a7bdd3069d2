"""A throwaway PostgreSQL server for tests, benchmarks and the demo.

``LocalPostgres`` runs the PostgreSQL binaries installed by the Debian package
(``/usr/lib/postgresql/15/bin``) against a cluster folder of our own, on a free
loopback TCP port, with its unix socket in a folder of our own.  It never
touches a system service, and it needs no Docker.

Running as root: PostgreSQL refuses to run as root, so when our effective uid
is 0 the server, ``initdb`` and ``pg_ctl`` run as the ``postgres`` OS user and
the cluster folder is owned by it.  As any other user everything simply runs
as that user.

Folders the ``postgres`` user cannot reach: pytest's ``tmp_path`` lives under
``/tmp/pytest-of-root`` (mode 700), so the ``postgres`` user cannot traverse to
a cluster there.  Loosening those modes would be undone by the next pytest
session (it resets the folder to 700) while our server may still be running,
so instead the cluster is *relocated*: it lives in
``<tmp>/alignd-postgres/<hash of data_dir>/data`` (owned by ``postgres``) and
``data_dir`` becomes a symlink to it, so callers still find their files at the
path they chose.  Relocated clusters whose ``data_dir`` symlink has gone (for
example because pytest pruned an old session) are deleted by a later
``start()``.  The log file is always written by us, at
``data_dir.parent / "postgres.log"``.

The server is our child process: an ``atexit`` hook stops every server this
process started, and when ``start()`` runs on the main thread the server also
gets a parent-death signal (a fast shutdown), which covers ``SIGKILL`` and
``os._exit`` where ``atexit`` does not run.

CLI: ``python -m daemon.local.postgres run [--data-dir D]`` prints
``ALIGND_TEST_POSTGRES_URL=...`` and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import logging
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
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

logger = logging.getLogger(__name__)

PG_MAJOR = 15
OS_USER = "postgres"
SUPERUSER = "postgres"
HOST = "127.0.0.1"

_CONF_NAME = "alignd_local.conf"
_STOP_MODES = ("smart", "fast", "immediate")
# sun_path is 108 bytes including the NUL; postgres appends "/.s.PGSQL.<port>" (up to 16 chars).
_SOCKET_DIR_MAX = 90
_RELOCATION_DIR = "alignd-postgres"
_HOME_KEY_RE = re.compile(r"^[0-9a-f]{16}$")
# A relocated home younger than this is never garbage-collected, so a start() racing with
# another process's collection cannot lose a home it has created but not yet linked.
_GC_MIN_AGE_S = 600.0
_PORT_ATTEMPTS = 3
_BIND_FAILURE_MARKERS = ("could not bind IPv4 address", "could not create any TCP/IP sockets")


def find_bin_dir() -> Path | None:
    """The folder holding ``postgres``, ``initdb`` and ``pg_ctl``, or None if PostgreSQL is absent.

    ``ALIGND_TEST_POSTGRES_BIN_DIR`` overrides; otherwise PostgreSQL 15 is preferred (it is what CI
    and the demo run), then the newest other Debian install, then whatever ``pg_ctl`` is on PATH.
    """
    candidates: list[Path] = []
    override = os.environ.get("ALIGND_TEST_POSTGRES_BIN_DIR")
    if override:
        candidates.append(Path(override))
    candidates.append(Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin"))

    def _major(p: Path) -> int:
        name = p.parent.name
        return int(name) if name.isdigit() else -1

    candidates.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_major, reverse=True))
    on_path = shutil.which("pg_ctl")
    if on_path:
        # Debian puts wrapper symlinks on PATH; resolving finds the versioned folder.
        candidates.append(Path(on_path).resolve().parent)
    for cand in candidates:
        if all((cand / exe).is_file() for exe in ("postgres", "initdb", "pg_ctl")):
            return cand
    if override:
        logger.warning("ALIGND_TEST_POSTGRES_BIN_DIR=%s has no postgres/initdb/pg_ctl", override)
    return None


class _ServerUser:
    """Who the server runs as, and the subprocess arguments that switch to that user."""

    def __init__(self) -> None:
        self.switch = os.geteuid() == 0
        if not self.switch:
            self.uid, self.gid = os.geteuid(), os.getegid()
            return
        try:
            pw = pwd.getpwnam(OS_USER)
        except KeyError:
            raise RuntimeError(
                f"running as root but there is no {OS_USER!r} OS user to run PostgreSQL as "
                "(PostgreSQL refuses to run as root); install the postgresql package or run as non-root"
            ) from None
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.groups = os.getgrouplist(OS_USER, pw.pw_gid)

    def popen_kwargs(self) -> dict[str, Any]:
        if not self.switch:
            return {}
        # extra_groups also drops root's supplementary groups, which the server must not keep.
        return {"user": self.uid, "group": self.gid, "extra_groups": self.groups}

    def own(self, path: Path, mode: int) -> None:
        if self.switch:
            os.chown(path, self.uid, self.gid)
        os.chmod(path, mode)

    def can_reach(self, path: Path) -> bool:
        """Whether the server user can traverse into ``path`` (every ancestor included)."""
        if not self.switch:
            return True
        # Asking the kernel as that user is exact (ACLs, group membership) where mode-bit
        # arithmetic would not be.
        res = subprocess.run(
            ["test", "-x", str(path)],
            cwd="/",
            env=_server_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
            **self.popen_kwargs(),
        )
        return res.returncode == 0


def _server_env() -> dict[str, str]:
    # PG* variables from the caller (PGDATA, PGPORT, PGOPTIONS...) would silently retarget
    # initdb/pg_ctl/postgres; a C locale keeps initdb quiet about missing locales.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Same option postgres uses, so TIME_WAIT leftovers of our own last run don't count as busy.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_postmaster_pid(pgdata: Path) -> int | None:
    try:
        first = (pgdata / "postmaster.pid").read_text().splitlines()[0]
        return int(first.strip())
    except (OSError, IndexError, ValueError):
        return None


def _conf_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class LocalPostgres:
    """A PostgreSQL 15 server on a cluster folder of our own; see the module docstring."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        # absolute() rather than resolve(): a relocated data_dir is a symlink and must stay one.
        self.data_dir = Path(data_dir).absolute()
        # 0 until the first start() picks a free port; kept for every restart after that.
        self.port: int = port or 0
        self._port_fixed = port is not None
        self.log_path = self.data_dir.parent / "postgres.log"
        self._bin = find_bin_dir()
        self._pgdata: Path | None = None
        self._socket_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._ever_started = False
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"LocalPostgres(data_dir={str(self.data_dir)!r}, port={self.port})"

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 60.0) -> LocalPostgres:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return self
            if self._bin is None:
                raise RuntimeError(
                    f"PostgreSQL binaries not found (looked in /usr/lib/postgresql/{PG_MAJOR}/bin, "
                    "/usr/lib/postgresql/*/bin and PATH); set ALIGND_TEST_POSTGRES_BIN_DIR"
                )
            user = _ServerUser()
            pgdata = self._prepare_folders(user)
            other = _read_postmaster_pid(pgdata)
            if other is not None and _pid_alive(other):
                raise RuntimeError(f"a server (pid {other}) is already running on {pgdata}; stop it first")
            if not (pgdata / "PG_VERSION").is_file():
                self._initdb(user, pgdata)
            self._choose_port(pgdata)

            deadline = time.monotonic() + timeout
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                self._write_conf(user, pgdata)
                t0 = time.monotonic()
                log_offset = self._launch(user, pgdata)
                failure = self._wait_ready(deadline)
                if failure is None:
                    self._ever_started = True
                    _register_running(self)
                    logger.info(
                        "postgres ready on %s:%d in %.2fs (data %s, log %s)",
                        HOST,
                        self.port,
                        time.monotonic() - t0,
                        pgdata,
                        self.log_path,
                    )
                    return self
                tail = self._log_tail(log_offset)
                # An auto-chosen port can be taken between our probe and the server's bind;
                # only the first start may move to another one, later ones must keep the URL stable.
                port_clash = any(m in tail for m in _BIND_FAILURE_MARKERS)
                if port_clash and not self._port_fixed and not self._ever_started and attempt < _PORT_ATTEMPTS:
                    logger.warning("port %d was taken before postgres bound it; trying another", self.port)
                    self.port = _free_port()
                    continue
                raise RuntimeError(
                    f"PostgreSQL failed to start on {HOST}:{self.port} ({failure}); log {self.log_path}:\n{tail}"
                )
            raise AssertionError("unreachable")

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Stop: ``fast`` shuts down cleanly; ``immediate`` is crash-like (WAL recovery on the next start)."""
        if mode not in _STOP_MODES:
            raise ValueError(f"mode must be one of {_STOP_MODES}, not {mode!r}")
        with self._lock:
            if not self.is_running():
                _unregister_running(self)
                return
            pgdata = self._resolved_pgdata()
            user = _ServerUser()
            assert self._bin is not None
            t0 = time.monotonic()
            res = subprocess.run(
                [
                    str(self._bin / "pg_ctl"),
                    "stop",
                    "-D",
                    str(pgdata),
                    "-m",
                    mode,
                    "-w",
                    "-t",
                    str(int(timeout)),
                ],
                cwd="/",
                env=_server_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                check=False,
                **user.popen_kwargs(),
            )
            if res.returncode != 0:
                output = res.stdout.decode(errors="replace").strip()
                if self._proc is None or self._proc.poll() is not None:
                    raise RuntimeError(f"pg_ctl stop -m {mode} failed: {output}\n{self._log_tail()}")
                # Our own child: make sure it does not linger even if pg_ctl could not stop it.
                logger.warning("pg_ctl stop -m %s failed (%s); killing postgres", mode, output)
                self._kill_proc()
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self._kill_proc()
                self._proc = None
            _unregister_running(self)
            logger.info("postgres on %s stopped (%s) in %.2fs", pgdata, mode, time.monotonic() - t0)

    def restart(self) -> None:
        self.stop("fast")
        self.start()

    def is_running(self) -> bool:
        """Whether a postmaster is alive on this cluster (ours, or one another process started)."""
        with self._lock:
            if self._proc is not None:
                if self._proc.poll() is None:
                    return True
                self._proc = None
            pid = _read_postmaster_pid(self._resolved_pgdata())
            return pid is not None and _pid_alive(pid)

    def destroy(self) -> None:
        """Stop the server and delete the cluster (including a relocated one) and its socket folder."""
        with self._lock:
            self.stop("immediate")
            pgdata = self._resolved_pgdata()
            homes = {
                d.parent
                for d in (pgdata, self._socket_dir)
                if d is not None and d.parent.parent.name == _RELOCATION_DIR
            }
            if self.data_dir.is_symlink():
                self.data_dir.unlink()
            shutil.rmtree(pgdata, ignore_errors=True)
            for home in homes:
                shutil.rmtree(home, ignore_errors=True)
            # A socket folder beside data_dir may be shared with other clusters (sockets are per port).
            if self._socket_dir is not None and self._socket_dir.exists():
                if not any(self._socket_dir.glob(".s.PGSQL.*")):
                    shutil.rmtree(self._socket_dir, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop("fast")

    # ------------------------------------------------------------------ databases and URLs

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name`` unless it exists; returns its SQLAlchemy URL."""
        from psycopg import errors, sql

        with self._connect() as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if row is None:
                try:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                    logger.info("created database %s on port %d", name, self.port)
                except (errors.DuplicateDatabase, errors.UniqueViolation):
                    pass  # a concurrent caller created it between our check and our CREATE
        return self.url(name)

    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver) for ``dbname`` as the superuser; trust auth, no password."""
        return f"postgresql+psycopg://{SUPERUSER}@{HOST}:{self._known_port()}/{quote(dbname, safe='')}"

    def conninfo(self, dbname: str = "postgres") -> str:
        """libpq connection string for ``dbname``, for code that uses psycopg directly."""
        return f"host={HOST} port={self._known_port()} user={SUPERUSER} dbname={_conf_quote(dbname)}"

    @property
    def socket_dir(self) -> Path | None:
        return self._socket_dir

    # ------------------------------------------------------------------ internals

    def _known_port(self) -> int:
        if not self.port:
            raise RuntimeError("the port is chosen by the first start(); call start() first")
        return self.port

    def _connect(self, dbname: str = "postgres", connect_timeout: int = 5) -> Any:
        import psycopg

        # sslmode/gssencmode are pinned so a caller's PGSSLMODE or Kerberos setup cannot get in the way.
        return psycopg.connect(
            host=HOST,
            port=self._known_port(),
            user=SUPERUSER,
            dbname=dbname,
            autocommit=True,
            connect_timeout=connect_timeout,
            sslmode="disable",
            gssencmode="disable",
            application_name="alignd-local-postgres",
        )

    def _resolved_pgdata(self) -> Path:
        if self._pgdata is not None:
            return self._pgdata
        # Not started by this object: a relocated cluster is reachable through its symlink.
        return self.data_dir.resolve() if self.data_dir.is_symlink() else self.data_dir

    def _home_key(self) -> str:
        return hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]

    def _prepare_folders(self, user: _ServerUser) -> Path:
        """Create (or find) the cluster and socket folders, relocating when postgres can't reach data_dir."""
        parent = self.data_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        home: Path | None = None
        if user.can_reach(parent):
            pgdata = self.data_dir
            if pgdata.is_symlink():
                # Relocated earlier (parent was unreachable then); the link target still works.
                pgdata = pgdata.resolve()
            pgdata.mkdir(exist_ok=True)
            if pgdata.stat().st_uid != user.uid or not (pgdata / "PG_VERSION").exists():
                user.own(pgdata, 0o700)
        else:
            home = self._relocated_home(user)
            pgdata = home / "data"
            if not pgdata.exists():
                pgdata.mkdir()
                user.own(pgdata, 0o700)
            self._link_data_dir(pgdata)
            logger.info("%s is not reachable by the %r user; cluster lives in %s", parent, OS_USER, pgdata)

        socket_dir = parent / "postgres-socket"
        if home is not None or len(str(socket_dir)) > _SOCKET_DIR_MAX:
            home = home or self._relocated_home(user)
            socket_dir = home / "socket"
        socket_dir.mkdir(exist_ok=True)
        user.own(socket_dir, 0o755)
        self._pgdata, self._socket_dir = pgdata, socket_dir
        return pgdata

    def _relocated_home(self, user: _ServerUser) -> Path:
        root = _relocation_root(user)
        home = root / self._home_key()
        home.mkdir(exist_ok=True)
        user.own(home, 0o711)
        # The origin lets a later start() tell abandoned homes from live ones.
        (home / "origin").write_text(str(self.data_dir) + "\n")
        _collect_abandoned_homes(root, keep=home)
        return home

    def _link_data_dir(self, pgdata: Path) -> None:
        d = self.data_dir
        if d.is_symlink():
            if d.resolve() == pgdata.resolve():
                return
            d.unlink()
        elif d.is_dir():
            if any(d.iterdir()):
                raise RuntimeError(
                    f"{d} exists and is not empty, but the {OS_USER!r} user cannot reach it "
                    f"(a parent folder is not traversable); choose a data_dir under a traversable folder"
                )
            d.rmdir()
        elif d.exists():
            raise RuntimeError(f"{d} exists and is not a folder")
        d.symlink_to(pgdata, target_is_directory=True)

    def _initdb(self, user: _ServerUser, pgdata: Path) -> None:
        assert self._bin is not None
        t0 = time.monotonic()
        res = subprocess.run(
            [
                str(self._bin / "initdb"),
                "-D",
                str(pgdata),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
            ],
            cwd="/",
            env=_server_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
            **user.popen_kwargs(),
        )
        if res.returncode != 0:
            raise RuntimeError(f"initdb failed for {pgdata}:\n{res.stdout.decode(errors='replace')}")
        # Settings live in an included file we rewrite on every start, so a hand-run
        # `pg_ctl start` on the same folder behaves like ours.
        with open(pgdata / "postgresql.conf", "a") as f:
            f.write(f"\n# alignd: test settings, rewritten on every start\ninclude_if_exists = '{_CONF_NAME}'\n")
        logger.info("initdb %s took %.2fs", pgdata, time.monotonic() - t0)

    def _choose_port(self, pgdata: Path) -> None:
        if self.port:
            return
        previous = self._previous_port(pgdata)
        # Reusing the cluster's last port keeps URLs stable across processes (e.g. the CLI rerun).
        self.port = previous if previous and _port_is_free(previous) else _free_port()

    @staticmethod
    def _previous_port(pgdata: Path) -> int | None:
        try:
            text = (pgdata / _CONF_NAME).read_text()
        except OSError:
            return None
        m = re.search(r"^port\s*=\s*(\d+)", text, re.MULTILINE)
        return int(m.group(1)) if m else None

    def _write_conf(self, user: _ServerUser, pgdata: Path) -> None:
        assert self._socket_dir is not None
        settings = {
            "port": str(self.port),
            "listen_addresses": _conf_quote(HOST),
            "unix_socket_directories": _conf_quote(str(self._socket_dir)),
            "max_connections": "100",
            "shared_buffers": _conf_quote("128MB"),
            # Durability stays as in production: crash/restart tests must see real fsync behaviour.
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            # UTC keeps timestamps rendered by the server independent of the host's zone.
            "timezone": _conf_quote("UTC"),
            "log_timezone": _conf_quote("UTC"),
            # stderr goes to our log file; a collector would write elsewhere inside the cluster.
            "logging_collector": "off",
            "log_destination": _conf_quote("stderr"),
            "log_line_prefix": _conf_quote("%m [%p] %q%u@%d "),
        }
        path = pgdata / _CONF_NAME
        lines = ["# Written by daemon.local.postgres on every start; edits are overwritten."]
        lines += [f"{k} = {v}" for k, v in settings.items()]
        path.write_text("\n".join(lines) + "\n")
        user.own(path, 0o600)

    def _launch(self, user: _ServerUser, pgdata: Path) -> int:
        """Start the postmaster as our child; returns the log offset where this run's output begins."""
        assert self._bin is not None
        argv = [str(self._bin / "postgres"), "-D", str(pgdata)]
        setpriv = shutil.which("setpriv")
        # The parent-death signal is tied to the *thread* that forks: from a worker thread it
        # would kill the server when that thread ends, so only the main thread asks for it.
        if setpriv and threading.current_thread() is threading.main_thread():
            argv = [setpriv, "--pdeathsig", "INT", "--", *argv]  # SIGINT = fast shutdown
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            offset = log.tell()
            self._proc = subprocess.Popen(
                argv,
                cwd="/",
                env=_server_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C meant for pytest or the CLI must not shut the server down
                # behind our back; we stop it ourselves.
                start_new_session=True,
                **user.popen_kwargs(),
            )
        return offset

    def _wait_ready(self, deadline: float) -> str | None:
        """None once a real connection succeeds; otherwise why it did not (the server is then gone)."""
        import psycopg

        assert self._proc is not None
        while True:
            rc = self._proc.poll()
            if rc is not None:
                self._proc = None
                return f"postgres exited with status {rc}"
            try:
                with self._connect(connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return None
            except psycopg.OperationalError as exc:
                last_error = str(exc).strip()
            if time.monotonic() > deadline:
                self._kill_proc()
                self._proc = None
                return f"not ready before the timeout; last connection error: {last_error}"
            time.sleep(0.05)

    def _kill_proc(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        # SIGQUIT lets the postmaster take its backends down with it; SIGKILL would orphan them.
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def _log_tail(self, offset: int = 0, lines: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(offset, size - 16384))
                text = f.read().decode(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------- relocation helpers


def _relocation_root(user: _ServerUser) -> Path:
    """``<tmp>/alignd-postgres``: a root-owned 0755 folder the server user can traverse."""
    for base in dict.fromkeys([Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp")]):
        if not base.is_dir() or not user.can_reach(base):
            continue
        root = base / _RELOCATION_DIR
        try:
            root.mkdir(mode=0o755)
        except FileExistsError:
            pass
        st = root.lstat()
        # /tmp is world-writable: refuse a folder someone else planted (or a symlink) there.
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise RuntimeError(f"{root} is not a folder owned by uid {os.geteuid()}; remove it")
        os.chmod(root, 0o755)
        return root
    raise RuntimeError(f"no temporary folder is traversable by the {OS_USER!r} user")


def _collect_abandoned_homes(root: Path, keep: Path) -> None:
    """Delete relocated clusters whose data_dir link is gone and whose server is not running."""
    try:
        homes = list(root.iterdir())
    except OSError:
        return
    now = time.time()
    for home in homes:
        if home == keep or not _HOME_KEY_RE.match(home.name) or home.is_symlink() or not home.is_dir():
            continue
        try:
            origin = (home / "origin").read_text().strip()
            age = now - home.stat().st_mtime
        except OSError:
            continue
        if not origin or os.path.lexists(origin) or age < _GC_MIN_AGE_S:
            continue
        pid = _read_postmaster_pid(home / "data")
        if pid is not None and _pid_alive(pid):
            continue
        logger.info("removing abandoned relocated cluster %s (was %s)", home, origin)
        shutil.rmtree(home, ignore_errors=True)


# ---------------------------------------------------------------------- stop at exit

_running: set[LocalPostgres] = set()
_running_lock = threading.Lock()
_atexit_registered = False


def _register_running(pg: LocalPostgres) -> None:
    global _atexit_registered
    with _running_lock:
        _running.add(pg)
        if not _atexit_registered:
            atexit.register(_stop_all_at_exit)
            _atexit_registered = True


def _unregister_running(pg: LocalPostgres) -> None:
    with _running_lock:
        _running.discard(pg)


def _stop_all_at_exit() -> None:
    with _running_lock:
        servers = list(_running)
    for pg in servers:
        try:
            if pg.is_running():
                logger.info("stopping %r at interpreter exit", pg)
            pg.stop("fast", timeout=30)
        except Exception:
            logger.exception("could not stop %r cleanly at exit; killing it", pg)
            pg._kill_proc()  # noqa: SLF001 - testing.postgresql offers no public kill


# ---------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m daemon.local.postgres",
        description="Run a throwaway local PostgreSQL server for tests and the demo.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the server, print its URL, serve until SIGTERM/SIGINT")
    run.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="cluster folder, kept between runs (default: a temporary folder deleted on exit)",
    )
    run.add_argument("--port", type=int, default=None, help="TCP port on 127.0.0.1 (default: a free one)")
    run.add_argument("--database", default="postgres", help="database to create and print the URL of")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return _serve(args.data_dir, args.port, args.database)


def _serve(data_dir: Path | None, port: int | None, database: str) -> int:
    stop_requested = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        logger.info("received %s; stopping", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    scratch: Path | None = None
    if data_dir is None:
        scratch = Path(tempfile.mkdtemp(prefix="alignd-pg-"))
        # Traversable by postgres, so the cluster lives here and is deleted with it.
        os.chmod(scratch, 0o755)
        data_dir = scratch / "data"
    pg = LocalPostgres(data_dir, port=port)
    try:
        pg.start()
        url = pg.url() if database == "postgres" else pg.create_database(database)
        # stdout carries only this line so scripts can `eval`/parse it; logs go to stderr.
        print(f"ALIGND_TEST_POSTGRES_URL={url}", flush=True)
        while not stop_requested.wait(0.5):
            if not pg.is_running():
                logger.error("postgres exited unexpectedly; see %s", pg.log_path)
                return 1
        return 0
    finally:
        pg.stop("fast")
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
