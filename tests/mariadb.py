"""A throwaway MariaDB server for the tests and benchmarks.

``mariadb-install-db`` + ``mariadbd`` in a temporary directory, on a free
loopback port, with a non-SUPER application user. The server can be stopped,
restarted, frozen (SIGSTOP) and thawed, and admin SQL run against it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pymysql

APP_USER = "app"
APP_PASSWORD = "app-s3cret-pw"  # the tests check it never shows up in errors or logs
DATABASE = "aconn_test"
#: the two drivers aconn speaks MySQL's protocol with: ENGINE and URL scheme of each
DRIVERS = {"aiomysql": ("django.db.backends.mysql", "mysql"), "asyncmy": ("asyncmy", "mysql+asyncmy")}


def driver_errors(driver: str) -> Any:
    """The driver's exception module: PyMySQL's ``err`` or ``asyncmy.errors`` (the same names and codes)."""
    if driver == "asyncmy":
        import asyncmy.errors

        return asyncmy.errors
    return pymysql.err


def find_binary(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name) or next(
            (str(p) for d in ("/usr/sbin", "/usr/bin", "/usr/local/bin") if (p := Path(d, name)).exists()), None
        )
        if path:
            return path
    return None


def as_user(user: str | None, cwd: Path) -> dict[str, Any]:
    """``subprocess`` arguments that run a program as ``user`` (itself, not a wrapper such as
    runuser, so that signals reach the server); none when ``user`` is None (not root)."""
    if not user:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [], "cwd": str(cwd)}


def _below_the_ephemeral_range() -> range:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(10000, max(10002, low - 1))


_PORTS = _below_the_ephemeral_range()
#: ports handed out in this process
_TAKEN: set[int] = set()


def free_port(span: int = 1) -> int:
    """A free port (with ``span``: the first of that many free in a row), never handed out before here.

    Below the kernel's ephemeral range, which it picks client sockets' local ports from: a
    server's port from there could be taken while the server restarts (its bind then fails;
    a Galera node rejoining found its IST port so taken and exited, in CI), and a connect to
    a port nothing listens on could be given that very port as its own (a TCP self-connect).
    """
    rng = random.Random()
    for _ in range(2000):
        first = rng.choice(_PORTS)
        ports = range(first, first + span)
        if not _TAKEN.intersection(ports) and all(_bindable(p) for p in ports):
            _TAKEN.update(ports)
            return first
    raise RuntimeError("no free port below the ephemeral range")


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class MariaDB:
    """One throwaway server. Use :meth:`start` / :meth:`close`, or the ``mariadb`` fixture."""

    def __init__(self, extra_args: Sequence[str] = ()) -> None:
        self.mariadbd = find_binary("mariadbd", "mysqld")
        self.install_db = find_binary("mariadb-install-db", "mysql_install_db")
        if not self.mariadbd or not self.install_db:
            raise RuntimeError("MariaDB server binaries not found: apt-get install -y mariadb-server")
        self.dir = Path(tempfile.mkdtemp(prefix="aconn-mariadb-"))
        self.datadir = self.dir / "data"
        self.socket = str(self.dir / "mysqld.sock")
        self.port = free_port()
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False
        #: the driver :meth:`settings` and :meth:`url` name (the ``db`` fixture sets it per test)
        self.driver = "aiomysql"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> MariaDB:
        if not self.datadir.exists():
            user = ["--user=root"] if os.geteuid() == 0 else []
            subprocess.run(
                [self.install_db, "--no-defaults", f"--datadir={self.datadir}", *user,
                 "--auth-root-authentication-method=normal", "--skip-test-db"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120,
            )  # fmt: skip
            self._launch()
            self._bootstrap()
        else:
            self._launch()
        return self

    def _launch(self) -> None:
        user = ["--user=root"] if os.geteuid() == 0 else []
        self.log = open(self.dir / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [self.mariadbd, "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
             f"--port={self.port}", "--bind-address=127.0.0.1", f"--pid-file={self.dir / 'mysqld.pid'}",
             "--skip-log-bin", "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M",
             "--skip-name-resolve", "--performance-schema=OFF", "--max-connections=151",
             "--log-warnings=1", *user, *self.extra_args],
            stdout=self.log, stderr=self.log,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited: {(self.dir / 'server.log').read_text()[-2000:]}")
            # poll with a plain socket: a refused pymysql connect leaks its socket
            with socket.socket(socket.AF_INET) as probe:
                probe.settimeout(1)
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("mariadbd did not start listening within 60 s")
            time.sleep(0.05)
        with contextlib.closing(self.admin_connection()):
            pass

    def _bootstrap(self) -> None:
        self.sql(
            f"CREATE DATABASE IF NOT EXISTS {DATABASE}",
            f"CREATE USER IF NOT EXISTS '{APP_USER}'@'%' IDENTIFIED BY '{APP_PASSWORD}'",
            f"GRANT ALL PRIVILEGES ON {DATABASE}.* TO '{APP_USER}'@'%'",
            "FLUSH PRIVILEGES",
        )

    def stop(self) -> None:
        """Shut the server down cleanly (its data survives for :meth:`start`)."""
        if self.proc is None:
            return
        if self.frozen:
            self.thaw()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None
        self.log.close()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None
        self.frozen = False
        self.log.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing; returns once every thread stopped.

        A signal is delivered asynchronously: right after kill() the server may still answer a
        round trip or two (a ping passes, and the query after it then waits for ever).
        """
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.frozen = True
        deadline = time.monotonic() + 10
        while not self._all_threads_stopped():
            if time.monotonic() > deadline:
                raise RuntimeError("mariadbd did not stop within 10 s of SIGSTOP")
            time.sleep(0.001)

    def _all_threads_stopped(self) -> bool:
        assert self.proc is not None
        for stat in Path(f"/proc/{self.proc.pid}/task").glob("*/stat"):
            with contextlib.suppress(OSError):  # a thread that just ended
                if stat.read_text().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
                    return False
        return True

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    @contextlib.contextmanager
    def frozen_for_a_while(self) -> Iterator[None]:
        self.freeze()
        try:
            yield
        finally:
            self.thaw()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- SQL ---------------------------------------------------------------------------

    def admin_connection(self) -> pymysql.connections.Connection:
        return pymysql.connect(unix_socket=self.socket, user="root", autocommit=True, connect_timeout=5)

    def sql(self, *statements: str, conn: Any = None) -> list[tuple[Any, ...]]:
        """Run admin SQL as root over the unix socket (on ``conn``, an admin connection the caller
        holds, else on a new one); the rows of the last statement."""
        if conn is None:
            with contextlib.closing(self.admin_connection()) as new:
                return self.sql(*statements, conn=new)
        with conn.cursor() as cur:
            rows: list[tuple[Any, ...]] = []
            for statement in statements:
                cur.execute(statement)
                rows = list(cur.fetchall())
            return rows

    def app_threads(self, user: str = APP_USER, conn: Any = None) -> list[int]:
        """Server thread ids of the sessions of ``user`` now open (asked on ``conn``: see :meth:`sql`)."""
        rows = self.sql(f"SELECT ID FROM information_schema.PROCESSLIST WHERE USER='{user}'", conn=conn)
        return [int(r[0]) for r in rows]

    def kill_sessions(self, *thread_ids: int, user: str = APP_USER) -> None:
        """KILL CONNECTION, and wait until the server has dropped the sessions.

        KILL returns before the killed thread closes its socket (it does so when it
        next wakes, later under load): a test that uses the connection right after
        must wait for that, or it races the server instead of testing aconn.
        """
        for thread_id in thread_ids:
            with contextlib.suppress(pymysql.err.OperationalError, pymysql.err.InternalError):
                self.sql(f"KILL CONNECTION {thread_id}")
        left = self.wait_app_threads(lambda ids: not set(thread_ids) & set(ids), user=user)
        assert not set(thread_ids) & set(left), f"sessions {thread_ids} still open after KILL: {left}"

    def kill_app_sessions(self, user: str = APP_USER) -> int:
        ids = self.app_threads(user)
        self.kill_sessions(*ids, user=user)
        return len(ids)

    def wait_app_threads(self, predicate: Any, timeout: float = 10.0, user: str = APP_USER) -> list[int]:
        """Poll the processlist until ``predicate(thread_ids)`` holds (the server notices closes asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            ids = self.app_threads(user)
            if predicate(ids) or time.monotonic() > deadline:
                return ids
            time.sleep(0.02)

    def open_transactions(self, expected: int = 0, timeout: float = 5.0) -> int:
        """InnoDB transactions open on the server, polled until ``expected``.

        INNODB_TRX is a cache refreshed only when it was not read for 0.1 s: poll slower than that.
        """
        deadline = time.monotonic() + timeout
        while True:
            count = int(self.sql("SELECT count(*) FROM information_schema.INNODB_TRX")[0][0])
            if count == expected or time.monotonic() > deadline:
                return count
            time.sleep(0.15)

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """A Django-style DATABASES entry for the application user."""
        entry: dict[str, Any] = {
            "ENGINE": DRIVERS[self.driver][0],
            "NAME": DATABASE,
            "USER": APP_USER,
            "PASSWORD": APP_PASSWORD,
            "HOST": "127.0.0.1",
            "PORT": self.port,
        }
        entry.update(overrides)
        return entry

    @property
    def errors(self) -> Any:
        """The exception module of the test's driver."""
        return driver_errors(self.driver)

    def url(self, query: str = "") -> str:
        scheme = DRIVERS[self.driver][1]
        return f"{scheme}://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{self.port}/{DATABASE}" + (f"?{query}" if query else "")


_SESSIONS_SQL = "SELECT INFO, TIME_MS, ID, COMMAND, STATE FROM information_schema.PROCESSLIST WHERE USER = %s"


class SessionSampler:
    """Counts a user's sessions on the server every ``interval`` seconds, from a thread.

    A thread, so that the count goes on while the test's event loop is busy; robust
    to restarts and freezes of the server (a failed sample is skipped, and the admin
    connection reopened). Records the most sessions seen and, for ``statement``, the
    longest time any session had been running it. Use it with ``with``.
    """

    def __init__(self, server: MariaDB, statement: str | None = None, user: str = APP_USER, interval: float = 0.05):
        self.server = server
        self.statement = statement
        self.user = user
        self.interval = interval
        self.max_sessions = 0
        #: the sessions of the busiest sample: (statement, ms, id, command, state) each, to tell what they were
        self.busiest: list[tuple[Any, ...]] = []
        self.max_statement_ms = 0.0
        #: for ``statement``: the longest each session (by id) was seen running it, in ms
        self.statement_ms: dict[int, float] = {}
        #: the session of the longest-running sample of ``statement``: (statement, ms, id, command, state)
        self.longest: tuple[Any, ...] = ()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="aconn-session-sampler")

    def __enter__(self) -> SessionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        conn: pymysql.connections.Connection | None = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self._connect()
                with conn.cursor() as cur:
                    cur.execute(_SESSIONS_SQL, (self.user,))
                    rows = cur.fetchall()
            except (pymysql.err.MySQLError, OSError):
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
            else:
                self.samples += 1
                if len(rows) > self.max_sessions:
                    self.max_sessions, self.busiest = len(rows), [tuple(row) for row in rows]
                for row in rows:
                    info, ms, session = row[0], float(row[1]), int(row[2])
                    if self.statement and info and self.statement in info:
                        self.statement_ms[session] = max(ms, self.statement_ms.get(session, 0.0))
                        if ms > self.max_statement_ms:
                            self.max_statement_ms, self.longest = ms, tuple(row)
            self._stop.wait(self.interval)
        if conn is not None:
            conn.close()

    def _connect(self) -> pymysql.connections.Connection:
        # our own socket, closed on failure: a refused pymysql connect leaks the one it made
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(1)
        try:
            sock.connect(self.server.socket)
            conn = pymysql.connect(
                unix_socket=self.server.socket, user="root", autocommit=True, read_timeout=1, defer_connect=True
            )
            conn.connect(sock)
        except BaseException:
            sock.close()
            raise
        return conn
