"""Reliability, second round: the promises an adversarial run found broken, each pinned by a test.

| # | promise | tests |
| --- | --- | --- |
| 1 | a cancelled statement is stopped at the server before its slot is reused | test_cancellation_storm_holds_the_cap_on_the_server, test_row_lock_of_a_cancelled_scope_is_released, test_idle_connection_sends_the_kill, test_statement_of_a_lost_connection_is_stopped, test_cancel_on_server_can_be_turned_off, test_unverified_session_id_sends_no_kill, test_stop_on_a_killed_server_ends_at_once, test_a_stop_across_a_restart_never_kills_a_recycled_id, test_a_kill_refused_as_another_users_session_ends_the_stop, test_a_stop_goes_on_when_the_server_ends_its_session |
| 2 | STATEMENT_TIMEOUT, set once per session | test_statement_timeout_raises_and_keeps_the_connection |
| 3 | 1226 (max_user_connections) retried like 1040 | test_max_user_connections_is_retried_within_the_deadline |
| 4 | a hand-off passes the hand-out checks | test_hand_off_of_a_killed_session, test_hand_offs_under_load_after_every_session_is_killed |
| 5 | every alias released after a cancelled exit | test_cancelled_exit_releases_every_alias |
| 6 | TLS before any credential; no cleartext password without TLS | test_tls_required_no_credential_leaves, test_cleartext_plugin_refused_* |
| 7 | TLS settings validated (test_settings) and the Django form works | test_django_tls_form_against_a_tls_server |
| 8 | ACQUIRE_TIMEOUT bounds pings too | test_acquire_timeout_bounds_health_check_pings |
| 9 | foreign loop and forked child | test_aclose_from_another_loop_is_a_clear_error, test_forked_child_starts_afresh |
| 10 | no password fragment from malformed URLs | test_settings::test_malformed_url_never_shows_the_password |
| 11 | a cancelled connect is never swallowed (Python 3.11 wait_for) | test_cancelled_connect_is_never_swallowed |
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiomysql
import pymysql
import pytest
from faults import FakeMySQLServer, Proxy, make_certificates
from helpers import age_idle, assert_balanced, assert_no_password, eventually, fetch, in_scope, scalar
from mariadb import APP_PASSWORD, APP_USER, DRIVERS, MariaDB, SessionSampler, driver_errors

import aconn
import aconn.pool.pool
from aconn.backends import load_backend
from aconn.backends.base import ErrorKind, ServerLimits
from aconn.rules import evaluate
from aconn.settings import parse_settings

pytestmark = [pytest.mark.mysql, pytest.mark.mysql_drivers]


# -- 1. cancelled statements stopped at the server ---------------------------------------


async def test_cancellation_storm_holds_the_cap_on_the_server(db: MariaDB) -> None:
    """20 tasks cancel SELECT SLEEP(2) after 0.2 s for 5 s with MAX_CONNS=10.

    The server never holds more than 11 sessions of the user: the 10 of the cap and
    the one side session that sends the KILLs when every slot holds a cancelled
    statement (no idle connection of the pool is free to send it). It cannot count
    inside the cap: when all ten slots wait for their statements to be stopped, a
    side session that waited for a slot would wait for ever.
    """
    connections = aconn.Connections({"default": db.settings(CONN_MAX_AGE=60, MAX_CONNS=10, ACQUIRE_TIMEOUT=5)})
    cancelled = 0

    async def worker(n: int) -> None:
        nonlocal cancelled
        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        while loop.time() < end:
            try:
                if n % 2:  # a request timeout around the whole unit of work
                    async with asyncio.timeout(0.2), connections.scope():
                        await fetch(await connections.connection(), "SELECT SLEEP(2)")
                else:  # a timeout inside the scope, caught there
                    async with connections.scope():
                        conn = await connections.connection()
                        try:
                            async with asyncio.timeout(0.2):
                                await fetch(conn, "SELECT SLEEP(2)")
                        except TimeoutError:
                            pass
            except TimeoutError:
                pass
            cancelled += 1

    try:
        with SessionSampler(db, "SLEEP(2)") as sampler:
            await asyncio.gather(*(worker(n) for n in range(20)))
            await connections.aclose()
            left_running = [
                r for r in db.sql("SELECT INFO FROM information_schema.PROCESSLIST") if r[0] and "SLEEP(2)" in r[0]
            ]
    finally:
        await connections.aclose()
    stats = connections.stats()
    assert cancelled > 100 and sampler.samples > 50
    assert sampler.max_sessions <= 11, sampler.max_sessions
    # cancelled after at most 0.2 s of running: stopped at once, so none runs 1 s later; but for
    # MariaDB's own KILL, which now and then (about 1 in 2,000 under CPU contention, measured
    # without aconn too) waits until the statement ends by itself, with the stops queued behind
    # it on the side session: one such episode delays at most the MAX_CONNS statements in flight
    late = sorted(ms for ms in sampler.statement_ms.values() if ms >= 1200)
    assert len(sampler.statement_ms) > 100 and len(late) <= 10, (late, sampler.longest, stats)
    assert stats.server_cancels > 50 and stats.server_cancels_failed == 0, stats
    assert left_running == []  # aclose() waited for the server to let go
    assert db.wait_app_threads(lambda ids: not ids, timeout=5) == []
    assert_balanced(stats)


async def test_row_lock_of_a_cancelled_scope_is_released(db: MariaDB, make: Any) -> None:
    db.sql(
        "CREATE TABLE IF NOT EXISTS aconn_test.locks (id INT PRIMARY KEY, n INT) ENGINE=InnoDB",
        "REPLACE INTO aconn_test.locks VALUES (1, 0)",
    )
    connections = make({"default": db.settings(CONN_MAX_AGE=60)})
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3), connections.scope():
            conn = await connections.connection()
            await conn.begin()
            await fetch(conn, "UPDATE locks SET n = n + 1 WHERE id = 1")
            await fetch(conn, "SELECT SLEEP(5)")
    # the next writer of the row gets it within a second, not when SLEEP(5) would have ended
    async with asyncio.timeout(1.0), connections.scope():
        await fetch(await connections.connection(), "UPDATE locks SET n = n + 10 WHERE id = 1")
    assert db.sql("SELECT n FROM aconn_test.locks WHERE id = 1") == [(10,)]  # the cancelled update rolled back
    await connections.close_old()  # the stop's last step (the session gone from the processlist)
    assert connections.stats().server_cancels == 1


async def test_idle_connection_sends_the_kill(db: MariaDB, make: Any) -> None:
    """With an idle connection in the pool, the KILL goes over it: no extra session at all."""
    connections = make({"default": db.settings(CONN_MAX_AGE=60)})
    idle_thread = await in_scope(connections, "SELECT CONNECTION_ID()")
    await in_scope(connections, "SELECT 1")  # the idle one is reused...
    blocker = asyncio.Event()

    async def other_scope() -> None:  # ...so hold it while a second one is cancelled
        async with connections.scope():
            await connections.connection()
            await blocker.wait()

    holder = asyncio.create_task(other_scope())
    await eventually(lambda: connections.stats().in_use == 1)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2), connections.scope():
            await fetch(await connections.connection(), "SELECT SLEEP(3)")
    blocker.set()
    await holder
    await connections.close_old()
    assert connections.stats().server_cancels == 1
    assert db.wait_app_threads(lambda ids: ids == [idle_thread]) == [idle_thread]


async def sleeping_in_a_scope(
    connections: aconn.Connections, db: MariaDB, seconds: int
) -> tuple[asyncio.Task[None], int]:
    """A task whose scope runs ``SELECT SLEEP(seconds)``, once the server runs it; and its session id."""
    ids: list[int] = []

    async def job() -> None:
        async with connections.scope():
            conn = await connections.connection()
            ids.append(conn.thread_id())
            await fetch(conn, f"SELECT SLEEP({seconds})")

    task = asyncio.create_task(job())
    running = "SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = {} AND INFO LIKE 'SELECT SLEEP%'"
    await eventually(lambda: bool(ids) and bool(db.sql(running.format(ids[0]))))
    return task, ids[0]


async def test_statement_of_a_lost_connection_is_stopped(db: MariaDB, make: Any) -> None:
    """The network path breaks mid-statement: the server runs on, so the statement is stopped too."""
    proxy = Proxy(db.port).start()
    try:
        connections = make({"default": db.settings(PORT=proxy.port, CONN_MAX_AGE=60)})
        task, thread = await sleeping_in_a_scope(connections, db, 5)
        proxy.reset_all()
        with pytest.raises(db.errors.OperationalError) as info:
            await task
        assert info.value.args[0] == 2013
        await connections.close_old()  # waits for the stop
        assert connections.stats().server_cancels == 1
        assert thread not in db.app_threads()  # gone at once, not when SLEEP(5) ends
    finally:
        proxy.close()


async def test_cancel_on_server_can_be_turned_off(db: MariaDB, make: Any) -> None:
    connections = make({"default": db.settings(CONN_MAX_AGE=60, CANCEL_ON_SERVER=False)})
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2), connections.scope():
            conn = await connections.connection()
            thread = conn.thread_id()
            await fetch(conn, "SELECT SLEEP(3)")
    assert connections.stats().open == 0  # slot freed at once
    assert thread in db.app_threads()  # the statement runs on: what the setting means
    db.kill_sessions(thread)


async def test_unverified_session_id_sends_no_kill(db: MariaDB, make: Any, aconn_logs: Any) -> None:
    """Behind a proxy CONNECTION_ID() is not the handshake's id: no KILL may be sent."""
    backend = load_backend(parse_settings("default", db.settings()))
    conn, limits = await backend.connect()
    try:
        assert limits.session_id_verified and conn.aconn_session_id == conn.thread_id()
        assert backend._verify_session_id(conn, conn.thread_id() + 1) is False
        assert conn.aconn_session_id is None
        conn.aconn_dropped = True  # as after a cancelled read
        assert backend.left_running(conn) is False
    finally:
        conn.close()
    verdicts = evaluate(backend.settings, ServerLimits(session_id_verified=False))
    (cancel,) = [v for v in verdicts if v.rule == "CANCEL_ON_SERVER"]
    assert not cancel.ok and "CANCEL_ON_SERVER=False" in cancel.fix


# -- 2. STATEMENT_TIMEOUT -------------------------------------------------------------------


async def test_statement_timeout_raises_and_keeps_the_connection(db: MariaDB, make: Any) -> None:
    connections = make({"default": db.settings(CONN_MAX_AGE=60, STATEMENT_TIMEOUT=0.3)})
    async with connections.scope():
        conn = await connections.connection()
        thread = conn.thread_id()
        assert float(await scalar(conn, "SELECT @@SESSION.max_statement_time")) == 0.3
        with pytest.raises(db.errors.OperationalError) as info:
            await fetch(conn, "SELECT * FROM information_schema.TABLES t1, information_schema.TABLES t2, "
                              "information_schema.TABLES t3, information_schema.TABLES t4")  # fmt: skip
        assert info.value.args[0] == 1969  # max_statement_time exceeded
        assert await scalar(conn, "SELECT 5") == 5  # same connection, still usable
    assert await in_scope(connections, "SELECT CONNECTION_ID()") == thread
    assert connections.stats().closed == 0 and connections.settings().statement_timeout == 0.3


def test_statement_timeout_in_check_report(db: MariaDB) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aconn", "check", "--json", "--url", db.url("statement_timeout=2.5")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (alias,) = json.loads(result.stdout)["aliases"]
    assert alias["limits"]["max_statement_time"] == 2.5
    (rule,) = [r for r in alias["rules"] if r["rule"] == "CANCEL_ON_SERVER"]
    assert rule["ok"] and "STATEMENT_TIMEOUT=2.5s" in rule["message"]


def test_statement_timeout_refused_on_sqlite(tmp_path: Path) -> None:
    with pytest.raises(aconn.ConfigError) as info:
        aconn.Connections({"default": {"ENGINE": "sqlite", "NAME": str(tmp_path / "x.db"), "STATEMENT_TIMEOUT": 1}})
    assert info.value.key == "STATEMENT_TIMEOUT"


# -- 3. max_user_connections ----------------------------------------------------------------


async def test_max_user_connections_is_retried_within_the_deadline(db: MariaDB, make: Any, aconn_logs: Any) -> None:
    db.sql(
        "CREATE USER IF NOT EXISTS 'limited'@'%' IDENTIFIED BY 'limited-pw' WITH MAX_USER_CONNECTIONS 2",
        "GRANT ALL PRIVILEGES ON aconn_test.* TO 'limited'@'%'",
    )
    entry = db.settings(USER="limited", PASSWORD="limited-pw", CONN_MAX_AGE=60)
    other_process = make({"default": {**entry, "MAX_CONNS": 2}})
    ours = make({"default": {**entry, "ACQUIRE_TIMEOUT": 10}})
    gate = asyncio.Event()

    async def hold() -> None:
        async with other_process.scope():
            await fetch(await other_process.connection(), "SELECT 1")
            await gate.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    await eventually(lambda: other_process.stats().in_use == 2)
    waiter = asyncio.create_task(in_scope(ours, "SELECT 42"))
    await eventually(lambda: ours.stats().connect_errors >= 1)  # refused with 1226, and retrying
    assert not waiter.done()
    gate.set()
    await asyncio.gather(*holders)
    await other_process.aclose()
    assert await waiter == 42
    assert "refused or dropped a new connection" in aconn_logs.text and "1226" in aconn_logs.text
    error = db.errors.OperationalError(1226, "User 'limited' has exceeded the 'max_user_connections' resource")
    assert ours.pool("default").backend.classify(error, connecting=True) is ErrorKind.RETRYABLE


# -- 4. hand-offs checked ----------------------------------------------------------------


@pytest.mark.parametrize("health_checks", [False, True])
async def test_hand_off_of_a_killed_session(db: MariaDB, make: Any, health_checks: bool) -> None:
    connections = make({"default": db.settings(CONN_MAX_AGE=60, MAX_CONNS=1, CONN_HEALTH_CHECKS=health_checks)})
    held, release = asyncio.Event(), asyncio.Event()
    first: list[int] = []

    async def holder() -> None:
        async with connections.scope():
            first.append(int(await scalar(await connections.connection(), "SELECT CONNECTION_ID()")))
            held.set()
            await release.wait()

    task_a = asyncio.create_task(holder())
    await held.wait()
    task_b = asyncio.create_task(in_scope(connections, "SELECT CONNECTION_ID()"))
    await eventually(lambda: connections.stats().waiting == 1)
    db.kill_sessions(first[0])  # killed while A holds it and B waits
    release.set()
    await task_a
    second = await task_b  # B gets a working connection, never the dead one
    assert second != first[0]
    stats = connections.stats()
    assert stats.closed_unusable == 1 and stats.opened == 2
    assert_balanced(stats)


async def test_hand_offs_under_load_after_every_session_is_killed(db: MariaDB, make: Any) -> None:
    connections = make({"default": db.settings(CONN_MAX_AGE=60, MAX_CONNS=10)})
    gate = asyncio.Event()
    errors: list[BaseException] = []

    async def unit() -> None:
        try:
            async with connections.scope():
                assert await scalar(await connections.connection(), "SELECT 1") == 1
                await gate.wait()
        except Exception as exc:
            errors.append(exc)

    tasks = [asyncio.create_task(unit()) for _ in range(50)]
    await eventually(lambda: connections.stats().in_use == 10 and connections.stats().waiting == 40)
    killed = db.kill_app_sessions()
    gate.set()
    await asyncio.gather(*tasks)
    assert killed == 10 and errors == []
    stats = connections.stats()
    assert stats.closed_unusable == 10 and stats.opened == 20
    assert_balanced(stats)


# -- 5. every alias released ---------------------------------------------------------------


async def test_cancelled_exit_releases_every_alias(db: MariaDB, make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aconn.pool.pool, "CLEANUP_TIMEOUT", 1.0)
    proxy = Proxy(db.port).start()
    try:
        connections = make(
            {"default": db.settings(PORT=proxy.port, CONN_MAX_AGE=60), "other": db.settings(CONN_MAX_AGE=60)}
        )

        async def job() -> None:
            async with connections.scope():
                conn = await connections.connection()
                await conn.begin()  # the release of "default" needs a rollback: network work
                await connections.connection("other")
                proxy.blackhole = True  # ...which hangs until its bound

        task = asyncio.create_task(job())
        await eventually(lambda: proxy.held >= 1)  # the rollback is stuck on the wire
        task.cancel()  # cancelled during the exit work of the first alias
        with pytest.raises(asyncio.CancelledError):
            await task
        proxy.blackhole = False
        for alias in ("default", "other"):
            assert connections.stats(alias).in_use == 0, alias
            assert_balanced(connections.stats(alias))
        assert connections.stats("other").idle == 1
        await connections.aclose()
        assert db.wait_app_threads(lambda ids: not ids) == []
    finally:
        proxy.close()


# -- 6 and 7. TLS ----------------------------------------------------------------------


def fake_settings(server: FakeMySQLServer, driver: str, **overrides: Any) -> dict[str, Any]:
    return {"ENGINE": DRIVERS[driver][0], "HOST": "127.0.0.1", "PORT": server.port, "USER": APP_USER, "PASSWORD": APP_PASSWORD,
            "NAME": "x", "CONNECT_TIMEOUT": 5, "ACQUIRE_TIMEOUT": 5, **overrides}  # fmt: skip


@pytest.mark.parametrize("driver", list(DRIVERS))
async def test_tls_required_no_credential_leaves(make: Any, tmp_path: Path, driver: str) -> None:
    certs = make_certificates(tmp_path / "certs")
    async with FakeMySQLServer(tls=False, plugin="mysql_clear_password") as server:
        connections = make({"default": fake_settings(server, driver, OPTIONS={"ssl": {"ca": certs["ca"]}})})
        with pytest.raises(driver_errors(driver).OperationalError) as info:
            await in_scope(connections, "SELECT 1")
    assert info.value.args[0] == 2026 and "no credential was sent" in str(info.value)
    assert server.received == b""  # not even the user name
    assert_no_password(info.value)


@pytest.mark.parametrize("driver", list(DRIVERS))
async def test_cleartext_plugin_refused_in_the_greeting(make: Any, driver: str) -> None:
    async with FakeMySQLServer(plugin="mysql_clear_password") as server:
        connections = make({"default": fake_settings(server, driver)})
        with pytest.raises(driver_errors(driver).OperationalError) as info:
            await in_scope(connections, "SELECT 1")
    assert info.value.args[0] == 2059 and "mysql_clear_password" in str(info.value)
    assert server.received == b""
    assert_no_password(info.value)


@pytest.mark.parametrize("driver", list(DRIVERS))
async def test_cleartext_plugin_refused_on_auth_switch(make: Any, driver: str) -> None:
    async with FakeMySQLServer(switch_to="mysql_clear_password") as server:
        connections = make({"default": fake_settings(server, driver)})
        with pytest.raises(driver_errors(driver).OperationalError) as info:
            await in_scope(connections, "SELECT 1")
    assert info.value.args[0] == 2059
    assert server.received  # the handshake response (a scrambled hash) went out...
    assert APP_PASSWORD.encode() not in server.received  # ...the password itself never


async def test_django_tls_form_against_a_tls_server(tls_server: tuple[MariaDB, dict[str, str]], make: Any) -> None:
    server, certs = tls_server
    connections = make({"default": server.settings(OPTIONS={"ssl": {"ca": certs["ca"]}})})
    async with connections.scope():
        rows = await fetch(await connections.connection(), "SHOW SESSION STATUS LIKE 'Ssl_cipher'")
    assert rows[0][1]


# -- 8. ACQUIRE_TIMEOUT is a bound --------------------------------------------------------


async def test_acquire_timeout_bounds_health_check_pings(db: MariaDB, make: Any) -> None:
    connections = make({"default": db.settings(CONN_MAX_AGE=60, CONN_HEALTH_CHECKS=True, ACQUIRE_TIMEOUT=2)})
    gate = asyncio.Event()

    async def hold() -> None:
        async with connections.scope():
            await connections.connection()
            await gate.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(10)]
    await eventually(lambda: connections.stats().in_use == 10)
    gate.set()
    await asyncio.gather(*tasks)
    assert connections.stats().idle == 10
    age_idle(connections, 1)  # idle past the ping bypass window: each will be pinged
    loop = asyncio.get_running_loop()
    with db.frozen_for_a_while():
        started = loop.time()
        with pytest.raises(aconn.AcquireTimeout, match="ACQUIRE_TIMEOUT=2s"):
            await in_scope(connections, "SELECT 1")
        elapsed = loop.time() - started
    # one ping, bounded by what was left of the 2 s (not 10 pings of 5 s each)
    assert elapsed < 3.0, elapsed
    stats = connections.stats()
    assert stats.health_checks_failed == 1 and stats.acquire_timeouts == 1
    assert_balanced(stats)


# -- 9. foreign loop, forked child ---------------------------------------------------------


def test_aclose_from_another_loop_is_a_clear_error(db: MariaDB) -> None:
    connections = aconn.Connections({"default": db.settings(CONN_MAX_AGE=60)})
    loop = asyncio.new_event_loop()
    try:
        thread = loop.run_until_complete(in_scope(connections, "SELECT CONNECTION_ID()"))
        with pytest.raises(aconn.AconnError, match="another event loop"):
            asyncio.run(connections.aclose())
        assert thread in db.app_threads()  # untouched by the refused close
        loop.run_until_complete(connections.aclose())  # and still closable where it belongs
        assert db.wait_app_threads(lambda ids: thread not in ids) == []
    finally:
        loop.close()


def test_forked_child_starts_afresh(db: MariaDB, tmp_path: Path) -> None:
    script = tmp_path / "fork.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, json, os, sys
            import aconn

            connections = aconn.Connections({"default": json.loads(sys.argv[1])})

            async def session_id():
                async with connections.scope():
                    conn = await connections.connection()
                    async with conn.cursor() as cur:
                        await cur.execute("SELECT CONNECTION_ID()")
                        return (await cur.fetchone())[0]

            async def child():
                mine = await session_id()
                await connections.aclose()  # closes the child's own session only
                return mine

            loop = asyncio.new_event_loop()
            parent = loop.run_until_complete(session_id())
            pid = os.fork()
            if pid == 0:
                try:
                    os._exit(0 if asyncio.run(child()) != parent else 3)
                except BaseException as exc:
                    print(repr(exc), file=sys.stderr, flush=True)
                    os._exit(4)
            _, status = os.waitpid(pid, 0)
            again = loop.run_until_complete(session_id())
            loop.run_until_complete(connections.aclose())
            print(json.dumps([os.waitstatus_to_exitcode(status), parent, again]))
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", str(script), json.dumps(db.settings(CONN_MAX_AGE=60))],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    child_status, parent, again = json.loads(result.stdout)
    assert child_status == 0, result.stderr
    assert again == parent  # the parent's session survived the child's use and close
    assert_no_password(result.stdout, result.stderr)


# -- 11. a cancelled connect is never swallowed --------------------------------------------


@pytest.mark.parametrize("engine", ["mysql", "asyncmy"])
async def test_cancelled_connect_is_never_swallowed(monkeypatch: pytest.MonkeyPatch, engine: str) -> None:
    """On 3.11, asyncio.wait_for returns a result that raced a cancellation and drops the cancel.

    aiomysql and asyncmy bound their TCP open with wait_for: a deadline firing just as the
    socket opened was lost and the handshake with a silent server then waited for ever.
    Here the caller is cancelled exactly as the socket opens; the connect must end.
    """
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # keeps the socket open and never says a word

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    task: asyncio.Task[Any] | None = None

    def cancelling(real_open: Any) -> Any:
        async def open_then_cancel(*args: Any, **kwargs: Any) -> Any:
            result = await real_open(*args, **kwargs)
            assert task is not None
            task.cancel()  # the caller's deadline fires as the socket opens
            return result

        return open_then_cancel

    if engine == "mysql":  # aiomysql opens through its own helper; asyncmy through the loop
        monkeypatch.setattr(aiomysql.connection, "_open_connection", cancelling(aiomysql.connection._open_connection))
    else:
        loop = asyncio.get_running_loop()
        monkeypatch.setattr(loop, "create_connection", cancelling(loop.create_connection))
    backend = load_backend(parse_settings("default", {"ENGINE": engine, "HOST": "127.0.0.1", "PORT": port}))
    try:
        task = asyncio.create_task(backend.connect())
        done, _ = await asyncio.wait([task], timeout=5)
        assert done and task.cancelled()
    finally:
        for writer in accepted:
            writer.transport.abort()
        server.close()


@pytest.mark.mysql_drivers
async def test_stop_on_a_killed_server_ends_at_once(db: MariaDB, make: Any) -> None:
    """The server is killed mid-statement: the connection its address refuses for the stop proves
    the session gone, so the stop ends there and frees the slot, instead of retrying for its
    whole bound and counting a failure (a killed Galera writer held every slot that long)."""
    connections = make({"default": db.settings(CONN_MAX_AGE=60)})
    task, _ = await sleeping_in_a_scope(connections, db, 5)
    await asyncio.to_thread(db.kill)
    with pytest.raises(db.errors.OperationalError):
        await task
    await eventually(lambda: connections.stats().open == 0, timeout=3)  # the stop's bound is 5 s
    stats = connections.stats()
    assert stats.server_cancels == 1 and stats.server_cancels_failed == 0, stats


async def test_a_stop_across_a_restart_never_kills_a_recycled_id(db: MariaDB, make: Any) -> None:
    """The server restarts while a stop waits to reach it (a proxy hides the refusal): session ids
    start over, and the stopped session's id names another session once the server is back. The
    stop reads the server's uptime first, sees a server started after the stopped session
    connected, and sends no KILL: the other session lives on."""
    await asyncio.to_thread(db.restart)  # a fresh run of the server: the next run gives out the same ids
    proxy = Proxy(db.port).start()
    others: list[Any] = []
    try:
        connections = make({"default": db.settings(PORT=proxy.port, CONN_MAX_AGE=60)})
        task, stopped = await sleeping_in_a_scope(connections, db, 30)
        await asyncio.sleep(2.5)  # the uptime counts whole seconds: a restart 2 s later is surely later
        proxy.refuse = True  # the stop's sessions are reset until the other session has the id
        await asyncio.to_thread(db.restart)
        with pytest.raises(db.errors.OperationalError):
            await task  # 2013: the server went away mid-statement; its stop retries through the proxy

        def app_session() -> Any:
            return pymysql.connect(
                host="127.0.0.1", port=db.port, user=APP_USER, password=APP_PASSWORD, autocommit=True
            )

        while not others or others[-1].thread_id() < stopped:  # ids given out in order from the start
            others.append(await asyncio.to_thread(app_session))
        assert others[-1].thread_id() == stopped, (
            "this run of the server skipped the id",
            stopped,
            others[-1].thread_id(),
        )
        proxy.refuse = False
        await connections.close_old()  # waits for the stop
        stats = connections.stats()
        assert stats.server_cancels == 1 and stats.server_cancels_failed == 0, stats
        await asyncio.to_thread(others[-1].ping, False)  # not killed
    finally:
        for other in others:
            other.close()
        proxy.close()


async def test_a_stop_goes_on_when_the_server_ends_its_session(db: MariaDB, make: Any) -> None:
    """The session a stop steps on ends under it with the server's last words, 1927 (an admin's
    KILL of the app's sessions, or 1053, a shutdown): the stop goes on, on a new side session,
    as after a lost connection. Before, 1927 was "another" error and ended the stop as failed,
    its slot freed unverified (seen in a soak run)."""
    connections = make({"default": db.settings()})
    backend = connections.pool("default").backend
    killed = db.errors.OperationalError(1927, "Connection was killed")
    used: list[Any] = []

    async def step(conn: Any) -> bool:
        used.append(conn)
        if len(used) < 3:
            raise killed  # on the pool connection given to the stop, then on the first side session
        return await scalar(conn, "SELECT 1") == 1

    async with connections.scope():
        via = await connections.connection()
        async with asyncio.timeout(5):
            await backend._on_another_session(via, step)
    assert used[0] is via and len({id(conn) for conn in used}) == 3, used
    assert backend.side_sessions_lost == 1


async def test_a_kill_refused_as_another_users_session_ends_the_stop(db: MariaDB, make: Any) -> None:
    """A restart within a second of the stopped session's connect escapes the uptime (whole
    seconds), and its id may then name another user's session: the server refuses that KILL
    (1095). The stopped session had our user, so it is gone: the stop is done, not failed, and
    the other session lives on."""
    connections = make({"default": db.settings()})
    await connections.open()
    backend = connections.pool("default").backend
    other = await asyncio.to_thread(db.admin_connection)  # root's: another user's session
    try:
        stopped = SimpleNamespace(aconn_session_id=other.thread_id(), aconn_connected_at=None)
        async with asyncio.timeout(5):
            await backend.cancel_on_server(stopped)  # raised OperationalError(1095) before
        await asyncio.to_thread(other.ping, False)  # not killed
    finally:
        other.close()
