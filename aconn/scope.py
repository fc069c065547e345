"""Scopes: one unit of work (a request, a job) and the connections it took.

A :class:`ScopeState`, owned by the handler and shared by every scope it
builds, holds what scopes need of the handler (the context variable, the
count of active scopes, the drain event, the sweep gate, the loop binding):
a scope reads and writes that object, never the handler. The handler drives
the scope the other way: ``connection()`` reads ``scope.task`` and
``scope.held``.

A scope belongs to the task that entered it: child tasks inherit the
variable, but a connection is only handed to the owning task (see
``docs/concurrency.md``).
"""

from __future__ import annotations

import asyncio
from asyncio import get_running_loop
from collections.abc import Callable, Coroutine, Hashable
from contextvars import ContextVar, Token
from threading import get_ident
from time import monotonic
from types import TracebackType
from typing import Any

from ._asyncio import run_shielded, task_of
from .pool import Holder

__all__ = ("LENT", "Scope", "ScopeState", "Unit")

#: ids of the driver connections an integration has checked out now (SQLAlchemy's engine
#: connections, any engine), each with an event set when it is checked in (created when someone
#: waits for that): one at a time per driver connection, and the middleware gives none of them
#: back before the call ends
LENT: dict[int, asyncio.Event | None] = {}

#: the token of a :class:`Unit`: it set nothing in the context variable, so its exit resets nothing
_DETACHED: Any = object()


class ScopeState:
    """What the scopes of one handler share with it.

    :param name: of the context variable.
    :param prepare: the handler's check when a scope enters while it is closing or bound to
        another loop: raises ``ClosedError``, or revives it in a new loop, or binds it to this one.
    :param sweep: closes expired idle connections and sets :attr:`next_sweep`.
    """

    __slots__ = ("active", "closing", "drained", "loop", "next_sweep", "prepare", "sweep", "thread", "var")

    def __init__(self, name: str, prepare: Callable[[], asyncio.AbstractEventLoop], sweep: Callable[[], None]) -> None:
        #: the current scope of the running context
        self.var: ContextVar[Scope | None] = ContextVar(name)
        #: scopes entered and not yet exited (nested ones joining another are not counted)
        self.active = 0
        self.prepare = prepare
        self.sweep = sweep
        self.reset()

    def reset(self) -> None:
        """As for a handler never opened: bound to no loop, not closing."""
        #: the event loop the handler is bound to
        self.loop: asyncio.AbstractEventLoop | None = None
        #: the thread :attr:`loop` was last seen running in (0: none yet), for :meth:`running_task`
        self.thread = 0
        #: the handler is closing or closed: entering a scope goes through :attr:`prepare`
        self.closing = False
        #: set by each exiting scope while ``aclose()`` waits for them
        self.drained: asyncio.Event | None = None
        #: monotonic time of the next sweep of idle connections at scope entry
        self.next_sweep = 0.0

    def running_task(self) -> asyncio.Task[Any] | None:
        """The task running now, read off the bound loop: None if that cannot be done here.

        The scope path's way to the running task with no system call: 3.11's
        ``get_running_loop()`` makes one (``getpid()``) at every call. Valid when this thread is
        the one the bound loop was seen running in: a thread runs one loop at a time, so a task
        of that loop running now is this thread's. None when the bound loop runs no task now (a
        new loop in this thread, the old one ended) or another thread asks: then the caller
        goes through :meth:`enter`, or ``get_running_loop()``.
        """
        return task_of(self.loop) if self.thread == get_ident() else None  # type: ignore[arg-type]

    def enter(self) -> asyncio.Task[Any] | None:
        """A scope entering off the fast path (see :meth:`running_task`): the handler closing or
        closed, bound to no loop or to another, or this thread not yet seen running its loop.
        The checks of :attr:`prepare` where due, then the running task."""
        loop = get_running_loop()
        if self.closing or loop is not self.loop:
            loop = self.prepare()  # ClosedError; or revived, or bound to this loop (raises if in use in another)
        self.thread = get_ident()
        return task_of(loop)


class Scope:
    """One unit of work. Built by ``connections.scope()``; use it with ``async with``.

    ``task`` is the task that owns it and its connections (None until entered);
    ``held`` maps each alias it took a connection of to its pool slot.
    """

    # "pin" is set only by connections.scope(pin=key): unset, it costs nothing
    __slots__ = ("_atomic", "_state", "_token", "held", "pin", "task")

    pin: Hashable

    def __init__(self, state: ScopeState) -> None:
        self._state = state
        self.held: dict[str, Holder] = {}
        self.task: asyncio.Task[Any] | None = None
        self._token: Token[Scope | None] | None = None
        # the atomic() blocks open in the scope, by alias; None until the first opens (a read of
        # an unset slot raises inside getattr(): ten times the cost of this store)
        self._atomic: dict[str, list[object]] | None = None

    def _blocks(self, alias: str) -> list[object]:
        """The ``atomic()`` blocks open in this scope on ``alias``, innermost last."""
        stacks = self._atomic
        if stacks is None:
            stacks = self._atomic = {}
        return stacks.setdefault(alias, [])

    def give_back_unused(self) -> list[Coroutine[Any, Any, None]] | None:
        """Give back now each connection that is clean (no transaction open, nothing the driver
        reports in use or broken: the backend's ``reusable``) and that no ``atomic()`` block and no
        integration's checkout (SQLAlchemy's) holds, as the scope's exit would; the others stay to
        the exit. A later ``connection()`` in the scope takes one again. What the middleware does
        once a response is complete.

        Returns the releases' network work (a reset with ``RESET_ON_RELEASE``), for the caller to
        await shielded (:func:`~aconn._asyncio.run_shielded`) when it suits it: the connections
        are out of the scope already. None when there is none (the common case: no list built).
        """
        held = self.held
        if not held:
            return None
        blocks = self._atomic
        slow: list[Coroutine[Any, Any, None]] | None = None
        for alias, holder in tuple(held.items()):
            conn = holder.conn
            pool = holder.pool
            if (blocks is not None and blocks.get(alias)) or id(conn) in LENT or not pool.backend.reusable(conn):
                continue
            del held[alias]
            work = pool.release(holder, None, True)
            if work is not None:
                if slow is None:
                    slow = [work]
                else:
                    slow.append(work)
        return slow

    async def __aenter__(self) -> Scope:
        state = self._state
        # ScopeState.running_task(), written out: the running task with no system call
        task = task_of(state.loop) if state.thread == get_ident() else None  # type: ignore[arg-type]
        if task is None or state.closing:
            task = state.enter()
        var = state.var
        current = var.get(None)
        if current is not None and current.task is task:
            return current  # nested in the same task: the outer scope does the work (no token set)
        self.task = task
        self._token = var.set(self)
        state.active += 1
        if monotonic() >= state.next_sweep:
            state.sweep()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token = self._token
        if token is None:
            return  # a nested scope: the outer one gives the connections back
        state = self._state
        held = self.held
        try:
            try:
                if token is not _DETACHED:
                    state.var.reset(token)
            except ValueError:  # exited in another context than it was entered in: release all the same
                state.var.set(None)
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
            state.active -= 1  # _left(), written out
            if state.drained is not None:
                state.drained.set()

    def _left(self) -> None:
        """The scope is over: no longer counted active (``aclose()`` waits for none to be).
        ``__aexit__`` writes it out: the scope path saves the call."""
        state = self._state
        state.active -= 1
        if state.drained is not None:
            state.drained.set()


class Unit(Scope):
    """A unit of work of its own that is not the context's current scope: entering it sets
    nothing in the context variable, so that it neither joins the task's scope nor is joined
    by later scopes, and it may be exited from another context of the task. Its connections are
    taken with ``connections._take_in(unit, alias)`` and given back at its exit, as a scope's.
    For what holds a connection across calls the app makes (SQLAlchemy's engine connections).
    """

    __slots__ = ()

    async def __aenter__(self) -> Unit:
        state = self._state
        task = state.running_task()
        self.task = state.enter() if task is None or state.closing else task
        self._token = _DETACHED
        state.active += 1
        return self

    def leave(self) -> Coroutine[Any, Any, None] | None:
        """:meth:`__aexit__` with no exception, with no await in the common case: each connection
        given back now. Returns the work that needs the network (a rollback, a reset, a close),
        for the caller to await shielded, else None; the unit counts as active until it is done.
        For a caller that cannot await cheaply (SQLAlchemy's checkin, in a greenlet)."""
        slow: list[Coroutine[Any, Any, None]] = []
        failure: BaseException | None = None
        for holder in self.held.values():
            try:
                work = holder.pool.release(holder, None)
            except BaseException as exc:  # the others are given back all the same
                failure = failure or exc
                continue
            if work is not None:
                slow.append(work)
        self.held.clear()
        if slow:
            return self._finish(slow, failure)
        self._left()
        if failure is not None:
            raise failure
        return None

    async def _finish(self, slow: list[Coroutine[Any, Any, None]], failure: BaseException | None) -> None:
        """:meth:`leave`'s network work, each to its end; then the first failure is re-raised."""
        try:
            for work in slow:
                try:
                    await run_shielded(work)
                except BaseException as exc:
                    failure = failure or exc
        finally:
            self._left()
        if failure is not None:
            raise failure
