"""Small async helpers shared by the tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from mariadb import APP_PASSWORD

import aconn


async def fetch(conn: Any, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement on an aiomysql or aiosqlite connection; its rows."""
    if hasattr(conn, "execute_fetchall"):  # aiosqlite
        return [tuple(r) for r in await conn.execute_fetchall(sql, args or ())]
    async with conn.cursor() as cur:
        await cur.execute(sql, args)
        return list(await cur.fetchall())


async def scalar(conn: Any, sql: str, args: Any = None) -> Any:
    rows = await fetch(conn, sql, args)
    return rows[0][0]


async def in_scope(connections: aconn.Connections, sql: str, alias: str = "default") -> Any:
    """One scope, one statement, its first value."""
    async with connections.scope():
        return await scalar(await connections.connection(alias), sql)


async def eventually(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll a condition that no event announces (a pool gauge, the server's processlist), within a bound."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def age_idle(connections: aconn.Connections, seconds: float, alias: str = "default") -> None:
    """Make every idle connection of ``alias`` look idle for ``seconds`` more (no sleep)."""
    for holder in connections.pool(alias)._idle:
        holder.last_used -= seconds


def assert_no_password(*texts: Any) -> None:
    """No text shows the application user's password."""
    for text in texts:
        assert APP_PASSWORD not in str(text)


def assert_balanced(stats: aconn.PoolStats) -> None:
    """The pool's invariant: every open connection is idle, in use, opening or closing; the cap held."""
    assert stats.open == stats.idle + stats.in_use + stats.opening + stats.closing, stats
    assert stats.open <= stats.max_conns, stats
    assert stats.in_use >= 0 and stats.waiting >= 0 and stats.opening >= 0 and stats.closing >= 0, stats


class ProcesslistSampler:
    """Samples the application user's sessions on the server (MariaDB or PostgreSQL: ``app_threads()``)
    from a thread while load runs, on one admin connection opened before the load: a server at its
    ``max_connections`` (plain SQLAlchemy's storms take it there) refuses new ones, root's too."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._conn: Any = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(len(self.server.app_threads(conn=self._conn)))
            self._stop.wait(0.01)

    def __enter__(self) -> ProcesslistSampler:
        self._conn = self.server.admin_connection()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._conn.close()


#: aconn's ENGINE for each of the five drivers
ENGINES = {"sqlite": "sqlite", "aiomysql": "mysql", "asyncmy": "asyncmy", "psycopg": "postgresql", "asyncpg": "asyncpg"}
#: the five drivers as pytest parameters, the server ones marked for the server they need
DRIVER_PARAMS = [
    "sqlite",
    pytest.param("aiomysql", marks=pytest.mark.mysql),
    pytest.param("asyncmy", marks=pytest.mark.mysql),
    pytest.param("psycopg", marks=pytest.mark.postgresql),
    pytest.param("asyncpg", marks=pytest.mark.postgresql),
]


def settings_for(request: pytest.FixtureRequest, driver: str, tmp_path: Any, **overrides: Any) -> dict[str, Any]:
    """A DATABASES entry on ``driver``: a SQLite file in ``tmp_path``, or the session's MariaDB
    or PostgreSQL (through their ``db`` and ``pg`` fixtures)."""
    if driver == "sqlite":
        return {"ENGINE": "sqlite", "NAME": str(tmp_path / "app.db"), **overrides}
    server = request.getfixturevalue("db" if driver in ("aiomysql", "asyncmy") else "pg")
    return dict(server.settings(ENGINE=ENGINES[driver], **overrides))
