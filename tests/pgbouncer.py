"""A throwaway PgBouncer (transaction mode) in front of the throwaway PostgreSQL, for the tests.

Debian's ``pgbouncer`` in a temporary directory on a free port, run as the
``postgres`` user under root (PgBouncer refuses to run as root). The app role
authenticates with SCRAM against a userlist; it is also an admin user, so that
the tests (and ``python -m aconn check``) can use the admin console.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from mariadb import find_binary, free_port
from postgres import APP_PASSWORD, APP_USER, DATABASE, PostgreSQL

__all__ = ("PgBouncer", "find_pgbouncer")


def find_pgbouncer() -> str | None:
    return find_binary("pgbouncer")


class PgBouncer:
    """One PgBouncer. Use :meth:`start` / :meth:`close`, or the ``pgbouncer`` fixture."""

    def __init__(self, server: PostgreSQL, pool_size: int = 20) -> None:
        binary = find_pgbouncer()
        if binary is None:
            raise RuntimeError("pgbouncer not found: apt-get install -y pgbouncer")
        self.binary = binary
        self.server = server
        self.dir = Path(tempfile.mkdtemp(prefix="aconn-pgbouncer-"))
        self.port = free_port()
        self.pool_size = pool_size
        self.proc: subprocess.Popen[bytes] | None = None
        self.run_as = "postgres" if os.geteuid() == 0 else None
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self._write_config()

    def _write_config(self) -> None:
        (self.dir / "userlist.txt").write_text(f'"{APP_USER}" "{APP_PASSWORD}"\n')
        (self.dir / "pgbouncer.ini").write_text(
            f"""[databases]
{DATABASE} = host=127.0.0.1 port={self.server.port} dbname={DATABASE}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir = {self.dir}
auth_type = scram-sha-256
auth_file = {self.dir / "userlist.txt"}
admin_users = {APP_USER}
pool_mode = transaction
default_pool_size = {self.pool_size}
max_client_conn = 500
server_reset_query =
logfile = {self.dir / "pgbouncer.log"}
pidfile = {self.dir / "pgbouncer.pid"}
"""
        )
        if self.run_as:
            for name in ("userlist.txt", "pgbouncer.ini"):
                shutil.chown(self.dir / name, self.run_as)

    def start(self) -> PgBouncer:
        kwargs: dict[str, Any] = {}
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [], "cwd": str(self.dir)}
        self.proc = subprocess.Popen(
            [self.binary, str(self.dir / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                log = self.dir / "pgbouncer.log"
                raise RuntimeError(f"pgbouncer exited: {log.read_text()[-2000:] if log.exists() else '(no log)'}")
            with socket.socket() as probe:
                probe.settimeout(1)
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError("pgbouncer did not listen within 30 s")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)  # immediate shutdown: client connections are closed
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def admin(self, command: str) -> list[tuple[Any, ...]]:
        """A command on PgBouncer's admin console (``SHOW POOLS``, ``RECONNECT``, ``KILL db``...)."""
        import psycopg

        with contextlib.closing(
            psycopg.connect(host="127.0.0.1", port=self.port, user=APP_USER, password=APP_PASSWORD,
                            dbname="pgbouncer", autocommit=True, cursor_factory=psycopg.ClientCursor)
        ) as conn:  # fmt: skip
            cur = conn.execute(command)
            return list(cur.fetchall()) if cur.description else []

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """A DATABASES entry for the app role, through PgBouncer."""
        return self.server.settings(PORT=self.port, POOLER="pgbouncer", **overrides)
