"""Read replicas and routing against real MariaDB replication: a primary with binlog and a replica.

| promise | test |
|---|---|
| read_only=True reads from the replica, the rest from the primary | test_reads_go_to_the_replica |
| one replica per scope, spread across scopes | test_replica_stable_in_a_scope_spread_across_scopes |
| read-your-writes in a scope | test_read_your_writes_in_a_scope |
| read-your-writes for a pinned key, for REPLICA_PIN_SECONDS | test_pinned_key_reads_the_primary |
| a lagging (stopped) replica is skipped, counted, and used again | test_lagging_replica_skipped |
| an unreachable replica is skipped with no error to the caller | test_dead_replica_skipped |
| MAX_REPLICA_LAG: read only once a check qualified it | test_stopped_replica_is_never_read_before_a_check |
| routers name the alias when none is given | test_routers |
| SQLAlchemy: an engine with read_only=True reads the same way | test_sqlalchemy_read_only_engine |
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import fetch, scalar
from mariadb import APP_USER, DATABASE, MariaDB

import aconn

pytestmark = pytest.mark.mysql


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[MariaDB, MariaDB]]:
    """A primary (binlog on) and a read-only replica of it, replicating."""
    primary = MariaDB(extra_args=["--log-bin=mysql-bin", "--server-id=1", "--binlog-format=ROW"]).start()
    replica = MariaDB(extra_args=["--server-id=2", "--read-only"]).start()
    try:
        primary.sql("CREATE USER 'repl'@'%' IDENTIFIED BY 'repl-pw'", "GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%'")
        log_file, position = primary.sql("SHOW MASTER STATUS")[0][:2]
        replica.sql(
            f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary.port}, MASTER_USER='repl', "
            f"MASTER_PASSWORD='repl-pw', MASTER_LOG_FILE='{log_file}', MASTER_LOG_POS={position}",
            "START SLAVE",
            f"GRANT SLAVE MONITOR ON *.* TO '{APP_USER}'@'%'",  # to read its own lag
        )
        primary.sql(f"CREATE TABLE IF NOT EXISTS {DATABASE}.r (id INT)")
        yield primary, replica
    finally:
        replica.close()
        primary.close()


@pytest.fixture
def servers(pair: tuple[MariaDB, MariaDB]) -> Iterator[tuple[MariaDB, MariaDB]]:
    _, replica = pair
    if replica.proc is None:
        replica.start()
    replica.sql("START SLAVE")
    yield pair
    if replica.proc is None:
        replica.start()
    replica.sql("START SLAVE")


def databases(pair: tuple[MariaDB, MariaDB], **primary: Any) -> dict[str, Any]:
    first, second = pair
    return {
        "default": first.settings(CONN_MAX_AGE=60, REPLICAS=["replica", "replica2"], **primary),
        "replica": second.settings(CONN_MAX_AGE=60, ACQUIRE_TIMEOUT=2),
        "replica2": second.settings(CONN_MAX_AGE=60, ACQUIRE_TIMEOUT=2),  # the same server, another alias
    }


async def server_id(connections: aconn.Connections, *, read_only: bool, pin: Any = None) -> int:
    async with connections.scope(pin=pin):
        return int(await scalar(await connections.connection("default", read_only=read_only), "SELECT @@server_id"))


async def read_until(connections: aconn.Connections, predicate: Any, timeout: float = 10.0) -> None:
    """Keep reading (each read starts the replica checks that are due, at most one a second) until
    ``predicate()`` holds, within a bound: the checks run in the background, off the scope path."""
    async with asyncio.timeout(timeout):
        while True:
            await server_id(connections, read_only=True)
            if predicate():
                return
            await asyncio.sleep(0.05)


async def test_reads_go_to_the_replica(servers: tuple[MariaDB, MariaDB], make: Any) -> None:
    connections = make(databases(servers))
    assert await server_id(connections, read_only=True) == 2
    assert await server_id(connections, read_only=False) == 1
    async with connections.scope():
        with pytest.raises(Exception, match="read-only"):  # the replica refuses the app's writes
            await fetch(await connections.connection("replica"), "INSERT INTO r VALUES (1)")


async def test_sqlalchemy_read_only_engine(servers: tuple[MariaDB, MariaDB], make: Any) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

    from aconn.sqlalchemy import create_async_engine

    connections = make(databases(servers))
    reads = create_async_engine(connections, read_only=True)
    writes = create_async_engine(connections)

    async def server(engine: AsyncEngine) -> int:
        async with AsyncSession(engine) as session:
            return int((await session.execute(text("SELECT @@server_id"))).scalar_one())

    assert await server(reads) == 2  # no scope: a unit of its own, on the replica
    assert await server(writes) == 1
    async with connections.scope():
        assert await server(reads) == 2
        assert await server(writes) == 1
        assert await server(reads) == 1  # read-your-writes: the scope took the primary
    async with connections.scope():
        assert await server(reads) == 2
    assert connections.stats().in_use == 0 and connections.stats("replica").in_use == 0


async def test_replica_stable_in_a_scope_spread_across_scopes(servers: tuple[MariaDB, MariaDB], make: Any) -> None:
    connections = make(databases(servers))
    used = []
    for _ in range(4):
        async with connections.scope():
            first = await connections.connection("default", read_only=True)
            assert await connections.connection("default", read_only=True) is first
            used.append(next(a for a in ("replica", "replica2") if connections.stats(a).in_use))
    assert set(used) == {"replica", "replica2"}  # in turn across scopes
    assert connections.stats("default").opened == 0


async def test_read_your_writes_in_a_scope(servers: tuple[MariaDB, MariaDB], make: Any) -> None:
    connections = make(databases(servers))
    async with connections.scope():
        primary = await connections.connection("default")
        await scalar(primary, "SELECT 1")
        assert await connections.connection("default", read_only=True) is primary


async def test_pinned_key_reads_the_primary(servers: tuple[MariaDB, MariaDB], make: Any) -> None:
    connections = make(databases(servers, REPLICA_PIN_SECONDS=5))
    async with connections.scope(pin="user-1"):
        await fetch(await connections.connection("default"), "INSERT INTO r VALUES (7)")  # a write
    assert await server_id(connections, read_only=True, pin="user-1") == 1  # its reads: the primary
    assert await server_id(connections, read_only=True, pin="user-2") == 2  # another key: a replica
    assert await server_id(connections, read_only=True) == 2
    replicas = connections._reads.sets["default"]
    replicas.pins["user-1"] -= 10  # REPLICA_PIN_SECONDS later (shifted, rather than slept)
    assert await server_id(connections, read_only=True, pin="user-1") == 2


async def test_lagging_replica_skipped(servers: tuple[MariaDB, MariaDB], make: Any) -> None:
    _, replica = servers
    connections = make(databases(servers, MAX_REPLICA_LAG=5))
    replicas = connections._reads.sets["default"]
    await read_until(connections, lambda: all(replicas.healthy.values()))  # qualified by a check
    assert await server_id(connections, read_only=True) == 2
    replica.sql("STOP SLAVE SQL_THREAD")  # Seconds_Behind_Master: NULL, replication stopped
    await read_until(connections, lambda: not any(replicas.healthy.values()))
    assert replicas.lag["replica"] == float("inf")
    assert await server_id(connections, read_only=True) == 1  # no healthy replica: the primary
    assert connections.stats("default").replica_fallbacks >= 1
    replica.sql("START SLAVE SQL_THREAD")
    await read_until(connections, lambda: all(replicas.healthy.values()))
    assert await server_id(connections, read_only=True) == 2


async def test_dead_replica_skipped(servers: tuple[MariaDB, MariaDB], make: Any) -> None:
    _, replica = servers
    connections = make(databases(servers, MAX_REPLICA_LAG=5))
    replicas = connections._reads.sets["default"]
    await read_until(connections, lambda: all(replicas.healthy.values()))
    assert await server_id(connections, read_only=True) == 2
    await asyncio.to_thread(replica.kill)
    for _ in range(3):  # no error reaches the caller: the reads go to the primary
        assert await server_id(connections, read_only=True) == 1
    assert connections.stats("default").replica_fallbacks >= 3
    await asyncio.to_thread(replica.start)
    replica.sql("START SLAVE")
    await read_until(connections, lambda: all(replicas.healthy.values()))
    assert await server_id(connections, read_only=True) == 2


async def test_stopped_replica_is_never_read_before_a_check(servers: tuple[MariaDB, MariaDB], make: Any) -> None:
    """Replication stopped before the handler opens: the checks start at open(), and reads go to
    the primary until one qualifies the replica; the stopped one never qualifies."""
    _, replica = servers
    replica.sql("STOP SLAVE SQL_THREAD")
    connections = make(databases(servers, MAX_REPLICA_LAG=1))
    replicas = connections._reads.sets["default"]
    await connections.open()
    assert await server_id(connections, read_only=True) == 1  # the very first read of the process
    async with asyncio.timeout(10):  # the checks open() started report the stopped replication
        while replicas.lag["replica"] is None or replicas.lag["replica2"] is None:
            await asyncio.sleep(0.02)
    assert replicas.lag["replica"] == float("inf") and not any(replicas.healthy.values())
    for _ in range(3):
        assert await server_id(connections, read_only=True) == 1
    assert connections.stats("default").replica_fallbacks >= 4
    replica.sql("START SLAVE SQL_THREAD")
    await read_until(connections, lambda: all(replicas.healthy.values()))
    assert await server_id(connections, read_only=True) == 2


async def test_routers(servers: tuple[MariaDB, MariaDB], make: Any) -> None:
    class Reports:
        def db_for_read(self, hints: Any) -> str | None:
            return "replica" if hints.get("report") else None

        def db_for_write(self, hints: Any) -> str | None:
            return None

    connections = aconn.Connections(databases(servers), routers=[Reports()])
    try:
        async with connections.scope():
            report = await connections.connection(read_only=True, hints={"report": True})
            assert await scalar(report, "SELECT @@server_id") == 2
            write = await connections.connection()
            assert await scalar(write, "SELECT @@server_id") == 1  # no router named one: "default"
    finally:
        await connections.aclose()


def test_replica_settings() -> None:
    with pytest.raises(aconn.ConfigError, match="not an alias of this handler") as info:
        aconn.Connections({"default": {"ENGINE": "sqlite", "NAME": "a.db", "REPLICAS": ["nope"]}})
    assert info.value.key == "REPLICAS"
    with pytest.raises(aconn.ConfigError, match="own replica"):
        aconn.Connections({"default": {"ENGINE": "sqlite", "NAME": "a.db", "REPLICAS": ["default"]}})


# -- PostgreSQL: a primary and its streaming standby (pg_basebackup -R), both drivers --------------


@pytest.fixture(scope="module")
def pg_pair() -> Iterator[tuple[Any, Any]]:
    from postgres import PostgreSQL

    primary = PostgreSQL().start()
    standby = PostgreSQL(standby_of=primary).start()
    try:
        primary.sql(f"CREATE TABLE IF NOT EXISTS {'r'} (id int)")
        yield primary, standby
    finally:
        standby.close()
        primary.close()


@pytest.mark.postgresql
@pytest.mark.parametrize("engine", ["postgresql", "asyncpg"])
async def test_postgresql_standby(pg_pair: tuple[Any, Any], make: Any, engine: str) -> None:
    primary, standby = pg_pair
    connections: aconn.Connections = make(
        {
            "default": primary.settings(ENGINE=engine, CONN_MAX_AGE=60, REPLICAS=["standby"], MAX_REPLICA_LAG=0.3),
            "standby": standby.settings(ENGINE=engine, CONN_MAX_AGE=60),
        }
    )

    async def in_recovery(read_only: bool) -> bool:
        async with connections.scope():
            conn = await connections.connection("default", read_only=read_only)
            if engine == "asyncpg":
                return bool(await conn.fetchval("SELECT pg_is_in_recovery()"))
            return bool((await (await conn.execute("SELECT pg_is_in_recovery()")).fetchone())[0])

    async def read_until(predicate: Any) -> None:
        async with asyncio.timeout(15):
            while not predicate():
                await in_recovery(True)
                await asyncio.sleep(0.05)

    replicas = connections._reads.sets["default"]
    assert await in_recovery(True) is False  # unchecked yet: MAX_REPLICA_LAG reads the primary
    await read_until(lambda: replicas.healthy["standby"])
    assert await in_recovery(True) is True  # the standby, once a check qualified it
    assert await in_recovery(False) is False  # the primary
    async with connections.scope():  # read-your-writes in a scope
        writer = await connections.connection("default")
        assert await connections.connection("default", read_only=True) is writer
    standby.sql("SELECT pg_wal_replay_pause()")
    try:
        primary.sql("INSERT INTO r VALUES (1)")  # received, not replayed: the standby falls behind
        await read_until(lambda: not replicas.healthy["standby"])
        assert (replicas.lag["standby"] or 0) > 0.3
        assert await in_recovery(True) is False  # reads go to the primary meanwhile
        assert connections.stats("default").replica_fallbacks >= 1
    finally:
        standby.sql("SELECT pg_wal_replay_resume()")
    await read_until(lambda: replicas.healthy["standby"])
    assert await in_recovery(True) is True
