"""The handler: aliases, lifecycle, scopes and the connections they hand out."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import functools
import logging
import warnings
from asyncio import get_running_loop
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Mapping,
    Sequence,
)
from threading import get_ident
from time import monotonic
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar, cast, overload

from ._asyncio import run_shielded, task_of
from .backends import load_backend
from .binding import LoopBinding, inherit_after_fork, set_aside
from .errors import AconnError, ClosedError, ConfigError, ScopeError
from .hooks import HookEvent, Hooks
from .housekeeping import Housekeeper
from .iteration import Jobs, Source
from .pool import Holder, Pool
from .routing import Reads, Router, route
from .scope import Scope, ScopeState, Unit
from .settings import Settings, parse_databases
from .stats import PoolStats
from .transactions import Atomic, OnCommit, PinnedConnection, on_commit
from .typed import Alias

__all__ = ("Connections",)

logger = logging.getLogger("aconn")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

#: how often, at most, entering a scope sweeps the idle sets for expired connections
SWEEP_INTERVAL = 1.0


def _not_expected(alias: str, conn: Any, expected: type[Any]) -> TypeError:
    # the driver's class, not aconn's subclass of it
    cls = next((c for c in type(conn).__mro__ if not c.__module__.startswith("aconn.")), type(conn))
    shown = f"{cls.__module__}.{cls.__qualname__}"
    return TypeError(f"aconn alias {alias!r} hands out {shown}, not {expected.__module__}.{expected.__qualname__}")


class Connections:
    """Database connections of one process, by alias, handed out per scope.

    :param databases: alias -> Django ``DATABASES`` entry (a dict) or a URL string.
    :param routers: objects with Django's ``db_for_read(hints)`` / ``db_for_write(hints)``, asked in
        turn for the alias when ``connection()`` is given none.
    :raises ConfigError: at construction, naming the alias and key of invalid settings.
    """

    def __new__(cls, databases: Mapping[str, Any], routers: Sequence[Router] = ()) -> Self:
        if cls is Connections and (routers or any(s.replicas for s in parse_databases(databases).values())):
            return cast(Self, object.__new__(RoutedConnections))  # chosen once, by class
        return object.__new__(cls)

    def __init__(self, databases: Mapping[str, Any], routers: Sequence[Router] = ()) -> None:
        self._settings: dict[str, Settings] = parse_databases(databases)
        #: Django-style routers, consulted by connection() when no alias is given
        self._routers = tuple(routers)
        #: where read_only=True reads, for the aliases with REPLICAS
        self._reads = Reads(self, self._settings)
        #: the end of the ScopeError raised outside a scope: how to give the code one (an
        #: integration that knows better, aconn.django under WSGI say, replaces it)
        self.outside_scope_advice = (
            "wrap the unit of work in `async with connections.scope():` (or decorate it with "
            "@connections.scoped, or add aconn.asgi.ConnectionsMiddleware to the app)"
        )
        self._hooks = Hooks()
        self._hooks.on_first_use = self._observe_use
        self._pools: dict[str, Pool] = self._new_pools()
        #: where connection() takes each alias's connection: its pool, or a test's pinned connection
        self._sources: dict[str, Pool | PinnedConnection] = dict(self._pools)
        self._scopes = ScopeState(f"aconn.scope.{id(self):x}", self._enter_loop, self._sweep)
        self._binding = LoopBinding(self)
        self._reset()
        inherit_after_fork(self)

    def _new_pools(self) -> dict[str, Pool]:
        pools = {
            alias: Pool(settings, load_backend(settings), self._hooks) for alias, settings in self._settings.items()
        }
        if self._hooks.wants("use"):
            for pool in pools.values():
                pool.observe_use()
        return pools

    def _observe_use(self) -> None:
        for pool in self._pools.values():
            pool.observe_use()

    def on(self, kind: str, callback: Callable[[HookEvent], object]) -> Callable[[], None]:
        """Call ``callback(event)`` for each :class:`~aconn.hooks.HookEvent` of ``kind`` on any alias.

        Kinds: ``connect`` (seconds the connect took), ``close`` (reason, age), ``wait`` (seconds a
        task waited; reason ``timeout`` if it gave up), ``use`` (seconds a scope held a connection),
        ``leak`` (a connection held past LEAK_TIMEOUT). Callbacks run synchronously in the event
        loop: keep them short. One that raises is logged once and never breaks aconn. Nothing is
        measured for a kind nobody listens to. Returns a function that removes the callback.

        :raises ValueError: for an unknown kind.
        """
        return self._hooks.add(kind, callback)

    def _reset(self) -> None:
        """The lifecycle state of a handler never opened, bound to no event loop."""
        self._scopes.reset()
        self._opened = False
        self._closed = False
        self._housekeeper: Housekeeper | None = None
        self._binding.reset()
        self._closed_in: asyncio.AbstractEventLoop | None = None

    def _start_afresh(self) -> None:
        """In a forked child: set the parent's connections aside untouched (their sockets are the
        parent's sessions too) and start as a handler never opened, with pools of its own.
        """
        set_aside(self._pools)
        self._pools = self._new_pools()
        self._sources = dict(self._pools)
        self._scopes = ScopeState(f"aconn.scope.{id(self):x}", self._enter_loop, self._sweep)
        self._reset()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._opened else "new"
        return f"<aconn.Connections {state} aliases={list(self._pools)}>"

    @property
    def aliases(self) -> tuple[str, ...]:
        """The configured aliases."""
        return tuple(self._pools)

    def settings(self, alias: str = "default") -> Settings:
        """The parsed, frozen settings of an alias (the password hidden from its repr)."""
        return self._pool(alias).settings

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Bind to the running loop, connect once per alias, start housekeeping. Idempotent.

        A closed handler opens again, in the same event loop or another one. If an
        alias cannot connect, what was opened is closed before the error is raised,
        and ``open()`` may be tried again.

        :raises ClosedError: while ``aclose()`` is still running.
        :raises AconnError: while the handler is open in another event loop.
        :raises Exception: the driver's error if an alias cannot connect.
        """
        if self._scopes.closing and not self._closed:
            raise ClosedError("this aconn handler is being closed; open it again once aclose() has returned")
        if self._closed:
            self._new_life()
        if self._opened:
            self._binding.bind()  # open in another loop than its own: the clear error
            return
        self._binding.bind()
        try:
            for pool in self._pools.values():
                await pool.warm()
        except BaseException:
            await run_shielded(self._close_pools())
            self._new_life()
            raise
        self._housekeeper = Housekeeper(list(self._pools.values()))
        self._housekeeper.start()
        self._reads.start()  # in the background: a replica qualifies before its first read
        self._opened = True

    def _revive(self) -> bool:
        """Used lazily in another event loop than the one it was closed in: start afresh there.

        In the loop that closed it, a closed handler stays closed (a request arriving after
        shutdown is an error); a new loop is a new life (one module-level handler, a loop per test).
        """
        if not self._closed or self._closed_in is asyncio.get_running_loop():
            return False
        self._new_life()
        return True

    def _new_life(self) -> None:
        """After a close (or a failed open): a handler never opened, whose closed pools serve again.

        The same pools (their counters go on) when nothing of their last life is left, else
        new ones (a scope that outlived aclose() still holds a connection of the old ones).
        """
        if all(pool.quiet() and not pool.size for pool in self._pools.values()):
            for pool in self._pools.values():
                pool.reopen()
        else:
            self._pools = self._new_pools()
        self._sources = dict(self._pools)
        self._reset()

    async def _close_pools(self) -> None:
        await self._reads.stop()
        for pool in self._pools.values():
            await pool.close()
        for pool in self._pools.values():
            await pool.backend.aclose()

    async def aclose(self, timeout: float = 10.0) -> None:
        """Wait for scopes in flight (up to ``timeout`` seconds), then close every connection.

        Idempotent. Scopes still running after the wait close their connections when they exit.
        """
        if self._scopes.closing:
            return
        loop = asyncio.get_running_loop()
        if self._scopes.loop is not None and self._scopes.loop is not loop:
            raise AconnError(
                "aclose() was called in another event loop than the one this aconn handler was "
                "opened in (a different asyncio.run() or thread): its connections belong to that "
                "loop. Close the handler inside that loop, before it ends (`async with connections:` "
                "or the lifespan does)"
            )
        self._scopes.closing = True
        try:
            own = 1 if self._scopes.var.get(None) is not None else 0
            if self._scopes.active > own:
                self._scopes.drained = asyncio.Event()
                try:
                    async with asyncio.timeout(timeout):
                        while self._scopes.active > own:
                            await self._scopes.drained.wait()
                            self._scopes.drained.clear()
                except TimeoutError:
                    logger.warning(
                        "aconn: %d scope(s) still running after %gs; their connections close when they exit",
                        self._scopes.active - own,
                        timeout,
                    )
            if self._housekeeper is not None:
                await self._housekeeper.stop()
            await self._close_pools()
        finally:
            self._closed = True
            self._closed_in = loop

    async def __aenter__(self) -> Connections:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and any(pool._size for pool in self._pools.values()):
            warnings.warn(
                f"{self!r} was never closed: call `await connections.aclose()` (or use "
                "`async with connections`) so the server sees its sessions end",
                ResourceWarning,
                stacklevel=2,
            )

    def _quiet(self) -> bool:
        return all(pool.quiet() for pool in self._pools.values())

    def _left_loop(self) -> None:
        self._opened = False
        self._housekeeper = None
        for pool in self._pools.values():
            pool.forget_idle()

    async def _loop_ended(self) -> None:
        """The loop ends with the handler not closed: close what is open, politely, say so, unbind."""
        still_open = sum(pool.size for pool in self._pools.values())
        if still_open:
            logger.warning(
                "aconn: the event loop is ending with %d connection(s) of this handler open: closing "
                "them now. Close the handler before its loop ends: `async with connections:`, "
                "`await connections.aclose()`, or the ASGI lifespan; in tests, a fixture that "
                "opens and closes it (`async with connections: yield connections`, see docs/testing.md)",
                still_open,
            )
        if self._housekeeper is not None:
            await self._housekeeper.stop()
        await self._close_pools()
        self._new_life()  # usable again, in another loop

    # -- scopes ---------------------------------------------------------------------------

    def scope(self, pin: Hashable | None = None) -> Scope:
        """One unit of work: ``async with connections.scope(): ...``.

        Connections are taken on first use inside it and given back when it
        exits. A scope entered inside another one in the same task reuses it.

        :param pin: a key (a user or session id): once a scope with this key took the primary
            connection of an alias with ``REPLICAS``, the key's reads stay on the primary for
            ``REPLICA_PIN_SECONDS`` (read-your-writes across scopes, in this process).
        :raises ClosedError: on entry, if the handler is closed.
        """
        scope = Scope(self._scopes)
        if pin is not None:
            scope.pin = pin
        return scope

    def _enter_loop(self) -> asyncio.AbstractEventLoop:
        """What entering a scope checks first (written out in ``Scope.__aenter__``, the scope path):
        the handler not closed (or revived in a new loop), bound to the running loop.
        """
        if self._scopes.closing and not self._revive():
            raise ClosedError(
                "this aconn handler is closed: no new scope can start in this event loop "
                "(open it again with `await connections.open()`)"
            )
        loop = get_running_loop()
        if loop is not self._scopes.loop:
            self._binding.bind()  # raises if the handler belongs to another loop
        return loop

    def _route(self, alias: str, source: PinnedConnection | None) -> None:
        """Hand every scope ``source``'s connection for ``alias`` (a test's transaction); None: the pool again."""
        self._sources[alias] = source if source is not None else self._pools[alias]

    @overload
    def atomic(self, alias: str = "default", *, durable: bool = False, retries: int = 0) -> Atomic: ...

    @overload
    def atomic(self, alias: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]: ...

    def atomic(
        self, alias: str | Callable[P, Awaitable[R]] = "default", *, durable: bool = False, retries: int = 0
    ) -> Atomic | Callable[P, Awaitable[R]]:
        """A transaction, Django's ``atomic``: ``async with connections.atomic("default") as conn:``.

        The outermost block begins a transaction and commits it at exit, or rolls it back
        if the block raises; a nested block is a savepoint. It uses the task's current scope,
        or a scope of its own when none is open. As a decorator, ``@connections.atomic`` or
        ``@connections.atomic("alias")``, each call runs in a block.

        ``durable=True`` (Django's): the block must be the outermost, so that leaving it
        commits; entered inside another block it raises ``TransactionError``.

        ``retries=N``, on a decorated function only (``@connections.atomic("default", retries=3)``):
        a call whose transaction fails with a serialization or certification conflict (MySQL and
        MariaDB 1213 and 1205, a Galera certification failure included; PostgreSQL 40001, 40P01)
        runs again whole, up to N more times, with jittered backoff within ``ACQUIRE_TIMEOUT``;
        counted in ``stats().transaction_retries``. The function must be safe to run again (no
        side effect outside the transaction). ``async with atomic(retries=N)`` raises
        ``TransactionError``: a block cannot be run again.

        :raises TransactionError: on misuse: the transaction ended by hand inside the block,
            the block left in another task or out of order, a durable block nested.
        :raises ConfigError: for an unknown alias.
        """
        if callable(alias):
            return Atomic(self, "default")(alias)
        return Atomic(self, alias, durable, retries)

    async def on_commit(self, callback: OnCommit, alias: str = "default", *, robust: bool = False) -> None:
        """Call ``callback()`` (awaited if it returns an awaitable) once the transaction of the
        current ``atomic()`` block on ``alias`` commits; Django's ``transaction.on_commit``.

        Callbacks run after the outermost block's COMMIT, in the order registered, in the task
        that committed; a block rolled back drops the callbacks registered inside it (those of
        a savepoint rolled back, only its own). With no block open, the callback runs now.
        Inside a test's transaction (``aconn_db``) they are kept, not run: see the
        ``aconn_on_commit`` fixture. ``robust=True`` logs a callback's exception and goes on
        with the next; otherwise it propagates from the block's exit (the data is committed).

        :raises TransactionError: inside a transaction the app opened itself (the driver's
            API, ``BEGIN`` by hand): aconn cannot tell when it commits.
        :raises ConfigError: for an unknown alias.
        """
        await on_commit(self, self._scopes.var.get(None), callback, alias, robust)

    def _sweep(self) -> None:
        """Close expired idle connections: run on scope entry, at most every ``SWEEP_INTERVAL``."""
        self._scopes.next_sweep = monotonic() + SWEEP_INTERVAL
        for pool in self._pools.values():
            pool.sweep()

    # read_only and hints are not keyword-only: keyword-only defaults cost ~250 instructions a call on 3.11;
    # pass them by keyword all the same
    @overload
    async def connection(
        self, alias: str | None = None, *, read_only: bool = False, hints: Mapping[str, Any] | None = None
    ) -> Any: ...

    @overload
    async def connection(
        self, alias: str | None, expected: type[T], read_only: bool = False, hints: Mapping[str, Any] | None = None
    ) -> T: ...

    async def connection(
        self,
        alias: str | None = None,
        expected: type[Any] | None = None,
        read_only: bool = False,
        hints: Mapping[str, Any] | None = None,
    ) -> Any:
        """The driver's connection for ``alias``, bound to the current scope and task.

        The same object is returned for the rest of the scope. Pass the driver's
        connection class as ``expected`` (``aiosqlite.Connection``...) to have it
        typed as such for mypy, checked with ``isinstance`` at run time.

        With no alias, the routers name it (``db_for_read`` when ``read_only``, else
        ``db_for_write``, given ``hints``), else it is ``"default"``. With ``read_only=True``
        an alias with ``REPLICAS`` reads from a healthy replica (see :mod:`aconn.routing`).

        :raises ScopeError: outside a scope, or from a task that does not own the scope.
        :raises TypeError: if the connection is not an ``expected``.
        :raises ConfigError: for an unknown alias.
        :raises AcquireTimeout: when no connection can be had within ``ACQUIRE_TIMEOUT``.
        :raises ClosedError: when the handler is closed.
        """
        scope = self._scopes.var.get(None)
        if alias is None:
            alias = "default"  # (routers and replicas: RoutedConnections.connection() comes first)
        if scope is None:
            raise ScopeError(
                f"connections.connection({alias!r}) was called outside a scope: {self.outside_scope_advice}"
            )
        # ScopeState.running_task(), written out: the running task with no system call
        state = self._scopes
        task = task_of(state.loop) if state.thread == get_ident() else None  # type: ignore[arg-type]
        if task is None or scope.task is not task:
            task = task_of(get_running_loop())
        if scope.task is not task:
            owner = scope.task.get_name() if scope.task is not None else "?"
            name = task.get_name() if task is not None else "?"
            raise ScopeError(
                f"task {name!r} asked for a connection ({alias!r}) in a scope entered by task "
                f"{owner!r}: a connection is never shared between tasks. If {name!r} is a child "
                "task (gather, TaskGroup, create_task), open a scope of its own in it: `async with "
                "connections.scope():`. If the scope was entered by another task that is not its "
                "parent (a pytest fixture, a startup hook), enter the scope in the task that uses "
                "the connection instead"
            )
        held = scope.held
        holder = held.get(alias)
        if holder is None:  # _take(), written out: the scope path
            source = self._sources.get(alias) or self._pool(alias)
            holder = source.take_idle(task) or await source.acquire(task)
            held[alias] = holder
        if expected is not None and not isinstance(holder.conn, expected):
            raise _not_expected(alias, holder.conn, expected)
        return holder.conn

    async def _take(self, scope: Scope, task: asyncio.Task[Any] | None, alias: str) -> Holder:
        """:meth:`connection`'s taking step (written out there: the scope path), for :class:`~aconn.routing.Reads`."""
        holder = scope.held.get(alias)
        if holder is None:
            source = self._sources.get(alias) or self._pool(alias)
            holder = source.take_idle(task) or await source.acquire(task)
            scope.held[alias] = holder
        return holder

    async def _take_in(self, unit: Unit, alias: str, read_only: bool = False) -> Any:
        """``alias``' connection for a :class:`~aconn.scope.Unit` (not the context's scope):
        taken as :meth:`connection` takes one (a replica's when ``read_only`` and routed)."""
        return (await self._take(unit, unit.task, alias)).conn

    def _in_test_transaction(self, alias: str) -> bool:
        return isinstance(self._sources.get(alias), PinnedConnection)

    def scoped(self, func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        """Decorator: each call of the coroutine function runs in a scope of its own.

        Called inside a scope of the same task, it joins that scope (as nested scopes do).
        """

        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            async with Scope(self._scopes):
                return await func(*args, **kwargs)

        return wrapper

    def alias(self, name: str, connection_class: type[T]) -> Alias[T]:
        """``name``'s connections declared, once, to be ``connection_class`` (the driver's):
        ``db = connections.alias("default", asyncpg.Connection)``, then ``await db.connection()``,
        ``db.acquire()``, ``db.atomic()`` are typed for mypy, with no class at each call.

        :raises ConfigError: for an unknown alias.
        """
        return Alias(self, name, connection_class)

    @overload
    def acquire(self, alias: str = "default") -> contextlib.AbstractAsyncContextManager[Any]: ...

    @overload
    def acquire(self, alias: str, expected: type[T]) -> contextlib.AbstractAsyncContextManager[T]: ...

    def acquire(
        self, alias: str = "default", expected: type[Any] | None = None
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        """A scope and ``connection(alias)`` in one statement: ``async with connections.acquire() as conn:``.

        The one-line replacement for a driver pool's ``async with pool.acquire() as conn``, for
        scripts, fixtures and background tasks. Inside a scope of the same task it joins that
        scope (the connection is then given back when that scope exits), as a nested scope does.
        Pass the driver's connection class as ``expected`` to have it typed for mypy.

        :raises ConfigError: for an unknown alias; and what :meth:`connection` raises.
        """
        self._pool(alias)  # ConfigError now, before any scope
        return self._acquire(alias, expected)

    @contextlib.asynccontextmanager
    async def _acquire(self, alias: str, expected: type[Any] | None) -> AsyncIterator[Any]:
        async with Scope(self._scopes):
            yield await (self.connection(alias) if expected is None else self.connection(alias, expected))

    def each(self, source: Source[T]) -> Jobs[T]:
        """Handle each item of ``source`` in a scope of its own (worker loops).

        ``source``: an ``asyncio.Queue`` (ends at a ``None`` put on it; ``task_done()``
        after each job's scope), an async iterable or an iterable.
        ``async with connections.each(source) as jobs: async for job in jobs: ...``;
        see :class:`aconn.iteration.Jobs`. Use it outside any scope: inside one
        (in the same task) every job would join that scope.
        """
        return Jobs(self.scope, source)

    async def close_old(self) -> None:
        """Django's ``close_old_connections()``: apply the boundary checks to idle connections now.

        For code that cannot use scopes; with scopes it is never needed.
        """
        if self._scopes.loop is None:
            return
        self._binding.bind()
        for pool in self._pools.values():
            await pool.close_old()

    def stats(self, alias: str = "default") -> PoolStats:
        """A frozen snapshot of the counters and gauges of ``alias``.

        :raises ConfigError: for an unknown alias.
        """
        return self._pool(alias).stats()

    def pool(self, alias: str = "default") -> Pool:
        """The pool of ``alias``, for diagnostics and tests: read its ``limits`` (what the server
        said at the last connect), ``backend``, ``size``, ``waiting``; :meth:`stats` for the
        counters. Its methods that take and give back connections are the handler's to call.

        :raises ConfigError: for an unknown alias (with a "did you mean").
        """
        return self._pool(alias)

    def _pool(self, alias: str) -> Pool:
        try:
            return self._pools[alias]
        except KeyError:
            pools = self._pools
            hint = [a for a in pools if a.lower() == str(alias).lower()] or difflib.get_close_matches(
                str(alias), list(pools), n=1
            )
            suggestion = f"did you mean {hint[0]!r}? " if hint else ""
            raise ConfigError(
                alias, None, f"no such alias; {suggestion}configured: {', '.join(map(repr, pools))}"
            ) from None

    # -- frameworks -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """For a framework's ``lifespan=`` parameter: open at startup, close at shutdown."""
        async with self:
            yield


class RoutedConnections(Connections):
    """A handler with routers or ``REPLICAS``: :meth:`connection` asks the routers for the alias
    and reads through the replicas. ``Connections(...)`` builds one when either is configured,
    so that the other handlers pay nothing for routing on the scope path."""

    async def connection(
        self,
        alias: str | None = None,
        expected: type[Any] | None = None,
        read_only: bool = False,
        hints: Mapping[str, Any] | None = None,
    ) -> Any:
        """:meth:`Connections.connection`, routed: see there."""
        if alias is None:
            alias = route(self._routers, read_only, hints or {})
        reads = self._reads
        replicas = reads.sets.get(alias)
        scope = self._scopes.var.get(None)
        if (
            replicas is not None
            and read_only
            and scope is not None
            and scope.task is (self._scopes.running_task() or task_of(get_running_loop()))
        ):
            holder = await reads.holder(scope, scope.task, replicas)
            if expected is not None and not isinstance(holder.conn, expected):
                raise _not_expected(alias, holder.conn, expected)
            return holder.conn
        # the alias itself: a primary, or an alias with no replicas (or the ScopeError)
        conn = await (super().connection(alias) if expected is None else super().connection(alias, expected))
        if replicas is not None and scope is not None:
            reads.primary_taken(scope, replicas)
        return conn

    async def _take_in(self, unit: Unit, alias: str, read_only: bool = False) -> Any:
        """:meth:`Connections._take_in`, reading through the replicas when ``read_only``."""
        replicas = self._reads.sets.get(alias)
        if replicas is not None and read_only:
            return (await self._reads.holder(unit, unit.task, replicas)).conn
        return await super()._take_in(unit, alias)
