"""Many processes, one budget: N worker processes whose MAX_CONNS add up above the server's max_connections.

Each worker is a real process with its own handler. Under load, requests wait or fail with
the budget message; nothing crashes, no process leaks sessions, every worker serves again
once the load drops, and ``python -m aconn check --workers N`` says the budget does not fit.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from mariadb import MariaDB

pytestmark = pytest.mark.mysql

ROOT = Path(__file__).resolve().parent.parent
WORKERS, MAX_CONNS, MAX_CONNECTIONS = 4, 4, 10

WORKER = textwrap.dedent(
    """
    import asyncio, json, sys
    import aconn

    settings = json.loads(sys.argv[1])
    connections = aconn.Connections({"default": settings})

    async def request(n):
        async with connections.scope():
            conn = await connections.connection()
            async with conn.cursor() as cur:
                await cur.execute("SELECT SLEEP(0.05), %s", (n,))
                return (await cur.fetchone())[1]

    async def main():
        outcomes = await asyncio.gather(*(request(n) for n in range(40)), return_exceptions=True)
        report = {
            "ok": sum(1 for n, o in zip(range(40), outcomes) if o == n),
            "budget": sum(1 for o in outcomes if isinstance(o, aconn.AcquireTimeout)
                          and "processes x MAX_CONNS" in str(o)),
            "timeouts": sum(1 for o in outcomes if isinstance(o, aconn.AcquireTimeout)),
            "other": [repr(o) for o in outcomes if not isinstance(o, int | aconn.AcquireTimeout)],
            "refused": connections.stats().connect_errors,
        }
        print(json.dumps(report), flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # the load has dropped everywhere
        report["after"] = [await request(n) for n in range(5)]
        await connections.aclose()
        report["open_after_close"] = connections.stats().open
        print(json.dumps(report), flush=True)

    asyncio.run(main())
    """
)


@pytest.fixture
def small_server() -> Iterator[MariaDB]:
    server = MariaDB(extra_args=[f"--max-connections={MAX_CONNECTIONS}"]).start()
    try:
        yield server
    finally:
        server.close()


def test_workers_over_the_budget(small_server: MariaDB) -> None:
    settings = small_server.settings(CONN_MAX_AGE=60, MAX_CONNS=MAX_CONNS, ACQUIRE_TIMEOUT=3)
    # (no session sampler here: at max_connections the server would refuse the sampler's own connects)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps(settings)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )
        for _ in range(WORKERS)
    ]
    try:
        loaded = [json.loads(w.stdout.readline()) for w in workers]  # type: ignore[union-attr]
        for worker in workers:
            worker.stdin.write("go\n")  # type: ignore[union-attr]
            worker.stdin.flush()  # type: ignore[union-attr]
        finals = []
        for worker in workers:
            out, err = worker.communicate(timeout=60)
            assert worker.returncode == 0, err  # nothing crashed
            finals.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    assert all(not report["other"] for report in loaded), loaded  # only waits and the budget error
    assert sum(r["refused"] for r in loaded) > 0  # the server did refuse: 4 x 4 > 10
    assert all(r["timeouts"] == r["budget"] for r in loaded)  # every failure says what the budget is
    # at least the server's worth were served, waiting their turn; a worker that started last may get
    # nothing while the others keep their idle connections (CONN_MAX_AGE=60): the budget message says why
    assert sum(r["ok"] for r in loaded) >= 40
    assert all(r["after"] == [0, 1, 2, 3, 4] for r in finals)  # every worker serves again
    assert all(r["open_after_close"] == 0 for r in finals)
    assert small_server.wait_app_threads(lambda t: not t) == []  # no process left a session

    check = subprocess.run(
        [sys.executable, "-m", "aconn", "check", "--json", "--workers", str(WORKERS),
         "--url", small_server.url(f"max_conns={MAX_CONNS}")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    budget = next(r for r in json.loads(check.stdout)["aliases"][0]["rules"] if r["rule"] == "MAX_CONNS")
    assert check.returncode == 1 and not budget["ok"]
    assert f"{WORKERS} process(es) x MAX_CONNS={MAX_CONNS} = 16 is above the server's max_connections=10" in (
        budget["message"]
    )


@pytest.fixture
def two_servers() -> Iterator[tuple[MariaDB, MariaDB]]:
    first, second = MariaDB().start(), MariaDB().start()
    try:
        yield first, second
    finally:
        first.close()
        second.close()


async def test_demoted_primary_is_left_after_one_write_error(two_servers: tuple[MariaDB, MariaDB]) -> None:
    """A failover behind a proxy: the old primary turns read-only, the proxy now reaches the new one.

    The write that meets the read-only server fails (it reached the old primary); aconn closes that
    connection and the alias' idle ones, so the next scope connects again and reaches the new primary,
    instead of failing until the connections age out.
    """
    from faults import Proxy

    import aconn

    old, new = two_servers
    for server in (old, new):
        server.sql("CREATE TABLE IF NOT EXISTS aconn_test.t (id INT)")
    proxy = Proxy(old.port).start()
    try:
        connections = aconn.Connections({"default": old.settings(PORT=proxy.port, CONN_MAX_AGE=None, MAX_CONNS=3)})

        async def write(n: int) -> None:
            async with connections.scope():
                conn = await connections.connection()
                async with conn.cursor() as cur:
                    await cur.execute("INSERT INTO t VALUES (%s)", (n,))

        async def hold_two() -> None:  # two connections idle in the pool, both to the old primary
            async with connections.scope():
                await connections.connection()
                await write(0)

        await hold_two()
        await asyncio.gather(write(1), write(2))
        assert connections.stats().idle == 2
        old.sql("SET GLOBAL read_only = 1")  # the old primary is demoted...
        proxy.target_port = new.port  # ...and the proxy (or DNS) now points at the new one
        with pytest.raises(Exception, match="read-only"):
            await write(3)  # the one write that meets the old primary
        await write(4)  # the next scope reaches the new primary: no idle connection of the old one is left
        await write(5)
        assert new.sql("SELECT id FROM aconn_test.t ORDER BY id") == [(4,), (5,)]
        stats = connections.stats()
        assert stats.closed_error == 1 and stats.closed_unusable == 1
        await connections.aclose()
    finally:
        proxy.close()


@pytest.mark.parametrize("pooler", ["proxysql", "rds_proxy"])
async def test_behind_a_mysql_pooler_no_kill_is_sent(db: MariaDB, pooler: str) -> None:
    """Behind ProxySQL or RDS Proxy a KILL id names no session of ours: a cancelled statement is left to
    STATEMENT_TIMEOUT (here the server itself is reached directly: what is tested is what aconn sends)."""
    import aconn
    from aconn.rules import evaluate

    connections = aconn.Connections({"default": db.settings(CONN_MAX_AGE=60, POOLER=pooler, STATEMENT_TIMEOUT=2)})
    try:

        sent = asyncio.Event()

        async def slow() -> None:
            async with connections.scope():
                conn = await connections.connection()
                async with conn.cursor() as cur:
                    sent.set()  # the test runs again once this task waits for the reply
                    await cur.execute("SELECT SLEEP(1)")

        task = asyncio.create_task(slow())
        await sent.wait()
        task.cancel()  # mid-statement
        with pytest.raises(asyncio.CancelledError):
            await task
        assert connections.stats().server_cancels == 0 and connections.stats().server_cancels_failed == 0
        limits = connections.pool("default").limits
        assert limits is not None
        verdicts = {v.rule: v for v in evaluate(connections.settings(), limits)}
        assert verdicts["CANCEL_ON_SERVER"].ok  # STATEMENT_TIMEOUT bounds the statements
        assert verdicts["POOLER"].ok == (pooler == "proxysql")  # RDS Proxy pins on the SET it needs
    finally:
        await connections.aclose()
    pinning = aconn.Connections(
        {"default": db.settings(POOLER=pooler, OPTIONS={"init_command": "SET SESSION sql_mode='ANSI'"})}
    )
    verdict = {v.rule: v for v in evaluate(pinning.settings(), limits)}["POOLER"]
    assert not verdict.ok and "pinned" in verdict.message
