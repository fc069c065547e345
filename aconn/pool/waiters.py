"""The tasks waiting for a connection of one pool: first in, first out, one timer for all."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from ..errors import AcquireTimeout
from .counters import Counters
from .holder import Holder, _Slot

__all__ = ("Waiters",)


class Waiters(deque[tuple[float, asyncio.Future[Holder | _Slot]]]):
    """``(deadline, future)`` of each waiting task, oldest first.

    Deadlines rise along the queue (every waiter has the same ``ACQUIRE_TIMEOUT``),
    so one timer, armed for the oldest live waiter, times them all out: no timer per
    waiter to arm and cancel. A deque itself, so that the scope path's "anyone
    waiting?" is a deque's truth value, in C. Dead futures (cancelled waiters) are
    skipped when a grant is handed over, and dropped when the last waiter leaves.

    :param timed_out: builds the error a waiter past its deadline gets.
    :param regrant: passes on a grant that reached a waiter as it was being cancelled.
    """

    __slots__ = ("_counters", "_regrant", "_timed_out", "_timer", "live")

    def __init__(
        self, timed_out: Callable[[], AcquireTimeout], regrant: Callable[[Holder | _Slot], None], counters: Counters
    ) -> None:
        super().__init__()
        #: live waiters (``PoolStats.waiting``)
        self.live = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timed_out = timed_out
        self._regrant = regrant
        self._counters = counters

    async def wait(self, loop: asyncio.AbstractEventLoop, deadline: float) -> Holder | _Slot:
        """Queue until a release hands over a connection or a slot, or the deadline passes.

        :raises AcquireTimeout: at the deadline.
        """
        waiter: asyncio.Future[Holder | _Slot] = loop.create_future()
        self.append((deadline, waiter))
        self.live += 1
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire)
        started = loop.time()
        try:
            return await waiter
        except AcquireTimeout:
            self._counters.acquire_timeouts += 1
            raise
        except BaseException:
            # A grant that arrived as we were cancelled is passed on, never lost.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._regrant(waiter.result())
            else:
                waiter.cancel()
            raise
        finally:
            self.live -= 1
            if self.live == 0:
                self.clear()  # only dead futures can be left: drop them
            self._counters.waited(loop.time() - started)

    def hand_over(self, grant: Holder | _Slot) -> bool:
        """Give ``grant`` to the oldest live waiter; False if none is left."""
        while self:
            _, waiter = self.popleft()
            if not waiter.done():
                waiter.set_result(grant)
                return True
        return False

    def fail_all(self, exc: BaseException) -> None:
        """Wake every waiter with ``exc`` (the pool closes)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for _, waiter in self:
            if not waiter.done():
                waiter.set_exception(exc)

    def _expire(self) -> None:
        """The timer of the oldest waiter: time out every waiter past its deadline, re-arm for the next."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self:
            deadline, waiter = self[0]
            if not waiter.done():
                if deadline > now:
                    self._timer = loop.call_at(deadline, self._expire)
                    return
                waiter.set_exception(self._timed_out())
            self.popleft()
