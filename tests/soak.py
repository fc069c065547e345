"""Soak: mixed load on aconn while faults are injected at random, then the invariants.

    python tests/soak.py --seconds 300      # what `nox -s soak` runs
    python tests/soak.py --fault-gap 0.1 0.4  # faults about twice as often
    (tests/test_soak.py runs a short version in the suite)

Load: scopes with checked results, transactions (committed and rolled
back), cancellations of short and of long statements (``SELECT SLEEP(2)``
cancelled after 0.05-0.3 s), child tasks with scopes of their own, through a
TCP proxy to a throwaway MariaDB whose sessions have wait_timeout=2. Faults:
admin kills, server restarts, SIGSTOP freezes, proxy resets and black holes.
Invariants: every error surfaced is one a fault explains (a known kind, within
a few seconds of a fault); zero wrong results; zero sessions left on the
server after aclose; counters balance; the sessions of the application user
on the server, sampled every 50 ms, never above ``Summary.session_bound`` (see there).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faults import Proxy
from mariadb import DRIVERS, MariaDB, SessionSampler, driver_errors

import aconn

#: errors a fault explains: lost or refused sessions, server shutdown, waits that ran out
EXPLAINED_CODES = frozenset({1053, 1927, 2003, 2006, 2013})
#: an error more than this long after the last fault ended is unexplained
EXPLAIN_WINDOW = 15.0
#: the soak's cap; the server may also see the one side session that sends KILLs
MAX_CONNS = 6
#: the most sessions the server may hold for the soak's alias: the cap and the side session
#: (a session cut mid-command, a statement or a health-check ping, keeps its slot until the
#: server has dropped it)
MAX_SESSIONS = MAX_CONNS + 1
CANCELLED = "cancelled by the load (expected)"


@dataclass
class Summary:
    scopes: int = 0
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    unexplained: list[str] = field(default_factory=list)
    #: the sessions on the server at the busiest sample: (statement, ms, id, command, state) each
    busiest: list[tuple[Any, ...]] = field(default_factory=list)
    wrong_results: int = 0
    leaked_sessions: int = -1
    longest_recovery_s: float = 0.0
    balanced: bool = False
    max_sessions: int = 0
    server_cancels: int = 0
    server_cancels_failed: int = 0
    side_sessions_lost: int = 0

    def line(self) -> str:
        return (
            f"soak: scopes={self.scopes} faults={sum(self.faults.values())} {dict(self.faults)} "
            f"errors={dict(self.errors)} unexplained={len(self.unexplained)} wrong_results={self.wrong_results} "
            f"leaked_connections={self.leaked_sessions} longest_recovery_after_restart={self.longest_recovery_s:.2f}s "
            f"counters_balanced={self.balanced} sessions_on_server_max={self.max_sessions} "
            f"(cap MAX_CONNS={MAX_CONNS}, at most {self.session_bound}) "
            f"statements_stopped_at_server={self.server_cancels} "
            f"stops_failed={self.server_cancels_failed} side_sessions_lost={self.side_sessions_lost}"
        )

    @property
    def session_bound(self) -> int:
        """What aconn promises: MAX_SESSIONS, plus one per stop that failed (WARNING logged), plus
        one per side session lost mid-``KILL`` to a network fault.

        A stop that cannot reach the server within its 5 s bound (a restart that takes longer)
        frees the slot unverified; until the server reaps that session it may count one more.
        A side session cut by a reset is replaced at once, while the server may still be tearing
        the old one down (its KILL waits for the same target): one more for that moment. Both are
        counted by aconn; removing the second is issue #26's open item (docs/reliability.md).
        """
        return MAX_SESSIONS + self.server_cancels_failed + self.side_sessions_lost

    @property
    def ok(self) -> bool:
        return (
            not self.unexplained and self.wrong_results == 0 and self.leaked_sessions == 0 and self.balanced
            and self.max_sessions <= self.session_bound
        )  # fmt: skip


async def soak(
    server: MariaDB,
    seconds: float,
    seed: int = 1,
    concurrency: int = 24,
    faults: bool = True,
    driver: str = "aiomysql",
    fault_gap: tuple[float, float] = (0.5, 1.5),
) -> Summary:
    """``fault_gap``: the seconds between one fault's end and the next one's start, drawn evenly."""
    rng = random.Random(seed)
    server.driver = driver  # the ENGINE of server.settings()
    errors = driver_errors(driver)
    summary = Summary()
    proxy = Proxy(server.port).start()
    server.sql("CREATE TABLE IF NOT EXISTS aconn_test.soak (id INT AUTO_INCREMENT PRIMARY KEY, n INT) ENGINE=InnoDB")
    connections = aconn.Connections(
        {"default": server.settings(
            PORT=proxy.port, CONN_MAX_AGE=30, CONN_HEALTH_CHECKS=True, MAX_CONNS=MAX_CONNS, ACQUIRE_TIMEOUT=5,
            CONNECT_TIMEOUT=1, OPTIONS={"init_command": "SET SESSION wait_timeout=2"})}
    )  # fmt: skip
    last_fault_end = time.monotonic()
    faulting = False
    restarted_at: float | None = None
    deadline = time.monotonic() + seconds

    async def fetch(conn: Any, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        async with conn.cursor() as cur:
            await cur.execute(sql, args)
            return list(await cur.fetchall())

    def record_error(exc: BaseException) -> None:
        code = exc.args[0] if isinstance(exc, errors.MySQLError) and exc.args else None
        kind = f"{type(exc).__name__}({code})" if code is not None else type(exc).__name__
        summary.errors[kind] += 1
        known = isinstance(exc, aconn.AcquireTimeout | errors.InterfaceError) or code in EXPLAINED_CODES
        recent = faulting or time.monotonic() - last_fault_end < EXPLAIN_WINDOW
        if not (known and recent):
            # where it came from, for the next one to read: aconn's notes (a connect says so) and
            # the innermost frames
            where = "".join(traceback.format_exception(exc, limit=-8))
            since = time.monotonic() - last_fault_end
            summary.unexplained.append(f"{kind}: {exc}; the last fault ended {since:.2f}s before\n{where}")

    async def child(m: int) -> None:
        async with connections.scope():
            rows = await fetch(await connections.connection(), "SELECT %s", (m,))
            if rows != [(m,)]:
                summary.wrong_results += 1

    async def one_scope(n: int) -> None:
        nonlocal restarted_at
        op = rng.random()
        async with connections.scope():
            if op >= 0.85:
                # child tasks with scopes of their own; the parent holds no connection meanwhile
                # (one that did could starve the pool: docs/concurrency.md)
                await asyncio.gather(child(n + 1), child(n + 2))
            elif op < 0.5:
                conn = await connections.connection()
                if await fetch(conn, "SELECT %s", (n,)) != [(n,)]:
                    summary.wrong_results += 1
            elif op < 0.7:
                conn = await connections.connection()
                await conn.begin()
                await fetch(conn, "INSERT INTO soak (n) VALUES (%s)", (n,))
                if await fetch(conn, "SELECT n FROM soak WHERE id = LAST_INSERT_ID()") != [(n,)]:
                    summary.wrong_results += 1
                if op < 0.6:
                    await conn.commit()  # else: left open, rolled back at scope exit
            elif op < 0.78:
                conn = await connections.connection()
                try:
                    async with asyncio.timeout(rng.uniform(0.05, 0.3)):
                        await fetch(conn, "SELECT SLEEP(2)")  # a long statement, stopped at the server
                except TimeoutError:
                    summary.errors[CANCELLED] += 1
                    raise
            else:
                conn = await connections.connection()
                try:
                    async with asyncio.timeout(rng.random() * 0.02):
                        await fetch(conn, "SELECT SLEEP(0.05)")
                except TimeoutError:
                    summary.errors[CANCELLED] += 1
                    raise
        summary.scopes += 1
        if restarted_at is not None:
            summary.longest_recovery_s = max(summary.longest_recovery_s, time.monotonic() - restarted_at)
            restarted_at = None

    async def load() -> None:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            try:
                await one_scope(rng.randrange(1_000_000) + n)
            except TimeoutError as exc:
                if not isinstance(exc, aconn.AcquireTimeout) and summary.errors[CANCELLED]:
                    continue
                record_error(exc)
            except Exception as exc:
                record_error(exc)
                await asyncio.sleep(0.01)  # back off a little while the fault lasts

    async def inject() -> None:
        nonlocal last_fault_end, faulting, restarted_at
        while time.monotonic() < deadline - 2:
            await asyncio.sleep(rng.uniform(*fault_gap))
            fault = rng.choice(["kill", "restart", "freeze", "reset", "blackhole"])
            summary.faults[fault] += 1
            faulting = True
            if fault == "kill":
                await asyncio.to_thread(server.kill_app_sessions)
            elif fault == "restart":
                await asyncio.to_thread(server.restart)
                restarted_at = time.monotonic()
            elif fault == "freeze":
                server.freeze()
                await asyncio.sleep(rng.uniform(0.2, 1.0))
                server.thaw()
            elif fault == "reset":
                await asyncio.to_thread(proxy.reset_all)
            else:
                proxy.blackhole = True
                await asyncio.sleep(rng.uniform(0.2, 1.0))
                proxy.blackhole = False
            faulting = False
            last_fault_end = time.monotonic()

    try:
        with SessionSampler(server) as sampler:
            await asyncio.gather(*([inject()] if faults else []), *(load() for _ in range(concurrency)))
        summary.max_sessions = sampler.max_sessions
        summary.busiest = sampler.busiest
        await connections.close_old()  # background work (statements being stopped) done
        stats = connections.stats()
        summary.server_cancels, summary.server_cancels_failed = stats.server_cancels, stats.server_cancels_failed
        summary.side_sessions_lost = connections.pool("default").backend.side_sessions_lost
        summary.balanced = (
            stats.open == stats.idle + stats.in_use + stats.opening + stats.closing
            and stats.in_use == 0 and stats.waiting == 0 and stats.open <= stats.max_conns
        )  # fmt: skip
        await connections.aclose()
        summary.leaked_sessions = len(server.wait_app_threads(lambda t: not t, timeout=15))
    finally:
        await connections.aclose()
        proxy.close()
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--driver", choices=list(DRIVERS), default="aiomysql", help="the MySQL driver")
    parser.add_argument(
        "--fault-gap", type=float, nargs=2, default=(0.5, 1.5), metavar=("MIN", "MAX"),
        help="seconds between two faults, drawn evenly from MIN to MAX (default: 0.5 1.5)",
    )  # fmt: skip
    args = parser.parse_args()
    server = MariaDB().start()
    try:
        gap = (args.fault_gap[0], args.fault_gap[1])
        summary = asyncio.run(soak(server, args.seconds, args.seed, driver=args.driver, fault_gap=gap))
    finally:
        server.close()
    print(f"{args.driver}: {summary.line()}")
    if summary.max_sessions > summary.session_bound:  # what the extra sessions were, for whoever reads the failure
        for row in summary.busiest:
            print("  session at the busiest sample:", row)
    for line in summary.unexplained[:20]:
        print("  unexplained:", line)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
