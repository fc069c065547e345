"""The core promises on SQLite, the embedded default (real files, no server)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from helpers import age_idle, assert_balanced, fetch, in_scope

import aconn


async def test_max_age_reuses_one_connection(sqlite_path: str, make: Any) -> None:
    connections = make({"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": sqlite_path, "CONN_MAX_AGE": 60}})
    seen = set()
    for _ in range(4):
        async with connections.scope():
            seen.add(id(await connections.connection()))
    assert len(seen) == 1
    assert connections.stats().opened == 1
    await connections.aclose()
    stats = connections.stats()
    assert stats.open == 0 and stats.closed_shutdown == 1


async def test_max_age_zero_closes_at_exit(sqlite_path: str, make: Any) -> None:
    connections = make({"default": f"sqlite:///{sqlite_path}"})
    async with connections.scope():
        conn = await connections.connection()
    assert conn._connection is None  # aiosqlite: closed
    assert connections.stats().closed_max_age == 1 and connections.stats().open == 0


async def test_transaction_left_open_is_rolled_back(sqlite_path: str, make: Any) -> None:
    connections = make({"default": f"sqlite:///{sqlite_path}?conn_max_age=60"})
    async with connections.scope():
        conn = await connections.connection()
        await conn.execute("CREATE TABLE t (n INTEGER)")
    async with connections.scope():
        conn = await connections.connection()
        await conn.execute("BEGIN")
        await conn.execute("INSERT INTO t VALUES (1)")
        assert conn.in_transaction
    assert not conn.in_transaction
    assert connections.stats().rollbacks == 1
    # another process-level connection sees no row and no lock
    with sqlite3.connect(sqlite_path) as raw:
        assert raw.execute("SELECT count(*) FROM t").fetchone() == (0,)


async def test_dead_connection_is_replaced(sqlite_path: str, make: Any) -> None:
    connections = make({"default": {"ENGINE": "sqlite", "NAME": sqlite_path, "CONN_MAX_AGE": None}})
    async with connections.scope():
        conn = await connections.connection()
    await conn.close()
    async with connections.scope():
        again = await connections.connection()
        assert again is not conn
        assert await fetch(again, "SELECT 5") == [(5,)]
    assert connections.stats().closed_unusable == 1


async def test_health_check_runs_after_the_bypass_window(sqlite_path: str, make: Any) -> None:
    connections = make({"default": {"ENGINE": "sqlite", "NAME": sqlite_path, "CONN_MAX_AGE": 60,
                                    "CONN_HEALTH_CHECKS": True}})  # fmt: skip
    await in_scope(connections, "SELECT 1")
    await in_scope(connections, "SELECT 1")
    assert connections.stats().health_checks == 0  # used within 0.5 s: no ping
    age_idle(connections, 1.0)  # as if idle for a second
    await in_scope(connections, "SELECT 1")
    assert connections.stats().health_checks == 1


async def test_max_age_deadline_replaces_connection(sqlite_path: str, make: Any) -> None:
    connections = make({"default": {"ENGINE": "sqlite", "NAME": sqlite_path, "CONN_MAX_AGE": 30}})
    async with connections.scope():
        first = await connections.connection()
    pool = connections.pool("default")
    assert 30 * 0.95 <= pool._idle[-1].close_at - pool._idle[-1].opened_at <= 30  # jittered down by up to 5%
    pool._idle[-1].close_at = 0  # its deadline has passed
    async with connections.scope():
        assert await connections.connection() is not first
    assert connections.stats().closed_max_age == 1


async def test_cancelled_statement_is_interrupted_and_discarded(make: Any) -> None:
    """Failure 21: a cancelled aiosqlite call keeps running in its thread unless interrupted."""
    connections = make({"default": {"ENGINE": "sqlite", "NAME": ":memory:", "CONN_MAX_AGE": 60}})
    slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1), connections.scope():
            await fetch(await connections.connection(), slow)
    assert connections.stats().closed_error == 1
    async with asyncio.timeout(5):  # the next scope is not stuck behind the runaway query
        assert await in_scope(connections, "SELECT 9") == 9


async def test_memory_database_is_shared_by_the_alias(make: Any) -> None:
    connections = make({"default": "sqlite:///:memory:"})  # CONN_MAX_AGE=0: a new connection per scope
    async with connections.scope():
        await (await connections.connection()).execute("CREATE TABLE m (n INTEGER)")
        await (await connections.connection()).execute("INSERT INTO m VALUES (3)")
    assert await in_scope(connections, "SELECT n FROM m") == 3


async def test_scope_rules(sqlite_path: str, make: Any) -> None:
    connections = make({"default": f"sqlite:///{sqlite_path}", "other": f"sqlite:///{sqlite_path}-2"})
    with pytest.raises(aconn.ScopeError):
        await connections.connection()
    async with connections.scope() as outer:
        a = await connections.connection()
        async with connections.scope() as inner:  # nested in the same task: the same scope
            assert inner is outer
            assert await connections.connection() is a
        assert await connections.connection() is a  # the nested exit gave nothing back
        b = await connections.connection("other")
        assert b is not a
        with pytest.raises(aconn.ConfigError, match="no such alias"):
            await connections.connection("missing")
    assert_balanced(connections.stats())
    assert connections.stats().in_use == 0 and connections.stats("other").in_use == 0


async def test_scoped_decorator(sqlite_path: str, make: Any) -> None:
    connections = make({"default": f"sqlite:///{sqlite_path}?conn_max_age=60"})

    class Jobs:
        @connections.scoped
        async def run(self, n: int) -> int:
            conn = await connections.connection()
            return int((await fetch(conn, "SELECT ?", (n,)))[0][0])

    @connections.scoped
    async def job(n: int) -> tuple[int, int]:
        return n, id(await connections.connection())

    assert job.__name__ == "job"
    results = [await job(i) for i in range(3)]
    assert [r[0] for r in results] == [0, 1, 2] and len({r[1] for r in results}) == 1
    assert await Jobs().run(8) == 8
    assert connections.stats().in_use == 0


async def test_lazy_use_without_open_and_aclose_idempotent(tmp_path: Path) -> None:
    connections = aconn.Connections({"default": f"sqlite:///{tmp_path / 'x.db'}?conn_max_age=60"})
    assert await in_scope(connections, "SELECT 2") == 2
    await connections.aclose()
    await connections.aclose()
    assert connections.stats().open == 0


async def test_aclose_right_after_open_stops_the_housekeeper(sqlite_path: str) -> None:
    """open() then aclose() with no suspension between: the housekeeper task has not run yet."""
    connections = aconn.Connections({"default": f"sqlite:///{sqlite_path}?conn_max_age=3600"})
    await connections.open()
    async with connections.scope():  # no I/O on this path: nothing yields to the housekeeper
        await connections.connection()
    async with asyncio.timeout(5):
        await connections.aclose()
    assert connections._housekeeper is not None and connections._housekeeper._task is not None
    assert connections._housekeeper._task.done()


async def test_liveness_reads_aiosqlite_internals(tmp_path: Path, make: Any) -> None:
    """The SQLite backend reads aiosqlite's private ``_connection`` and ``_running``: pin what they mean."""
    connections = make({"default": f"sqlite:///{tmp_path / 'pin.db'}?conn_max_age=60"})
    async with connections.scope():
        conn = await connections.connection()
        assert isinstance(conn._connection, sqlite3.Connection) and conn._running is True
    backend = connections.pool("default").backend
    assert backend.is_dead(conn) is False
    await conn.close()
    assert conn._connection is None and conn._running is False
    assert backend.is_dead(conn) is True


def test_every_public_module_exports_what_it_names() -> None:
    """Each module's ``__all__`` names what it has (anyio's test_all_attributes, for aconn)."""
    import importlib
    import pkgutil

    import aconn as package

    modules = [m.name for m in pkgutil.walk_packages(package.__path__, "aconn.") if not m.name.endswith("__main__")]
    for name in ["aconn", *modules]:
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        assert isinstance(exported, tuple), f"{name} has no tuple __all__"
        for attribute in exported:
            assert hasattr(module, attribute), f"{name}.__all__ names {attribute!r}, which it lacks"
