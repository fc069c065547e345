"""In-process workloads: aconn against the pools people would otherwise use, in the same run.

Contenders take turns in rounds (interleaved), each round timing a batch of
operations; reports give the median per operation and the ratio to a
baseline measured in the same run. Used by `benchmarks/run.py`.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomysql
import asyncmy

import aconn

Bench = Callable[[int], Awaitable[None]]


@dataclass
class Table:
    """One workload's results: rows of (contender, median us/op, ratio to the baseline row)."""

    title: str
    unit: str = "us/op"
    rows: list[tuple[str, float, float]] = field(default_factory=list)
    note: str = ""
    #: each contender's per-round figures, for ratios between any two rows
    samples: dict[str, list[float]] = field(default_factory=dict)

    def pair_ratio(self, name: str, base: str) -> float | None:
        """The median of ``name``'s per-round ratios to ``base`` (None if either is missing)."""
        if name not in self.samples or base not in self.samples:
            return None
        pairs = zip(self.samples[name], self.samples[base], strict=True)
        return statistics.median(value / b for value, b in pairs)

    def render(self) -> str:
        lines = [f"**{self.title}**", "", f"| contender | median {self.unit} | ratio |", "| --- | ---: | ---: |"]
        lines += [f"| {name} | {value:.2f} | {ratio:.2f}x |" for name, value, ratio in self.rows]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines)


async def interleave(title: str, contenders: dict[str, Bench], ops: int, rounds: int, note: str = "") -> Table:
    """Median us/op of each contender and its ratio to the first contender.

    Every round times each contender once, in a shuffled order (seeded, so runs are
    comparable); a contender's ratio is the median of its per-round ratios, so that a
    slow spell of the machine, which hits the contenders of one round alike, cancels out.
    """
    samples = {name: [0.0] * rounds for name in contenders}
    for bench in contenders.values():
        await bench(max(1, ops // 10))  # warm up: connections open, code paths hot
    order = list(contenders.items())
    shuffle = random.Random(8).shuffle
    for round_ in range(rounds):
        shuffle(order)
        for name, bench in order:
            started = time.perf_counter()
            await bench(ops)
            samples[name][round_] = (time.perf_counter() - started) / ops * 1e6
    return ratio_table(title, samples, note=note)


def ratio_table(title: str, samples: dict[str, list[float]], unit: str = "us/op", note: str = "") -> Table:
    """Medians, and medians of the per-round ratios to the first row's samples."""
    base = next(iter(samples.values()))
    table = Table(title, unit=unit, note=note, samples=samples)
    for name, values in samples.items():
        ratio = statistics.median(value / b for value, b in zip(values, base, strict=True))
        table.rows.append((name, statistics.median(values), ratio))
    return table


def driver_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    """``aiomysql.connect()`` arguments for a DATABASES entry: what the peers are given."""
    return {
        "host": settings["HOST"], "port": settings["PORT"], "user": settings["USER"],
        "password": settings["PASSWORD"], "db": settings["NAME"], "autocommit": True,
    }  # fmt: skip


def asyncmy_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    """``asyncmy.connect()`` arguments for a DATABASES entry (asyncmy names the database ``database``)."""
    kwargs = driver_kwargs(settings)
    kwargs["database"] = kwargs.pop("db")
    return kwargs


async def select1(conn: Any) -> None:
    async with conn.cursor() as cur:
        await cur.execute("SELECT 1")
        await cur.fetchone()


class Contenders:
    """The same unit of work, done each contender's way, against one server address."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.kwargs = driver_kwargs(settings)
        url = f"mysql+aiomysql://{settings['USER']}:{settings['PASSWORD']}@{settings['HOST']}:{settings['PORT']}"
        self.sa_url = f"{url}/{settings['NAME']}"

    async def __aenter__(self) -> Contenders:
        from sqlalchemy.ext.asyncio import create_async_engine

        self.pool = await aiomysql.create_pool(minsize=1, maxsize=10, **self.kwargs)
        self.raw = await aiomysql.connect(**self.kwargs)
        self.off = aconn.Connections({"default": {**self.settings, "CONN_MAX_AGE": 3600}})
        self.on = aconn.Connections({"default": {**self.settings, "CONN_MAX_AGE": 3600, "CONN_HEALTH_CHECKS": True}})
        await self.off.open()
        await self.on.open()
        self.sa = create_async_engine(self.sa_url, pool_size=10, max_overflow=0)
        self.sa_ping = create_async_engine(self.sa_url, pool_size=10, max_overflow=0, pool_pre_ping=True)
        # the same, on asyncmy: its raw connection, its own pool, aconn on it
        my_kwargs = asyncmy_kwargs(self.settings)
        self.my_pool = await asyncmy.create_pool(minsize=1, maxsize=10, **my_kwargs)
        self.my_raw = await asyncmy.connect(**my_kwargs)
        entry = {**self.settings, "ENGINE": "asyncmy", "CONN_MAX_AGE": 3600}
        self.my_off = aconn.Connections({"default": entry})
        self.my_on = aconn.Connections({"default": {**entry, "CONN_HEALTH_CHECKS": True}})
        await self.my_off.open()
        await self.my_on.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.pool.close()
        await self.pool.wait_closed()
        self.raw.close()
        await self.off.aclose()
        await self.on.aclose()
        await self.sa.dispose()
        await self.sa_ping.dispose()
        self.my_pool.close()
        await self.my_pool.wait_closed()
        self.my_raw.close()
        await self.my_off.aclose()
        await self.my_on.aclose()

    # -- no query: take a connection and give it back ------------------------------------

    def scope_only(self, handler: aconn.Connections) -> Bench:
        async def bench(k: int) -> None:
            for _ in range(k):
                async with handler.scope():
                    await handler.connection()

        return bench

    @staticmethod
    def pool_only(pool: Any) -> Bench:
        async def bench(k: int) -> None:
            for _ in range(k):
                async with pool.acquire():
                    pass

        return bench

    def sa_only(self, engine: Any) -> Bench:
        async def bench(k: int) -> None:
            for _ in range(k):
                async with engine.connect() as conn:
                    await conn.get_raw_connection()

        return bench

    # -- one SELECT 1 per unit ------------------------------------------------------------

    @staticmethod
    def raw_select(conn: Any) -> Bench:
        async def bench(k: int) -> None:
            for _ in range(k):
                await select1(conn)

        return bench

    def scope_select(self, handler: aconn.Connections) -> Bench:
        async def bench(k: int) -> None:
            for _ in range(k):
                async with handler.scope():
                    await select1(await handler.connection())

        return bench

    @staticmethod
    def pool_select(pool: Any) -> Bench:
        async def bench(k: int) -> None:
            for _ in range(k):
                async with pool.acquire() as conn:
                    await select1(conn)

        return bench

    def sa_select(self, engine: Any) -> Bench:
        from sqlalchemy import text

        statement = text("SELECT 1")

        async def bench(k: int) -> None:
            for _ in range(k):
                async with engine.connect() as conn:
                    (await conn.execute(statement)).fetchone()

        return bench

    async def connect_select(self, k: int) -> None:
        for _ in range(k):
            conn = await aiomysql.connect(**self.kwargs)
            await select1(conn)
            await conn.ensure_closed()


async def workload_overhead(c: Contenders, ops: int, rounds: int) -> Table:
    return await interleave(
        "1. Overhead per scope, no query (enter, take the connection, exit)",
        {
            "aiomysql.Pool acquire/release": c.pool_only(c.pool),
            "aconn, health checks off": c.scope_only(c.off),
            "aconn, health checks on": c.scope_only(c.on),
            "SQLAlchemy async pool": c.sa_only(c.sa),
            "SQLAlchemy async pool, pool_pre_ping": c.sa_only(c.sa_ping),
            "asyncmy.Pool acquire/release": c.pool_only(c.my_pool),
            "aconn on asyncmy, health checks off": c.scope_only(c.my_off),
            "aconn on asyncmy, health checks on": c.scope_only(c.my_on),
        },
        ops,
        rounds,
    )


async def workload_select(c: Contenders, ops: int, rounds: int, title: str) -> Table:
    return await interleave(
        title,
        {
            "raw held connection (the floor)": c.raw_select(c.raw),
            "aiomysql.Pool acquire/release": c.pool_select(c.pool),
            "aconn, health checks off": c.scope_select(c.off),
            "aconn, health checks on": c.scope_select(c.on),
            "SQLAlchemy async engine": c.sa_select(c.sa),
            "SQLAlchemy async engine, pool_pre_ping": c.sa_select(c.sa_ping),
            "connect per unit (CONN_MAX_AGE=0)": c.connect_select,
            "asyncmy: raw held connection": c.raw_select(c.my_raw),
            "asyncmy.Pool acquire/release": c.pool_select(c.my_pool),
            "aconn on asyncmy, health checks off": c.scope_select(c.my_off),
            "aconn on asyncmy, health checks on": c.scope_select(c.my_on),
        },
        ops,
        rounds,
    )


async def workload_connect(c: Contenders, ops: int, rounds: int) -> Table:
    """What opening a connection costs, paid once per connection (never per scope)."""
    my_kwargs = asyncmy_kwargs(c.settings)

    async def bare(k: int) -> None:
        for _ in range(k):
            conn = await aiomysql.connect(**c.kwargs)
            await conn.ensure_closed()

    async def bare_asyncmy(k: int) -> None:
        for _ in range(k):
            conn = await asyncmy.connect(**my_kwargs)
            await conn.ensure_closed()

    def with_limits(handler: aconn.Connections) -> Bench:
        backend = handler.pool("default").backend

        async def bench(k: int) -> None:
            for _ in range(k):
                conn, _limits = await backend.connect()  # handshake + one SELECT of the server's limits
                await backend.close(conn)

        return bench

    return await interleave(
        "8. Connect and close (once per connection, never per scope)",
        {
            "aiomysql.connect": bare,
            "aconn's backend: connect, read the server's limits": with_limits(c.off),
            "asyncmy.connect": bare_asyncmy,
            "aconn's asyncmy backend: connect, read the server's limits": with_limits(c.my_off),
        },
        ops,
        rounds,
        note="The difference is the one round trip that reads wait_timeout, max_connections and the other"
        " limits in a single SELECT.",
    )


async def workload_concurrency(c: Contenders, tasks: int = 1000) -> Table:
    """1,000 tasks over 10 connections, one SELECT 1 each: throughput and the wait for a connection."""
    from sqlalchemy import text

    statement = text("SELECT 1")

    async def run(take: Callable[[], Any], query: Callable[[Any], Awaitable[None]]) -> tuple[float, list[float]]:
        waits: list[float] = []

        async def one() -> None:
            started = time.perf_counter()
            async with take() as conn:
                waits.append(time.perf_counter() - started)
                await query(conn)

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(tasks)))
        return tasks / (time.perf_counter() - started), waits

    class AconnTake:
        def __init__(self, handler: aconn.Connections) -> None:
            self.handler = handler

        async def __aenter__(self) -> Any:
            self.scope = self.handler.scope()
            await self.scope.__aenter__()
            return await self.handler.connection()

        async def __aexit__(self, *exc: Any) -> None:
            await self.scope.__aexit__(*exc)

    async def sa_query(conn: Any) -> None:
        (await conn.execute(statement)).fetchone()

    limited = aconn.Connections({"default": {**c.settings, "CONN_MAX_AGE": 3600, "MAX_CONNS": 10}})
    my_limited = aconn.Connections(
        {"default": {**c.settings, "ENGINE": "asyncmy", "CONN_MAX_AGE": 3600, "MAX_CONNS": 10}}
    )
    contenders = {
        "aiomysql.Pool (maxsize=10)": (c.pool.acquire, select1),
        "aconn (MAX_CONNS=10)": (lambda: AconnTake(limited), select1),
        "SQLAlchemy (pool_size=10)": (c.sa.connect, sa_query),
        "asyncmy.Pool (maxsize=10)": (c.my_pool.acquire, select1),
        "aconn on asyncmy (MAX_CONNS=10)": (lambda: AconnTake(my_limited), select1),
    }
    table = Table("3. Concurrency: 1,000 tasks over 10 connections", unit="value")
    lines = [
        "| contender | scopes/s | wait p50 ms | wait p99 ms | wait max ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    results: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in contenders}
    for _ in range(3):
        for name, (take, query) in contenders.items():
            results[name].append(await run(take, query))
    for name, runs in results.items():
        rate = statistics.median(r for r, _ in runs)
        waits = sorted(w * 1000 for _, ws in runs for w in ws)
        p50, p99 = percentile(waits, 0.5), percentile(waits, 0.99)
        lines.append(f"| {name} | {rate:.0f} | {p50:.2f} | {p99:.2f} | {waits[-1]:.2f} |")
        table.rows.append((name, rate, 0.0))
    await limited.aclose()
    await my_limited.aclose()
    table.note = "\n".join(lines)
    return table


async def workload_scale(settings: dict[str, Any], ops: int, rounds: int) -> Table:
    """Cost per scope with 1, 10, 100 idle connections and with 10 to 10,000 waiters queued.

    Each group of rows is measured in interleaved rounds; each round of the waiter rows
    times one steady-state window per configuration.
    """
    handlers: list[aconn.Connections] = []

    def handler(max_conns: int) -> aconn.Connections:
        handlers.append(aconn.Connections({"default": {**settings, "CONN_MAX_AGE": 3600, "MAX_CONNS": max_conns}}))
        return handlers[-1]

    try:
        idle_benches: dict[str, Bench] = {}
        for idle in (1, 10, 100):
            filled = handler(idle)
            barrier = asyncio.Barrier(idle)

            async def hold_one(filled: aconn.Connections = filled, barrier: asyncio.Barrier = barrier) -> None:
                async with filled.scope():
                    await filled.connection()
                    await barrier.wait()  # every connection opened and held at once, then all given back

            async with asyncio.timeout(60):
                await asyncio.gather(*(hold_one() for _ in range(idle)))
            assert filled.stats().idle == idle
            idle_benches[f"{idle} idle connection(s)"] = _scopes(filled)
        idle_table = await interleave("", idle_benches, ops, rounds)

        units: dict[str, tuple[Callable[[], Awaitable[None]], int]] = {}
        for queued in (10, 1000, 10000):
            limited = handler(10)

            async def worker(limited: aconn.Connections = limited) -> None:
                async with limited.scope():
                    await limited.connection()
                    await asyncio.sleep(0)  # hold across a task switch: the others queue

            units[f"{queued} waiters queued ({queued + 10} tasks over 10 connections)"] = (worker, queued + 10)
        for queued in (10, 1000, 10000):
            # the same contention on a bare asyncio.Semaphore(10): what the event loop itself costs
            semaphore = asyncio.Semaphore(10)

            async def bare(semaphore: asyncio.Semaphore = semaphore) -> None:
                async with semaphore:
                    await asyncio.sleep(0)

            units[f"  baseline: asyncio.Semaphore(10), {queued + 10} tasks"] = (bare, queued + 10)
        samples: dict[str, list[float]] = {name: [] for name in units}
        order = list(units.items())
        shuffle = random.Random(8).shuffle
        for _ in range(rounds):
            shuffle(order)
            for name, (unit, tasks) in order:
                samples[name].append(await _contended(unit, tasks))
        waiters_table = ratio_table("", samples)
    finally:
        for opened in handlers:
            await opened.aclose()
    base = idle_table.rows[0][1]
    table = Table("4. Scale: cost per scope as idle connections and waiters grow")
    table.rows = [(name, value, value / base) for name, value, _ in idle_table.rows + waiters_table.rows]
    table.note = (
        "Rows with waiters are timed in the steady state (task creation left out) and include the hand-off"
        " to the next waiter and a task switch per scope: compare them with each other and with the bare"
        " asyncio.Semaphore under the same load, not with the idle rows. Waiters share one timer (the oldest"
        " one's deadline), so a queue of any length costs no timer heap work."
    )
    return table


async def _contended(unit: Callable[[], Awaitable[None]], tasks: int) -> float:
    """Us per unit of work in the steady state of ``tasks`` tasks doing units in a loop.

    Only the middle is timed: from the moment every task has had two turns, for a window of
    at least three turns each, so task creation and the ramp-up stay out of the figure.
    """
    warm, window = 2 * tasks, max(20_000, 3 * tasks)
    done = 0
    started = ended = 0.0

    async def task() -> None:
        nonlocal done, started, ended
        while done < warm + window:
            await unit()
            done += 1
            if done == warm:
                started = time.perf_counter()
            elif done == warm + window:
                ended = time.perf_counter()

    await asyncio.gather(*(task() for _ in range(tasks)))
    return (ended - started) / window * 1e6


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _scopes(handler: aconn.Connections) -> Bench:
    async def bench(k: int) -> None:
        for _ in range(k):
            async with handler.scope():
                await handler.connection()

    return bench


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def workload_memory(settings: dict[str, Any], total: int = 1_000_000) -> Table:
    """Process memory over 1,000,000 scopes: it must stay flat."""
    handler = aconn.Connections({"default": {**settings, "CONN_MAX_AGE": 3600}})
    await handler.open()
    run = _scopes(handler)
    table = Table(f"7. Memory over {total:,} scopes", unit="MiB RSS")
    await run(10_000)
    gc.collect()
    start = rss_mb()
    table.rows.append(("after 10,000 scopes (warm)", start, 1.0))
    done = 10_000
    for checkpoint in (total // 4, total // 2, total):
        await run(checkpoint - done)
        done = checkpoint
        gc.collect()
        now = rss_mb()
        table.rows.append((f"after {checkpoint:,} scopes", now, now / start))
    await handler.aclose()
    return table
