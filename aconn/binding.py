"""Which event loop a handler belongs to, and what happens when that loop ends or the process forks.

A handler's connections belong to the event loop they were opened in. The
handler binds to the first loop that uses it (:meth:`LoopBinding.bind`); a
loop that ends with the handler still open has its connections closed
politely while it can still run I/O (a suspended async generator, which
``loop.shutdown_asyncgens()`` finalises: :meth:`LoopBinding._watch_loop_end`);
a later loop takes the handler over once the old one's work is done. A forked
child sets the parent's connections aside untouched and starts afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import AsyncGenerator
from typing import Protocol

from .errors import AconnError
from .scope import ScopeState

__all__ = ("Bound", "LoopBinding", "inherit_after_fork", "set_aside")

logger = logging.getLogger("aconn")


class Bound(Protocol):
    """What a :class:`LoopBinding` needs of its handler (:class:`~aconn.Connections`)."""

    _scopes: ScopeState
    _opened: bool

    def _quiet(self) -> bool:
        """True when no connection is being used, opened or closed."""
        ...

    def _left_loop(self) -> None:
        """The old loop ended without aclose(): drop its housekeeping and idle sockets, no I/O."""
        ...

    async def _loop_ended(self) -> None:
        """The bound loop is ending with the handler open: close what is open, politely."""
        ...

    def _start_afresh(self) -> None:
        """In a forked child: set the parent's connections aside, start as a handler never opened."""
        ...


#: every live handler, so that a forked child can make each start afresh
_HANDLERS: weakref.WeakSet[Bound] = weakref.WeakSet()


#: what a forked child inherited of its parent's connections: kept referenced, never closed, so
#: that no garbage collection in the child ever touches a socket of the parent's sessions
_INHERITED: list[object] = []


def set_aside(inherited: object) -> None:
    """In a forked child: keep the parent's ``inherited`` connections referenced, untouched, for good."""
    _INHERITED.append(inherited)


def inherit_after_fork(handler: Bound) -> None:
    """Have ``handler`` start afresh in a forked child (its parent's sockets are the parent's)."""
    _HANDLERS.add(handler)


def _after_fork_in_child() -> None:
    for handler in list(_HANDLERS):
        handler._start_afresh()


os.register_at_fork(after_in_child=_after_fork_in_child)


class LoopBinding:
    """The event loop one handler is bound to (kept in its :class:`~aconn.scope.ScopeState`,
    which the scope path reads) and the watch on that loop's end."""

    __slots__ = ("_handler", "_token", "watch")

    def __init__(self, handler: Bound) -> None:
        self._handler = handler
        self.reset()

    def reset(self) -> None:
        """Watching no loop (the handler is bound to none)."""
        #: the async generator whose finalisation says the loop ends (the loop holds it weakly)
        self.watch: AsyncGenerator[None, None] | None = None
        self._token: object = None

    def bind(self) -> asyncio.AbstractEventLoop:
        """Bind the handler to the running loop, or raise if another loop still uses it."""
        handler = self._handler
        scopes = handler._scopes
        loop = asyncio.get_running_loop()
        if scopes.loop is None:
            scopes.loop, scopes.thread = loop, threading.get_ident()
            self._watch_loop_end()
        elif scopes.loop is not loop:
            old = scopes.loop
            if old.is_running() or (handler._opened and not old.is_closed()) or scopes.active:
                raise AconnError(
                    "this aconn handler is in use in another event loop (a different asyncio.run() "
                    "or thread); connections cannot cross event loops. Close it in that loop "
                    "(`await connections.aclose()`, or `async with connections:`) and it can be "
                    "opened again in this one; or build one Connections per event loop"
                )
            if not handler._quiet():
                raise AconnError(
                    "this aconn handler still has connections being used, opened or closed in the "
                    "event loop it was used in before; finish that loop's work (or close the handler "
                    "there) before using it in this one"
                )
            if handler._opened:  # its loop ended without aclose(): say so, then carry on lazily
                logger.warning(
                    "aconn: this handler was open in an event loop that has ended without aclose(); "
                    "its idle connections are dropped without a goodbye to the server. Close it before "
                    "the loop ends: `async with connections:` or `await connections.aclose()`"
                )
            # Its work in the old loop is done: move to this one. The idle connections belong to
            # the old loop; their sockets are closed with no I/O.
            handler._left_loop()
            scopes.loop, scopes.thread = loop, threading.get_ident()
            self._watch_loop_end()
        return loop

    def _watch_loop_end(self) -> None:
        """Be told when the running loop ends (``asyncio.run()``, uvicorn, pytest-asyncio).

        Event loops finalise the async generators still suspended when they end
        (``loop.shutdown_asyncgens()``, PEP 525), while they can still run I/O: one
        started here is the hook. Cheap: once per loop the handler is bound to.
        """
        token = object()
        watch = self._loop_end(token)
        self.watch = watch  # the loop holds it weakly
        self._token = token
        with contextlib.suppress(StopIteration):
            watch.asend(None).send(None)  # to its first yield, now: the loop registers it

    async def _loop_end(self, token: object) -> AsyncGenerator[None, None]:
        loop = asyncio.get_running_loop()
        try:
            yield
        finally:
            # only the latest watch speaks: one replaced (the handler bound again) is finalised
            # by the garbage collector at any time, the loop still running
            scopes = self._handler._scopes
            if self._token is token and scopes.loop is loop and not scopes.closing:
                await self._handler._loop_ended()
