"""The one exponential backoff every retry loop of aconn uses (connects refused for now, the
housekeeper's MIN_CONNS refills, the waits until the server has dropped a session)."""

from __future__ import annotations

import asyncio
import random

__all__ = ("Backoff",)


class Backoff:
    """Delays from ``first`` doubling up to ``cap``; each one taken at random from its upper
    ``jitter`` fraction (0: exact), so that many tasks or processes retrying together spread out.

    ``next_delay(remaining)`` never returns more than ``remaining`` (a deadline's time left):
    a wait never outlives its caller's deadline.
    """

    __slots__ = ("_cap", "_first", "_jitter", "current")

    def __init__(self, first: float, cap: float, jitter: float = 0.0) -> None:
        self._first = first
        self._cap = cap
        self._jitter = jitter
        #: the next delay before jitter
        self.current = first

    def next_delay(self, remaining: float = float("inf")) -> float:
        """The delay to wait now (the backoff then grows)."""
        delay = self.current * (1.0 - self._jitter * random.random())
        self.current = min(self.current * 2, self._cap)
        return max(0.0, min(delay, remaining))

    async def sleep(self, remaining: float = float("inf")) -> None:
        """Wait :meth:`next_delay` (polling the server for a state no event reports)."""
        await asyncio.sleep(self.next_delay(remaining))

    def reset(self) -> None:
        """Start again from ``first`` (after a success)."""
        self.current = self._first
