"""What the scope boundary costs, against aiomysql.Pool on the same throwaway MariaDB.

Run: `nox -s bench` (or `python benchmarks/scope_overhead.py [--rounds N] [--n N]`).
Contenders run interleaved in rounds; the report gives medians per operation
and ratios against aiomysql.Pool measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiomysql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from mariadb import APP_PASSWORD, APP_USER, DATABASE, MariaDB

import aconn

Bench = Callable[[int], Awaitable[None]]


async def main(rounds: int, n: int) -> None:
    server = MariaDB().start()
    try:
        await run(server, rounds, n)
    finally:
        server.close()


async def run(server: MariaDB, rounds: int, n: int) -> None:
    kwargs = dict(host="127.0.0.1", port=server.port, user=APP_USER, password=APP_PASSWORD, db=DATABASE)
    pool = await aiomysql.create_pool(minsize=1, maxsize=1, autocommit=True, **kwargs)
    raw = await aiomysql.connect(autocommit=True, **kwargs)
    off = aconn.Connections({"default": server.settings(CONN_MAX_AGE=3600)})
    on = aconn.Connections({"default": server.settings(CONN_MAX_AGE=3600, CONN_HEALTH_CHECKS=True)})
    await off.open()
    await on.open()

    async def pool_acquire(k: int) -> None:
        for _ in range(k):
            async with pool.acquire():
                pass

    def scope_only(handler: aconn.Connections) -> Bench:
        async def bench(k: int) -> None:
            for _ in range(k):
                async with handler.scope():
                    await handler.connection()

        return bench

    async def select1(conn: aiomysql.Connection) -> None:
        async with conn.cursor() as cur:
            await cur.execute("SELECT 1")
            await cur.fetchone()

    async def raw_select(k: int) -> None:
        for _ in range(k):
            await select1(raw)

    async def pool_select(k: int) -> None:
        for _ in range(k):
            async with pool.acquire() as conn:
                await select1(conn)

    def scope_select(handler: aconn.Connections) -> Bench:
        async def bench(k: int) -> None:
            for _ in range(k):
                async with handler.scope():
                    await select1(await handler.connection())

        return bench

    backend = off._pools["default"].backend

    async def bare_connect(k: int) -> None:
        for _ in range(k):
            conn = await aiomysql.connect(autocommit=True, **kwargs)
            await conn.ensure_closed()

    async def aconn_connect(k: int) -> None:
        for _ in range(k):
            conn, _limits = await backend.connect()  # handshake + one query reading the server's limits
            await backend.close(conn)

    groups: dict[str, dict[str, Bench]] = {
        "scope overhead, no query (enter, take the connection, exit)": {
            "aiomysql.Pool acquire/release": pool_acquire,
            "aconn, health checks off": scope_only(off),
            "aconn, health checks on": scope_only(on),
        },
        "one SELECT 1 per scope": {
            "raw held connection": raw_select,
            "aiomysql.Pool acquire/release": pool_select,
            "aconn, health checks off": scope_select(off),
            "aconn, health checks on": scope_select(on),
        },
        "connect and close (per new connection, not per scope)": {
            "aiomysql.connect": bare_connect,
            "aconn backend (+ server limits)": aconn_connect,
        },
    }
    print(f"python {platform.python_version()}, aiomysql {aiomysql.__version__}, {platform.machine()}, "
          f"{rounds} rounds x {n} ops, loopback MariaDB {server.sql('SELECT VERSION()')[0][0]}")  # fmt: skip
    for title, contenders in groups.items():
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        ops = n if "connect" not in title else max(10, n // 50)  # a connect costs a hundred scopes
        for bench in contenders.values():
            await bench(max(1, ops // 10))  # warm up
        for _ in range(rounds):
            for name, bench in contenders.items():
                started = time.perf_counter()
                await bench(ops)
                samples[name].append((time.perf_counter() - started) / ops * 1e6)
        base = statistics.median(next(iter(samples.values())))
        print(f"\n{title}")
        print(f"  {'contender':34} {'median us/op':>12} {'ratio':>7}")
        for name, values in samples.items():
            med = statistics.median(values)
            print(f"  {name:34} {med:12.2f} {med / base:6.2f}x")
    pool.close()
    await pool.wait_closed()
    raw.close()
    await off.aclose()
    await on.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.n))
