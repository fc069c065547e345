"""Reliability, third round (issue #26): each promise a regression test against the real servers.

| # | promise | tests |
| --- | --- | --- |
| 1 | a task backing off after a refused connect takes a connection given back meanwhile (FIFO) | test_backing_off_connect_takes_a_released_connection |
| 2 | behind an undeclared PgBouncer, cancelled statements are stopped; the pooler is seen and named | test_cancel_through_an_undeclared_pooler, test_check_sees_a_pooler_without_admin_rights |
| 3 | the cancel request takes the driver's own path: TLS, the address connected | test_cancel_request_goes_over_tls |
| 4 | every secret masked | test_settings::test_every_secret_is_masked |
| 5 | STATEMENT_TIMEOUT range-checked per server | test_settings::test_statement_timeout_range |
| 6 | with MAX_REPLICA_LAG a replica is read only once a check qualified it | test_replicas::test_stopped_replica_is_never_read_before_a_check |
| 8 | a caller's timeout bounds its wait on every driver, psycopg during a black hole included | test_callers_timeout_bounds_its_wait_during_a_black_hole |
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from helpers import assert_balanced, eventually, fetch

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


@pytest.mark.postgresql
@pytest.mark.pgbouncer
@pytest.mark.parametrize("engine", ["postgresql", "asyncpg"])
async def test_cancel_through_an_undeclared_pooler(
    engine: str, bouncer: Any, pg: Any, make: Any
) -> None:
    """Behind PgBouncer (transaction mode) with POOLER unset: aconn tells the pooler from the
    session keys (the key the pooler gave is not the server's pid), so a cancelled statement is
    still stopped through it, and the server's sessions stay within PgBouncer's pool."""
    from test_postgresql import cancel_storm

    # MAX_CONNS=5 and 5 running before the cancellations, as test_pgbouncer's declared case: a cancel
    # request that reaches PgBouncer before it linked the statement to a server connection is dropped
    # (declared or not; docs/reliability.md)
    connections = make({"default": {**bouncer.settings(ENGINE=engine, CONN_MAX_AGE=60, MAX_CONNS=5), "POOLER": None}})
    await cancel_storm(connections, pg, tasks=20, running=5)
    assert len(pg.app_backends()) <= 5  # MAX_CONNS: no server session left behind by a lost client
    assert connections.pool("default").limits.session_id_verified is False  # the pooler was seen


@pytest.mark.postgresql
@pytest.mark.pgbouncer
async def test_check_sees_a_pooler_without_admin_rights(bouncer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user outside PgBouncer's admin_users: check still sees the pooler, and says how it knew."""
    from aconn import check
    from aconn.settings import parse_settings

    async def no_admin_console(settings: Any) -> None:
        return None

    monkeypatch.setattr(check, "_pgbouncer_version", no_admin_console)
    report = await check.check_alias(parse_settings("default", {**bouncer.settings(), "POOLER": None}), 1)
    assert report["pooler"]["detected"] == "a pooler (PgBouncer?)"
    assert "cancel key is not the server's pid" in report["pooler"]["how"]
    rule = next(r for r in report["rules"] if r["rule"] == "POOLER")
    assert not rule["ok"] and "POOLER='pgbouncer'" in rule["fix"]


@pytest.fixture(scope="module")
def tls_postgres(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A PostgreSQL that takes TCP clients over TLS only (hostssl in pg_hba.conf)."""
    import shutil

    from faults import make_certificates
    from postgres import PostgreSQL

    certs = make_certificates(tmp_path_factory.mktemp("pg-certs"))
    server = PostgreSQL()
    for name in ("cert", "key"):
        target = server.dir / f"server-{name}.pem"
        shutil.copy(certs[name], target)
        target.chmod(0o600)
        if server.run_as:
            shutil.chown(target, server.run_as)
    server.extra_args += [
        "-c", "ssl=on", "-c", f"ssl_cert_file={server.dir / 'server-cert.pem'}",
        "-c", f"ssl_key_file={server.dir / 'server-key.pem'}",
    ]  # fmt: skip
    server.start()
    hba = server.datadir / "pg_hba.conf"
    lines = [("hostssl" + line[4:]) if line.startswith("host ") else line for line in hba.read_text().splitlines()]
    hba.write_text("\n".join(lines) + "\n")
    server.sql("SELECT pg_reload_conf()")
    try:
        yield server
    finally:
        server.close()


@pytest.mark.postgresql
@pytest.mark.parametrize("engine", ["postgresql", "asyncpg"])
async def test_cancel_request_goes_over_tls(engine: str, tls_postgres: Any, make: Any) -> None:
    """A statement of a cancelled caller is stopped through the driver's own cancel path: over TLS
    as the connection negotiated it (every connection through the recording proxy opens with an
    SSLRequest, none with a CancelRequest in clear), to the address the connection reached."""
    import struct

    from faults import Proxy
    from test_postgresql import sleeping

    proxy = Proxy(tls_postgres.port).start()
    try:
        tls = {"sslmode": "require"} if engine == "postgresql" else {"ssl": "require"}
        connections = make(
            {"default": tls_postgres.settings(ENGINE=engine, PORT=proxy.port, CONN_MAX_AGE=60, OPTIONS=tls)}
        )

        async def sleeper() -> None:
            async with connections.acquire() as conn:
                await conn.execute("SELECT pg_sleep(30)")

        task = asyncio.create_task(sleeper())
        await eventually(lambda: tls_postgres.sleeping_statements())
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await eventually(lambda: not sleeping(tls_postgres))
        ssl_request, cancel_request = struct.pack("!ii", 8, 80877103), struct.pack("!ii", 16, 80877102)
        assert len(proxy.openings) >= 2  # the connection, and at least one cancel request
        assert all(opening.startswith(ssl_request) for opening in proxy.openings), proxy.openings
        assert not any(cancel_request in opening for opening in proxy.openings)
    finally:
        proxy.close()


@pytest.mark.postgresql
@pytest.mark.parametrize("engine", ["postgresql", "asyncpg"])
async def test_callers_timeout_bounds_its_wait_during_a_black_hole(engine: str, pg: Any, make: Any) -> None:
    """The network path goes silent mid-statement: the caller's asyncio.timeout(1) is its bound (psycopg
    waited 5 s for its own cancel before), the scope exits at once, and the connection's stop runs in
    the background with its slot held until it is done."""
    import time

    from faults import Proxy

    proxy = Proxy(pg.port).start()
    try:
        connections = make({"default": pg.settings(ENGINE=engine, PORT=proxy.port, CONN_MAX_AGE=60, MAX_CONNS=2)})
        async with connections.acquire() as conn:
            await conn.execute("SELECT 1")
            proxy.blackhole = True
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1):
                    await conn.execute("SELECT 1")
            caller_waited = time.monotonic() - started
        exited = time.monotonic() - started
        assert caller_waited < 1.5, caller_waited
        assert exited < 1.5, exited  # the scope's exit did not wait for the server either
        stats = connections.stats()
        assert stats.closing == 1 and stats.open == 1  # the slot waits for the stop, in the background
        proxy.blackhole = False
        await eventually(lambda: connections.stats().closing == 0, timeout=15)
        assert_balanced(connections.stats())
        async with connections.acquire() as conn:  # served again, by a fresh connection
            await conn.execute("SELECT 1")
    finally:
        proxy.close()
