"""A throwaway PostgreSQL server for the tests: ``initdb`` + ``postgres`` in a temporary directory.

On a free loopback port, with a password-authenticated application role that
owns the test database. Run as the ``postgres`` system user (set by ``subprocess``) when the tests run
as root (PostgreSQL refuses to run as root). The server can be stopped,
restarted, frozen (SIGSTOP) and thawed, and admin SQL run against it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mariadb import APP_PASSWORD, APP_USER, DATABASE, as_user, free_port

__all__ = ("APP_PASSWORD", "APP_USER", "DATABASE", "PostgreSQL", "find_postgres")


def find_postgres() -> Path | None:
    """The folder of the PostgreSQL server binaries (``initdb``, ``postgres``), if installed."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    return versions[0].parent if versions else None


class PostgreSQL:
    """One throwaway server. Use :meth:`start` / :meth:`close`, or the ``postgres`` fixture."""

    def __init__(self, extra_args: Sequence[str] = (), standby_of: PostgreSQL | None = None) -> None:
        bindir = find_postgres()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found: apt-get install -y postgresql")
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="aconn-postgres-"))
        self.datadir = self.dir / "data"
        self.port = free_port()
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False
        #: a streaming replica of this server, when given: its data comes from pg_basebackup
        self.standby_of = standby_of
        # PostgreSQL refuses to run as root: then it runs as the postgres system user
        self.run_as = "postgres" if os.geteuid() == 0 else None
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)

    def _as_server_user(self) -> dict[str, Any]:
        """``subprocess`` arguments that run a program as the server's user (itself, not a wrapper)."""
        return as_user(self.run_as, self.dir)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> PostgreSQL:
        if self.standby_of is not None and not self.datadir.exists():
            self._base_backup(self.standby_of)
            self._launch()
            return self
        fresh = not self.datadir.exists()
        if fresh:
            pwfile = self.dir / "pw"
            pwfile.write_text("unused-superuser-pw\n")
            if self.run_as:
                shutil.chown(pwfile, self.run_as)
            subprocess.run(
                [str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres", "--auth-local=trust",
                 "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120, **self._as_server_user(),
            )  # fmt: skip
        self._launch()
        if fresh:
            self._bootstrap()
        return self

    def _launch(self) -> None:
        log = self.dir / "server.log"
        log.touch()
        if self.run_as:
            shutil.chown(log, self.run_as)
        self.log = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(self.bindir / "postgres"), "-D", str(self.datadir), "-p", str(self.port),
             "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
             "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=100",
             "-c", "shared_buffers=32MB", *self.extra_args],
            stdout=self.log, stderr=self.log, **self._as_server_user(),
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(Exception), contextlib.closing(self.admin_connection()):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("postgres did not accept connections within 60 s")
            time.sleep(0.05)

    def _base_backup(self, primary: PostgreSQL) -> None:
        """A copy of ``primary`` that starts as its streaming standby (``-R`` writes standby.signal)."""
        subprocess.run(
            [str(self.bindir / "pg_basebackup"), "-h", str(primary.dir), "-p", str(primary.port), "-U", "postgres",
             "-D", str(self.datadir), "-R", "-X", "stream", "--no-sync", "--checkpoint=fast"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120, **self._as_server_user(),
        )  # fmt: skip

    def _bootstrap(self) -> None:
        self.sql(
            f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'",
            f"CREATE DATABASE {DATABASE} OWNER {APP_USER}",
        )

    @property
    def pid(self) -> int:
        """The postmaster's pid."""
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        """Shut the server down (fast mode: sessions are ended; the data survives for :meth:`start`)."""
        if self.proc is None:
            return
        if self.frozen:
            self.thaw()
        os.kill(self.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None
        self.log.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP the postmaster and every backend: sockets stay open, nothing answers."""
        for pid in self._server_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        for pid in self._server_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.frozen = False

    def _server_pids(self) -> list[int]:
        root = self.pid
        children = Path(f"/proc/{root}/task/{root}/children")
        return [root, *(int(p) for p in children.read_text().split())] if children.exists() else [root]

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

    def admin_connection(self) -> Any:
        import psycopg

        return psycopg.connect(host=str(self.dir), port=self.port, user="postgres", dbname="postgres",
                               autocommit=True, connect_timeout=5)  # fmt: skip

    def sql(self, *statements: str, conn: Any = None) -> list[tuple[Any, ...]]:
        """Run admin SQL as the superuser over the unix socket (on ``conn``, an admin connection the
        caller holds, else on a new one); the rows of the last statement."""
        if conn is None:
            with contextlib.closing(self.admin_connection()) as new:
                return self.sql(*statements, conn=new)
        rows: list[tuple[Any, ...]] = []
        for statement in statements:
            cur = conn.execute(statement)
            rows = list(cur.fetchall()) if cur.description else []
        return rows

    def app_backends(self, user: str = APP_USER, conn: Any = None) -> list[int]:
        """Backend pids of the sessions of ``user`` now open (asked on ``conn``: see :meth:`sql`)."""
        rows = self.sql(f"SELECT pid FROM pg_stat_activity WHERE usename = '{user}'", conn=conn)
        return [int(r[0]) for r in rows]

    app_threads = app_backends  # the MariaDB harness' name: test_concurrency_mysql.ProcesslistSampler samples either

    def wait_app_backends(self, predicate: Any, timeout: float = 10.0, user: str = APP_USER) -> list[int]:
        deadline = time.monotonic() + timeout
        while True:
            pids = self.app_backends(user)
            if predicate(pids) or time.monotonic() > deadline:
                return pids
            time.sleep(0.02)

    def kill_app_sessions(self, user: str = APP_USER) -> int:
        """pg_terminate_backend every session of ``user``; wait until they are gone."""
        pids = self.app_backends(user)
        for pid in pids:
            self.sql(f"SELECT pg_terminate_backend({pid})")
        left = self.wait_app_backends(lambda now: not set(pids) & set(now), user=user)
        assert not set(pids) & set(left), f"sessions {pids} still open after pg_terminate_backend: {left}"
        return len(pids)

    def running_statements(self, user: str = APP_USER) -> list[str]:
        """Queries of ``user`` now running (state 'active')."""
        rows = self.sql(f"SELECT query FROM pg_stat_activity WHERE usename = '{user}' AND state = 'active'")
        return [str(r[0]) for r in rows]

    def sleeping_statements(self, user: str = APP_USER, conn: Any = None) -> list[str]:
        """Queries of ``user`` now inside ``pg_sleep()`` (asked on ``conn``: see :meth:`sql`). Narrower
        than :meth:`running_statements`: a session is 'active' already while it parses the statement
        (asyncpg prepares it first), and a caller cancelled at that point leaves no statement running
        to stop."""
        rows = self.sql(
            f"SELECT query FROM pg_stat_activity WHERE usename = '{user}' AND state = 'active' "
            "AND wait_event = 'PgSleep'",
            conn=conn,
        )
        return [str(r[0]) for r in rows]

    def open_transactions(self, user: str = APP_USER) -> int:
        """Sessions of ``user`` inside a transaction (idle in transaction, or running one)."""
        rows = self.sql(
            f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{user}' AND xact_start IS NOT NULL"
        )
        return int(rows[0][0])

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """A Django-style DATABASES entry for the application role."""
        entry: dict[str, Any] = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": DATABASE,
            "USER": APP_USER,
            "PASSWORD": APP_PASSWORD,
            "HOST": "127.0.0.1",
            "PORT": self.port,
        }
        entry.update(overrides)
        return entry

    def url(self, query: str = "", scheme: str = "postgresql") -> str:
        base = f"{scheme}://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"
        return base + (f"?{query}" if query else "")
