"""One pooled connection (:class:`Holder`), the transitions of its slot, and its owner.

Each transition checks the state it leaves, moves the pool's ``in_use`` and
``closing`` gauges with it (``size`` and ``opening``, which count slots with no
connection yet, move in the pool's slot methods), and rejects an illegal move
with an internal error naming both states: the invariant
``size == idle + in_use + opening + closing`` is kept here, not by hand-paired
mutations spread over the pool. The holder also owns who holds it, since when,
and its leak timer (:meth:`Holder.handed_out`, :meth:`Holder.unwatched`).
Two sites are written out on the scope path (``Pool.take_idle`` inlines
:meth:`Holder.taken` and :meth:`Holder.handed_out`, ``Pool.release`` clears the
owner and inlines :meth:`Holder.idled`); ``tests/test_structure.py``
checks that nothing else writes these fields and that the copies agree.
"""

from __future__ import annotations

import asyncio
import enum
import os
import traceback
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, Protocol

from ..backends.base import Backend
from ..errors import InternalError

if TYPE_CHECKING:
    from .nodes import Node

__all__ = ("SLOT", "CloseReason", "Holder", "HolderState", "SlotOwner", "Watch")


class HolderState(enum.Enum):
    """Where a pooled connection is in its life."""

    OPENING = "opening"
    IDLE = "idle"
    IN_USE = "in use"
    #: in use by every scope at once, until unpinned: a test's transaction (``aconn.testing``)
    PINNED = "pinned"
    CLOSING = "closing"
    CLOSED = "closed"


class CloseReason(enum.Enum):
    """Why a connection was closed: the keys of ``PoolStats.closed_*`` and of the log lines."""

    MAX_AGE = "max_age"
    IDLE = "idle"
    UNUSABLE = "unusable"
    ERROR = "error"
    SHUTDOWN = "shutdown"
    #: its cluster node left the state TARGET needs (multi-host aliases)
    NODE = "node"

    @property
    def message(self) -> str:
        """What the INFO line says happened."""
        return _REASON_MESSAGES[self]


_REASON_MESSAGES: Final = {
    CloseReason.MAX_AGE: "reached CONN_MAX_AGE",
    CloseReason.IDLE: "idle past the idle limit",
    CloseReason.UNUSABLE: "found dead by a check",
    CloseReason.ERROR: "saw an error, a cancellation or a timeout",
    CloseReason.SHUTDOWN: "shutdown",
    CloseReason.NODE: "its node left the state TARGET needs",
}

_OPENING, _IDLE, _IN_USE, _PINNED, _CLOSING, _CLOSED = (
    HolderState.OPENING, HolderState.IDLE, HolderState.IN_USE, HolderState.PINNED, HolderState.CLOSING,
    HolderState.CLOSED,
)  # fmt: skip


class SlotOwner(Protocol):
    """What a holder knows of its pool (:class:`~aconn.pool.Pool`, which imports this module)."""

    alias: str
    backend: Backend
    _in_use: int
    _opening: int
    _closing: int

    def _release_slot(self) -> None: ...

    def _count_closed(self, holder: Holder, reason: CloseReason) -> None: ...

    def release(
        self, holder: Holder, exc: BaseException | None, clean: bool = False
    ) -> Coroutine[Any, Any, None] | None: ...

    async def give_back(self, holder: Holder, exc: BaseException | None) -> None: ...


class _Slot:
    """Granted to a waiter: the right to open a new connection in a slot freed for it."""

    def __repr__(self) -> str:
        return "SLOT"


SLOT: Final = _Slot()


class Watch:
    """What a pool watches over each connection while it is taken: ``LEAK_TIMEOUT``'s timer and the
    ``use`` hook's duration. A pool that watches neither has none, and its scope path skips both.

    :param leak_timeout: seconds a connection may be held before ``on_leak(holder)`` (None: never).
    :param on_use: called with each holder given back (None: nobody observes the use).
    """

    __slots__ = ("leak_timeout", "on_leak", "on_use")

    def __init__(
        self,
        leak_timeout: float | None,
        on_leak: Callable[[Holder], None],
        on_use: Callable[[Holder], None] | None,
    ) -> None:
        self.leak_timeout = leak_timeout
        self.on_leak = on_leak
        self.on_use = on_use


#: aconn's package directory: its frames are left out of a leak report's stack
_PACKAGE_DIR: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _callers_stack() -> list[str]:
    """The stack that took a connection, formatted, up to the innermost frame outside aconn.

    aconn's own frames are dropped by their file, not counted: a compiled build (mypyc) has none.
    """
    frames = traceback.extract_stack(limit=16)
    while frames and frames[-1].filename.startswith(_PACKAGE_DIR):
        frames.pop()
    return traceback.format_list(frames)


class Holder:
    """One pooled connection, its state, its owner and its timestamps."""

    __slots__ = (
        "alive",
        "close_at",
        "conn",
        "idle_limit",
        "last_used",
        "leak_timer",
        "node",
        "opened_at",
        "pool",
        "state",
        "taken_at",
        "taken_stack",
        "task",
    )  # fmt: skip

    def __init__(
        self, pool: SlotOwner, conn: Any, alive: Callable[[], bool], now: float, close_at: float, idle_limit: float
    ) -> None:
        self.pool = pool
        self.conn = conn
        self.alive = alive  # the backend's liveness check of this connection, built once
        self.opened_at = now
        self.close_at = close_at
        self.idle_limit = idle_limit
        self.last_used = now
        self.state = _OPENING
        self.task: asyncio.Task[Any] | None = None
        self.taken_at = now
        self.taken_stack: list[str] | None = None
        self.leak_timer: asyncio.TimerHandle | None = None
        #: the cluster node it is on (a multi-host alias), else None
        self.node: Node | None = None

    def __repr__(self) -> str:
        return f"<Holder {self.state.value} conn={type(self.conn).__name__}@{id(self.conn):#x}>"

    def _illegal(self, to: HolderState) -> InternalError:
        return InternalError(
            f"aconn alias {self.pool.alias!r}: a connection moved from {self.state.value!r} to {to.value!r}"
        )

    # -- transitions: each moves the pool's gauges with the state -------------------------

    def opened(self) -> None:
        """OPENING -> IN_USE: the slot counted as opening is now in use."""
        if self.state is not _OPENING:
            raise self._illegal(_IN_USE)
        pool = self.pool
        pool._opening -= 1
        pool._in_use += 1
        self.state = _IN_USE

    def taken(self, now: float) -> None:
        """IDLE -> IN_USE at ``now``, popped from the idle stack by the caller (inlined in ``Pool.take_idle``)."""
        if self.state is not _IDLE:
            raise self._illegal(_IN_USE)
        self.pool._in_use += 1
        self.state = _IN_USE
        self.taken_at = now

    def handed_over(self, now: float) -> None:
        """IN_USE, given back while a task waited: handed to that waiter at ``now`` (still in use)."""
        if self.state is not _IN_USE:
            raise self._illegal(_IN_USE)
        self.taken_at = now

    # -- its owner, and what is watched while it holds the connection --------------------

    def handed_out(self, task: asyncio.Task[Any] | None, watch: Watch | None) -> None:
        """``task`` owns the connection from now on (inlined in ``Pool.take_idle``)."""
        self.task = task
        if watch is not None:
            self.watched(watch)

    def watched(self, watch: Watch) -> None:
        """Start the leak timer, if the pool watches for leaks."""
        if watch.leak_timeout is not None:
            self.taken_stack = _callers_stack()
            self.leak_timer = asyncio.get_running_loop().call_later(watch.leak_timeout, self._leaked, watch)

    def _leaked(self, watch: Watch) -> None:
        self.leak_timer = None
        watch.on_leak(self)

    def unwatched(self, watch: Watch | None) -> None:
        """Stop the leak timer; report the use to ``watch`` if it observes it."""
        timer = self.leak_timer
        if timer is not None:
            timer.cancel()
            self.leak_timer = None
        if watch is not None and watch.on_use is not None:
            watch.on_use(self)

    def idled(self) -> None:
        """IN_USE -> IDLE, pushed on the idle stack by the caller (inlined in ``Pool.release``)."""
        if self.state is not _IN_USE:
            raise self._illegal(_IDLE)
        self.pool._in_use -= 1
        self.state = _IDLE

    def pinned(self) -> None:
        """IN_USE -> PINNED: shared by every scope (a test's transaction); still counted in use."""
        if self.state is not _IN_USE:
            raise self._illegal(_PINNED)
        self.task = None
        self.unwatched(None)  # held for a whole test on purpose: no leak
        self.state = _PINNED

    def unpinned(self) -> None:
        """PINNED -> IN_USE: one owner again, who gives it back with ``Pool.release``."""
        if self.state is not _PINNED:
            raise self._illegal(_IN_USE)
        self.state = _IN_USE

    def closing(self, reason: CloseReason) -> None:
        """IDLE or IN_USE -> CLOSING: the slot counts as closing until :meth:`closed`. Counts the close."""
        pool = self.pool
        if self.state is _IN_USE:
            pool._in_use -= 1
        elif self.state is not _IDLE:
            raise self._illegal(_CLOSING)
        pool._closing += 1
        self.state = _CLOSING
        pool._count_closed(self, reason)

    def closed(self) -> None:
        """CLOSING -> CLOSED: its slot goes to the oldest waiter, or is freed."""
        if self.state is not _CLOSING:
            raise self._illegal(_CLOSED)
        self.state = _CLOSED
        pool = self.pool
        pool._closing -= 1
        pool._release_slot()

    def dropped(self, reason: CloseReason) -> None:
        """IDLE or IN_USE -> CLOSED at once, with no I/O. Counts the close.

        Its slot stays counted in ``size`` only: before the next ``await`` the caller opens
        in it (``Pool._open_in_slot``) or frees it (``Pool._release_slot``), and aborts or forgets
        the driver's connection.
        """
        if self.state is _IN_USE:
            self.pool._in_use -= 1
        elif self.state is not _IDLE:
            raise self._illegal(_CLOSED)
        self.state = _CLOSED
        self.pool._count_closed(self, reason)
