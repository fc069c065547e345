"""SQLAlchemy over aconn against plain SQLAlchemy (pool_pre_ping off and on), on aiomysql and asyncpg.

    python benchmarks/sqlalchemy_on_aconn.py            # rewrites the SQLAlchemy section of docs/performance.md
    python benchmarks/sqlalchemy_on_aconn.py --quick    # fewer rounds

S1, in one process: 20 tasks, each unit of work an ``AsyncSession`` running ``SELECT 1``,
at most 10 connections. Plain SQLAlchemy (its pool, ``pool_size=10, max_overflow=0``),
the same with ``pool_pre_ping=True``, and ``aconn.sqlalchemy``'s engine, with a scope per
unit (what the middleware does) and with none (each session a unit of its own).
S2, the web workload: the same endpoint, an ``AsyncSession`` per request, under uvicorn
(``benchmarks/webapp.py``), 20 keep-alive clients. Both start their own MariaDB and
PostgreSQL; rounds interleaved in a shuffled order; ratios are medians of per-round
ratios to plain SQLAlchemy without pre_ping.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import sqlalchemy  # noqa: E402
from mariadb import MariaDB  # noqa: E402
from postgres import PostgreSQL  # noqa: E402
from run import MEASURED_CPU, SERVER_CPU, interleave_apps, load_app, pin_to, write_section  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine  # noqa: E402
from webapp import SA_VARIANTS  # noqa: E402

import aconn  # noqa: E402
import aconn.sqlalchemy  # noqa: E402

NAMES = {
    "sa": "plain SQLAlchemy",
    "sa-pre-ping": "plain SQLAlchemy, pool_pre_ping=True",
    "sa-aconn": "SQLAlchemy on aconn, a scope per unit (the middleware)",
    "sa-aconn-unit": "SQLAlchemy on aconn, no scope (a unit per session)",
    "sa-aconn-implicit": "SQLAlchemy on aconn, a scope per unit, AUTOCOMMIT off (no BEGIN sent)",
}
TASKS, CAP = 20, 10


def url_of(driver: str, settings: dict[str, Any]) -> str:
    scheme = "mysql+aiomysql" if driver == "aiomysql" else "postgresql+asyncpg"
    s = settings
    return f"{scheme}://{s['USER']}:{s['PASSWORD']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


async def in_process(driver: str, settings: dict[str, Any], rounds: int, seconds: float) -> dict[str, list[float]]:
    """S1: per variant and round, [units/s, CPU us/unit]."""
    engine_name = "mysql" if driver == "aiomysql" else "asyncpg"
    # RESET_ON_RELEASE off: SQLAlchemy's pool does not reset sessions either (it rolls back)
    connections = aconn.Connections({"default": {**settings, "ENGINE": engine_name, "CONN_MAX_AGE": 3600,
                                                 "MAX_CONNS": CAP, "RESET_ON_RELEASE": False}})  # fmt: skip
    ours = aconn.sqlalchemy.create_async_engine(connections)
    engines: dict[str, tuple[AsyncEngine, aconn.Connections | None]] = {
        "sa": (create_async_engine(url_of(driver, settings), pool_size=CAP, max_overflow=0), None),
        "sa-pre-ping": (
            create_async_engine(url_of(driver, settings), pool_size=CAP, max_overflow=0, pool_pre_ping=True),
            None,
        ),
        "sa-aconn": (ours, connections),
        "sa-aconn-unit": (ours, None),
    }
    implicit: aconn.Connections | None = None
    if driver == "aiomysql":  # asyncpg has no autocommit switch
        implicit = aconn.Connections({"default": {**settings, "ENGINE": engine_name, "CONN_MAX_AGE": 3600,
                                                  "MAX_CONNS": CAP, "RESET_ON_RELEASE": False,
                                                  "AUTOCOMMIT": False}})  # fmt: skip
        engines["sa-aconn-implicit"] = (aconn.sqlalchemy.create_async_engine(implicit), implicit)
    statement = text("SELECT 1")

    async def run(engine: AsyncEngine, scopes: aconn.Connections | None) -> tuple[float, float]:
        sessions = async_sessionmaker(engine)
        done = 0
        end = time.perf_counter() + seconds

        async def unit() -> None:
            async with sessions() as session:
                (await session.execute(statement)).scalar()

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < end:
                if scopes is not None:
                    async with scopes.scope():
                        await unit()
                else:
                    await unit()
                done += 1

        cpu, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(TASKS)))
        return done / (time.perf_counter() - started), (time.process_time() - cpu) / done * 1e6

    results: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
    order = list(engines.items())
    shuffle = random.Random(27).shuffle
    try:
        for _name, (engine, scopes) in order:  # warm up: connections open, statements cached
            await run(engine, scopes)
        for _ in range(rounds):
            shuffle(order)
            for name, (engine, scopes) in order:
                results[name].append(await run(engine, scopes))
    finally:
        for engine, _ in engines.values():
            await engine.dispose()
        await connections.aclose()
        if implicit is not None:
            await implicit.aclose()
    return {name: [v for pair in runs for v in pair] for name, runs in results.items()}


def table_s1(driver: str, results: dict[str, list[float]]) -> str:
    base = results["sa"][0::2]
    lines = [
        f"**S1, {driver}: {TASKS} tasks, an AsyncSession + `SELECT 1` per unit, {CAP} connections**",
        "",
        "| variant | units/s | ratio to plain SQLAlchemy | CPU us/unit |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, values in results.items():
        rates, cpus = values[0::2], values[1::2]
        ratio = statistics.median(r / b for r, b in zip(rates, base, strict=True))
        rate, cpu = statistics.median(rates), statistics.median(cpus)
        lines.append(f"| {NAMES[name]} | {rate:.0f} | {ratio:.2f}x | {cpu:.0f} |")
    return "\n".join(lines)


def web(driver: str, settings: dict[str, Any], rounds: int) -> str:
    """S2: the three apps under uvicorn, interleaved; requests/s and app CPU per request."""
    variants = [v for v in SA_VARIANTS if v.startswith(driver + ":")]
    apps = {v: ["serve", v, "--settings", json.dumps(settings)] for v in variants}
    results = interleave_apps(apps, rounds, lambda pid, port: load_app(pid, port, 1))
    base = results[f"{driver}:sa"]
    lines = [
        f"**S2, {driver}: the web workload, an AsyncSession per request (uvicorn, 20 clients, {CAP} connections)**",
        "",
        "| variant | requests/s | ratio | p99 ms | app CPU us/request | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant, runs in results.items():
        ratio = statistics.median(r["rps"] / b["rps"] for r, b in zip(runs, base, strict=True))
        lines.append(
            f"| {NAMES[variant.split(':')[1]]} | {statistics.median(r['rps'] for r in runs):.0f} | {ratio:.2f}x "
            f"| {statistics.median(r['p99_ms'] for r in runs):.2f} "
            f"| {statistics.median(r['cpu_us'] for r in runs):.0f} | {sum(int(r['errors']) for r in runs)} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-web", action="store_true", help="skip S2")
    args = parser.parse_args()
    rounds = 3 if args.quick else 9
    pin_to(SERVER_CPU)  # the servers' processes inherit this core
    mariadb, postgres = MariaDB().start(), PostgreSQL().start()
    pin_to(MEASURED_CPU)
    tables = []
    try:
        for driver, server in (("aiomysql", mariadb), ("asyncpg", postgres)):
            settings = server.settings()
            tables.append(table_s1(driver, asyncio.run(in_process(driver, settings, rounds, 1.0))))
            if not args.no_web:
                tables.append(web(driver, settings, rounds))
    finally:
        mariadb.close()
        postgres.close()
    section = write_section(
        "benchmarks/sqlalchemy_on_aconn.py",
        [
            "## SQLAlchemy on aconn",
            f"Written by `python benchmarks/sqlalchemy_on_aconn.py{' --quick' if args.quick else ''}` (also run by"
            f" `nox -s bench`): Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__},"
            f" aconn {aconn.__version__}, asyncio; {rounds} interleaved rounds of 1 s, medians; ratios are"
            " medians of per-round ratios to plain SQLAlchemy without pre_ping. Plain SQLAlchemy's unit is"
            " SELECT + ROLLBACK on MySQL (the driver's implicit transaction); aconn's connections are in"
            " autocommit mode between transactions, so its session sends BEGIN + SELECT + ROLLBACK, the"
            " BEGIN in one write with the SELECT on aiomysql: two round trips on both (docs/sqlalchemy.md)."
            " On asyncpg both send BEGIN + SELECT + ROLLBACK, three round trips. aconn runs with"
            " RESET_ON_RELEASE off, as SQLAlchemy's pool (which rolls back, and resets nothing else).",
            *tables,
        ],
    )
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
