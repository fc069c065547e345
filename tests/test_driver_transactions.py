"""aconn's transactions and the driver's own, on every driver, against the real servers.

| promise | test |
|---|---|
| the driver's transaction inside atomic() nests: a savepoint, rolled back alone | test_driver_transaction_inside_atomic |
| atomic() inside the driver's transaction is a savepoint of it | test_atomic_inside_driver_transaction |
| a driver transaction left open at scope exit leaves nothing for the next scope | test_transaction_left_open_is_cleared_for_the_next_scope |
| ... nor one whose server transaction ended by hand (asyncpg's, psycopg's records) | test_record_of_a_transaction_ended_by_hand_is_cleared |
| the driver's transaction inside a test's transaction nests and is rolled back | test_driver_transaction_inside_test_transaction |
| asyncpg: transaction(isolation=..., readonly=...) inside and around atomic() | test_asyncpg_transaction_options |

On aiosqlite, which has no ``begin()``, the driver's transaction is ``commit()`` /
``rollback()`` after statements; inside an aconn block they do nothing, as on an
autocommit session (the statements belong to the enclosing block).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from helpers import DRIVER_PARAMS, settings_for

import aconn
from aconn.testing import TestTransaction

TABLE = "aconn_driver_tx"


@dataclass
class Driver:
    """How the test talks to one driver with the driver's own API."""

    name: str
    run: Callable[[Any, str], Awaitable[None]]
    ids: Callable[[Any], Awaitable[list[int]]]
    #: the driver's transaction as an async context manager
    transaction: Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]
    #: begin the driver's transaction and walk away from it (an early return)
    leave_open: Callable[[Any], Awaitable[None]]
    #: the driver's transaction can nest (a savepoint) inside aconn's
    nests: bool = True


async def _mysql_run(conn: Any, sql: str) -> None:
    async with conn.cursor() as cur:
        with warnings.catch_warnings():  # MariaDB warns of a table that is not there
            warnings.simplefilter("ignore")
            await cur.execute(sql)


async def _mysql_ids(conn: Any) -> list[int]:
    async with conn.cursor() as cur:
        await cur.execute(f"SELECT id FROM {TABLE} ORDER BY id")
        return [r[0] for r in await cur.fetchall()]


def _ended_by_commit(
    begin: Callable[[Any], Awaitable[Any]] | None,
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]:
    """The driver's transaction as apps write it: ``begin`` (if any), then ``commit()``, or
    ``rollback()`` on an error. aiomysql's and asyncmy's ``begin()``; aiosqlite's statements."""

    @contextlib.asynccontextmanager
    async def transaction(conn: Any) -> AsyncIterator[Any]:
        if begin is not None:
            await begin(conn)
        try:
            yield conn
        except BaseException:
            await conn.rollback()
            raise
        await conn.commit()

    return transaction


async def _sqlite_run(conn: Any, sql: str) -> None:
    await (await conn.execute(sql)).close()


async def _sqlite_ids(conn: Any) -> list[int]:
    return [r[0] for r in await conn.execute_fetchall(f"SELECT id FROM {TABLE} ORDER BY id")]


async def _psycopg_ids(conn: Any) -> list[int]:
    cur = await conn.execute(f"SELECT id FROM {TABLE} ORDER BY id")
    return [r[0] for r in await cur.fetchall()]


async def _asyncpg_run(conn: Any, sql: str) -> None:
    await conn.execute(sql)


async def _asyncpg_ids(conn: Any) -> list[int]:
    return [r[0] for r in await conn.fetch(f"SELECT id FROM {TABLE} ORDER BY id")]


async def _psycopg_leave_open(conn: Any) -> None:
    # the transaction object itself: conn.transaction() is an async generator, which the garbage
    # collector would finalize (ending the transaction) at a moment of its choosing
    import psycopg

    await psycopg.AsyncTransaction(conn).__aenter__()


async def _asyncpg_leave_open(conn: Any) -> None:
    await conn.transaction().start()


DRIVERS = {
    "sqlite": Driver("sqlite", _sqlite_run, _sqlite_ids, _ended_by_commit(None), lambda c: _sqlite_run(c, "BEGIN"), False),
    "aiomysql": Driver("aiomysql", _mysql_run, _mysql_ids, _ended_by_commit(lambda c: c.begin()), lambda c: c.begin()),
    "asyncmy": Driver("asyncmy", _mysql_run, _mysql_ids, _ended_by_commit(lambda c: c.begin()), lambda c: c.begin()),
    "psycopg": Driver("psycopg", _mysql_run, _psycopg_ids, lambda c: c.transaction(), _psycopg_leave_open),
    "asyncpg": Driver("asyncpg", _asyncpg_run, _asyncpg_ids, lambda c: c.transaction(), _asyncpg_leave_open),
}


@pytest.fixture(params=DRIVER_PARAMS)
async def setup(
    request: pytest.FixtureRequest, make: Any, tmp_path: Any
) -> AsyncIterator[tuple[aconn.Connections, Driver]]:
    """A handler of one connection (so that every scope reuses it) on a fresh table."""
    driver = DRIVERS[request.param]
    settings = settings_for(request, request.param, tmp_path)
    connections = make({"default": {**settings, "CONN_MAX_AGE": 60, "MAX_CONNS": 1}})
    async with connections.acquire() as conn:
        await driver.run(conn, f"DROP TABLE IF EXISTS {TABLE}")
        await driver.run(conn, f"CREATE TABLE {TABLE} (id INT PRIMARY KEY)")
    yield connections, driver


async def ids_now(connections: aconn.Connections, driver: Driver) -> list[int]:
    async with connections.acquire() as conn:
        return await driver.ids(conn)


async def test_driver_transaction_inside_atomic(setup: tuple[aconn.Connections, Driver]) -> None:
    connections, driver = setup
    async with connections.atomic() as conn:
        await driver.run(conn, f"INSERT INTO {TABLE} VALUES (1)")
        async with driver.transaction(conn):
            await driver.run(conn, f"INSERT INTO {TABLE} VALUES (2)")
        with pytest.raises(ZeroDivisionError):
            async with driver.transaction(conn):
                await driver.run(conn, f"INSERT INTO {TABLE} VALUES (3)")
                1 / 0  # noqa: B018
    # the driver's commit did not end aconn's transaction early; its rollback undid its own part only
    assert await ids_now(connections, driver) == ([1, 2] if driver.nests else [1, 2, 3])
    with pytest.raises(KeyError):
        async with connections.atomic() as conn:
            async with driver.transaction(conn):
                await driver.run(conn, f"INSERT INTO {TABLE} VALUES (4)")
            raise KeyError("the outer block fails")
    assert await ids_now(connections, driver) == ([1, 2] if driver.nests else [1, 2, 3])  # 4 went with it
    assert connections.stats().opened == 1  # one connection all along: nothing made it unusable


async def test_atomic_inside_driver_transaction(setup: tuple[aconn.Connections, Driver]) -> None:
    connections, driver = setup
    # aiosqlite has no begin(): its own transaction is a BEGIN sent by hand, committed with commit()
    outer = driver.transaction if driver.nests else _ended_by_commit(lambda c: driver.run(c, "BEGIN"))
    async with connections.acquire() as conn:
        async with outer(conn):
            await driver.run(conn, f"INSERT INTO {TABLE} VALUES (1)")
            with pytest.raises(ZeroDivisionError):
                async with connections.atomic():  # a savepoint of the driver's transaction
                    await driver.run(conn, f"INSERT INTO {TABLE} VALUES (2)")
                    1 / 0  # noqa: B018
            async with connections.atomic():
                await driver.run(conn, f"INSERT INTO {TABLE} VALUES (3)")
            assert connections.stats().rollbacks == 0
        with pytest.raises(KeyError):
            async with outer(conn):
                async with connections.atomic():
                    await driver.run(conn, f"INSERT INTO {TABLE} VALUES (4)")
                raise KeyError("the driver's transaction fails after the block")
    assert await ids_now(connections, driver) == [1, 3]
    assert connections.stats().opened == 1


async def test_transaction_left_open_is_cleared_for_the_next_scope(setup: tuple[aconn.Connections, Driver]) -> None:
    connections, driver = setup
    async with connections.acquire() as conn:
        first = conn
        await driver.leave_open(conn)
        await driver.run(conn, f"INSERT INTO {TABLE} VALUES (1)")
        # an early return: nobody ends the driver's transaction
    assert connections.stats().rollbacks == 1
    for n in (2, 3):  # every later scope, not only the next
        async with connections.acquire() as conn:
            assert conn is first  # reused, not replaced
            async with driver.transaction(conn):
                await driver.run(conn, f"INSERT INTO {TABLE} VALUES ({n})")
    async with connections.atomic() as conn:
        await driver.run(conn, f"INSERT INTO {TABLE} VALUES (4)")
    assert await ids_now(connections, driver) == [2, 3, 4]
    assert connections.stats().opened == 1


async def test_record_of_a_transaction_ended_by_hand_is_cleared(setup: tuple[aconn.Connections, Driver]) -> None:
    connections, driver = setup
    async with connections.acquire() as conn:
        await driver.leave_open(conn)
        await driver.run(conn, f"INSERT INTO {TABLE} VALUES (1)")
        await driver.run(conn, "ROLLBACK")  # the server's transaction ends; the driver's object does not know
    async with connections.acquire() as conn, driver.transaction(conn):
        await driver.run(conn, f"INSERT INTO {TABLE} VALUES (2)")
    assert await ids_now(connections, driver) == [2]
    assert connections.stats().opened == 1


async def test_driver_transaction_inside_test_transaction(setup: tuple[aconn.Connections, Driver]) -> None:
    connections, driver = setup
    async with TestTransaction(connections):
        async with connections.acquire() as conn:
            async with driver.transaction(conn):  # the app's own transaction: committed for the app
                await driver.run(conn, f"INSERT INTO {TABLE} VALUES (1)")
            with pytest.raises(ZeroDivisionError):
                async with driver.transaction(conn):
                    await driver.run(conn, f"INSERT INTO {TABLE} VALUES (2)")
                    1 / 0  # noqa: B018
        async with connections.atomic() as conn, driver.transaction(conn):
            await driver.run(conn, f"INSERT INTO {TABLE} VALUES (3)")
        # another scope sees what the test's transaction holds
        assert await ids_now(connections, driver) == ([1, 3] if driver.nests else [1, 2, 3])
    assert await ids_now(connections, driver) == []  # all of it rolled back at the test's end
    assert connections.stats().opened == 1


@pytest.mark.postgresql
async def test_asyncpg_transaction_options(pg: Any, make: Any) -> None:
    connections = make({"default": pg.settings(ENGINE="asyncpg", CONN_MAX_AGE=60, MAX_CONNS=1)})
    async with connections.acquire() as conn:
        # a savepoint in asyncpg's serializable, read-only transaction
        async with conn.transaction(isolation="serializable", readonly=True), connections.atomic():
            level = await conn.fetchval("SHOW transaction_isolation")
            read_only = await conn.fetchval("SHOW transaction_read_only")
        assert (level, read_only) == ("serializable", "on")
        async with connections.atomic():
            # asyncpg checks a nested transaction's isolation against the outer one: aconn's is the default
            async with conn.transaction(isolation="read_committed"):
                assert await conn.fetchval("SELECT 1") == 1
            with pytest.raises(Exception, match="isolation level"):
                async with conn.transaction(isolation="serializable"):
                    pass
    assert connections.stats().opened == 1
