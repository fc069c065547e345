"""Worker loops: connections.each, @scoped, and the example worker (SQLite and MariaDB)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_balanced, fetch
from mariadb import MariaDB

ROOT = Path(__file__).resolve().parent.parent


async def test_each_job_runs_in_its_own_scope(sqlite_path: str, make: Any) -> None:
    connections = make({"default": f"sqlite:///{sqlite_path}?conn_max_age=60"})
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(5):
        queue.put_nowait(n)

    async def source() -> Any:
        while not queue.empty():
            assert connections.stats().in_use == 0  # pulled between scopes: nothing held while waiting
            yield await queue.get()

    seen = []
    scopes = []  # kept alive, so that their ids stay distinct
    async with connections.each(source()) as jobs:
        async for n in jobs:
            conn = await connections.connection()
            scopes.append(connections._scopes.var.get())
            seen.append((await fetch(conn, "SELECT ?", (n,)))[0][0])
            assert connections.stats().in_use == 1
    assert seen == [0, 1, 2, 3, 4]
    assert len({id(scope) for scope in scopes}) == 5
    stats = connections.stats()
    assert stats.in_use == 0 and stats.opened == 1  # one connection reused by every job
    with pytest.raises(Exception, match="outside a scope"):
        await connections.connection()


async def test_each_break_and_errors_give_the_connection_back(sqlite_path: str, make: Any) -> None:
    connections = make({"default": f"sqlite:///{sqlite_path}?conn_max_age=60"})
    async with connections.scope():
        await (await connections.connection()).execute("CREATE TABLE t (n INTEGER)")

    async with connections.each(range(10)) as jobs:
        async for n in jobs:
            await connections.connection()
            if n == 2:
                break
    assert connections.stats().in_use == 0

    with pytest.raises(ZeroDivisionError):
        async with connections.each(range(10)) as jobs:
            async for n in jobs:
                conn = await connections.connection()
                await conn.execute("BEGIN")
                await conn.execute("INSERT INTO t VALUES (?)", (n,))
                if n == 1:
                    1 / 0  # noqa: B018
                await conn.execute("COMMIT")
    assert connections.stats().rollbacks == 1
    async with connections.scope():
        assert await fetch(await connections.connection(), "SELECT n FROM t") == [(0,)]
    assert_balanced(connections.stats())


async def test_each_cancelled_mid_job(sqlite_path: str, make: Any) -> None:
    connections = make({"default": f"sqlite:///{sqlite_path}?conn_max_age=60"})
    started = asyncio.Event()

    async def consume() -> None:
        async with connections.each(range(3)) as jobs:
            async for _ in jobs:
                await connections.connection()
                started.set()
                await asyncio.Event().wait()  # a job that never ends

    task = asyncio.create_task(consume())
    await started.wait()
    assert connections.stats().in_use == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = connections.stats()
    assert stats.in_use == 0 and stats.closed_error == 1  # cancelled: closed, not reused
    assert_balanced(stats)


def run_worker(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / "worker.py"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_example_worker_on_sqlite(tmp_path: Path) -> None:
    result = run_worker("--workers", "3", "--jobs", "15", "--db", str(tmp_path / "q.db"))
    assert result.returncode == 0, result.stderr
    assert "jobs: {'done': 30}; cut short and returned to the queue: 0" in result.stdout


@pytest.mark.mysql
def test_example_worker_idles_past_wait_timeout(db: MariaDB) -> None:
    db.sql("DROP TABLE IF EXISTS aconn_test.jobs")
    result = run_worker(
        "--wait-timeout", "1", "--idle-gap", "2.5", "--jobs", "10", "--max-poll", "2", env={"DATABASE_URL": db.url()}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "jobs: {'done': 20}" in result.stdout
    assert "closed a connection (idle past the idle limit)" in result.stdout  # the log says why
    assert "Lost connection" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.mysql
def test_example_worker_stops_on_sigterm_without_losing_jobs(db: MariaDB) -> None:
    db.sql("DROP TABLE IF EXISTS aconn_test.jobs")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "worker.py"), "--workers", "3", "--jobs", "5", "--batches", "1",
         "--job-seconds", "60", "--grace", "1", "--forever"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, "DATABASE_URL": db.url()},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        claimed = 0
        lines = []
        while claimed < 3:  # every worker is in the middle of a 60 s job
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
            claimed += "claimed job" in line
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)  # the bound: 1 s of grace, then rollback and close
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "cut short and returned to the queue: 3" in out
    assert db.sql("SELECT status, count(*) FROM aconn_test.jobs GROUP BY status") == [("pending", 5)]
    assert db.wait_app_threads(lambda t: not t) == []


async def test_each_from_an_asyncio_queue(sqlite_path: str, make: Any) -> None:
    """Workers over an asyncio.Queue as docs/workers.md starts them: a job per scope, task_done()
    after each scope's exit (so queue.join() waits for the commits), a None per worker to stop."""
    connections = make({"default": f"sqlite:///{sqlite_path}?conn_max_age=60"})
    async with connections.scope():
        await (await connections.connection()).execute("CREATE TABLE done (n INTEGER)")
    queue: asyncio.Queue[int | None] = asyncio.Queue()

    async def worker() -> None:
        async with connections.each(queue) as jobs:
            async for n in jobs:
                async with connections.atomic():
                    conn = await connections.connection()
                    await conn.execute("INSERT INTO done VALUES (?)", (n,))

    workers = [asyncio.create_task(worker()) for _ in range(3)]
    for n in range(30):
        queue.put_nowait(n)
    async with asyncio.timeout(10):
        await queue.join()  # returns once every job's scope has exited, its commit included
    async with connections.scope():
        assert await fetch(await connections.connection(), "SELECT count(*) FROM done") == [(30,)]
    for _ in workers:
        queue.put_nowait(None)
    async with asyncio.timeout(10):
        await asyncio.gather(*workers)
        await queue.join()  # the stop signs were counted done too
    assert_balanced(connections.stats())
    assert connections.stats().in_use == 0


async def test_each_cancelled_while_waiting_on_a_queue(sqlite_path: str, make: Any) -> None:
    connections = make({"default": f"sqlite:///{sqlite_path}?conn_max_age=60"})
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    handled: list[int] = []

    async def worker() -> None:
        async with connections.each(queue) as jobs:
            async for n in jobs:
                await connections.connection()
                handled.append(n)

    task = asyncio.create_task(worker())
    queue.put_nowait(1)
    async with asyncio.timeout(10):
        await queue.join()
    task.cancel()  # waiting in queue.get(), between scopes
    with pytest.raises(asyncio.CancelledError):
        await task
    assert handled == [1]
    stats = connections.stats()
    assert stats.in_use == 0 and stats.closed_error == 0  # nothing was held while it waited


async def test_each_errors_are_logged_not_swallowed(
    sqlite_path: str, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker task nobody awaits (started at lifespan, say) still says why it stopped."""
    connections = make({"default": f"sqlite:///{sqlite_path}?conn_max_age=60"})
    with pytest.raises(TypeError, match=r"each\(\) takes an asyncio.Queue, an async iterable or an iterable, not int"):
        async with connections.each(42) as jobs:  # type: ignore[arg-type]
            async for _ in jobs:
                pass
    assert "each() ends with TypeError" in caplog.text

    caplog.clear()

    async def worker() -> None:
        async with connections.each(range(3)) as jobs:
            async for n in jobs:
                await connections.connection()
                if n == 1:
                    raise LookupError("job 1 is broken")

    task = asyncio.create_task(worker())  # never awaited, as a fire-and-forget worker
    async with asyncio.timeout(10):
        await asyncio.wait([task])
    assert "each() ends with LookupError: job 1 is broken" in caplog.text
    assert "Traceback" in caplog.text or caplog.records[-1].exc_info is not None
    assert isinstance(task.exception(), LookupError)  # and it still propagates
    assert connections.stats().in_use == 0
