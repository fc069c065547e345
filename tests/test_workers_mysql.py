"""Worker loops and housekeeping against the real server.

Jobs in scopes of their own; idle connections retired while nobody asks.

A worker idling past the server's wait_timeout between two ``@scoped`` jobs is
``test_core_mysql.test_server_wait_timeout_never_reaches_the_caller``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from helpers import assert_balanced, fetch, scalar
from mariadb import MariaDB

pytestmark = [pytest.mark.mysql, pytest.mark.mysql_drivers]


async def wait_for(predicate: Any, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


async def test_min_conns_kept_warm_and_refilled(db: MariaDB, make: Any) -> None:
    connections = make({"default": db.settings(CONN_MAX_AGE=60, MIN_CONNS=3)})
    await connections.open()
    await wait_for(lambda: len(db.app_threads()) == 3)
    assert connections.stats().idle == 3
    killed = set(db.app_threads())
    db.kill_app_sessions()
    await wait_for(lambda: len(db.app_threads()) == 3 and not killed & set(db.app_threads()))
    await wait_for(lambda: connections.stats().idle == 3)
    assert connections.stats().closed_unusable == 3
    assert_balanced(connections.stats())
    await connections.aclose()
    assert db.wait_app_threads(lambda t: not t) == []


async def test_housekeeper_backs_off_while_the_server_is_down(
    db: MariaDB, make: Any, aconn_logs: pytest.LogCaptureFixture
) -> None:
    connections = make({"default": db.settings(CONN_MAX_AGE=60, MIN_CONNS=2, CONNECT_TIMEOUT=1)})
    await connections.open()
    await wait_for(lambda: connections.stats().idle == 2)
    await asyncio.to_thread(db.stop)
    await wait_for(lambda: connections.stats().connect_errors >= 3)
    errors_after_a_while = connections.stats().connect_errors
    warnings = [r for r in aconn_logs.records if "cannot keep MIN_CONNS" in r.getMessage()]
    assert 1 <= len(warnings) <= 3  # backed off and logged sparsely, not a flood
    assert errors_after_a_while < 10
    await asyncio.to_thread(db.start)
    await wait_for(lambda: connections.stats().idle == 2 and len(db.app_threads()) == 2)
    async with connections.scope():
        assert await scalar(await connections.connection(), "SELECT 6") == 6
    assert any(r.levelno == logging.INFO and "reachable again" in r.getMessage() for r in aconn_logs.records)


async def test_housekeeper_retires_idle_connections_nobody_asks_for(db: MariaDB, make: Any) -> None:
    connections = make({"default": db.settings(CONN_MAX_AGE=0.5)})
    await connections.open()
    async with connections.scope():
        await fetch(await connections.connection(), "SELECT 1")
    await wait_for(lambda: connections.stats().closed_max_age >= 1 and connections.stats().open == 0)
    assert db.wait_app_threads(lambda t: not t) == []
