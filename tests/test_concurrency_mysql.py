"""Capacity, fairness and task safety against the real MariaDB server.

The cap holds, waiters are served in order, tasks never share a connection.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from helpers import ProcesslistSampler, assert_balanced, fetch, in_scope, scalar
from mariadb import MariaDB

import aconn

pytestmark = [pytest.mark.mysql, pytest.mark.mysql_drivers]


async def test_200_concurrent_scopes_never_exceed_the_cap(db: MariaDB, make: Any) -> None:
    connections = make({"default": db.settings(CONN_MAX_AGE=60, MAX_CONNS=4)})

    async def request(n: int) -> int:
        async with connections.scope():
            conn = await connections.connection()
            await fetch(conn, "SELECT SLEEP(0.002)")
            return int(await scalar(conn, "SELECT %s", (n,)))

    with ProcesslistSampler(db) as sampler:
        results = await asyncio.gather(*(request(n) for n in range(200)))
    assert results == list(range(200))
    assert sampler.samples and max(sampler.samples) <= 4, sampler.samples
    assert max(sampler.samples) >= 2  # the load really ran concurrently
    stats = connections.stats()
    assert_balanced(stats)
    assert stats.opened <= 4 and stats.in_use == 0 and stats.waiting == 0 and stats.acquire_waits > 0


async def test_child_tasks_with_real_queries(db: MariaDB, make: Any) -> None:
    """Failure 8: two tasks on one connection get each other's rows; the scope rule prevents it."""
    connections = make({"default": db.settings(CONN_MAX_AGE=60, MAX_CONNS=5)})

    async def child(n: int) -> int:
        async with connections.scope():
            conn = await connections.connection()
            return int(await scalar(conn, "SELECT %s + SLEEP(0.01) * 0", (n,)))

    async def unscoped_child(n: int) -> int:
        return int(await scalar(await connections.connection(), "SELECT %s", (n,)))

    async with connections.scope():
        conn = await connections.connection()
        assert await asyncio.gather(*(child(n) for n in range(8))) == list(range(8))
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(child(n)) for n in range(8, 12)]
        assert [t.result() for t in tasks] == [8, 9, 10, 11]
        with pytest.raises(aconn.ScopeError):
            await asyncio.gather(unscoped_child(1), unscoped_child(2))
        assert await scalar(conn, "SELECT 99") == 99
    assert_balanced(connections.stats())


async def test_random_cancellations_against_the_server(db: MariaDB, make: Any) -> None:
    connections = make({"default": db.settings(CONN_MAX_AGE=60, MAX_CONNS=4, CONN_HEALTH_CHECKS=True)})
    rng = random.Random(11)

    async def one(n: int) -> None:
        # Most units get a random deadline of 0-10 ms, so they are cancelled at any point of the
        # scope; how many of those finish depends on the machine's speed (on a slow CI machine,
        # none did). The last unit of each batch gets a deadline it cannot miss on a working
        # pool, so that both outcomes are there on any machine.
        deadline = 10.0 if n % 20 == 19 else rng.random() * 0.01
        async with asyncio.timeout(deadline):
            async with connections.scope():
                conn = await connections.connection()
                assert await scalar(conn, "SELECT %s", (n,)) == n
                await fetch(conn, "SELECT SLEEP(0.002)")
                assert await scalar(conn, "SELECT %s", (n + 1,)) == n + 1

    outcomes: list[Any] = []
    for batch in range(0, 1000, 20):
        outcomes += await asyncio.gather(*(one(n) for n in range(batch, batch + 20)), return_exceptions=True)
    assert all(o is None or isinstance(o, TimeoutError) for o in outcomes), {repr(o) for o in outcomes if o}
    assert all(o is None for o in outcomes[19::20]), outcomes[19::20]
    assert sum(isinstance(o, TimeoutError) for o in outcomes) > 0
    await asyncio.gather(*connections.pool("default")._background)
    stats = connections.stats()
    assert_balanced(stats)
    assert stats.in_use == 0 and stats.waiting == 0
    for n in range(100):
        assert await in_scope(connections, f"SELECT {n}") == n
    # A session whose statement was cancelled lingers on the server until the statement ends
    # (MariaDB notices the closed socket only then), so the processlist is checked afterwards.
    assert len(db.wait_app_threads(lambda t: len(t) <= 4)) <= 4


def stopped_server_error(db: MariaDB, exc: BaseException) -> bool:
    """What a caller may see when the server stops under it: the driver's lost connection, no
    connection within the deadline, or (rarely) the driver's InternalError for a packet out of
    sequence: a statement sent just as the server says goodbye (1053, sequence 0) reads that
    goodbye as its reply (PyMySQL and asyncmy both raise "Packet sequence number wrong")."""
    if isinstance(exc, db.errors.OperationalError | aconn.AcquireTimeout):
        return True
    return isinstance(exc, db.errors.InternalError) and "Packet sequence number wrong" in str(exc)


async def test_server_stopped_while_waiters_queue(db: MariaDB, make: Any) -> None:
    connections = make({"default": db.settings(CONN_MAX_AGE=60, MAX_CONNS=2, ACQUIRE_TIMEOUT=20)})
    started = asyncio.Event()

    async def request(n: int) -> int:
        async with connections.scope():
            conn = await connections.connection()
            started.set()
            await fetch(conn, "SELECT SLEEP(0.5)")
            return int(await scalar(conn, "SELECT %s", (n,)))

    tasks = [asyncio.create_task(request(n)) for n in range(10)]
    await started.wait()
    await asyncio.to_thread(db.stop)
    async with asyncio.timeout(25):  # every waiter settles: an error, never a hang
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert errors and all(stopped_server_error(db, e) for e in errors), errors
    stats = connections.stats()
    assert_balanced(stats)
    assert stats.in_use == 0 and stats.waiting == 0
    await asyncio.to_thread(db.start)
    assert await in_scope(connections, "SELECT 5") == 5  # the first scope after the restart succeeds
    assert_balanced(connections.stats())


async def test_too_many_connections_with_two_handlers() -> None:
    """Failure 6: caps adding up above the server's max_connections: waiting, no crash, recovery."""
    server = MariaDB(extra_args=["--max-connections=10"]).start()  # MariaDB's lowest
    try:
        assert server.sql("SELECT @@max_connections") == [(10,)]
        a = aconn.Connections({"default": server.settings(CONN_MAX_AGE=60, MAX_CONNS=8, ACQUIRE_TIMEOUT=3)})
        b = aconn.Connections({"default": server.settings(CONN_MAX_AGE=60, MAX_CONNS=8, ACQUIRE_TIMEOUT=3)})

        async def request(handler: aconn.Connections, n: int) -> int:
            async with handler.scope():
                conn = await handler.connection()
                await fetch(conn, "SELECT SLEEP(0.05)")
                return int(await scalar(conn, "SELECT %s", (n,)))

        try:
            async with asyncio.timeout(30):
                outcomes = await asyncio.gather(
                    *(request(h, n) for n in range(40) for h in (a, b)), return_exceptions=True
                )
            wrong = [o for o in outcomes if not isinstance(o, int | aconn.AcquireTimeout)]
            assert not wrong, wrong
            for o in outcomes:
                if isinstance(o, aconn.AcquireTimeout) and "refused" in str(o):
                    assert "processes x MAX_CONNS" in str(o)
            assert sum(isinstance(o, int) for o in outcomes) > 40
            assert len(server.app_threads()) <= 10
            assert a.stats().connect_errors + b.stats().connect_errors > 0  # the server did refuse
            for handler in (a, b):
                assert_balanced(handler.stats())
            # load drops: both handlers serve again
            await a.aclose()
            assert await in_scope(b, "SELECT 1") == 1
            assert await in_scope(b, "SELECT 2") == 2
        finally:
            await a.aclose()
            await b.aclose()
    finally:
        server.close()


async def test_cap_counts_connections_being_opened(db: MariaDB, make: Any) -> None:
    connections = make({"default": db.settings(CONN_MAX_AGE=0, MAX_CONNS=3)})
    with ProcesslistSampler(db) as sampler:
        results = await asyncio.gather(*(in_scope(connections, f"SELECT {n}") for n in range(60)))
    assert results == list(range(60))
    assert max(sampler.samples) <= 3
    assert connections.stats().opened == 60
