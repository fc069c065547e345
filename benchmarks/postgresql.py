"""aconn on PostgreSQL against asyncpg.Pool, psycopg_pool and SQLAlchemy, on one throwaway server, in one run.

    python benchmarks/postgresql.py            # writes docs/performance-postgresql.md
    python benchmarks/postgresql.py --quick    # fewer rounds

Ratios from interleaved rounds (see ``peers.interleave``): each round times every
contender once in a shuffled order, and a ratio is the median of per-round ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import asyncpg  # noqa: E402
import peers  # noqa: E402
import psycopg  # noqa: E402
from mariadb import free_port  # noqa: E402
from postgres import PostgreSQL  # noqa: E402
from psycopg_pool import AsyncConnectionPool  # noqa: E402
from run import MEASURED_CPU, PINNED, SERVER_CPU, load_app, pin_to, wait_port  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

import aconn  # noqa: E402

Bench = Callable[[int], Awaitable[None]]


def loop_of(unit: Callable[[], Awaitable[Any]]) -> Bench:
    async def bench(n: int) -> None:
        for _ in range(n):
            await unit()

    return bench


async def measure(server: PostgreSQL, quick: bool) -> list[peers.Table]:
    s = server.settings()
    kw = {"host": s["HOST"], "port": s["PORT"], "user": s["USER"], "password": s["PASSWORD"]}
    conninfo = f"host={s['HOST']} port={s['PORT']} user={s['USER']} password={s['PASSWORD']} dbname={s['NAME']}"
    apg_pool = await asyncpg.create_pool(database=s["NAME"], min_size=1, max_size=10, **kw)
    apg_raw = await asyncpg.connect(database=s["NAME"], **kw)
    pg_pool = AsyncConnectionPool(conninfo, min_size=1, max_size=10, kwargs={"autocommit": True}, open=False)
    await pg_pool.open(wait=True)
    pg_raw = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    on_apg = aconn.Connections({"default": server.settings(ENGINE="asyncpg", CONN_MAX_AGE=3600)})
    on_pg = aconn.Connections({"default": server.settings(ENGINE="postgresql", CONN_MAX_AGE=3600)})
    await on_apg.open()
    await on_pg.open()
    url = f"postgresql+asyncpg://{s['USER']}:{s['PASSWORD']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"
    sa = create_async_engine(url, pool_size=10, max_overflow=0)
    ops, rounds = (300, 5) if quick else (2000, 15)
    try:

        async def apg_acquire() -> None:
            async with apg_pool.acquire():
                pass

        async def pg_acquire() -> None:
            async with pg_pool.connection():
                pass

        def scope_only(handler: aconn.Connections) -> Callable[[], Awaitable[None]]:
            async def unit() -> None:
                async with handler.scope():
                    await handler.connection()

            return unit

        overhead = await peers.interleave(
            "P1. Take a connection and give it back (no query)",
            {
                "asyncpg.Pool: async with pool.acquire()": loop_of(apg_acquire),
                "aconn (asyncpg): async with scope: await connection()": loop_of(scope_only(on_apg)),
                "psycopg_pool: async with pool.connection()": loop_of(pg_acquire),
                "aconn (psycopg): async with scope: await connection()": loop_of(scope_only(on_pg)),
            },
            ops,
            rounds,
        )

        async def apg_raw_select() -> None:
            await apg_raw.fetchval("SELECT 1")

        async def apg_scope_select() -> None:
            async with on_apg.scope():
                await (await on_apg.connection()).fetchval("SELECT 1")

        async def apg_pool_select() -> None:
            async with apg_pool.acquire() as conn:
                await conn.fetchval("SELECT 1")

        async def pg_raw_select() -> None:
            await (await pg_raw.execute("SELECT 1")).fetchone()

        async def pg_scope_select() -> None:
            async with on_pg.scope():
                await (await (await on_pg.connection()).execute("SELECT 1")).fetchone()

        async def pg_pool_select() -> None:
            async with pg_pool.connection() as conn:
                await (await conn.execute("SELECT 1")).fetchone()

        async def sa_select() -> None:
            async with sa.connect() as conn:
                await conn.execute(text("SELECT 1"))

        select = await peers.interleave(
            "P2. SELECT 1, one at a time",
            {
                "asyncpg, a raw held connection": loop_of(apg_raw_select),
                "aconn (asyncpg): scope + SELECT 1": loop_of(apg_scope_select),
                "asyncpg.Pool + SELECT 1": loop_of(apg_pool_select),
                "psycopg, a raw held connection": loop_of(pg_raw_select),
                "aconn (psycopg): scope + SELECT 1": loop_of(pg_scope_select),
                "psycopg_pool + SELECT 1": loop_of(pg_pool_select),
                "SQLAlchemy async (asyncpg) + SELECT 1": loop_of(sa_select),
            },
            ops // 2,
            rounds,
        )
        return [overhead, select]
    finally:
        await apg_pool.close()
        await apg_raw.close()
        await pg_pool.close()
        await pg_raw.close()
        await on_apg.aclose()
        await on_pg.aclose()
        await sa.dispose()


def web(settings: dict[str, Any], quick: bool) -> peers.Table:
    """P3: the one-query endpoint under uvicorn, aconn (asyncpg) against a hand-rolled asyncpg.Pool app.

    Each variant in its own process on the measured core; the load generator beside the server;
    rounds interleaved in a shuffled order; ratios are medians of per-round ratios.
    """
    from webapp import PG_VARIANTS

    seconds, rounds = (1, 4) if quick else (1, 15)
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    pin_to(SERVER_CPU)
    try:
        for variant in PG_VARIANTS:
            port = free_port()
            cpu = ["--cpu", str(MEASURED_CPU)] if PINNED else []
            proc = subprocess.Popen(
                [sys.executable, str(ROOT / "benchmarks" / "webapp.py"), "serve", variant, "--port", str(port),
                 "--settings", json.dumps(settings), *cpu],
                cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "0"},
            )  # fmt: skip
            servers[variant] = (proc, port)
        for _, port in servers.values():
            wait_port(port)
        for proc, port in servers.values():
            load_app(proc.pid, port, 1)  # warm up
        results: dict[str, list[dict[str, float]]] = {v: [] for v in PG_VARIANTS}
        order = list(servers.items())
        for _ in range(rounds):
            random.Random(8).shuffle(order)
            for variant, (proc, port) in order:
                results[variant].append(load_app(proc.pid, port, seconds))
    finally:
        pin_to(MEASURED_CPU)
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
    base = results["pg-asyncpg-pool"]
    names = {
        "pg-asyncpg-pool": "hand-rolled asyncpg.Pool app",
        "pg-asyncpg-pool-again": "control: the same asyncpg.Pool app, another process",
        "pg-aconn": "aconn (asyncpg) with ConnectionsMiddleware",
    }
    table = peers.Table("P3. Web app: one-query endpoint, uvicorn, 20 keep-alive clients", unit="requests/s")
    lines = ["| variant | requests/s | ratio | p99 ms | app CPU us/request | errors |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for variant in ("pg-asyncpg-pool", "pg-asyncpg-pool-again", "pg-aconn"):
        runs = results[variant]
        rps = statistics.median(r["rps"] for r in runs)
        rate = statistics.median(r["rps"] / b["rps"] for r, b in zip(runs, base, strict=True))
        table.rows.append((names[variant], rps, rate))
        lines.append(
            f"| {names[variant]} | {rps:.0f} | {rate:.2f}x | {statistics.median(r['p99_ms'] for r in runs):.2f} "
            f"| {statistics.median(r['cpu_us'] for r in runs):.0f} | {sum(int(r['errors']) for r in runs)} |"
        )
    lines += ["", f"{rounds} rounds of {seconds} s, the variants in a shuffled order each round."]
    table.note = "\n".join(lines)
    return table


def ratio(table: peers.Table, name: str) -> float:
    return next(r for n, _, r in table.rows if n == name)


def targets(tables: list[peers.Table]) -> str:
    overhead, select = tables[:2]
    apg_overhead = ratio(overhead, "aconn (asyncpg): async with scope: await connection()")
    pg_vs_pool = ratio(overhead, "aconn (psycopg): async with scope: await connection()") / ratio(
        overhead, "psycopg_pool: async with pool.connection()"
    )
    select_cost = ratio(select, "aconn (asyncpg): scope + SELECT 1") - 1
    rows: list[tuple[str, str, bool | None]] = [
        ("scope overhead at most 0.5x asyncpg.Pool's acquire/release", f"{apg_overhead:.2f}x", apg_overhead <= 0.5),
        ("scope + SELECT 1 within 5% of a raw held asyncpg connection", f"{select_cost:+.1%}", select_cost <= 0.05),
        ("(not a target) aconn (psycopg) against psycopg_pool", f"{pg_vs_pool:.2f}x", None),
    ]
    if len(tables) > 2:
        web_ratio = ratio(tables[2], "aconn (asyncpg) with ConnectionsMiddleware")
        control = ratio(tables[2], "control: the same asyncpg.Pool app, another process")
        rows.append(
            (f"web app at least as fast as the asyncpg.Pool app (control: {control:.2f}x)", f"{web_ratio:.2f}x",
             web_ratio >= min(1.0, control))
        )  # fmt: skip
    lines = ["| target | measured | met |", "| --- | ---: | --- |"]
    lines += [f"| {t} | {m} | {'' if ok is None else 'yes' if ok else 'NO'} |" for t, m, ok in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-web", action="store_true", help="skip the uvicorn workload (P3)")
    args = parser.parse_args()
    pin_to(SERVER_CPU)  # the server's processes inherit this core
    server = PostgreSQL().start()
    pin_to(MEASURED_CPU)
    try:
        version = server.sql("SHOW server_version")[0][0]
        tables = asyncio.run(measure(server, args.quick))
        if not args.no_web:
            tables.append(web(server.settings(), args.quick))
    finally:
        server.close()
    body = "\n\n".join(t.render() if t.unit != "requests/s" else f"**{t.title}**\n\n{t.note}" for t in tables)
    report = f"""# Performance on PostgreSQL

Written by `python benchmarks/postgresql.py{' --quick' if args.quick else ''}` (also run by `nox -s bench`):
PostgreSQL {version} on loopback (its processes on one core, this process on the other), Python
{platform.python_version()}, asyncio. Ratios are to the first row of each table, medians of per-round
ratios over interleaved rounds. asyncpg.Pool runs a reset query at every release (a round trip), which
is most of its cost in P1; aconn and psycopg_pool do not (aconn rolls back only when a transaction is
open, and resets only with RESET_ON_RELEASE).

## Targets

{targets(tables)}

## Tables

{body}
"""
    (ROOT / "docs" / "performance-postgresql.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
