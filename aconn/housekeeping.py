"""Background upkeep while a handler is open: retire expired idle connections, keep MIN_CONNS.

It runs in an anyio task group hosted by one task of the handler's own, so
that ``open()`` and ``aclose()`` may be called from different tasks.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from time import monotonic

import anyio

from ._backoff import Backoff
from .pool import MAX_BACKOFF, Pool

__all__ = ("Housekeeper",)

logger = logging.getLogger("aconn")

#: the housekeeper looks at least this often, even with nothing due
MAX_INTERVAL = 30.0
#: and at most this often
MIN_INTERVAL = 0.05
#: with MIN_CONNS to keep, this often (a sweep is timestamps and socket polls: no round trip)
WARM_INTERVAL = 1.0
#: backoff ceiling while the server refuses MIN_CONNS refills
MAX_REFILL_BACKOFF = 30.0


class Housekeeper:
    """One loop per alias: sleep until the next idle deadline, sweep, top up MIN_CONNS."""

    def __init__(self, pools: Sequence[Pool]) -> None:
        self._pools = pools
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="aconn-housekeeper")

    async def stop(self) -> None:
        # Cancel the host task itself: a cancel scope made inside it would not exist yet if
        # aclose() came before the task first ran (open() then aclose() with no await between).
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        async with anyio.create_task_group() as tg:
            for pool in self._pools:
                tg.start_soon(self._tend, pool, name=f"aconn-housekeeper-{pool.alias}")

    async def _tend(self, pool: Pool) -> None:
        backoff = Backoff(MAX_BACKOFF / 4, MAX_REFILL_BACKOFF, jitter=0.25)
        failures = 0
        idle_delay = _interval(pool)
        while not pool.closed:
            pool.sweep()
            delay = idle_delay
            if pool.size < pool.settings.min_conns and pool.waiting == 0:
                try:
                    await pool.fill()
                except Exception as exc:
                    failures += 1
                    delay = backoff.next_delay()
                    if failures == 1 or math.log2(failures).is_integer():
                        logger.warning(
                            "aconn alias %r: cannot keep MIN_CONNS=%d open (%s); retrying (attempt %d, next in %.1fs)",
                            pool.alias,
                            pool.settings.min_conns,
                            _safe(exc),
                            failures,
                            delay,
                        )
                else:
                    if failures:
                        logger.info("aconn alias %r: server reachable again", pool.alias)
                    failures = 0
                    backoff.reset()
                    continue  # open the next one at once
            due = pool.next_expiry() - monotonic()
            await anyio.sleep(max(MIN_INTERVAL, min(delay, due)))
            idle_delay = _interval(pool)  # the server's limits are known once a connection opened


def _interval(pool: Pool) -> float:
    """How long to sleep with nothing due: half the shortest lifetime a connection may have.

    A connection returned to the idle set after the housekeeper went to sleep
    is retired at most this late (and is checked at hand-out anyway).
    """
    settings = pool.settings
    lifetimes = [MAX_INTERVAL * 2]
    if settings.conn_max_age:
        lifetimes.append(settings.conn_max_age)
    if settings.idle_timeout:
        lifetimes.append(settings.idle_timeout)
    if pool.limits is not None and pool.limits.idle_timeout:
        lifetimes.append(pool.limits.idle_timeout)
    interval = max(MIN_INTERVAL, min(lifetimes) / 2)
    return min(interval, WARM_INTERVAL) if settings.min_conns else interval


def _safe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
