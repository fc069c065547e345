"""The core promises against a real MariaDB server.

Reuse, max age, dead connections never handed out, rollback at exit.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from helpers import assert_balanced, assert_no_password, fetch, in_scope, scalar
from mariadb import APP_PASSWORD, DRIVERS, MariaDB

import aconn

pytestmark = [pytest.mark.mysql, pytest.mark.mysql_drivers]


async def test_max_age_reuses_one_server_connection(db: MariaDB, make: Any) -> None:
    connections = make({"default": db.settings(CONN_MAX_AGE=60)})
    ids = [await in_scope(connections, "SELECT CONNECTION_ID()") for _ in range(5)]
    assert len(set(ids)) == 1
    assert db.app_threads() == ids[:1]
    stats = connections.stats()
    assert (stats.opened, stats.idle, stats.in_use, stats.closed) == (1, 1, 0, 0)
    await connections.aclose()
    assert db.wait_app_threads(lambda t: not t) == []
    assert connections.stats().closed_shutdown == 1


async def test_max_age_zero_closes_at_scope_exit(db: MariaDB, make: Any) -> None:
    connections = make({"default": db.settings(CONN_MAX_AGE=0)})
    ids = []
    for _ in range(3):
        ids.append(await in_scope(connections, "SELECT CONNECTION_ID()"))
        # the server sees the session end once the scope has exited
        assert db.wait_app_threads(lambda t: not t) == []
    assert len(set(ids)) == 3
    stats = connections.stats()
    assert (stats.opened, stats.closed_max_age, stats.open) == (3, 3, 0)


async def test_url_settings_work_too(db: MariaDB, make: Any) -> None:
    connections = make({"default": db.url("conn_max_age=60&health_checks=true")})
    assert await in_scope(connections, "SELECT 41 + 1") == 42


@pytest.mark.parametrize("health_checks", [False, True])
async def test_server_wait_timeout_never_reaches_the_caller(
    db: MariaDB, make: Any, health_checks: bool, aconn_logs: pytest.LogCaptureFixture
) -> None:
    """The classic "MySQL server has gone away": a worker whose idle gap outlives wait_timeout."""
    connections = make(
        {"default": db.settings(CONN_MAX_AGE=None, CONN_HEALTH_CHECKS=health_checks,
                                OPTIONS={"init_command": "SET SESSION wait_timeout=1"})}
    )  # fmt: skip

    @connections.scoped
    async def job() -> tuple[int, int]:
        conn = await connections.connection()
        return int(await scalar(conn, "SELECT CONNECTION_ID()")), int(await scalar(conn, "SELECT @@wait_timeout"))

    first, wait_timeout = await job()
    assert wait_timeout == 1
    # idle longer than the server keeps the session: the condition under test, not synchronisation
    await asyncio.sleep(2.5)
    assert first not in db.wait_app_threads(lambda t: first not in t, timeout=5)  # the server dropped it
    second, _ = await job()  # no error reaches the job
    assert second != first
    stats = connections.stats()
    assert stats.closed_idle + stats.closed_unusable == 1
    assert "idle past the idle limit" in aconn_logs.text or "found dead" in aconn_logs.text
    assert "wait_timeout=1" not in aconn_logs.text  # no false alarm: the idle limit comes from the server


@pytest.mark.parametrize("health_checks", [False, True])
async def test_killed_idle_connection_is_never_handed_out(db: MariaDB, make: Any, health_checks: bool) -> None:
    connections = make({"default": db.settings(CONN_MAX_AGE=60, CONN_HEALTH_CHECKS=health_checks)})
    first = await in_scope(connections, "SELECT CONNECTION_ID()")
    db.kill_sessions(first)
    second = await in_scope(connections, "SELECT CONNECTION_ID()")
    assert second != first
    assert connections.stats().closed_unusable == 1
    assert_balanced(connections.stats())


async def test_open_transaction_is_rolled_back_at_exit(db: MariaDB, make: Any) -> None:
    db.sql("CREATE TABLE IF NOT EXISTS aconn_test.tx (n INT) ENGINE=InnoDB", "DELETE FROM aconn_test.tx")
    connections = make({"default": db.settings(CONN_MAX_AGE=60)})
    async with connections.scope():
        conn = await connections.connection()
        await conn.begin()
        await fetch(conn, "INSERT INTO tx VALUES (1)")
        thread = conn.thread_id()
        assert db.open_transactions(expected=1) == 1
    assert db.open_transactions(expected=0) == 0
    assert db.sql("SELECT count(*) FROM aconn_test.tx") == [(0,)]
    stats = connections.stats()
    assert stats.rollbacks == 1 and stats.idle == 1
    assert await in_scope(connections, "SELECT CONNECTION_ID()") == thread  # still reused


async def test_autocommit_off_always_rolls_back(db: MariaDB, make: Any) -> None:
    """Failure 11: with AUTOCOMMIT off, a SELECT leaves a snapshot the status flag does not show."""
    db.sql("CREATE TABLE IF NOT EXISTS aconn_test.snap (n INT) ENGINE=InnoDB")
    connections = make({"default": db.settings(CONN_MAX_AGE=60, AUTOCOMMIT=False)})
    async with connections.scope():
        await fetch(await connections.connection(), "SELECT * FROM snap")
    assert db.open_transactions(expected=0) == 0
    assert connections.stats().rollbacks == 1


async def test_cancelled_query_never_leaves_a_desynced_connection(db: MariaDB, make: Any) -> None:
    connections = make({"default": db.settings(CONN_MAX_AGE=60, MAX_CONNS=2)})
    for n in range(5):
        async with connections.scope():
            conn = await connections.connection()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await fetch(conn, "SELECT SLEEP(1)")
        for m in range(3):
            assert await in_scope(connections, f"SELECT {n * 10 + m}") == n * 10 + m
    stats = connections.stats()
    assert stats.closed_unusable + stats.closed_error == 5
    assert_balanced(stats)


async def test_scope_cancelled_mid_query_discards_the_connection(db: MariaDB, make: Any) -> None:
    connections = make({"default": db.settings(CONN_MAX_AGE=60)})
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05), connections.scope():
            await fetch(await connections.connection(), "SELECT SLEEP(1)")
    stats = connections.stats()
    # the slot stays taken while the statement is stopped at the server (CANCEL_ON_SERVER)
    assert stats.closed_error == 1 and stats.open == stats.closing
    await connections.close_old()  # waits for the background work
    stats = connections.stats()
    assert stats.open == 0 and stats.server_cancels == 1
    assert db.app_threads() == []
    assert await in_scope(connections, "SELECT 7") == 7


async def test_error_in_scope_checks_the_connection(db: MariaDB, make: Any) -> None:
    connections = make({"default": db.settings(CONN_MAX_AGE=60)})
    first = await in_scope(connections, "SELECT CONNECTION_ID()")
    with pytest.raises(db.errors.ProgrammingError):
        await in_scope(connections, "SELECT * FROM no_such_table")
    # a SQL error leaves the session usable: it is pinged and kept
    assert await in_scope(connections, "SELECT CONNECTION_ID()") == first
    with pytest.raises(ZeroDivisionError):
        async with connections.scope():
            await connections.connection()
            db.kill_sessions(first)
            1 / 0  # noqa: B018
    assert connections.stats().closed_unusable == 1
    assert await in_scope(connections, "SELECT CONNECTION_ID()") != first


async def test_max_statement_time_keeps_connection_but_rolls_back(db: MariaDB, make: Any) -> None:
    """Failure 4: KILL QUERY / max_statement_time leave the session usable and the transaction open."""
    connections = make({"default": db.settings(CONN_MAX_AGE=60)})
    async with connections.scope():
        conn = await connections.connection()
        thread = conn.thread_id()
        await conn.begin()
        with pytest.raises(db.errors.OperationalError) as info:
            await fetch(conn, "SET STATEMENT max_statement_time=0.2 FOR SELECT SLEEP(3)")
        assert info.value.args[0] == 1969
    assert connections.stats().rollbacks == 1
    assert await in_scope(connections, "SELECT CONNECTION_ID()") == thread


async def test_scope_errors_and_closed_handler(db: MariaDB, make: Any) -> None:
    connections = make({"default": db.settings()})
    with pytest.raises(aconn.ScopeError, match=r"async with connections.scope\(\)"):
        await connections.connection()
    await connections.aclose()
    with pytest.raises(aconn.ClosedError):
        async with connections.scope():
            pass
    await connections.open()  # a closed handler opens again
    assert await in_scope(connections, "SELECT 3") == 3


async def test_wrong_password_fails_at_once_without_the_password(
    db: MariaDB, make: Any, aconn_logs: pytest.LogCaptureFixture
) -> None:
    connections = make({"default": db.settings(PASSWORD=APP_PASSWORD + "-wrong")})
    with pytest.raises(db.errors.OperationalError) as info:
        await connections.open()
    assert info.value.args[0] == 1045
    assert_no_password(info.value, repr(info.value), aconn_logs.text, connections.settings())
    assert (APP_PASSWORD + "-wrong") not in str(info.value)
    stats = connections.stats()
    assert stats.connect_errors == 1 and stats.open == 0


@pytest.mark.parametrize("driver", list(DRIVERS))
async def test_unreachable_port_fails_fast(make: Any, driver: str) -> None:
    from mariadb import free_port

    engine = DRIVERS[driver][0]
    connections = make({"default": {"ENGINE": engine, "PORT": free_port(), "HOST": "127.0.0.1",
                                    "PASSWORD": APP_PASSWORD}})  # fmt: skip
    with pytest.raises(Exception) as info:
        await in_scope(connections, "SELECT 1")
    assert type(info.value).__name__ == "OperationalError"
    assert info.value.args[0] == 2003
    assert_no_password(info.value)
    assert_balanced(connections.stats())
    assert connections.stats().open == 0


async def test_connect_to_frozen_server_is_bounded(db: MariaDB, make: Any) -> None:
    """Failure 13: the handshake of a SIGSTOPped server must not hang the caller."""
    connections = make({"default": db.settings(CONNECT_TIMEOUT=0.5)})
    with db.frozen_for_a_while(), pytest.raises(aconn.AcquireTimeout, match="CONNECT_TIMEOUT"):
        await in_scope(connections, "SELECT 1")
    assert connections.stats().open == 0
    assert await in_scope(connections, "SELECT 3") == 3


async def test_session_state_changed_by_a_scope_is_restored(db: MariaDB, make: Any) -> None:
    connections = make({"default": db.settings(CONN_MAX_AGE=60)})
    async with connections.scope():
        conn = await connections.connection()
        await conn.autocommit(False)
        await fetch(conn, "SELECT 1")
    async with connections.scope():
        conn = await connections.connection()
        assert conn.get_autocommit() is True
        assert await scalar(conn, "SELECT @@autocommit") == 1


async def test_isolation_level_option(db: MariaDB, make: Any) -> None:
    connections = make({"default": db.settings(OPTIONS={"isolation_level": "read committed"})})
    assert await in_scope(connections, "SELECT @@SESSION.tx_isolation") == "READ-COMMITTED"


async def test_liveness_reads_driver_internals(db: MariaDB, make: Any) -> None:
    """Fails if the driver renames what its backend reads for the no-round-trip checks."""
    connections = make({"default": db.settings(CONN_MAX_AGE=60)})
    async with connections.scope():
        conn = await connections.connection()
        if db.driver == "aiomysql":
            # and what the BEGIN written with a SELECT uses (backends/mysql.py's _PipelinedBegin)
            pipelined = ("_next_seq_id", "_execute_command", "_read_query_result")
            for attr in ("_writer", "_reader", "_result", "server_status", *pipelined):
                assert hasattr(conn, attr), attr
            assert conn._writer.transport.get_extra_info("socket") is not None
            assert conn._reader._eof is conn._reader.at_eof() is False
            assert conn._reader._exception is conn._reader.exception() is None
        else:  # asyncmy: what its own _stream_broken property reads, and the statement cache a reset clears
            for attr in ("_transport", "_proto", "_result", "server_status", "_stmt_cache", "_connect_timeout"):
                assert hasattr(conn, attr), attr
            assert conn._transport.get_extra_info("socket") is not None
            assert conn._proto.eof is False and conn._proto.exc is None
            assert conn._stream_broken is False
            assert conn._connect_timeout is None  # set by the backend: no wait_for around the TCP open
        assert conn.aconn_session_id == conn.thread_id()
        assert conn.aconn_dropped is False
    backend = connections.pool("default").backend
    assert backend.is_dead(conn) is False
    db.kill_sessions(conn.thread_id())
    assert backend.is_dead(conn) is True  # seen by the socket peek, before the loop noticed


async def test_logs_never_show_the_password(db: MariaDB, make: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    connections = make({"default": db.settings(CONN_MAX_AGE=0)})
    for _ in range(3):
        await in_scope(connections, "SELECT 1")
    assert "closed a connection" in caplog.text  # the lines that name the alias were logged
    assert_no_password(caplog.text)


async def test_reset_on_release_clears_session_state(db: MariaDB, make: Any) -> None:
    """RESET_ON_RELEASE: COM_RESET_CONNECTION at scope exit, in place, then the session set up again."""
    connections = make({"default": db.settings(CONN_MAX_AGE=60, RESET_ON_RELEASE=True, STATEMENT_TIMEOUT=5)})
    async with connections.scope():
        conn = await connections.connection()
        await fetch(conn, "SET @left_by_a_request = 1")
        first = await scalar(conn, "SELECT CONNECTION_ID()")
    async with connections.scope():
        conn = await connections.connection()
        assert await scalar(conn, "SELECT CONNECTION_ID()") == first  # the same session, not a new one
        assert await scalar(conn, "SELECT @left_by_a_request") is None
        assert await scalar(conn, "SELECT @@SESSION.autocommit") == 1
        assert float(await scalar(conn, "SELECT @@SESSION.max_statement_time")) == 5.0  # set up again
    assert connections.stats().opened == 1


def test_reset_on_release_refused_on_sqlite() -> None:
    with pytest.raises(aconn.ConfigError, match="no session state") as info:
        aconn.Connections({"default": {"ENGINE": "sqlite", "NAME": "x.db", "RESET_ON_RELEASE": True}})
    assert info.value.key == "RESET_ON_RELEASE"

