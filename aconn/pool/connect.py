"""Opening connections for one alias: bounded in time, a refusal retried with backoff."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final

from .._backoff import Backoff
from ..backends.base import Backend, ErrorKind, ServerLimits
from ..errors import AcquireTimeout
from ..settings import Settings
from .counters import Counters
from .holder import Holder
from .nodes import Node, NodeReadyError, Nodes

__all__ = ("MAX_BACKOFF", "Connector")

logger = logging.getLogger("aconn")

#: ceiling of the backoff between retries of a refused connect
MAX_BACKOFF: Final = 1.0
#: the first backoff; doubled at each refusal, jittered down by up to half
FIRST_BACKOFF: Final = 0.05


class Connector:
    """Connects for one alias within a deadline.

    Each attempt is bounded by ``CONNECT_TIMEOUT`` and what is left of the
    caller's deadline. A refusal the server may lift (too many connections, a
    server restarting) is retried with jittered exponential backoff until the
    deadline, with one WARNING per outage; any other error is the driver's own,
    with a note naming the alias and ``host:port``.
    """

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        counters: Counters,
        background: set[asyncio.Task[Any]],
        nodes: Nodes | None = None,
    ) -> None:
        self.settings = settings
        #: a multi-host alias' nodes: each connect goes to one that qualifies (None: HOST alone)
        self.nodes = nodes
        self.alias = settings.alias
        self.backend = backend
        self.counters = counters
        #: the pool's background work, which its close waits for: connects whose caller left go there
        self._background = background
        #: what the last successful connect learned of the server
        self.limits: ServerLimits | None = None
        #: the server refuses new connections now: the last connect was refused, none succeeded since
        self._refusing = False
        #: loop time a connect succeeded after refusals, ending the last such spell (-inf: none yet)
        self._refusals_ended = -math.inf

    async def connect(
        self,
        deadline: float,
        timed_out: Callable[[], AcquireTimeout],
        rest: Callable[[float, float], Awaitable[Holder | None]] | None = None,
        background: bool = False,
    ) -> tuple[Any, ServerLimits, Node | None] | Holder:
        """A new driver connection, the server's limits, and the node it is on (multi-host aliases).

        :param rest: how to spend a backoff after a refusal, ``rest(seconds, deadline)``: the pool
            queues the caller as a waiter meanwhile, and a connection given back to it ends the
            backoff and is returned instead (None: slept out).
        :param background: the connect is the pool's own (``MIN_CONNS``): when its caller is
            cancelled (the handler closing), it finishes instead of being cut mid-handshake.
        :raises AcquireTimeout: at the deadline, or when one attempt outlives ``CONNECT_TIMEOUT``.
        :raises Exception: the driver's error, for a refusal that retrying will not lift.
        """
        loop = asyncio.get_running_loop()
        settings = self.settings
        counters = self.counters
        backoff = Backoff(FIRST_BACKOFF, MAX_BACKOFF, jitter=0.5)
        refused = 0
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                counters.acquire_timeouts += 1
                raise timed_out()
            bound = min(remaining, settings.connect_timeout)
            try:
                if background:
                    conn, limits, node = await self._finished_if_cancelled(loop, bound, deadline)
                else:
                    conn, limits, node = await self._attempt(bound, deadline)
            except TimeoutError:
                counters.connect_errors += 1
                counters.acquire_timeouts += 1
                raise AcquireTimeout(
                    f"aconn alias {self.alias!r}: connecting to {settings.target} took longer "
                    f"than {bound:g}s (CONNECT_TIMEOUT={settings.connect_timeout:g}s, "
                    f"ACQUIRE_TIMEOUT={settings.acquire_timeout:g}s)"
                    + self.refusals_note(loop.time())  # cut short by the deadline, after refusals
                ) from None
            except Exception as exc:
                counters.connect_errors += 1
                if isinstance(exc, NodeReadyError):
                    if not exc.retryable:
                        # every host failed with an error retrying will not lift: the first, with them all
                        first = exc.first or exc
                        first.add_note(f"aconn alias {self.alias!r}: connecting to {settings.target}: {exc}")
                        raise first from None
                elif self.backend.classify(exc, connecting=True) is not ErrorKind.RETRYABLE:
                    # the driver's own error, still catchable as such, now saying where it happened
                    exc.add_note(f"aconn alias {self.alias!r}: connecting to {settings.target}")
                    raise
                refused += 1
                remaining = deadline - loop.time()
                if remaining <= backoff.current:
                    raise AcquireTimeout(self._budget_message(exc, refused)) from exc
                if not self._refusing:  # once per outage, not once per waiter
                    self._refusing = True
                    logger.warning(
                        "aconn alias %r: the server refused or dropped a new connection (%s); "
                        "retrying with backoff within ACQUIRE_TIMEOUT",
                        self.alias,
                        exc,
                    )
                delay = backoff.next_delay(remaining)
                if rest is None:
                    await asyncio.sleep(delay)
                elif (granted := await rest(delay, deadline)) is not None:
                    return granted
            else:
                if self._refusing:
                    self._refusing = False
                    self._refusals_ended = loop.time()
                self.limits = limits
                return conn, limits, node

    async def _attempt(self, bound: float, deadline: float) -> tuple[Any, ServerLimits, Node | None]:
        if self.nodes is not None:  # each host bounded by CONNECT_TIMEOUT, the whole by the deadline
            return await self.nodes.connect(deadline)
        async with asyncio.timeout(bound):
            conn, limits = await self.backend.connect()
        return conn, limits, None

    async def _finished_if_cancelled(
        self, loop: asyncio.AbstractEventLoop, bound: float, deadline: float
    ) -> tuple[Any, ServerLimits, Node | None]:
        """:meth:`_attempt`, not cut short mid-handshake when the caller is cancelled (the handler
        closing), where drivers leave futures and half-open TLS sessions behind (asyncpg logged
        "Future exception was never retrieved"): it finishes within its bound, the pool's close
        waiting for it, and what it opened is closed."""
        attempt = loop.create_task(self._attempt(bound, deadline))
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            backend, background = self.backend, self._background

            def finished(task: asyncio.Task[tuple[Any, ServerLimits, Node | None]]) -> None:
                background.discard(task)
                if not task.cancelled() and task.exception() is None:  # retrieved: a failure is nobody's
                    backend.abort(task.result()[0])

            background.add(attempt)
            attempt.add_done_callback(finished)
            raise

    def _budget_message(self, exc: BaseException, attempts: int) -> str:
        if isinstance(exc, NodeReadyError):  # a multi-host alias: each host, and why it was passed over
            return (
                f"aconn alias {self.alias!r}: {exc}, until ACQUIRE_TIMEOUT={self.settings.acquire_timeout:g}s "
                f"ran out ({attempts} round(s) over the hosts)"
            )
        return (
            f"aconn alias {self.alias!r}: the server refused {attempts} new connection(s) until "
            f"ACQUIRE_TIMEOUT={self.settings.acquire_timeout:g}s ran out ({exc}). {self.budget_hint()}"
        )

    def refusals_note(self, now: float) -> str:
        """What the message of a wait that ran out at loop time ``now`` adds when the server
        refused new connections during it (any time within ``ACQUIRE_TIMEOUT``, the longest a
        wait lasts: it refuses them now, or a spell of refusals ended since; a connect that
        succeeded since does not undo it): that, and the budget. Else nothing."""
        if self._refusing or self._refusals_ended >= now - self.settings.acquire_timeout:
            return f". The server refused new connections meanwhile. {self.budget_hint()}"
        return ""

    def budget_hint(self) -> str:
        """Why a server refuses a fleet's connections, and what to change."""
        limit = self.limits.max_connections if self.limits else None
        server = f"the server's max_connections={limit}" if limit else "the server's max_connections"
        return (
            f"Every process may open MAX_CONNS={self.settings.max_conns}: processes x MAX_CONNS (plus other "
            f"clients) must stay below {server}; lower MAX_CONNS or raise the server's limit"
        )
