"""What an app ported from its driver's pool meets (docs/migrating.md), against the real servers.

| item | test |
| --- | --- |
| `async with connections.acquire() as conn` is a scope plus connection(); joins the task's scope | test_acquire_is_a_scope_and_a_connection, test_acquire_joins_the_tasks_scope |
| acquire() typed and checked like connection() | test_acquire_expected_class |
| peer pool options (min_size, maxsize, pool_recycle...) name aconn's setting | test_peer_pool_options_name_aconns_setting |
| postgresql:// and postgres:// both PostgreSQL; psycopg missing with asyncpg there names both fixes | test_postgres_url_schemes, test_missing_psycopg_names_asyncpg |
| session state per engine: asyncpg resets (as asyncpg.Pool), others keep it (as Django) unless RESET_ON_RELEASE | test_asyncpg_resets_session_state_by_default, test_session_state_kept_elsewhere_unless_reset |
| closing while MIN_CONNS open in the background logs nothing stray | test_close_during_background_opens_is_quiet |
| psycopg with RESET_ON_RELEASE: prepared statements forgotten with the session | test_psycopg_reset_forgets_prepared_statements |
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from typing import Any

import aiosqlite
import pytest

import aconn
from aconn.settings import parse_settings


async def test_acquire_is_a_scope_and_a_connection(make: Any, sqlite_path: str) -> None:
    connections = make({"default": {"ENGINE": "sqlite", "NAME": sqlite_path, "CONN_MAX_AGE": 60}})
    async with connections.acquire() as conn:
        assert isinstance(conn, aiosqlite.Connection)
        assert conn is await connections.connection()  # the scope's connection
        assert connections.stats().in_use == 1
    assert connections.stats().in_use == 0 and connections.stats().idle == 1  # given back at exit
    with pytest.raises(aconn.ScopeError):
        await connections.connection()  # its scope ended with it
    with pytest.raises(RuntimeError, match="boom"):
        async with connections.acquire() as conn:
            await conn.execute("BEGIN")
            raise RuntimeError("boom")
    stats = connections.stats()
    assert (stats.in_use, stats.rollbacks) == (0, 1)  # the failing unit was rolled back and given back
    with pytest.raises(aconn.ConfigError, match="'nope'"):
        connections.acquire("nope")  # at once, not at the first await


async def test_acquire_joins_the_tasks_scope(make: Any, sqlite_path: str) -> None:
    connections = make({"default": {"ENGINE": "sqlite", "NAME": sqlite_path, "CONN_MAX_AGE": 60}})
    async with connections.scope():
        outer = await connections.connection()
        async with connections.acquire() as conn:
            assert conn is outer
        assert connections.stats().in_use == 1  # still the outer scope's until it exits
    assert connections.stats().in_use == 0


async def test_acquire_expected_class(make: Any, sqlite_path: str) -> None:
    connections = make({"default": {"ENGINE": "sqlite", "NAME": sqlite_path}})
    async with connections.acquire("default", aiosqlite.Connection) as conn:
        assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
    with pytest.raises(TypeError, match="aiosqlite"):
        async with connections.acquire("default", dict):
            pass
    assert connections.stats().in_use == 0


@pytest.mark.parametrize(
    ("engine", "key", "setting"),
    [
        ("asyncpg", "min_size", "MIN_CONNS"),
        ("asyncpg", "max_size", "MAX_CONNS"),
        ("asyncpg", "max_inactive_connection_lifetime", "IDLE_TIMEOUT"),
        ("asyncpg", "max_queries", "CONN_MAX_AGE"),
        ("mysql", "minsize", "MIN_CONNS"),
        ("mysql", "maxsize", "MAX_CONNS"),
        ("asyncmy", "pool_recycle", "CONN_MAX_AGE"),
        ("postgresql", "max_lifetime", "CONN_MAX_AGE"),
        ("postgresql", "max_idle", "IDLE_TIMEOUT"),
        ("postgresql", "timeout", "ACQUIRE_TIMEOUT"),
        ("postgresql", "max_waiting", "MAX_WAITING"),
        ("sqlite", "pool_size", "MAX_CONNS"),
        ("sqlite", "max_overflow", "MAX_CONNS"),
        ("mysql", "pool_timeout", "ACQUIRE_TIMEOUT"),
        ("asyncpg", "pool_pre_ping", "CONN_HEALTH_CHECKS"),
    ],
)
def test_peer_pool_options_name_aconns_setting(engine: str, key: str, setting: str) -> None:
    entry = {"ENGINE": engine, "NAME": "app.db" if engine == "sqlite" else "app", "PASSWORD": "s3cret-pw"}
    with pytest.raises(aconn.ConfigError, match=f"OPTIONS.{key}.*{setting}") as in_options:
        aconn.Connections({"db": {**entry, "OPTIONS": {key: 5}}})
    assert "'db'" in str(in_options.value) and "s3cret-pw" not in str(in_options.value)
    if engine != "sqlite" and key.upper() != setting:  # ?max_waiting= is aconn's own MAX_WAITING in a URL
        scheme = {"mysql": "mysql", "asyncmy": "mysql+asyncmy", "asyncpg": "postgresql+asyncpg"}.get(engine, engine)
        with pytest.raises(aconn.ConfigError, match=setting) as in_url:
            aconn.Connections({"db": f"{scheme}://u:s3cret-pw@h/app?{key}=5"})
        assert "s3cret-pw" not in str(in_url.value)


def test_postgres_url_schemes() -> None:
    for scheme in ("postgresql", "postgres"):
        assert parse_settings("a", f"{scheme}://u:p@h/app").engine == "postgresql"
    for scheme in ("postgresql+asyncpg", "postgres+asyncpg"):
        assert parse_settings("a", f"{scheme}://u:p@h/app").engine == "asyncpg"


def test_missing_psycopg_names_asyncpg(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "psycopg" or m.startswith(("psycopg.", "aconn.backends.postgresql"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now raises ImportError
    with pytest.raises(aconn.ConfigError) as caught:
        aconn.Connections({"default": "postgresql://u:s3cret-pw@h/app"})
    message = str(caught.value)
    assert "pip install 'aconn[postgresql]'" in message and "postgresql+asyncpg://" in message
    assert "s3cret-pw" not in message


@pytest.mark.postgresql
async def test_asyncpg_resets_session_state_by_default(pg: Any, make: Any) -> None:
    connections = make({"default": pg.settings(ENGINE="asyncpg", CONN_MAX_AGE=60, MAX_CONNS=1)})
    assert connections.settings().reset_on_release  # as asyncpg.Pool: the default on asyncpg
    async with connections.acquire() as conn:
        first = conn
        await conn.execute("SET search_path TO pg_catalog")
        await conn.execute("SELECT pg_advisory_lock(4242)")
    async with connections.acquire() as conn:
        assert conn is first  # the same session, reset in place
        assert await conn.fetchval("SHOW search_path") == '"$user", public'
        held = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        assert held == 0
    behind_pooler = parse_settings("b", pg.settings(ENGINE="asyncpg", POOLER="pgbouncer"))
    assert not behind_pooler.reset_on_release  # would reset a server connection others share


@pytest.mark.parametrize(
    "engine",
    [
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mysql", marks=pytest.mark.mysql),
        pytest.param("asyncmy", marks=pytest.mark.mysql),
    ],
)
async def test_session_state_kept_elsewhere_unless_reset(
    engine: str, request: pytest.FixtureRequest, make: Any
) -> None:
    server = request.getfixturevalue("pg" if engine == "postgresql" else "db")
    statements = (
        ("SET application_name = 'kept'", "SHOW application_name", "kept")
        if engine == "postgresql"
        else ("SET @kept = 'kept'", "SELECT @kept", "kept")
    )

    async def run(conn: Any, sql: str) -> Any:
        if engine == "postgresql":
            cur = await conn.execute(sql)
            return await cur.fetchone() if cur.description else None
        async with conn.cursor() as cur:
            await cur.execute(sql)
            return await cur.fetchone()

    async def value_in_next_scope(connections: aconn.Connections) -> Any:
        async with connections.acquire() as conn:
            await run(conn, statements[0])
        async with connections.acquire() as conn:
            return (await run(conn, statements[1]))[0]

    kept = make({"default": server.settings(ENGINE=engine, CONN_MAX_AGE=60, MAX_CONNS=1)})
    assert not kept.settings().reset_on_release  # Django's model, and these drivers' pools
    assert await value_in_next_scope(kept) == statements[2]
    reset = make({"default": server.settings(ENGINE=engine, CONN_MAX_AGE=60, MAX_CONNS=1, RESET_ON_RELEASE=True)})
    assert await value_in_next_scope(reset) != statements[2]
    assert reset.stats().opened == 1  # reset in place, not reconnected


@pytest.mark.parametrize(
    "engine",
    [
        pytest.param("asyncpg", marks=pytest.mark.postgresql),
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mysql", marks=pytest.mark.mysql),
        pytest.param("asyncmy", marks=pytest.mark.mysql),
    ],
)
async def test_close_during_background_opens_is_quiet(
    engine: str, request: pytest.FixtureRequest, aconn_logs: pytest.LogCaptureFixture
) -> None:
    """aclose() while the housekeeper opens MIN_CONNS: each connect is cut at another point of its
    handshake (TLS negotiation included, sslmode 'prefer' on PostgreSQL); nothing is logged at
    ERROR, nothing reaches the loop's exception handler ("Future exception was never retrieved"),
    and no session is left on the server."""
    server = request.getfixturevalue("pg" if engine in ("asyncpg", "postgresql") else "db")
    options = {"ssl": "prefer"} if engine == "asyncpg" else {"sslmode": "prefer"} if engine == "postgresql" else {}
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        for step in range(12):
            connections = aconn.Connections(
                {"default": server.settings(ENGINE=engine, MIN_CONNS=4, MAX_CONNS=4, OPTIONS=options)}
            )
            await connections.open()
            for _ in range(step):  # a little further into the background connects each round
                await asyncio.sleep(0)
            await connections.aclose()
            assert connections.stats().open == 0
            gc.collect()
        await asyncio.sleep(0)
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert reported == []
    assert [r for r in aconn_logs.records if r.levelno >= logging.ERROR] == []
    wait = server.wait_app_backends if engine in ("asyncpg", "postgresql") else server.wait_app_threads
    assert await asyncio.to_thread(wait, lambda found: not found) == []


@pytest.mark.postgresql
async def test_psycopg_reset_forgets_prepared_statements(pg: Any, make: Any) -> None:
    """psycopg prepares a query run 5 times; DISCARD ALL at each release drops it on the server,
    and psycopg must forget it too, every time (it noticed only the first DISCARD ALL)."""
    connections = make({"default": pg.settings(CONN_MAX_AGE=60, MAX_CONNS=1, RESET_ON_RELEASE=True)})
    for n in range(12):
        async with connections.acquire() as conn:
            cur = await conn.execute("SELECT %s::int + 1", (n,))
            assert await cur.fetchone() == (n + 1,)
    assert connections.stats().opened == 1
