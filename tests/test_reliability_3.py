"""Reliability, third round (issue #26): each promise a regression test against the real servers.

| # | promise | tests |
| --- | --- | --- |
| 1 | a task backing off after a refused connect takes a connection given back meanwhile (FIFO) | test_backing_off_connect_takes_a_released_connection |
| 4 | every secret masked | test_settings::test_every_secret_is_masked |
| 5 | STATEMENT_TIMEOUT range-checked per server | test_settings::test_statement_timeout_range |
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from helpers import assert_balanced, fetch

LIMITED_PASSWORD = "limited-pw"


def _limited_user(server: Any, engine: str) -> dict[str, Any]:
    """Settings of a user the server lets open 3 sessions (MariaDB 1226, PostgreSQL 53300 beyond)."""
    if engine == "mysql":
        server.sql(
            "DROP USER IF EXISTS 'three'@'%'",
            f"CREATE USER 'three'@'%' IDENTIFIED BY '{LIMITED_PASSWORD}' WITH MAX_USER_CONNECTIONS 3",
            "GRANT ALL PRIVILEGES ON aconn_test.* TO 'three'@'%'",
        )
    else:
        server.sql(
            "DROP ROLE IF EXISTS three",
            f"CREATE ROLE three LOGIN PASSWORD '{LIMITED_PASSWORD}' CONNECTION LIMIT 3",
            f"GRANT CONNECT ON DATABASE {server.settings()['NAME']} TO three",
        )
    return server.settings(USER="three", PASSWORD=LIMITED_PASSWORD)


@pytest.mark.parametrize(
    "engine",
    [pytest.param("mysql", marks=pytest.mark.mysql), pytest.param("postgresql", marks=pytest.mark.postgresql)],
)
async def test_backing_off_connect_takes_a_released_connection(
    engine: str, request: pytest.FixtureRequest, make: Any
) -> None:
    """MAX_CONNS=10 for a user the server allows 3 sessions: 10 workers cycling units of work.
    The 7 refused ones back off as waiters; the connections the other 3 give back go to them,
    oldest first, so every unit gets done and nobody reaches ACQUIRE_TIMEOUT."""
    server = request.getfixturevalue("db" if engine == "mysql" else "pg")
    entry = _limited_user(server, engine)
    connections = make({"default": {**entry, "MAX_CONNS": 10, "ACQUIRE_TIMEOUT": 4, "CONN_MAX_AGE": 60}})
    done = [0] * 10

    async def worker(n: int) -> None:
        for _ in range(15):
            async with connections.acquire() as conn:
                if engine == "mysql":
                    await fetch(conn, "SELECT 1")
                else:
                    await conn.execute("SELECT 1")
                done[n] += 1
            await asyncio.sleep(0)  # give the others a turn, as a real worker's next job would

    await asyncio.gather(*(worker(n) for n in range(10)))
    stats = connections.stats()
    assert done == [15] * 10
    assert stats.acquire_timeouts == 0
    assert stats.connect_errors >= 1  # the server did refuse: the backoff path ran
    assert stats.opened <= 3
    assert_balanced(stats)
