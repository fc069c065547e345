"""``connections.atomic()``, ``ATOMIC_REQUESTS``, ``on_commit()``, on SQLite files and on the real MariaDB.

| promise | test |
|---|---|
| outer commit, inner rollback: the outer writes only | test_inner_rollback_keeps_the_outer_writes |
| an exception in the outer block leaves nothing | test_outer_exception_leaves_nothing |
| a block enters a scope itself, or joins the task's | test_block_enters_or_joins_a_scope |
| usable as a decorator, with and without an alias | test_decorator_forms |
| a COMMIT by hand inside a block is detected | test_commit_by_hand_inside_a_block_is_refused |
| a block inside a transaction begun by hand is a savepoint of it | test_block_inside_a_transaction_begun_by_hand_is_a_savepoint |
| a block left in another task is refused and rolled back | test_block_exited_in_another_task_is_rolled_back |
| a block's connection never goes back in a transaction | test_rollback_that_fails_discards_the_connection |
| ATOMIC_REQUESTS: a request that raises is rolled back | test_atomic_requests_commit_or_roll_back |
| a cancelled request leaves no transaction on the server | test_cancelled_block_leaves_no_transaction (MariaDB) |
| a test's transaction covers every task, job and request | test_test_transaction_rolls_back_every_task_and_request |
| a test's transaction lost is reported, not hidden | test_test_transaction_lost_is_reported, ..._to_implicit_commit |
| outside a transaction a callback runs at once, sync or async | test_outside_a_block_runs_now |
| after the outermost COMMIT, in order; a rollback drops them | test_runs_after_the_commit_in_order |
| a savepoint rolled back drops its own callbacks only | test_savepoint_rolled_back_drops_its_own |
| robust: logged, the next runs; else it propagates, data committed | test_robust_and_failing_callbacks |
| refused inside a transaction the app opened itself | test_refused_in_a_transaction_the_app_opened |
| ATOMIC_REQUESTS: after the request's COMMIT | test_atomic_requests_run_them_after_commit |
| a durable block nested is refused; inside a test's transaction it is allowed | test_durable |
| the test's transaction keeps them; aconn_on_commit runs them | test_aconn_on_commit_fixture |
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from helpers import assert_balanced, fetch
from mariadb import MariaDB
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import aconn
from aconn.asgi import ConnectionsMiddleware
from aconn.testing import TestTransaction

TABLE = "aconn_atomic_t"


@pytest.fixture(
    params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql), pytest.param("asyncmy", marks=pytest.mark.mysql)]
)
async def conns(request: pytest.FixtureRequest, make: Any, tmp_path: Any) -> AsyncIterator[aconn.Connections]:
    """A handler on a fresh table, on SQLite or on the MariaDB of the session (aiomysql or asyncmy)."""
    if request.param == "sqlite":
        settings: dict[str, Any] = {"ENGINE": "sqlite", "NAME": str(tmp_path / "t.db"), "CONN_MAX_AGE": 60}
        key = "INTEGER PRIMARY KEY"
    else:
        server: MariaDB = request.getfixturevalue("db")
        settings = server.settings(CONN_MAX_AGE=60, ENGINE=request.param)
        key = "INT PRIMARY KEY"
    connections = make({"default": settings})
    async with connections.scope():
        conn = await connections.connection()
        await drop_table(conn)
        await fetch(conn, f"CREATE TABLE {TABLE} (id {key})")
    yield connections


async def drop_table(conn: Any) -> None:
    with warnings.catch_warnings():  # MariaDB warns of a table that is not there
        warnings.simplefilter("ignore")
        await fetch(conn, f"DROP TABLE IF EXISTS {TABLE}")


async def insert(connections: aconn.Connections, n: int) -> None:
    await fetch(await connections.connection(), f"INSERT INTO {TABLE} VALUES ({n})")


async def ids(connections: aconn.Connections) -> list[int]:
    async with connections.scope():
        return [r[0] for r in await fetch(await connections.connection(), f"SELECT id FROM {TABLE} ORDER BY id")]


def assert_no_transaction_left(connections: aconn.Connections) -> None:
    pool = connections.pool("default")
    assert all(not pool.backend.in_transaction(h.conn) for h in pool._idle)
    assert_balanced(connections.stats())


async def test_inner_rollback_keeps_the_outer_writes(conns: aconn.Connections) -> None:
    async with conns.atomic():
        await insert(conns, 1)
        with pytest.raises(ZeroDivisionError):
            async with conns.atomic():
                await insert(conns, 2)
                1 / 0  # noqa: B018
        async with conns.atomic():  # a nested block that succeeds is kept
            await insert(conns, 3)
        await insert(conns, 4)
    assert await ids(conns) == [1, 3, 4]
    assert conns.stats().rollbacks == 0  # nothing was left for the release to roll back
    assert_no_transaction_left(conns)


async def test_outer_exception_leaves_nothing(conns: aconn.Connections) -> None:
    with pytest.raises(KeyError):
        async with conns.atomic():
            await insert(conns, 1)
            async with conns.atomic():
                await insert(conns, 2)
            raise KeyError("boom")
    assert await ids(conns) == []
    assert_no_transaction_left(conns)


async def test_block_enters_or_joins_a_scope(conns: aconn.Connections) -> None:
    async with conns.atomic() as conn:  # no scope open: the block has one of its own
        assert conn is await conns.connection()
        await insert(conns, 1)
    with pytest.raises(aconn.ScopeError):
        await conns.connection()  # its scope ended with it
    async with conns.scope():
        outer = await conns.connection()
        async with conns.atomic() as conn:
            assert conn is outer  # joined the task's scope
            await insert(conns, 2)
        assert not conns.pool("default").backend.in_transaction(outer)  # committed at block exit
    assert await ids(conns) == [1, 2]


async def test_decorator_forms(conns: aconn.Connections) -> None:
    @conns.atomic
    async def add(n: int, fail: bool = False) -> int:
        await insert(conns, n)
        if fail:
            raise ValueError(n)
        return n

    @conns.atomic("default")
    async def add_two(n: int) -> None:
        await add(n)
        with pytest.raises(ValueError):
            await add(n + 1, fail=True)  # a savepoint inside add_two's transaction

    assert await add(1) == 1
    with pytest.raises(ValueError):
        await add(2, fail=True)
    await add_two(10)
    await asyncio.gather(add(20), add(30))  # each call its own scope and transaction
    assert await ids(conns) == [1, 10, 20, 30]


async def test_commit_by_hand_inside_a_block_is_refused(conns: aconn.Connections) -> None:
    with pytest.raises(aconn.TransactionError, match="committed or rolled back inside the block"):
        async with conns.atomic() as conn:
            await insert(conns, 1)
            await fetch(conn, "COMMIT")
    assert await ids(conns) == [1]  # what the COMMIT committed cannot be taken back; it is said
    assert_no_transaction_left(conns)


async def test_block_inside_a_transaction_begun_by_hand_is_a_savepoint(conns: aconn.Connections) -> None:
    async with conns.scope():
        conn = await conns.connection()
        await fetch(conn, "BEGIN")
        await insert(conns, 1)
        with pytest.raises(ZeroDivisionError):
            async with conns.atomic():  # a savepoint: a BEGIN would commit id 1 on MySQL/MariaDB
                await insert(conns, 2)
                1 / 0  # noqa: B018
        async with conns.atomic():
            await insert(conns, 3)
        assert conns.pool("default").backend.in_transaction(conn)  # the hand-begun transaction goes on
        assert [r[0] for r in await fetch(conn, f"SELECT id FROM {TABLE} ORDER BY id")] == [1, 3]
    assert await ids(conns) == []  # the scope's exit rolled the hand-begun transaction back, blocks and all
    assert conns.stats().rollbacks == 1


async def test_block_exited_in_another_task_is_rolled_back(conns: aconn.Connections) -> None:
    async with conns.scope():
        block = conns.atomic()
        await block.__aenter__()
        await insert(conns, 1)
        with pytest.raises(aconn.TransactionError, match=r"entered by task .* was exited by task"):
            await asyncio.create_task(block.__aexit__(None, None, None))
        assert not conns.pool("default").backend.in_transaction(await conns.connection())
    assert await ids(conns) == []


async def test_rollback_that_fails_discards_the_connection(conns: aconn.Connections) -> None:
    """A block whose rollback fails aborts its connection: the scope's release closes it."""
    pool = conns.pool("default")
    backend = pool.backend
    real = backend.rollback

    async def failing(conn: Any) -> None:
        raise OSError("rollback lost")

    backend.rollback = failing  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyError):
            async with conns.atomic():
                await insert(conns, 1)
                raise KeyError("boom")
    finally:
        backend.rollback = real  # type: ignore[method-assign]
    assert conns.stats().closed_error + conns.stats().closed_unusable == 1
    assert await ids(conns) == []  # the session's end (SQLite: the connection's close) rolled it back
    assert_no_transaction_left(conns)


def make_app(connections: aconn.Connections) -> Starlette:
    async def add(request: Request) -> PlainTextResponse:
        n = int(request.query_params["n"])
        await insert(connections, n)
        if request.query_params.get("fail"):
            raise RuntimeError("after writing")
        return PlainTextResponse(str(n))

    return Starlette(
        routes=[Route("/add", add, methods=["POST"])],
        middleware=[Middleware(ConnectionsMiddleware, connections=connections)],
    )


async def test_atomic_requests_commit_or_roll_back(make: Any, tmp_path: Any) -> None:
    path = str(tmp_path / "r.db")
    connections = make({"default": {"ENGINE": "sqlite", "NAME": path, "ATOMIC_REQUESTS": True}})
    assert ConnectionsMiddleware(make_app(connections), connections).atomic_aliases == ("default",)
    async with connections.scope():
        await fetch(await connections.connection(), f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY)")
    transport = httpx.ASGITransport(app=make_app(connections), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        assert (await client.post("/add?n=1")).status_code == 200
        assert (await client.post("/add?n=2&fail=1")).status_code == 500
    assert await ids(connections) == [1]
    assert_no_transaction_left(connections)


async def test_atomic_requests_hold_the_response_until_commit(make: Any, tmp_path: Any) -> None:
    """The body's last message waits for COMMIT: a client never sees success for a lost commit."""
    connections = make({"default": {"ENGINE": "sqlite", "NAME": str(tmp_path / "h.db"), "ATOMIC_REQUESTS": True}})
    sent: list[tuple[str, bool]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        conn = await connections.connection()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b"})
        sent.append(("app returned", conns_in_transaction(conn)))

    def conns_in_transaction(conn: Any) -> bool:
        return bool(connections.pool("default").backend.in_transaction(conn))

    async def send(message: Any) -> None:
        sent.append((message["type"] + ("+more" if message.get("more_body") else ""), False))

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    await ConnectionsMiddleware(app, connections)({"type": "http", "path": "/"}, receive, send)
    assert [s[0] for s in sent] == [
        "http.response.start", "http.response.body+more", "app returned", "http.response.body"
    ]  # fmt: skip
    assert sent[2][1] is True  # the transaction was still open when the app returned


def test_atomic_requests_settings() -> None:
    settings = aconn.Connections({"default": {"ENGINE": "sqlite", "NAME": "x", "ATOMIC_REQUESTS": True}})
    assert settings.settings().atomic_requests is True
    with pytest.raises(aconn.ConfigError) as info:
        aconn.Connections({"default": {"ENGINE": "sqlite", "NAME": "x", "ATOMIC_REQUESTS": "yes"}})
    assert info.value.key == "ATOMIC_REQUESTS"
    with pytest.raises(aconn.ConfigError, match="needs AUTOCOMMIT True") as info:
        aconn.Connections({"default": {"ENGINE": "sqlite", "NAME": "x", "ATOMIC_REQUESTS": True, "AUTOCOMMIT": False}})
    assert info.value.key == "ATOMIC_REQUESTS"


async def test_atomic_refused_without_autocommit(make: Any, tmp_path: Any) -> None:
    connections = make({"default": {"ENGINE": "sqlite", "NAME": str(tmp_path / "a.db"), "AUTOCOMMIT": False}})
    with pytest.raises(aconn.TransactionError, match="needs AUTOCOMMIT True"):
        async with connections.atomic():
            pass
    with pytest.raises(aconn.ConfigError, match="no such alias"):
        async with connections.atomic("other"):
            pass


@pytest.mark.mysql
@pytest.mark.mysql_drivers
async def test_cancelled_block_leaves_no_transaction(db: MariaDB, make: Any) -> None:
    """A request timed out mid-transaction: nothing open on the server, nothing in the pool in a transaction."""
    connections: aconn.Connections = make({"default": db.settings(CONN_MAX_AGE=60, ATOMIC_REQUESTS=True)})
    async with connections.scope():
        conn = await connections.connection()
        await drop_table(conn)
        await fetch(conn, f"CREATE TABLE {TABLE} (id INT PRIMARY KEY) ENGINE=InnoDB")

    async def in_query(request: Request) -> PlainTextResponse:  # cancelled mid-statement
        await insert(connections, 1)
        await fetch(await connections.connection(), "SELECT SLEEP(30)")
        return PlainTextResponse("never")

    async def between(request: Request) -> PlainTextResponse:  # cancelled between statements
        await insert(connections, 2)
        await asyncio.sleep(30)
        return PlainTextResponse("never")

    app = Starlette(
        routes=[Route("/query", in_query, methods=["POST"]), Route("/between", between, methods=["POST"])],
        middleware=[Middleware(ConnectionsMiddleware, connections=connections)],
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
        for path in ("/query", "/between"):
            request = asyncio.create_task(client.post(path))  # the app runs in this task
            await eventually_in_thread(lambda: db.open_transactions(expected=1, timeout=0) == 1)
            request.cancel()  # as a server's request timeout does
            with pytest.raises(asyncio.CancelledError):
                await request
    assert db.open_transactions(expected=0) == 0
    assert_no_transaction_left(connections)
    assert await ids(connections) == []


async def eventually_in_thread(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a blocking check (the server's tables) off the event loop, within a bound.

    Slower than every 0.1 s: INNODB_TRX is a cache the server refreshes only when it was not
    read for 0.1 s, so faster polling can read the same stale (empty) snapshot for ever.
    """
    async with asyncio.timeout(timeout):
        while not await asyncio.to_thread(predicate):
            await asyncio.sleep(0.15)


# -- the test's transaction (aconn.testing) -------------------------------------------------------


async def test_test_transaction_rolls_back_every_task_and_request(conns: aconn.Connections) -> None:
    """Writes from the test, a child task, a scoped job and an ASGI request: seen by all, then undone."""

    @conns.scoped
    async def job(n: int) -> list[int]:
        await insert(conns, n)
        return [r[0] for r in await fetch(await conns.connection(), f"SELECT id FROM {TABLE} ORDER BY id")]

    async def child() -> None:
        async with conns.scope():
            await insert(conns, 2)

    transaction = TestTransaction(conns)
    await asyncio.create_task(transaction.__aenter__())  # as a fixture's setup: another task
    try:
        async with conns.scope():
            await insert(conns, 1)
        await asyncio.create_task(child())
        assert await job(3) == [1, 2, 3]  # each sees the others' writes
        transport = httpx.ASGITransport(app=make_app(conns), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            assert (await client.post("/add?n=4")).status_code == 200
        with pytest.raises(ValueError):
            async with conns.atomic():  # the app's own block keeps its meaning: just it is undone
                await insert(conns, 5)
                raise ValueError
        async with conns.atomic():
            await insert(conns, 6)
        assert await ids(conns) == [1, 2, 3, 4, 6]
        assert conns.stats().in_use == 1  # one connection shared by every scope
    finally:
        await asyncio.create_task(transaction.__aexit__(None, None, None))  # the teardown: yet another task
    assert await ids(conns) == []
    assert_no_transaction_left(conns)


async def test_test_transaction_lost_is_reported(conns: aconn.Connections) -> None:
    """A COMMIT by hand ends the test's transaction: the exit says so, and later writes are still undone."""
    with pytest.raises(aconn.TransactionError, match="the test's transaction was committed or rolled back"):
        async with TestTransaction(conns):
            async with conns.scope():
                await insert(conns, 1)
                await fetch(await conns.connection(), "COMMIT")  # leaks row 1: it cannot be undone
            async with conns.scope():
                await insert(conns, 2)  # a transaction begun again: this one is rolled back
    assert await ids(conns) == [1]
    assert_no_transaction_left(conns)


@pytest.mark.mysql
async def test_test_transaction_lost_to_implicit_commit(db: MariaDB, make: Any) -> None:
    """DDL commits implicitly on MariaDB, then a BEGIN by hand hides it: the savepoint tells."""
    connections: aconn.Connections = make({"default": db.settings(CONN_MAX_AGE=60)})
    async with connections.scope():
        await drop_table(await connections.connection())
    with pytest.raises(aconn.TransactionError, match="implicitly"):
        async with TestTransaction(connections), connections.scope():
            conn = await connections.connection()
            await fetch(conn, f"CREATE TABLE {TABLE} (id INT PRIMARY KEY) ENGINE=InnoDB")
            await fetch(conn, "BEGIN")
            await insert(connections, 1)
    assert await ids(connections) == []  # the row after the BEGIN was rolled back; the table was not
    assert_no_transaction_left(connections)


async def test_test_transaction_reads_the_primary_of_an_alias_with_replicas(make: Any, tmp_path: Any) -> None:
    """In a test's transaction, read_only=True reads the primary: a replica could not see the test's writes."""
    connections = make(
        {
            "default": {"ENGINE": "sqlite", "NAME": str(tmp_path / "p.db"), "REPLICAS": ["replica"]},
            "replica": {"ENGINE": "sqlite", "NAME": str(tmp_path / "r.db")},
        }
    )
    for alias in ("default", "replica"):
        async with connections.scope():
            await fetch(await connections.connection(alias), f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY)")
    async with TestTransaction(connections), connections.scope():
        await fetch(await connections.connection("default"), f"INSERT INTO {TABLE} VALUES (1)")
    async with TestTransaction(connections):
        async with connections.scope():
            await fetch(await connections.connection("default"), f"INSERT INTO {TABLE} VALUES (2)")
        async with connections.scope():  # another scope, reading
            conn = await connections.connection("default", read_only=True)
            assert [r[0] for r in await fetch(conn, f"SELECT id FROM {TABLE}")] == [2]


# -- on_commit() and durable blocks (Django's) -------------------------------------------


def in_transaction(connections: aconn.Connections, conn: Any) -> bool:
    return bool(connections.pool("default").backend.in_transaction(conn))


async def test_outside_a_block_runs_now(conns: aconn.Connections) -> None:
    ran: list[str] = []

    async def later() -> None:
        ran.append("async")

    await conns.on_commit(lambda: ran.append("no scope"))
    async with conns.scope():
        await conns.connection()
        await conns.on_commit(later)
        await conns.on_commit(lambda: ran.append("sync"))
        assert ran == ["no scope", "async", "sync"]
    with pytest.raises(TypeError, match="takes a callable"):
        await conns.on_commit("not callable")  # type: ignore[arg-type]
    with pytest.raises(aconn.ConfigError, match="nope"):
        await conns.on_commit(lambda: None, "nope")


async def test_runs_after_the_commit_in_order(conns: aconn.Connections) -> None:
    seen: list[tuple[str, bool, list[int]]] = []

    async def record(name: str) -> None:
        # after the COMMIT: no transaction open, and another scope (another connection) sees the row
        conn = await conns.connection()
        seen.append((name, in_transaction(conns, conn), await ids(conns)))

    async with conns.scope():
        async with conns.atomic():
            await insert(conns, 1)
            await conns.on_commit(lambda: record("first"))
            async with conns.atomic():  # a savepoint released: its callback waits for the COMMIT
                await conns.on_commit(lambda: record("second"))
            assert seen == []
        assert seen == [("first", False, [1]), ("second", False, [1])]

        with pytest.raises(ZeroDivisionError):
            async with conns.atomic():
                await insert(conns, 2)
                await conns.on_commit(lambda: record("rolled back"))
                1 / 0  # noqa: B018
    assert [name for name, *_ in seen] == ["first", "second"]


async def test_savepoint_rolled_back_drops_its_own(conns: aconn.Connections) -> None:
    ran: list[str] = []
    async with conns.atomic():
        await conns.on_commit(lambda: ran.append("outer"))
        with pytest.raises(LookupError):
            async with conns.atomic():
                await conns.on_commit(lambda: ran.append("inner"))
                raise LookupError
        await conns.on_commit(lambda: ran.append("outer again"))
    assert ran == ["outer", "outer again"]


async def test_robust_and_failing_callbacks(conns: aconn.Connections, caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("the mail server is down")

    async with conns.atomic():
        await insert(conns, 1)
        await conns.on_commit(broken, robust=True)
        await conns.on_commit(lambda: ran.append("next"))
    assert ran == ["next"] and "the mail server is down" in caplog.text

    with pytest.raises(RuntimeError, match="the mail server is down"):
        async with conns.atomic():
            await insert(conns, 2)
            await conns.on_commit(broken)
            await conns.on_commit(lambda: ran.append("never"))
    assert ran == ["next"]
    assert await ids(conns) == [1, 2]  # committed before the callback ran
    assert conns.stats().in_use == 0


async def test_refused_in_a_transaction_the_app_opened(conns: aconn.Connections) -> None:
    async with conns.scope():
        conn = await conns.connection()
        await fetch(conn, "BEGIN")
        with pytest.raises(aconn.TransactionError, match="opened itself"):
            await conns.on_commit(lambda: None)
        async with conns.atomic():  # a savepoint of the app's transaction
            with pytest.raises(aconn.TransactionError, match="cannot tell when it commits"):
                await conns.on_commit(lambda: None)
        await fetch(conn, "ROLLBACK")


async def test_atomic_requests_run_them_after_commit(make: Any, tmp_path: Any) -> None:
    """A job queued inside an ATOMIC_REQUESTS request runs once the request's write is committed."""
    connections = make({"default": {"ENGINE": "sqlite", "NAME": str(tmp_path / "r.db"), "ATOMIC_REQUESTS": True}})
    async with connections.scope():
        await fetch(await connections.connection(), f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY)")
    queued: list[tuple[int, bool]] = []

    async def add(request: Request) -> PlainTextResponse:
        n = int(request.query_params["n"])
        conn = await connections.connection()
        await fetch(conn, f"INSERT INTO {TABLE} VALUES ({n})")
        await connections.on_commit(lambda: queued.append((n, in_transaction(connections, conn))))
        if request.query_params.get("fail"):
            raise RuntimeError("the request fails after queueing")
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/add", add, methods=["POST"])],
        middleware=[Middleware(ConnectionsMiddleware, connections=connections)],
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        assert (await client.post("/add?n=1")).status_code == 200
        assert (await client.post("/add?n=2&fail=1")).status_code == 500
    assert queued == [(1, False)]  # after the COMMIT; the failed request's job was dropped with its rollback
    assert await ids(connections) == [1]


async def test_durable(conns: aconn.Connections) -> None:
    async with conns.atomic(durable=True):
        await insert(conns, 1)
        with pytest.raises(aconn.TransactionError, match="durable atomic\\(\\) block was entered inside another"):
            async with conns.atomic(durable=True):
                pass
    assert await ids(conns) == [1]
    assert conns.stats().in_use == 0

    @conns.atomic
    async def outer() -> None:
        await inner()

    async def inner() -> None:
        async with conns.atomic(durable=True):
            pass

    with pytest.raises(aconn.TransactionError, match="durable"):
        await outer()

    async with TestTransaction(conns):  # directly inside a test's transaction: allowed, as Django's TestCase
        async with conns.atomic(durable=True):
            await insert(conns, 2)
        assert await ids(conns) == [1, 2]
    assert await ids(conns) == [1]


async def test_test_transaction_keeps_them(conns: aconn.Connections) -> None:
    ran: list[str] = []
    async with TestTransaction(conns) as connections:
        await connections.on_commit(lambda: ran.append("no block: now"))
        async with connections.atomic():
            await insert(connections, 1)
            await connections.on_commit(lambda: ran.append("committed"))
        with pytest.raises(LookupError):
            async with connections.atomic():
                await connections.on_commit(lambda: ran.append("rolled back"))
                raise LookupError
        assert ran == ["no block: now"]
    assert ran == ["no block: now"]  # the test's transaction never commits: nothing ran at its end either


@pytest.fixture
async def aconn_connections(conns: aconn.Connections) -> AsyncIterator[aconn.Connections]:
    yield conns


async def test_aconn_on_commit_fixture(aconn_db: aconn.Connections, aconn_on_commit: Any) -> None:
    """pytest-django's django_capture_on_commit_callbacks, for aconn: kept, listed, run on demand."""
    ran: list[str] = []

    async def notify() -> None:
        ran.append("notified")
        await aconn_db.on_commit(lambda: ran.append("registered by a callback"))  # runs now: no block

    async with aconn_db.atomic():
        await insert(aconn_db, 1)
        await aconn_db.on_commit(notify)
    assert ran == [] and aconn_on_commit.on_commit_callbacks() == [notify]
    assert await aconn_on_commit.run_on_commit() == 1
    assert ran == ["notified", "registered by a callback"]
    assert aconn_on_commit.on_commit_callbacks() == []
