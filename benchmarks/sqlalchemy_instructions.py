"""SQLAlchemy on aconn against plain SQLAlchemy in instructions: repeatable where timings are not.

    python benchmarks/sqlalchemy_instructions.py                        # asyncpg and aiomysql, one task
    python benchmarks/sqlalchemy_instructions.py --driver asyncpg --tasks 20

Needs valgrind (apt-get install -y valgrind). The unit is S1's of
``benchmarks/sqlalchemy_on_aconn.py``: an ``AsyncSession`` running ``SELECT 1``,
at most 10 connections; with ``--tasks 1`` nobody waits for a connection, so the
count is the path itself, with 20 it includes the waits (and moves by a percent
or two with the order of the wake-ups). Each variant runs in a fresh process under
``valgrind --tool=callgrind`` for N units and for none; the difference divided by N
is printed: user-space instructions of the whole client process, the driver's and
SQLAlchemy's included (the kernel's part of a system call is not counted).
docs/sqlalchemy.md quotes these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from instructions import callgrind_count, valgrind_missing  # noqa: E402
from sqlalchemy_on_aconn import CAP, NAMES, url_of  # noqa: E402

#: S1's variants without pre_ping (which adds a round trip, not Python)
VARIANTS = ("sa", "sa-aconn", "sa-aconn-unit")


async def units(driver: str, variant: str, settings: dict[str, Any], n: int, tasks: int) -> None:
    """``n`` units over ``tasks`` tasks, after a warm-up that opens every connection."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    import aconn
    import aconn.sqlalchemy

    connections = aconn.Connections(
        {"default": {**settings, "CONN_MAX_AGE": 3600, "MAX_CONNS": CAP, "RESET_ON_RELEASE": False}}
    )
    if variant == "sa":
        engine = create_async_engine(url_of(driver, settings), pool_size=CAP, max_overflow=0)
    else:
        engine = aconn.sqlalchemy.create_async_engine(connections)
    scopes = connections if variant == "sa-aconn" else None
    sessions = async_sessionmaker(engine)
    select = text("SELECT 1")

    async def unit() -> None:
        async with sessions() as session:
            assert (await session.execute(select)).scalar() == 1

    async def worker(count: int) -> None:
        for _ in range(count):
            if scopes is None:
                await unit()
            else:
                async with scopes.scope():
                    await unit()

    for count in (max(300 // tasks, 1), n // tasks):  # warm, then measured
        await asyncio.gather(*(worker(count) for _ in range(tasks)))
    await engine.dispose()
    await connections.aclose()


def count(driver: str, variant: str, settings: str, n: int, tasks: int) -> int:
    return callgrind_count(__file__, "--child", driver, variant, str(n), str(tasks), settings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=1000, help="units per variant")
    parser.add_argument("--tasks", type=int, default=1, help="tasks sharing the 10 connections")
    parser.add_argument("--driver", choices=["asyncpg", "aiomysql"], nargs="+", default=["asyncpg", "aiomysql"])
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        driver, variant, n, tasks, settings = args.child
        asyncio.run(units(driver, variant, json.loads(settings), int(n), int(tasks)))
        return 0
    if valgrind_missing():
        return 2
    from mariadb import MariaDB
    from postgres import PostgreSQL

    for driver in args.driver:
        server = PostgreSQL().start() if driver == "asyncpg" else MariaDB().start()
        try:
            settings = server.settings(ENGINE="asyncpg" if driver == "asyncpg" else "mysql")
            encoded = json.dumps(settings)
            print(f"\n{driver}, {args.tasks} task(s), {args.n} units\n")
            print("| variant | instructions per unit |\n| --- | ---: |")
            base = None
            for variant in VARIANTS:
                measured = count(driver, variant, encoded, args.n, args.tasks)
                per = (measured - count(driver, variant, encoded, 0, args.tasks)) / args.n
                base = base or per
                share = "" if variant == "sa" else f" ({per / base - 1:+.1%})"
                print(f"| {NAMES[variant]} | {per:,.0f}{share} |", flush=True)
        finally:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
