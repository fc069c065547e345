"""aconn on PostgreSQL against asyncpg.Pool, psycopg_pool and SQLAlchemy, on one throwaway server, in one run.

    python benchmarks/postgresql.py            # writes docs/performance-postgresql.md
    python benchmarks/postgresql.py --quick    # fewer rounds

Ratios from interleaved rounds (see ``peers.interleave``): each round times every
contender once in a shuffled order, and a ratio is the median of per-round ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
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
from postgres import PostgreSQL  # noqa: E402
from psycopg_pool import AsyncConnectionPool  # noqa: E402
from run import MEASURED_CPU, SERVER_CPU, pin_to  # noqa: E402
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


def ratio(table: peers.Table, name: str) -> float:
    return next(r for n, _, r in table.rows if n == name)


def targets(tables: list[peers.Table]) -> str:
    overhead, select = tables
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
    lines = ["| target | measured | met |", "| --- | ---: | --- |"]
    lines += [f"| {t} | {m} | {'' if ok is None else 'yes' if ok else 'NO'} |" for t, m, ok in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    pin_to(SERVER_CPU)  # the server's processes inherit this core
    server = PostgreSQL().start()
    pin_to(MEASURED_CPU)
    try:
        version = server.sql("SHOW server_version")[0][0]
        tables = asyncio.run(measure(server, args.quick))
    finally:
        server.close()
    body = "\n\n".join(t.render() for t in tables)
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
