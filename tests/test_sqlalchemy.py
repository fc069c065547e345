"""SQLAlchemy on aconn (``aconn.sqlalchemy``), on the five dialects, against the real servers.

| promise | test |
|---|---|
| the dialect follows ENGINE; the URL names no password | test_dialect_and_url |
| SQLAlchemy's pool arguments are refused, naming the aconn setting | test_pool_arguments_refused |
| in a scope: the scope's driver connection; one transaction with raw code | test_scope_shares_the_driver_connection |
| outside a scope: each engine connection a unit of its own | test_outside_a_scope_each_connection_is_a_unit |
| sessions commit, roll back, begin_nested; autocommit between | test_session_transactions |
| session.commit() in atomic() is a savepoint; atomic() in a session too | test_transactions_compose_with_atomic |
| two sessions open at once in a scope: independent | test_two_sessions_at_once_are_independent |
| gather over sessions in child tasks, with and without a scope | test_gather_over_sessions_in_child_tasks |
| one session used by two tasks at once: a clear error, nothing leaked | test_one_session_used_by_two_tasks |
| a test's transaction rolls back sessions' commits | test_test_transaction_rolls_back_committed_sessions |
| ATOMIC_REQUESTS: a request's sessions commit with it, or not at all | test_atomic_requests |
| a session in the driver's own transaction: a savepoint | test_session_inside_the_drivers_own_transaction |
| isolation_level="AUTOCOMMIT" and a named level | test_isolation_levels |
| AUTOCOMMIT off: implicit transactions, no BEGIN sent (as SQLAlchemy's own pool) | test_autocommit_off_is_implicit |
| engine.dispose() leaves the connections to the handler | test_dispose_leaves_the_connections |
| a connection SQLAlchemy finds disconnected is discarded, not reused | test_invalidated_connection_is_discarded |
| one engine across event loops | test_one_engine_across_event_loops |
| MySQL: BEGIN goes with the first statement | test_a_transaction_begins_with_its_first_statement |
| aiomysql: a BEGIN refused is raised, in step | test_a_begin_the_server_refuses_is_raised_after_its_select |

The known failures of plain SQLAlchemy, side by side: ``tests/test_sqlalchemy_failures.py``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers import DRIVER_PARAMS, eventually, settings_for
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

import aconn
from aconn.errors import ConfigError
from aconn.sqlalchemy import create_async_engine
from aconn.testing import TestTransaction

metadata = MetaData()
items = Table("aconn_sa_items", metadata, Column("id", Integer, primary_key=True), Column("name", String(40)))

async def engine_with_a_fresh_table(connections: aconn.Connections) -> AsyncEngine:
    engine = create_async_engine(connections)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
    return engine


@pytest.fixture(params=DRIVER_PARAMS)
async def setup(
    request: pytest.FixtureRequest, make: Any, tmp_path: Any
) -> AsyncIterator[tuple[aconn.Connections, AsyncEngine]]:
    """A handler of at most 3 connections, an engine on it, a fresh table."""
    connections = make({"default": settings_for(request, request.param, tmp_path, CONN_MAX_AGE=60, MAX_CONNS=3)})
    engine = await engine_with_a_fresh_table(connections)
    yield connections, engine
    await engine.dispose()


async def names(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(items.c.name).order_by(items.c.id))).scalars())


def driver_of(session_or_conn: Any) -> Any:
    """The driver connection under a session's or an engine connection's current connection."""
    sync = session_or_conn.sync_connection
    return sync.connection.driver_connection


async def raw_insert(conn: Any, name: str, ident: int) -> None:
    """An INSERT with the driver's own API."""
    if hasattr(conn, "fetchval"):  # asyncpg
        await conn.execute(f"INSERT INTO aconn_sa_items (id, name) VALUES ({ident}, '{name}')")
    elif hasattr(conn, "cursor") and not hasattr(conn, "pgconn") and not hasattr(conn, "_conn"):
        async with conn.cursor() as cur:  # aiomysql, asyncmy
            await cur.execute(f"INSERT INTO aconn_sa_items (id, name) VALUES ({ident}, '{name}')")
    else:  # psycopg, aiosqlite
        await conn.execute(f"INSERT INTO aconn_sa_items (id, name) VALUES ({ident}, '{name}')")


def test_dialect_and_url(tmp_path: Any) -> None:
    connections = aconn.Connections(
        {
            "default": {"ENGINE": "sqlite", "NAME": str(tmp_path / "a.db")},
            "pg": {"ENGINE": "asyncpg", "NAME": "app", "USER": "u", "PASSWORD": "s3cret", "HOST": "h", "PORT": 5433},
            "my": {"ENGINE": "mysql", "NAME": "app", "USER": "u", "PASSWORD": "s3cret"},
        }
    )
    pg = create_async_engine(connections, "pg")
    assert (pg.dialect.name, pg.dialect.driver) == ("postgresql", "asyncpg")
    my = create_async_engine(connections, "my")
    assert (my.dialect.name, my.dialect.driver) == ("mysql", "aiomysql")
    assert (create_async_engine(connections).dialect.driver) == "aiosqlite"
    for engine in (pg, my):
        assert "s3cret" not in repr(engine.url) and "s3cret" not in str(engine.url)
        assert "s3cret" not in engine.url.render_as_string(hide_password=False)
    assert str(pg.url) == "postgresql+aconn_asyncpg://u@h:5433/app"
    with pytest.raises(ConfigError, match="nope"):
        create_async_engine(connections, "nope")


@pytest.mark.parametrize(
    ("argument", "setting"),
    [("pool_size", "MAX_CONNS"), ("max_overflow", "MAX_CONNS"), ("pool_timeout", "ACQUIRE_TIMEOUT"),
     ("pool_recycle", "CONN_MAX_AGE"), ("pool_pre_ping", "without a round trip"), ("poolclass", "aconn is the pool")],
)  # fmt: skip
def test_pool_arguments_refused(tmp_path: Any, argument: str, setting: str) -> None:
    connections = aconn.Connections({"default": {"ENGINE": "sqlite", "NAME": str(tmp_path / "a.db")}})
    with pytest.raises(ConfigError, match=setting) as info:
        create_async_engine(connections, **{argument: 1})
    assert argument in str(info.value) and info.value.alias == "default"
    # what is not a pool argument passes through to SQLAlchemy
    engine = create_async_engine(connections, echo=False, execution_options={"x": 1}, json_serializer=repr)
    assert engine.get_execution_options()["x"] == 1


async def test_scope_shares_the_driver_connection(setup: tuple[aconn.Connections, AsyncEngine]) -> None:
    connections, engine = setup
    sessions = async_sessionmaker(engine)
    async with connections.scope():
        raw = await connections.connection()
        async with sessions() as session:
            await session.execute(select(1))
            assert driver_of(await session.connection()) is raw
        async with engine.connect() as conn:  # sequential use: the same connection again
            assert driver_of(conn) is raw
        # raw-driver and ORM code in one transaction: rolled back together
        with pytest.raises(ZeroDivisionError):
            async with connections.atomic():
                await raw_insert(raw, "raw", 1)
                async with sessions() as session:
                    await session.execute(insert(items).values(id=2, name="orm"))
                    await session.commit()  # a savepoint of the atomic() block
                1 / 0  # noqa: B018
        assert connections.stats().in_use == 1  # SQLAlchemy's checkins gave nothing back to aconn
    assert await names(engine) == []
    stats = connections.stats()
    assert (stats.in_use, stats.opened) == (0, 1)


async def test_a_session_that_waits_for_a_connection_takes_the_scopes(
    setup: tuple[aconn.Connections, AsyncEngine],
) -> None:
    """Every connection is held: a scope whose first use of the alias is a session queues as
    ``connection()`` would, and the connection it gets is the scope's (the driver's API sees it)."""
    connections, engine = setup
    sessions = async_sessionmaker(engine)
    release = asyncio.Event()
    holding = 0

    async def hold() -> None:
        nonlocal holding
        async with connections.scope():
            await connections.connection()
            holding += 1
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(3)]  # MAX_CONNS=3
    await eventually(lambda: holding == 3)

    async def waiter() -> bool:
        async with connections.scope(), sessions() as session:
            await session.execute(select(1))
            return driver_of(await session.connection()) is await connections.connection()

    waiting = asyncio.create_task(waiter())
    await eventually(lambda: connections.stats().waiting == 1)
    release.set()
    assert await waiting
    await asyncio.gather(*holders)
    stats = connections.stats()
    assert (stats.in_use, stats.opened) == (0, 3)


async def test_outside_a_scope_each_connection_is_a_unit(setup: tuple[aconn.Connections, AsyncEngine]) -> None:
    connections, engine = setup
    async with engine.begin() as conn:
        await conn.execute(insert(items).values(id=1, name="a"))
        assert connections.stats().in_use == 1
    assert connections.stats().in_use == 0
    async with AsyncSession(engine) as session:
        session.add_all([])
        await session.execute(insert(items).values(id=2, name="b"))
        await session.rollback()
        await session.execute(insert(items).values(id=3, name="c"))
        await session.commit()
    assert await names(engine) == ["a", "c"]
    stats = connections.stats()
    assert stats.in_use == 0 and stats.opened == 1  # one connection, reused, every time checked


async def test_session_transactions(setup: tuple[aconn.Connections, AsyncEngine]) -> None:
    connections, engine = setup
    async with connections.scope():
        raw = await connections.connection()
        async with AsyncSession(engine) as session:
            await session.execute(insert(items).values(id=1, name="kept"))
            nested = await session.begin_nested()
            await session.execute(insert(items).values(id=2, name="undone"))
            await nested.rollback()
            await session.commit()
        backend = connections.pool().backend
        assert not backend.in_transaction(raw)  # between transactions: autocommit, as aconn's
        await raw_insert(raw, "raw", 3)  # autocommit: stays whatever comes next
        async with AsyncSession(engine) as session:
            await session.execute(insert(items).values(id=4, name="dropped"))
        # the session closed without commit: rolled back
    assert await names(engine) == ["kept", "raw"]


async def test_transactions_compose_with_atomic(setup: tuple[aconn.Connections, AsyncEngine]) -> None:
    connections, engine = setup
    with pytest.raises(KeyError):
        async with connections.atomic():
            async with AsyncSession(engine) as session:
                await session.execute(insert(items).values(id=1, name="a"))
                await session.commit()
            raise KeyError("the block fails after the session committed")
    assert await names(engine) == []
    # in a scope, where the session and atomic() share the connection
    async with connections.scope(), AsyncSession(engine) as session, session.begin():
        await session.execute(insert(items).values(id=2, name="b"))
        with pytest.raises(ZeroDivisionError):
            async with connections.atomic():  # a savepoint of the session's transaction
                await raw_insert(await connections.connection(), "c", 3)
                1 / 0  # noqa: B018
        async with connections.atomic():
            await raw_insert(await connections.connection(), "d", 4)
    assert await names(engine) == ["b", "d"]


async def test_two_sessions_at_once_are_independent(setup: tuple[aconn.Connections, AsyncEngine]) -> None:
    connections, engine = setup
    async with connections.scope():
        raw = await connections.connection()
        async with AsyncSession(engine) as first, AsyncSession(engine) as second:
            await first.execute(select(1))
            await second.execute(select(1))
            assert driver_of(await first.connection()) is raw
            assert driver_of(await second.connection()) is not raw  # a unit of its own
            assert connections.stats().in_use == 2
            await second.execute(insert(items).values(id=1, name="second"))
            await second.commit()
            await first.rollback()
        assert connections.stats().in_use == 1  # the second's unit ended with it
    assert await names(engine) == ["second"]


async def test_gather_over_sessions_in_child_tasks(setup: tuple[aconn.Connections, AsyncEngine]) -> None:
    connections, engine = setup
    sessions = async_sessionmaker(engine)

    async def write(ident: int) -> int:
        async with sessions() as session, session.begin():
            await session.execute(insert(items).values(id=ident, name=f"n{ident}"))
            return int((await session.execute(select(items.c.id).where(items.c.id == ident))).scalar_one())

    assert await asyncio.gather(*(write(i) for i in range(1, 5))) == [1, 2, 3, 4]  # no scope
    async with connections.scope():
        await connections.connection()
        assert await asyncio.gather(*(write(i) for i in range(5, 9))) == [5, 6, 7, 8]  # children: units
    assert len(await names(engine)) == 8
    assert connections.stats().in_use == 0


async def test_one_session_used_by_two_tasks(setup: tuple[aconn.Connections, AsyncEngine]) -> None:
    connections, engine = setup
    async with AsyncSession(engine) as session:
        results = await asyncio.gather(
            *(session.execute(insert(items).values(id=i, name="x")) for i in (1, 2)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert errors, "SQLAlchemy let two tasks use one session at once"
        # aconn's error, before the driver sees the statement; or SQLAlchemy's own, when the
        # second task comes while the first is still getting the session its connection
        expected = ("one task at a time", "concurrent operations are not permitted")
        assert all(any(text in str(e) for text in expected) for e in errors), errors
        await session.rollback()
    assert connections.stats().in_use == 0
    async with AsyncSession(engine) as session:  # nothing corrupted: the next session works
        await session.execute(insert(items).values(id=3, name="next"))
        await session.commit()
    assert await names(engine) == ["next"]


async def test_test_transaction_rolls_back_committed_sessions(setup: tuple[aconn.Connections, AsyncEngine]) -> None:
    connections, engine = setup
    async with TestTransaction(connections):
        async with AsyncSession(engine) as session:
            await session.execute(insert(items).values(id=1, name="committed"))
            await session.commit()
        async with AsyncSession(engine) as session:  # the test sees its writes
            assert (await session.execute(select(items.c.name))).scalars().all() == ["committed"]
        async with connections.scope(), AsyncSession(engine) as session:
            await session.execute(insert(items).values(id=2, name="in a scope"))
            await session.commit()

        async def count() -> int:
            async with AsyncSession(engine) as session:
                return int((await session.execute(select(items.c.id))).scalars().all().__len__())

        # sessions in child tasks take turns on the test's one connection, and see its writes
        assert await asyncio.gather(count(), count(), count()) == [2, 2, 2]
    assert await names(engine) == []  # the test's transaction took them all back


@pytest.mark.parametrize("name", DRIVER_PARAMS)
async def test_atomic_requests(request: pytest.FixtureRequest, name: str, make: Any, tmp_path: Any) -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from aconn.asgi import ConnectionsMiddleware

    connections = make({"default": settings_for(request, name, tmp_path, CONN_MAX_AGE=60, ATOMIC_REQUESTS=True)})
    engine = await engine_with_a_fresh_table(connections)

    async def add(request: Request) -> PlainTextResponse:
        ident = int(request.query_params["id"])
        async with AsyncSession(engine) as session:
            await session.execute(insert(items).values(id=ident, name="req"))
            await session.commit()  # a savepoint of the request's transaction
        if ident == 2:
            raise RuntimeError("the request fails after the session committed")
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", add)], middleware=[Middleware(ConnectionsMiddleware, connections=connections)])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/", params={"id": 1})).status_code == 200
        assert (await client.get("/", params={"id": 2})).status_code == 500
    async with engine.connect() as conn:
        assert list((await conn.execute(select(items.c.id))).scalars()) == [1]
    assert connections.stats().in_use == 0


async def test_session_inside_the_drivers_own_transaction(setup: tuple[aconn.Connections, AsyncEngine]) -> None:
    from test_driver_transactions import DRIVERS, _ended_by_commit

    connections, engine = setup
    driver = DRIVERS["sqlite" if engine.dialect.name == "sqlite" else engine.dialect.driver]
    # aiosqlite has no begin(): its own transaction is a BEGIN sent by hand, ended by commit()
    transaction = driver.transaction if driver.nests else _ended_by_commit(lambda c: driver.run(c, "BEGIN"))
    async with connections.scope():
        raw = await connections.connection()
        with pytest.raises(KeyError):
            async with transaction(raw):
                async with AsyncSession(engine) as session:
                    await session.execute(insert(items).values(id=1, name="in the driver's"))
                    await session.commit()  # a savepoint of the driver's transaction
                raise KeyError("the driver's transaction fails after the session committed")
        async with transaction(raw), AsyncSession(engine) as session:
            await session.execute(insert(items).values(id=2, name="kept"))
            await session.commit()
    assert await names(engine) == ["kept"]
    assert connections.stats().opened == 1


@pytest.mark.parametrize("name", [p for p in DRIVER_PARAMS if getattr(p, "values", [p])[0] != "asyncpg"])
async def test_autocommit_off_is_implicit(request: pytest.FixtureRequest, name: str, make: Any, tmp_path: Any) -> None:
    connections = make({"default": settings_for(request, name, tmp_path, CONN_MAX_AGE=60, AUTOCOMMIT=False)})
    engine = await engine_with_a_fresh_table(connections)
    mysql = engine.dialect.name == "mysql"

    async def begins(session: AsyncSession) -> int:
        """BEGIN statements the session's connection has sent (MySQL counts them)."""
        row = (await session.execute(text("SHOW SESSION STATUS LIKE 'Com_begin'"))).one()
        return int(row[1])

    async with AsyncSession(engine) as session:
        before = await begins(session) if mysql else 0
        await session.execute(insert(items).values(id=1, name="committed"))
        await session.commit()
        await session.execute(insert(items).values(id=2, name="rolled back"))
        await session.rollback()
        if mysql:
            assert await begins(session) == before  # the driver's implicit transactions: no BEGIN
    async with connections.scope(), AsyncSession(engine) as session:
        await session.execute(insert(items).values(id=3, name="in a scope"))
        nested = await session.begin_nested()
        await session.execute(insert(items).values(id=4, name="savepoint"))
        await nested.rollback()
        await session.commit()
    assert await names(engine) == ["committed", "in a scope"]
    assert connections.stats().in_use == 0


async def test_isolation_levels(setup: tuple[aconn.Connections, AsyncEngine]) -> None:
    connections, engine = setup
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    async with autocommit.connect() as conn:
        await conn.execute(insert(items).values(id=1, name="autocommitted"))
        await conn.rollback()  # nothing to roll back: the statement stood on its own
    assert await names(engine) == ["autocommitted"]
    if engine.dialect.name == "sqlite":
        return  # SQLite's levels are PRAGMAs: SQLAlchemy's own
    serializable = engine.execution_options(isolation_level="SERIALIZABLE")
    async with serializable.begin() as conn:
        query = "SELECT @@tx_isolation" if engine.dialect.name == "mysql" else "SHOW transaction_isolation"
        assert str((await conn.execute(text(query))).scalar()).upper().replace("-", " ") == "SERIALIZABLE"
    async with engine.connect() as conn:  # the next checkout is back to the default
        assert "SERIALIZABLE" not in str((await conn.execute(text(query))).scalar()).upper().replace("-", " ")
    assert connections.stats().in_use == 0


async def test_dispose_leaves_the_connections(setup: tuple[aconn.Connections, AsyncEngine]) -> None:
    connections, engine = setup
    async with connections.scope():
        raw = await connections.connection()
        async with engine.connect() as conn:
            await conn.execute(select(1))
        await engine.dispose()
        async with engine.connect() as conn:  # the engine still works, on the same connection
            await conn.execute(select(1))
            assert driver_of(conn) is raw
    assert connections.stats().closed_shutdown == 0 and connections.stats().opened == 1


async def test_invalidated_connection_is_discarded(setup: tuple[aconn.Connections, AsyncEngine]) -> None:
    connections, engine = setup
    async with engine.connect() as conn:
        first = driver_of(conn)
        await conn.invalidate()  # as SQLAlchemy does on a disconnect error
    async with engine.connect() as conn:
        await conn.execute(select(1))
        assert driver_of(conn) is not first
    stats = connections.stats()
    assert stats.opened == 2 and stats.in_use == 0


def test_one_engine_across_event_loops(tmp_path: Any) -> None:
    """A module-level engine used by one event loop, then another (a test suite's loops)."""
    connections = aconn.Connections({"default": {"ENGINE": "sqlite", "NAME": str(tmp_path / "a.db")}})
    engine = create_async_engine(connections)

    async def use() -> int:
        async with engine.connect() as conn:
            return int((await conn.execute(select(1))).scalar_one())

    assert asyncio.run(use()) == 1
    assert asyncio.run(use()) == 1
    box: list[int] = []
    thread = threading.Thread(target=lambda: box.append(asyncio.run(use())))
    thread.start()
    thread.join(10)
    assert box == [1]


async def test_two_sessions_of_one_task_in_a_test_transaction(tmp_path: Any, make: Any) -> None:
    """A test's one connection: a second session opened while the first holds it, in the same task,
    waits ACQUIRE_TIMEOUT and fails saying why (in a child task it would wait its turn)."""
    from aconn.errors import AcquireTimeout

    connections = make({"default": {"ENGINE": "sqlite", "NAME": str(tmp_path / "a.db"), "ACQUIRE_TIMEOUT": 0.2}})
    engine = create_async_engine(connections)
    async with TestTransaction(connections), AsyncSession(engine) as first, AsyncSession(engine) as second:
        await first.execute(select(1))
        with pytest.raises(AcquireTimeout, match="test's transaction"):
            await second.execute(select(1))
    assert connections.stats().in_use == 0


MYSQL_PARAMS = [p for p in DRIVER_PARAMS if getattr(p, "values", [p])[0] in ("aiomysql", "asyncmy")]


async def session_status(conn: Any, name: str) -> int:
    """A counter of the driver connection's own session (``Com_begin``...), read with the driver's API."""
    async with conn.cursor() as cur:
        await cur.execute(f"SHOW SESSION STATUS LIKE '{name}'")
        return int((await cur.fetchone())[1])


@pytest.mark.parametrize("name", MYSQL_PARAMS)
async def test_a_transaction_begins_with_its_first_statement(
    request: pytest.FixtureRequest, name: str, make: Any, tmp_path: Any
) -> None:
    """On MySQL a SQLAlchemy transaction's BEGIN goes with its first statement (aiomysql: in one
    write with a SELECT, one round trip, as the implicit transaction of SQLAlchemy's own pool):
    the SELECT runs inside the transaction, a write first is inside it too, and a transaction
    that ends before any statement sends nothing on aiomysql."""
    connections = make({"default": settings_for(request, name, tmp_path, CONN_MAX_AGE=60)})
    engine = await engine_with_a_fresh_table(connections)
    async with connections.scope():
        raw = await connections.connection()
        async with AsyncSession(engine) as session:
            assert (await session.execute(text("SELECT @@in_transaction"))).scalar() == 1
            await session.execute(insert(items).values(id=1, name="rolled back"))
            await session.rollback()
            await session.execute(insert(items).values(id=2, name="first, then rolled back"))
            assert (await session.execute(text("SELECT @@in_transaction"))).scalar() == 1
            await session.rollback()
            await session.execute(select(items.c.id))
            await session.execute(insert(items).values(id=3, name="committed"))
            await session.commit()
        begins, commits = await session_status(raw, "Com_begin"), await session_status(raw, "Com_commit")
        async with engine.begin():
            pass  # no statement
        sent = 0 if name == "aiomysql" else 1
        assert (await session_status(raw, "Com_begin"), await session_status(raw, "Com_commit")) == (
            begins + sent,
            commits + sent,
        )
        async with engine.connect() as conn:
            await conn.begin()
            await conn.rollback()  # no statement either
        assert connections._pool("default").backend.in_transaction(raw) is False
    assert await names(engine) == ["committed"]
    assert connections.stats().in_use == 0


@pytest.mark.mysql
async def test_a_begin_the_server_refuses_is_raised_after_its_select(db: Any, make: Any) -> None:
    """aiomysql: a BEGIN written together with a SELECT, which the server refuses (an XA
    transaction is active): the caller gets the refusal, the SELECT's reply has been read (the
    connection stays in step) and nothing is left held back."""
    import pymysql

    connections = make({"default": db.settings(ENGINE="mysql", CONN_MAX_AGE=60)})
    async with connections.acquire() as conn, conn.cursor() as cur:
        await cur.execute("XA START 'aconn_refused_begin'")
        conn.aconn_defer_begin()
        with pytest.raises(pymysql.err.MySQLError) as refused:
            await cur.execute("SELECT 1")
        assert refused.value.args[0] == 1399  # ER_XAER_RMFAIL: not while the XA transaction is active
        assert conn.aconn_drop_begin() is False
        await cur.execute("SELECT 2")
        assert await cur.fetchone() == (2,)
        await cur.execute("XA END 'aconn_refused_begin'")
        await cur.execute("XA ROLLBACK 'aconn_refused_begin'")
    assert connections.stats().in_use == 0
