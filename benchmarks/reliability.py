"""Under faults, side by side: aconn, aiomysql.Pool and SQLAlchemy against one throwaway MariaDB.

    nox -s reliability                                   # writes the figures into docs/reliability.md
    python benchmarks/reliability.py --seconds 3 --no-write

Each contender has a cap of 10 connections and runs the same workload while a
fault is injected. Per fault and contender: units of work attempted, errors
that reached callers per 10,000 units (the timeouts a workload causes on
purpose are not errors), the most sessions of the application user the server
held at once (sampled every 50 ms), and the sessions still on the server the
moment the pool's close returned.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import aiomysql  # noqa: E402
import pymysql  # noqa: E402
from mariadb import APP_USER, MariaDB, SessionSampler  # noqa: E402
from peers import driver_kwargs  # noqa: E402

import aconn  # noqa: E402

CAP = 10
DOC = ROOT / "docs" / "reliability.md"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"


class Contender:
    """One way of getting a connection for a unit of work; the same aiomysql connection type for all."""

    name = ""

    async def open(self, settings: dict[str, Any], max_age: float) -> None:
        """Ready to serve units; connections are replaced after ``max_age`` seconds."""
        raise NotImplementedError

    def unit(self) -> contextlib.AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class Aconn(Contender):
    name = "aconn"

    async def open(self, settings: dict[str, Any], max_age: float) -> None:
        self.connections = aconn.Connections({"default": {**settings, "CONN_MAX_AGE": max_age, "MAX_CONNS": CAP}})

    @contextlib.asynccontextmanager
    async def unit(self) -> AsyncIterator[Any]:
        async with self.connections.scope():
            yield await self.connections.connection()

    async def close(self) -> None:
        await self.connections.aclose()


class AiomysqlPool(Contender):
    name = "aiomysql.Pool"

    async def open(self, settings: dict[str, Any], max_age: float) -> None:
        self.pool = await aiomysql.create_pool(minsize=0, maxsize=CAP, pool_recycle=max_age, **driver_kwargs(settings))

    def unit(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self.pool.acquire()  # type: ignore[no-any-return]

    async def close(self) -> None:
        self.pool.close()
        await self.pool.wait_closed()


class SQLAlchemy(Contender):
    name = "SQLAlchemy, pool_pre_ping"

    async def open(self, settings: dict[str, Any], max_age: float) -> None:
        from sqlalchemy.ext.asyncio import create_async_engine

        s = settings
        url = f"mysql+aiomysql://{s['USER']}:{s['PASSWORD']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"
        self.engine = create_async_engine(url, pool_size=CAP, max_overflow=0, pool_pre_ping=True, pool_recycle=max_age)

    @contextlib.asynccontextmanager
    async def unit(self) -> AsyncIterator[Any]:
        async with self.engine.connect() as conn:
            yield (await conn.get_raw_connection()).driver_connection

    async def close(self) -> None:
        await self.engine.dispose()


@dataclass
class Row:
    fault: str
    contender: str
    units: int = 0
    errors: int = 0
    max_sessions: int = 0
    left_after_close: int = 0

    @property
    def per_10k(self) -> float:
        return self.errors / max(1, self.units) * 10_000


async def select(conn: Any, sql: str) -> Any:
    async with conn.cursor() as cur:
        await cur.execute(sql)
        return await cur.fetchall()


async def short_units(c: Contender, row: Row, seconds: float, tasks: int) -> None:
    """``tasks`` loops of short units: SELECT 1, then 5 ms of work holding the connection."""

    async def task() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            row.units += 1
            try:
                async with c.unit() as conn:
                    await select(conn, "SELECT 1")
                    await asyncio.sleep(0.005)
            except Exception:
                row.errors += 1

    await asyncio.gather(*(task() for _ in range(tasks)))


# -- workloads: (contender, row, seconds, server) -> None ------------------------------------


async def cancelled_long_statements(c: Contender, row: Row, seconds: float, server: MariaDB) -> None:
    """20 tasks; each unit runs SELECT SLEEP(2) under a 0.2 s request timeout."""

    async def task() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            row.units += 1
            try:
                async with asyncio.timeout(0.2), c.unit() as conn:
                    await select(conn, "SELECT SLEEP(2)")
            except TimeoutError:
                pass  # the workload's own timeout
            except Exception:
                row.errors += 1
                await asyncio.sleep(0.01)

    await asyncio.gather(*(task() for _ in range(20)))


async def sessions_killed(c: Contender, row: Row, seconds: float, server: MariaDB) -> None:
    """50 loops of short units; every 0.25 s an admin kills every session of the application user."""
    stop = threading.Event()

    def killer() -> None:
        while not stop.wait(0.25):
            with contextlib.suppress(pymysql.err.MySQLError):
                for thread_id in server.app_threads():
                    with contextlib.suppress(pymysql.err.MySQLError):
                        server.sql(f"KILL CONNECTION {thread_id}")

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        await short_units(c, row, seconds, tasks=50)
    finally:
        stop.set()
        thread.join(10)


async def server_full(c: Contender, row: Row, seconds: float, server: MariaDB) -> None:
    """max_connections=20; other clients grab every session that frees up (15 at most) for 0.5 s, then
    leave for 0.1 s, over and over; 30 loops of short units run meanwhile, their connections replaced
    every second (max age), so that each replacement races the other clients."""
    server.sql(
        "SET GLOBAL max_connections = 20",
        "CREATE USER IF NOT EXISTS 'other'@'%' IDENTIFIED BY 'other-pw'",
    )
    stop = threading.Event()

    def others() -> None:
        held: list[Any] = []
        while not stop.is_set():
            cycle_end = time.monotonic() + 0.5
            while time.monotonic() < cycle_end and not stop.is_set():
                if len(held) < 15:  # grab every session that frees up
                    with contextlib.suppress(pymysql.err.MySQLError):
                        held.append(pymysql.connect(host="127.0.0.1", port=server.port, user="other",
                                                    password="other-pw", connect_timeout=2))  # fmt: skip
                stop.wait(0.005)
            for conn in held:
                conn.close()
            held = []
            stop.wait(0.1)

    thread = threading.Thread(target=others, daemon=True)
    thread.start()
    try:
        await short_units(c, row, seconds, tasks=30)
    finally:
        stop.set()
        thread.join(10)
        server.sql("SET GLOBAL max_connections = 151")


#: fault -> (workload, the contenders' max age of a connection in seconds)
FAULTS: dict[str, tuple[Callable[[Contender, Row, float, MariaDB], Awaitable[None]], float]] = {
    "statements cancelled by a 0.2 s timeout": (cancelled_long_statements, 60),
    "every session killed every 0.25 s": (sessions_killed, 60),
    "other clients fill max_connections (connections replaced every 1 s)": (server_full, 1),
}


async def measure(server: MariaDB, seconds: float) -> list[Row]:
    rows = []
    for fault, (workload, max_age) in FAULTS.items():
        for contender in (Aconn(), AiomysqlPool(), SQLAlchemy()):
            row = Row(fault, contender.name)
            await contender.open(server.settings(), max_age)
            try:
                with SessionSampler(server) as sampler:
                    async with asyncio.timeout(seconds + 60):
                        await workload(contender, row, seconds, server)
                    await contender.close()
                    row.left_after_close = len(server.app_threads())
                row.max_sessions = sampler.max_sessions
            finally:
                await contender.close()
            server.kill_app_sessions()
            print(f"{fault:42} {row.contender:28} units={row.units:6} errors/10k={row.per_10k:8.1f} "
                  f"max_sessions={row.max_sessions:3} left_after_close={row.left_after_close}", flush=True)  # fmt: skip
            rows.append(row)
    return rows


def render(rows: list[Row], seconds: float) -> str:
    lines = [
        f"Measured by `nox -s reliability` ({seconds:g} s per fault and contender, cap {CAP} connections each, "
        f"on this project's 2-core machine; server: a throwaway MariaDB, application user `{APP_USER}`).",
        "",
        "| fault | contender | units | errors per 10k units | most sessions on the server "
        "| sessions left after close |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r.fault} | {r.contender} | {r.units} | {r.per_10k:.0f} | {r.max_sessions} | {r.left_after_close} |"
        for r in rows
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--no-write", action="store_true", help="print the table, leave docs/reliability.md alone")
    args = parser.parse_args()
    logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)  # its tracebacks of reset failures
    server = MariaDB().start()
    try:
        rows = asyncio.run(measure(server, args.seconds))
    finally:
        server.close()
    table = render(rows, args.seconds)
    print(table)
    if not args.no_write:
        text = DOC.read_text()
        pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
        if not pattern.search(text):
            raise SystemExit(f"{DOC} has no {START} ... {END} section to fill")
        DOC.write_text(pattern.sub(lambda _: f"{START}\n{table}\n{END}", text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
