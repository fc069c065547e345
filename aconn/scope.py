"""Scopes: one unit of work (a request, a job) and the connections it took.

A ``ContextVar`` of the handler holds the current :class:`Scope`. A scope
belongs to the task that entered it: child tasks inherit the variable, but a
connection is only handed to the owning task (see ``docs/concurrency.md``).
"""

from __future__ import annotations

import asyncio
from asyncio import get_running_loop
from time import monotonic
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._asyncio import run_shielded, task_of
from .errors import ClosedError
from .pool import Holder

if TYPE_CHECKING:
    from .handler import Connections

__all__ = ("Scope",)


class Scope:
    """One unit of work. Built by ``connections.scope()``; use it with ``async with``."""

    # "_atomic" is set only when an atomic() block opens in the scope: the scope path never pays for it
    __slots__ = ("_atomic", "_handler", "_held", "_task", "_token")

    _atomic: dict[str, list[Any]]

    def __init__(self, handler: Connections) -> None:
        self._handler = handler
        self._held: dict[str, Holder] = {}
        self._task: asyncio.Task[Any] | None = None
        self._token: Any = None

    @property
    def task(self) -> asyncio.Task[Any] | None:
        """The task that owns this scope and its connections."""
        return self._task

    def _holder(self, alias: str) -> Holder:
        """The slot of the connection this scope holds for ``alias`` (taken by ``connection()``)."""
        return self._held[alias]

    def _blocks(self, alias: str) -> list[Any]:
        """The ``atomic()`` blocks open in this scope on ``alias``, innermost last."""
        try:
            stacks = self._atomic
        except AttributeError:
            stacks = self._atomic = {}
        return stacks.setdefault(alias, [])

    async def __aenter__(self) -> Scope:
        handler = self._handler
        if handler._closing and not handler._revive():
            raise ClosedError(
                "this aconn handler is closed: no new scope can start in this event loop "
                "(open it again with `await connections.open()`)"
            )
        loop = get_running_loop()
        if loop is not handler._loop:
            handler._bind_loop()  # raises if the handler belongs to another loop
        var = handler._scope_var
        current = var.get(None)
        task = task_of(loop)
        if current is not None and current._task is task:
            return current  # nested in the same task: the outer scope does the work (no token set)
        self._task = task
        self._token = var.set(self)
        handler._active_scopes += 1
        if monotonic() >= handler._next_sweep:
            handler._sweep()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is None:
            return  # a nested scope: the outer one gives the connections back
        handler = self._handler
        held = self._held
        try:
            try:
                handler._scope_var.reset(self._token)
            except ValueError:  # exited in another context than it was entered in: release all the same
                handler._scope_var.set(None)
            if held:
                # every alias is given back, even if the task is cancelled (or a release
                # fails) on the way: the first such exception is re-raised after the last
                failure: BaseException | None = None
                for holder in held.values():
                    try:
                        slow = holder.pool.release(holder, exc)
                        if slow is not None:
                            await run_shielded(slow)
                    except BaseException as release_exc:
                        failure = failure or release_exc
                held.clear()
                if failure is not None:
                    raise failure
        finally:
            handler._active_scopes -= 1
            if handler._drained is not None:
                handler._drained.set()
