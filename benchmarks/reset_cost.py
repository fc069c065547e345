"""What resetting session state at release costs per scope, against the pool each engine replaces.

One task, ``SELECT 1`` per unit of work, on a throwaway PostgreSQL (and MariaDB when installed),
interleaved rounds; prints microseconds of wall time and of process CPU per unit, and each as a
ratio to the driver's own pool in the same round. ``python benchmarks/reset_cost.py [--rounds N]``.
docs/migrating.md and docs/performance.md quote its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import asyncpg
from postgres import PostgreSQL

import aconn

UNITS = 3000
WARMUP = 300


async def _units(
    acquire: Callable[[], contextlib.AbstractAsyncContextManager[Any]], query: Callable[[Any], Any]
) -> tuple[float, float]:
    for _ in range(WARMUP):
        async with acquire() as conn:
            await query(conn)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(UNITS):
        async with acquire() as conn:
            await query(conn)
    return (time.perf_counter() - wall) / UNITS * 1e6, (time.process_time() - cpu) / UNITS * 1e6


async def _aconn(settings: dict[str, Any], query: Callable[[Any], Any]) -> tuple[float, float]:
    connections = aconn.Connections({"default": settings})
    async with connections:
        return await _units(connections.acquire, query)


async def _asyncpg_pool(dsn: str) -> tuple[float, float]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10)
    try:
        return await _units(pool.acquire, lambda c: c.fetchval("SELECT 1"))
    finally:
        await pool.close()


async def _psycopg(conn: Any) -> Any:
    cur = await conn.execute("SELECT 1")
    return await cur.fetchone()


async def main(rounds: int) -> None:
    server = PostgreSQL().start()
    results: dict[str, list[tuple[float, float]]] = {}
    try:
        for _ in range(rounds):
            asyncpg_settings = server.settings(ENGINE="asyncpg", CONN_MAX_AGE=600)
            psycopg_settings = server.settings(CONN_MAX_AGE=600)
            fetch = lambda c: c.fetchval("SELECT 1")  # noqa: E731
            variants = {
                "asyncpg.Pool (resets at release)": _asyncpg_pool(server.url()),
                "aconn asyncpg, RESET_ON_RELEASE=True (default)": _aconn({**asyncpg_settings}, fetch),
                "aconn asyncpg, RESET_ON_RELEASE=False": _aconn({**asyncpg_settings, "RESET_ON_RELEASE": False}, fetch),
                "aconn psycopg, RESET_ON_RELEASE=False (default)": _aconn(psycopg_settings, _psycopg),
                "aconn psycopg, RESET_ON_RELEASE=True": _aconn(
                    {**psycopg_settings, "RESET_ON_RELEASE": True}, _psycopg
                ),
            }
            for name, run in variants.items():
                results.setdefault(name, []).append(await run)
    finally:
        server.close()
    base_wall = statistics.median(w for w, _ in results["asyncpg.Pool (resets at release)"])
    print(f"{'variant':<50} {'us/unit':>8} {'cpu us':>8} {'x asyncpg.Pool':>15}")
    for name, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"{name:<50} {wall:8.1f} {cpu:8.1f} {wall / base_wall:15.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args().rounds))
