"""The contract on PostgreSQL, for both drivers (psycopg 3 async and asyncpg), against a real server.

| promise | test |
|---|---|
| reuse within the age; max age 0 closes at scope exit | test_reuse_and_max_age_zero |
| a killed idle session is replaced with no error (health checks off) | test_killed_idle_session_replaced |
| idle past idle_session_timeout never surfaces | test_idle_session_timeout_never_surfaces |
| the first scope after a server restart succeeds | test_first_scope_after_restart |
| 200 scopes over MAX_CONNS=4: never more than 4 sessions on the server | test_200_scopes_never_exceed_the_cap |
| a cancellation storm leaves no statement running, the next scopes correct | test_cancellation_storm_stops_every_statement |
| an open transaction is rolled back at scope exit | test_open_transaction_rolled_back |
| errors name alias and key, never the password | test_errors_name_alias_never_password |
| STATEMENT_TIMEOUT is the session's statement_timeout | test_statement_timeout |
| RESET_ON_RELEASE resets session state | test_reset_on_release |
| too many clients: retried, then the budget message | test_too_many_clients_retried_then_explained |
| atomic() with savepoints | test_atomic_on_postgresql |
| the driver internals the liveness check reads | test_liveness_reads_driver_internals |
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import ProcesslistSampler, assert_balanced, assert_no_password, eventually
from postgres import APP_PASSWORD, PostgreSQL

import aconn

pytestmark = pytest.mark.postgresql

DRIVERS = ["postgresql", "asyncpg"]


@pytest.fixture(params=DRIVERS)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def rows(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    """One statement on a psycopg or asyncpg connection; its rows."""
    if hasattr(conn, "fetch"):  # asyncpg
        return [tuple(r) for r in await conn.fetch(sql)]
    cur = await conn.execute(sql)
    return [tuple(r) for r in await cur.fetchall()] if cur.description else []


async def value(connections: aconn.Connections, sql: str, alias: str = "default") -> Any:
    async with connections.scope():
        return (await rows(await connections.connection(alias), sql))[0][0]


@pytest.fixture
def sampler(pg: PostgreSQL) -> Iterator[ProcesslistSampler]:
    """The app role's sessions on the server, counted from a thread while the test runs."""
    with ProcesslistSampler(pg) as sampler:  # the same app_threads() as MariaDB's
        yield sampler


async def test_reuse_and_max_age_zero(pg: PostgreSQL, make: Any, engine: str) -> None:
    kept = make({"default": pg.settings(ENGINE=engine, CONN_MAX_AGE=60)})
    pids = {await value(kept, "SELECT pg_backend_pid()") for _ in range(5)}
    assert len(pids) == 1 and pg.app_backends() == list(pids)
    await kept.aclose()
    assert pg.wait_app_backends(lambda p: not p) == []
    short = make({"default": pg.settings(ENGINE=engine, CONN_MAX_AGE=0)})
    pids = set()
    for _ in range(3):
        pids.add(await value(short, "SELECT pg_backend_pid()"))
        assert pg.wait_app_backends(lambda p: not p) == []  # the session ended with the scope
    assert len(pids) == 3 and short.stats().closed_max_age == 3


async def test_killed_idle_session_replaced(pg: PostgreSQL, make: Any, engine: str) -> None:
    connections = make({"default": pg.settings(ENGINE=engine, CONN_MAX_AGE=None)})
    first = await value(connections, "SELECT pg_backend_pid()")
    assert pg.kill_app_sessions() == 1
    second = await value(connections, "SELECT pg_backend_pid()")  # no error reaches the caller
    assert second != first
    stats = connections.stats()
    assert stats.closed_unusable == 1 and stats.health_checks == 0
    assert_balanced(stats)


async def test_idle_session_timeout_never_surfaces(pg: PostgreSQL, make: Any, engine: str) -> None:
    options = {"options": "-c idle_session_timeout=1000"} if engine == "postgresql" else {
        "server_settings": {"idle_session_timeout": "1000"}
    }  # fmt: skip
    connections = make({"default": pg.settings(ENGINE=engine, CONN_MAX_AGE=None, OPTIONS=options)})
    assert await value(connections, "SELECT 1") == 1
    pool = connections.pool("default")
    assert pool.limits is not None and pool.limits.idle_timeout == 1.0
    assert pool._idle[-1].idle_limit < 1.0  # aconn's limit is below the server's
    await asyncio.sleep(1.3)  # the server really ends the idle session: no shifted clock can show that
    assert await value(connections, "SELECT 2") == 2
    assert connections.stats().closed_idle + connections.stats().closed_unusable >= 1


async def test_first_scope_after_restart(pg: PostgreSQL, make: Any, engine: str) -> None:
    connections = make({"default": pg.settings(ENGINE=engine, CONN_MAX_AGE=None, MAX_CONNS=2)})
    assert await value(connections, "SELECT 1") == 1
    await asyncio.to_thread(pg.restart)
    assert await value(connections, "SELECT 2") == 2
    assert_balanced(connections.stats())


async def test_200_scopes_never_exceed_the_cap(
    pg: PostgreSQL, make: Any, engine: str, sampler: ProcesslistSampler
) -> None:
    connections = make({"default": pg.settings(ENGINE=engine, CONN_MAX_AGE=60, MAX_CONNS=4)})

    async def request(n: int) -> int:
        async with connections.scope():
            conn = await connections.connection()
            await rows(conn, "SELECT pg_sleep(0.002)")
            return int((await rows(conn, f"SELECT {n}"))[0][0])

    assert await asyncio.gather(*(request(n) for n in range(200))) == list(range(200))
    sampler.__exit__()
    assert sampler.samples and max(sampler.samples) <= 4
    stats = connections.stats()
    assert stats.opened <= 4 and stats.acquire_waits > 0
    assert_balanced(stats)


def sleeping(pg: PostgreSQL) -> list[str]:
    return [q for q in pg.running_statements() if "pg_sleep(30)" in q]


async def cancel_storm(connections: aconn.Connections, pg: PostgreSQL, *, tasks: int, running: int) -> None:
    """``tasks`` scopes running ``pg_sleep(30)``, all cancelled once ``running`` of them run at the
    server; then the promise: one second later, none of them is still running there."""

    async def sleeper() -> None:
        async with connections.scope():
            await rows(await connections.connection(), "SELECT pg_sleep(30)")

    sleepers = [asyncio.create_task(sleeper()) for _ in range(tasks)]
    # inside pg_sleep, not merely 'active' parsing it: every one of them is a statement to stop
    await eventually(lambda: len(pg.sleeping_statements()) >= running)
    for task in sleepers:
        task.cancel()
    await asyncio.gather(*sleepers, return_exceptions=True)
    await asyncio.sleep(1.0)  # the promise is "one second later": time itself is what is tested
    assert sleeping(pg) == []


async def test_cancellation_storm_stops_every_statement(
    pg: PostgreSQL, make: Any, engine: str, sampler: ProcesslistSampler
) -> None:
    """The slot of a cancelled statement is reused only once the server has let go of its session:
    the server never holds more than MAX_CONNS + 1 (the side session that waits) of the app's."""
    connections = make({"default": pg.settings(ENGINE=engine, CONN_MAX_AGE=60, MAX_CONNS=10)})
    await cancel_storm(connections, pg, tasks=150, running=10)
    for n in range(60):
        assert await value(connections, f"SELECT {n}") == n
    await eventually(lambda: connections.stats().closing == 0)
    sampler.__exit__()
    stats = connections.stats()
    assert_balanced(stats)
    assert max(sampler.samples) <= 10 + 1, max(sampler.samples)
    # both drivers return to the cancelled caller at once (psycopg's own cancel-and-wait runs off
    # the caller's path, see backends/postgresql.py): aconn sent the cancel request and waited for
    # each session to go before reusing its slot
    assert stats.server_cancels == 10, stats
    assert stats.server_cancels_failed == 0


async def test_open_transaction_rolled_back(pg: PostgreSQL, make: Any, engine: str) -> None:
    connections = make({"default": pg.settings(ENGINE=engine, CONN_MAX_AGE=60)})
    async with connections.scope():
        conn = await connections.connection()
        await rows(conn, "DROP TABLE IF EXISTS pg_t")
        await rows(conn, "CREATE TABLE pg_t (id int)")
    with pytest.raises(ZeroDivisionError):
        async with connections.scope():
            conn = await connections.connection()
            await rows(conn, "BEGIN")
            await rows(conn, "INSERT INTO pg_t VALUES (1)")
            1 / 0  # noqa: B018
    async with connections.scope():
        conn = await connections.connection()
        await rows(conn, "BEGIN")
        with pytest.raises(Exception, match="nonsense"):
            await rows(conn, "SELECT nonsense FROM pg_t")  # the transaction is now failed (INERROR)
    assert await value(connections, "SELECT count(*) FROM pg_t") == 0
    assert connections.stats().rollbacks == 2
    assert pg.open_transactions() == 0


async def test_errors_name_alias_never_password(pg: PostgreSQL, make: Any, engine: str) -> None:
    wrong = make({"main": pg.settings(ENGINE=engine, PASSWORD=APP_PASSWORD + "-wrong", ACQUIRE_TIMEOUT=5)})
    with pytest.raises(Exception) as info:
        await value(wrong, "SELECT 1", "main")
    text = "".join(getattr(info.value, "__notes__", [])) + str(info.value)
    assert "aconn alias 'main'" in text and f"127.0.0.1:{pg.port}" in text
    assert_no_password(text, repr(wrong.settings("main")), wrong.stats("main"))
    with pytest.raises(aconn.ConfigError) as bad:
        aconn.Connections({"x": pg.settings(ENGINE=engine, OPTIONS={"no_such_option": 1})})
    assert bad.value.alias == "x" and bad.value.key == "OPTIONS.no_such_option"
    assert_no_password(bad.value)


async def test_statement_timeout(pg: PostgreSQL, make: Any, engine: str) -> None:
    connections = make({"default": pg.settings(ENGINE=engine, CONN_MAX_AGE=60, STATEMENT_TIMEOUT=0.2)})
    assert await value(connections, "SHOW statement_timeout") == "200ms"
    async with connections.scope():
        conn = await connections.connection()
        with pytest.raises(Exception, match="statement timeout"):
            await rows(conn, "SELECT pg_sleep(5)")
        assert (await rows(conn, "SELECT 7"))[0][0] == 7  # the session is still usable
    assert connections.pool("default").limits.max_statement_time == 0.2  # type: ignore[union-attr]
    assert connections.stats().opened == 1


async def test_reset_on_release(pg: PostgreSQL, make: Any, engine: str) -> None:
    connections = make({"default": pg.settings(ENGINE=engine, CONN_MAX_AGE=60, RESET_ON_RELEASE=True)})
    async with connections.scope():
        await rows(await connections.connection(), "SET application_name = 'set-by-a-request'")
    assert await value(connections, "SHOW application_name") != "set-by-a-request"
    assert connections.stats().opened == 1  # reset in place, not reconnected


async def test_too_many_clients_retried_then_explained(pg: PostgreSQL, make: Any, engine: str) -> None:
    pg.sql("ALTER ROLE app CONNECTION LIMIT 1")
    try:
        hog = make({"default": pg.settings(ENGINE=engine, CONN_MAX_AGE=60)})
        connections = make({"default": pg.settings(ENGINE=engine, CONN_MAX_AGE=60, ACQUIRE_TIMEOUT=1)})
        async with hog.scope():
            await hog.connection()
            with pytest.raises(aconn.AcquireTimeout, match="processes x MAX_CONNS"):
                await value(connections, "SELECT 1")
        assert connections.stats().connect_errors >= 2  # retried with backoff, not failed at once
    finally:
        pg.sql("ALTER ROLE app CONNECTION LIMIT -1")


async def test_atomic_on_postgresql(pg: PostgreSQL, make: Any, engine: str) -> None:
    connections = make({"default": pg.settings(ENGINE=engine, CONN_MAX_AGE=60)})
    async with connections.scope():
        conn = await connections.connection()
        await rows(conn, "DROP TABLE IF EXISTS pg_a")
        await rows(conn, "CREATE TABLE pg_a (id int)")
    async with connections.atomic() as conn:
        await rows(conn, "INSERT INTO pg_a VALUES (1)")
        with pytest.raises(ValueError):
            async with connections.atomic():
                await rows(conn, "INSERT INTO pg_a VALUES (2)")
                raise ValueError
        with pytest.raises(Exception, match="nonsense"):
            async with connections.atomic():  # a failed statement: the savepoint makes it recoverable
                await rows(conn, "SELECT nonsense FROM pg_a")
        await rows(conn, "INSERT INTO pg_a VALUES (3)")
    assert [r[0] for r in await _all(connections, "SELECT id FROM pg_a ORDER BY id")] == [1, 3]
    assert pg.open_transactions() == 0


async def _all(connections: aconn.Connections, sql: str) -> list[tuple[Any, ...]]:
    async with connections.scope():
        return await rows(await connections.connection(), sql)


async def test_liveness_reads_driver_internals(pg: PostgreSQL, make: Any, engine: str) -> None:
    """Pins what the backends read of the drivers: if a driver changes them, this fails."""
    connections = make({"default": pg.settings(ENGINE=engine, CONN_MAX_AGE=60)})
    async with connections.scope():
        conn = await connections.connection()
        pid = (await rows(conn, "SELECT pg_backend_pid()"))[0][0]
    backend = connections.pool("default").backend
    holder = connections.pool("default")._idle[-1]
    assert holder.alive() and not backend.is_dead(conn)
    if engine == "postgresql":
        assert conn.pgconn.socket > 0 and conn.aconn_pid == pid and conn.aconn_cancel is not None
    else:
        assert conn._transport.get_extra_info("socket") is not None and conn.aconn_pid == pid
        assert isinstance(conn.aconn_secret, int) and conn._cancellations == set()
        assert conn.aconn_cancelled is False and hasattr(type(conn).__mro__[1], "_cancel_current_command")
    pg.sql(f"SELECT pg_terminate_backend({pid})")
    deadline = time.monotonic() + 5
    while holder.alive() and time.monotonic() < deadline:
        await asyncio.sleep(0)  # no round trip: the poll (or the driver's flag) must see it
    assert not holder.alive()


def test_postgresql_settings() -> None:
    from psycopg import IsolationLevel

    django = {
        "ENGINE": "django.db.backends.postgresql", "NAME": "app", "USER": "u", "PASSWORD": "p", "HOST": "db",
        "PORT": "5432", "CONN_MAX_AGE": 60, "CONN_HEALTH_CHECKS": True,
        "OPTIONS": {"sslmode": "prefer", "options": "-c search_path=app", "server_side_binding": True,
                    "isolation_level": IsolationLevel.SERIALIZABLE, "assume_role": "reader", "application_name": "web"},
    }  # fmt: skip
    handler = aconn.Connections({"default": django})
    assert handler.settings().engine == "postgresql"
    kwargs = handler.pool("default").backend._kwargs  # type: ignore[attr-defined]
    assert kwargs["options"] == "-c search_path=app -c default_transaction_isolation=serializable"
    with pytest.raises(aconn.ConfigError, match="aconn is the pool") as info:
        aconn.Connections({"default": {**django, "OPTIONS": {"pool": True}}})
    assert info.value.key == "OPTIONS.pool"
    for url, engine in (
        ("postgresql://u:p@db/app", "postgresql"), ("postgres://u:p@db:5433/app", "postgresql"),
        ("postgresql+asyncpg://u:p@db/app", "asyncpg"),
    ):  # fmt: skip
        assert aconn.Connections({"default": url}).settings().engine == engine
    assert "db:5432" in aconn.Connections({"default": "postgresql://u:p@db/app"}).settings().target
    with pytest.raises(aconn.ConfigError) as info:
        aconn.Connections({"default": {"ENGINE": "asyncpg", "NAME": "x", "OPTIONS": {"sslmode": "x"}}})
    assert info.value.key == "OPTIONS.sslmode"


async def test_check_reports_postgresql(pg: PostgreSQL, engine: str) -> None:
    """``python -m aconn check`` on a PostgreSQL alias: limits, sessions, TLS, the rules; no password."""
    import json
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "aconn", "check", "--json", "--workers", "20",
         "--url", pg.url(scheme="postgresql" if engine == "postgresql" else "postgresql+asyncpg")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr  # 20 x 10 > max_connections 100 - 3
    report = json.loads(result.stdout)["aliases"][0]
    assert report["reachable"] and report["version"].startswith("PostgreSQL 15")
    assert report["limits"]["max_connections (less superuser_reserved_connections)"] == 97
    assert report["connections_open"] >= 1 and report["tls"]["in_use"] is False
    assert report["limits"]["tcp_keepalives_idle/interval/count"].count("/") == 2
    rules = {r["rule"]: r for r in report["rules"]}
    assert not rules["MAX_CONNS"]["ok"] and "max_connections=97" in rules["MAX_CONNS"]["message"]
    assert rules["IDLE_TIMEOUT"]["ok"] and rules["CANCEL_ON_SERVER"]["ok"]
    assert_no_password(result.stdout, result.stderr)


async def test_write_refused_as_read_only_retires_the_idle(pg: PostgreSQL, make: Any, engine: str) -> None:
    """SQLSTATE 25006 (a standby, a demoted primary) closes that connection and the idle ones."""
    connections = make({"default": pg.settings(ENGINE=engine, CONN_MAX_AGE=60)})

    async def use(sql: str) -> None:
        async with connections.scope():
            await rows(await connections.connection(), sql)

    await asyncio.gather(use("SELECT 1"), use("SELECT 2"))  # two connections, both idle now
    assert connections.stats().idle == 2
    with pytest.raises(Exception, match="read-only transaction"):
        async with connections.scope():
            conn = await connections.connection()
            await rows(conn, "SET default_transaction_read_only = on")  # as on a standby
            await rows(conn, "CREATE TABLE read_only_probe (id int)")
    stats = connections.stats()
    assert stats.closed_error == 1 and stats.closed_unusable == 1 and stats.idle == 0
