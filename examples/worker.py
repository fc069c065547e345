"""A job-queue worker on aconn: several concurrent workers claim jobs from a table.

    python examples/worker.py [--workers 3] [--jobs 20] [--idle-gap 0] [--job-seconds 0.01]
    DATABASE_URL=mysql://user:pw@host/db python examples/worker.py --wait-timeout 2 --idle-gap 3

SQLite by default (a file in a temporary directory, or `--db PATH`); MySQL/MariaDB
through `DATABASE_URL`. On MySQL a job is claimed with `SELECT ... FOR UPDATE
SKIP LOCKED` inside the job's transaction; on SQLite, the nearest equivalent is
`BEGIN IMMEDIATE` plus an `UPDATE ... RETURNING` (one writer at a time).

Each job runs in its own scope (`@connections.scoped`), so a job claimed but not
finished (an error, a cancellation, SIGTERM) is rolled back and returns to the
queue. `--idle-gap` makes the workers idle between two batches, longer than
the server's `wait_timeout` if you like (`--wait-timeout` sets it for the
session): the next batch runs without "MySQL server has gone away".

On SIGTERM or SIGINT the workers stop claiming, running jobs get `--grace`
seconds to finish, then they are cancelled (and rolled back), and the
connections are closed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import aconn
from aconn.settings import parse_settings


def build_connections(url: str, wait_timeout: int | None) -> aconn.Connections:
    settings = parse_settings("default", url)
    options = dict(settings.options)
    if wait_timeout and settings.engine == "mysql":
        options["init_command"] = f"SET SESSION wait_timeout={int(wait_timeout)}"
    if settings.engine == "sqlite":
        options.setdefault("timeout", 30.0)  # writers queue behind BEGIN IMMEDIATE
    return aconn.Connections({"default": dataclasses.replace(settings, options=options, conn_max_age=None)})


class Queue:
    """The jobs table, in either SQL dialect."""

    def __init__(self, connections: aconn.Connections) -> None:
        self.connections = connections
        self.sqlite = connections.settings().engine == "sqlite"

    async def run(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = await self.connections.connection()
        if self.sqlite:
            return [tuple(r) for r in await conn.execute_fetchall(sql.replace("%s", "?"), args)]
        async with conn.cursor() as cur:
            await cur.execute(sql, args)
            return list(await cur.fetchall())

    async def create(self) -> None:
        key = "INTEGER PRIMARY KEY AUTOINCREMENT" if self.sqlite else "INT AUTO_INCREMENT PRIMARY KEY"
        await self.run(
            f"CREATE TABLE IF NOT EXISTS jobs (id {key}, payload INT, status VARCHAR(10) DEFAULT 'pending', "
            "done_by VARCHAR(20))"
        )

    async def enqueue(self, payloads: range) -> None:
        for n in payloads:
            await self.run("INSERT INTO jobs (payload) VALUES (%s)", (n,))

    async def claim(self) -> tuple[int, int] | None:
        """Start the job's transaction and lock one pending job in it; None if the queue is empty."""
        if self.sqlite:
            await self.run("BEGIN IMMEDIATE")
            rows = await self.run(
                "UPDATE jobs SET status = 'running' WHERE id = "
                "(SELECT id FROM jobs WHERE status = 'pending' ORDER BY id LIMIT 1) RETURNING id, payload"
            )
        else:
            await self.run("BEGIN")
            rows = await self.run(
                "SELECT id, payload FROM jobs WHERE status = 'pending' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
            )
        if not rows:
            await self.run("ROLLBACK")
            return None
        return int(rows[0][0]), int(rows[0][1])

    async def finish(self, job_id: int, worker: str) -> None:
        await self.run("UPDATE jobs SET status = 'done', done_by = %s WHERE id = %s", (worker, job_id))
        await self.run("COMMIT")

    async def counts(self) -> dict[str, int]:
        return {str(s): int(n) for s, n in await self.run("SELECT status, count(*) FROM jobs GROUP BY status")}


async def worker(name: str, queue: Queue, stop: asyncio.Event, job_seconds: float, max_poll: float) -> int:
    """Claim and run jobs until stopped; an empty queue is polled with a growing interval.

    Each attempt runs in a scope of its own (``@scoped``): the claim and the
    work share the job's transaction, and the connection goes back to the
    pool between attempts, so a quiet worker holds none while it waits. Its
    idle connections may outlive the server's wait_timeout meanwhile: aconn
    retires them before the next job, and the log says so.
    """

    @queue.connections.scoped
    async def run_one() -> bool:
        job = await queue.claim()
        if job is None:
            return False
        job_id, _payload = job
        print(f"{name}: claimed job {job_id}", flush=True)
        await asyncio.sleep(job_seconds)  # the work itself
        await queue.finish(job_id, name)
        return True

    done = 0
    poll = 0.01
    while not stop.is_set():
        if await run_one():
            done += 1
            poll = 0.01
            continue
        try:  # the queue is empty: wait for more work, or for the stop signal
            await asyncio.wait_for(stop.wait(), poll)
        except TimeoutError:
            poll = min(poll * 2, max_poll)
    return done


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=20, help="jobs per batch")
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--idle-gap", type=float, default=0.0, help="seconds of idle between batches")
    parser.add_argument("--job-seconds", type=float, default=0.01)
    parser.add_argument("--wait-timeout", type=int, default=None, help="MySQL session wait_timeout")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds running jobs get after SIGTERM")
    parser.add_argument("--db", default=None, help="SQLite file (default: a temporary one)")
    parser.add_argument("--forever", action="store_true", help="keep polling until SIGTERM")
    parser.add_argument("--max-poll", type=float, default=2.0, help="longest wait between polls of an empty queue")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="log: %(message)s", stream=sys.stdout)
    url = os.environ.get("DATABASE_URL") or f"sqlite:///{args.db or Path(tempfile.mkdtemp()) / 'jobs.db'}"
    connections = build_connections(url, args.wait_timeout)
    queue = Queue(connections)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async with connections:  # closes every connection on the way out
        async with connections.scope():
            await queue.create()
        tasks = [
            asyncio.create_task(worker(f"worker-{i}", queue, stop, args.job_seconds, args.max_poll), name=f"worker-{i}")
            for i in range(args.workers)
        ]
        for batch in range(args.batches):
            if batch and args.idle_gap:
                print(f"idle for {args.idle_gap:g}s (longer than wait_timeout={args.wait_timeout})", flush=True)
                await asyncio.wait([asyncio.ensure_future(stop.wait())], timeout=args.idle_gap)
            async with connections.scope():
                await queue.enqueue(range(batch * args.jobs, (batch + 1) * args.jobs))
            while not stop.is_set():  # wait for the batch to drain
                async with connections.scope():
                    counts = await queue.counts()
                if counts.get("pending", 0) == 0 and counts.get("running", 0) == 0:
                    break
                await asyncio.wait([asyncio.ensure_future(stop.wait())], timeout=0.02)
        if args.forever:
            await stop.wait()
        stop.set()
        # stop claiming; running jobs get the grace period, then are cancelled (and rolled back)
        _, unfinished = await asyncio.wait(tasks, timeout=args.grace)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        async with connections.scope():
            counts = await queue.counts()
        stats = connections.stats()
    print(
        f"jobs: {counts}; cut short and returned to the queue: {len(unfinished)}; "
        f"connections opened={stats.opened} closed_idle={stats.closed_idle} "
        f"closed_unusable={stats.closed_unusable} rollbacks={stats.rollbacks}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
