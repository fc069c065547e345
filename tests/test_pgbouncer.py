"""aconn behind PgBouncer 1.18 in transaction mode, both PostgreSQL drivers, with POOLER="pgbouncer".

| promise | test |
|---|---|
| the contract through the pooler: reuse, the cap, rollback at exit, atomic() | test_contract_through_pgbouncer |
| named prepared statements would break across server connections: turned off | test_prepared_statement_workload |
| a cancelled statement is cancelled through PgBouncer | test_cancellation_through_pgbouncer |
| a PgBouncer restart, KILL and RECONNECT are survived like a server restart | test_pgbouncer_restart_kill_reconnect |
| session state aconn would set is refused, with where to set it | test_session_state_refused |
| check sees PgBouncer and lints the settings | test_check_detects_pgbouncer |
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest
from helpers import assert_balanced
from pgbouncer import PgBouncer
from postgres import PostgreSQL
from test_postgresql import cancel_storm, rows, value

import aconn

pytestmark = [pytest.mark.postgresql, pytest.mark.pgbouncer]


@pytest.fixture(params=["postgresql", "asyncpg"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_contract_through_pgbouncer(bouncer: PgBouncer, make: Any, engine: str) -> None:
    connections = make({"default": bouncer.settings(ENGINE=engine, CONN_MAX_AGE=60, MAX_CONNS=4)})
    for n in range(5):
        assert await value(connections, f"SELECT {n}") == n
    assert connections.stats().opened == 1  # one client connection to PgBouncer, reused

    async def request(n: int) -> int:
        async with connections.scope():
            conn = await connections.connection()
            await rows(conn, "SELECT pg_sleep(0.002)")
            return int((await rows(conn, f"SELECT {n}"))[0][0])

    assert await asyncio.gather(*(request(n) for n in range(200))) == list(range(200))
    assert connections.stats().opened <= 4
    async with connections.scope():
        conn = await connections.connection()
        await rows(conn, "DROP TABLE IF EXISTS pgb_t")
        await rows(conn, "CREATE TABLE pgb_t (id int)")
    with pytest.raises(ZeroDivisionError):
        async with connections.scope():
            conn = await connections.connection()
            await rows(conn, "BEGIN")
            await rows(conn, "INSERT INTO pgb_t VALUES (1)")
            1 / 0  # noqa: B018
    async with connections.atomic() as conn:
        await rows(conn, "INSERT INTO pgb_t VALUES (2)")
        with pytest.raises(ValueError):
            async with connections.atomic():
                await rows(conn, "INSERT INTO pgb_t VALUES (3)")
                raise ValueError
    assert await value(connections, "SELECT count(*) FROM pgb_t") == 1  # 1 rolled back at exit, 3 by the savepoint
    assert_balanced(connections.stats())


async def test_prepared_statement_workload(bouncer: PgBouncer, make: Any, engine: str) -> None:
    """Parameterised statements, repeated, from many scopes: the drivers would name prepared statements
    (psycopg after 5 uses, asyncpg at once) that the next transaction's server connection lacks."""
    connections = make({"default": bouncer.settings(ENGINE=engine, CONN_MAX_AGE=60, MAX_CONNS=8)})

    async def request(n: int) -> int:
        async with connections.scope():
            conn = await connections.connection()
            for _ in range(7):
                if engine == "asyncpg":
                    got = await conn.fetchval("SELECT $1::int + 0", n)
                else:
                    got = (await (await conn.execute("SELECT %s::int + 0", (n,))).fetchone())[0]
            return int(got)

    assert await asyncio.gather(*(request(n) for n in range(300))) == list(range(300))


async def test_cancellation_through_pgbouncer(
    bouncer: PgBouncer, pg: PostgreSQL, make: Any, engine: str
) -> None:
    connections = make({"default": bouncer.settings(ENGINE=engine, CONN_MAX_AGE=60, MAX_CONNS=5)})
    await cancel_storm(connections, pg, tasks=20, running=5)
    for n in range(10):
        assert await value(connections, f"SELECT {n}") == n


async def test_pgbouncer_restart_kill_reconnect(bouncer: PgBouncer, make: Any, engine: str) -> None:
    connections = make({"default": bouncer.settings(ENGINE=engine, CONN_MAX_AGE=None, MAX_CONNS=2)})
    assert await value(connections, "SELECT 1") == 1
    await asyncio.to_thread(bouncer.restart)
    assert await value(connections, "SELECT 2") == 2  # the dead client connection was replaced, no error
    await asyncio.to_thread(bouncer.admin, "KILL aconn_test")  # drops every client and server connection
    await asyncio.to_thread(bouncer.admin, "RESUME aconn_test")
    assert await value(connections, "SELECT 3") == 3
    await asyncio.to_thread(bouncer.admin, "RECONNECT aconn_test")  # server connections renewed when released
    assert await value(connections, "SELECT 4") == 4
    stats = connections.stats()
    assert stats.closed_unusable >= 2 and stats.open >= 1
    assert_balanced(stats)


def test_session_state_refused(bouncer: PgBouncer) -> None:
    for engine, extra, key in (
        ("postgresql", {"STATEMENT_TIMEOUT": 5}, "STATEMENT_TIMEOUT"),
        ("postgresql", {"OPTIONS": {"assume_role": "reader"}}, "OPTIONS.assume_role"),
        ("postgresql", {"OPTIONS": {"options": "-c search_path=x"}}, "OPTIONS.options"),
        ("asyncpg", {"STATEMENT_TIMEOUT": 5}, "STATEMENT_TIMEOUT"),
        ("asyncpg", {"OPTIONS": {"server_settings": {"search_path": "x"}}}, "OPTIONS.server_settings"),
    ):
        with pytest.raises(aconn.ConfigError, match="ALTER ROLE") as info:
            aconn.Connections({"default": bouncer.settings(ENGINE=engine, **extra)})
        assert info.value.key == key
    with pytest.raises(aconn.ConfigError, match="does not front") as info:
        aconn.Connections({"default": {"ENGINE": "mysql", "NAME": "x", "POOLER": "pgbouncer"}})
    assert info.value.key == "POOLER"
    handler = aconn.Connections({"default": bouncer.settings()})
    assert handler.pool("default").backend._kwargs["prepare_threshold"] is None  # type: ignore[attr-defined]


def test_check_detects_pgbouncer(bouncer: PgBouncer) -> None:
    def check(url: str) -> dict[str, Any]:
        result = subprocess.run(
            [sys.executable, "-m", "aconn", "check", "--json", "--url", url],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        report: dict[str, Any] = json.loads(result.stdout)["aliases"][0]
        return report

    base = bouncer.server.url().replace(f":{bouncer.server.port}/", f":{bouncer.port}/")
    unset = check(base)
    assert unset["pooler"] == {
        "configured": None, "detected": "PgBouncer 1.18.0", "how": "its admin console answered SHOW VERSION"
    }  # fmt: skip
    pooler_rule = next(r for r in unset["rules"] if r["rule"] == "POOLER")
    assert not pooler_rule["ok"] and "POOLER='pgbouncer'" in pooler_rule["fix"]
    good = check(base + "?pooler=pgbouncer")
    assert all(r["ok"] for r in good["rules"]), good["rules"]
    reset = check(base + "?pooler=pgbouncer&reset_on_release=true")
    assert not next(r for r in reset["rules"] if r["rule"] == "POOLER")["ok"]
