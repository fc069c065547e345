"""Transactions: ``connections.atomic()`` (Django's ``atomic``), and the shared transaction,
rolled back at its end, that :mod:`aconn.testing` runs each test in.

The blocks of one scope and alias form a stack kept on the scope: the
outermost block is a transaction (``BEGIN`` ... ``COMMIT``), each nested one a
savepoint. Inside a test's transaction the connection is pinned (shared by
every scope), and even an outermost block is a savepoint, so that the app's
blocks keep their meaning and the test's rollback still undoes everything.

Blocks go through the backend (``begin_block``/``end_block``), so that they
compose with the driver's own transaction API both ways: asyncpg's and
psycopg's ``conn.transaction()``, and the MySQL drivers' and aiosqlite's
``begin()``/``commit()``/``rollback()`` (see :mod:`aconn.backends.nesting`),
nest inside an aconn block as savepoints; an aconn block inside a transaction
the app opened with them is a savepoint of that transaction.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, cast

from ._asyncio import run_shielded, task_of
from ._backoff import Backoff
from .errors import TransactionError
from .pool import CLEANUP_TIMEOUT, Holder, HolderState, Pool
from .scope import Scope
from .settings import Settings

__all__ = ("Atomic", "OnCommit", "PinnedConnection", "TestTransaction")

logger = logging.getLogger("aconn")

P = ParamSpec("P")
R = TypeVar("R")

#: savepoint names, unique in the process: blocks of several scopes may share a test's connection
_SAVEPOINTS = itertools.count(1)
#: the savepoint a test's transaction starts with: if it is gone at the end, the transaction was lost
TEST_SAVEPOINT = "aconn_test"

#: the backoff between the runs of a conflicted function (atomic(retries=N)): first, ceiling
_RETRY_FIRST, _RETRY_CAP = 0.01, 0.5

_HAND_ENDED = (
    "was committed or rolled back inside the block (a COMMIT or ROLLBACK sent by hand, or on "
    "MySQL/MariaDB a statement that commits implicitly: CREATE/ALTER/DROP TABLE, LOCK TABLES, BEGIN...)"
)


class Handler(Protocol):
    """What this module uses of :class:`aconn.Connections` (which imports this module)."""

    @property
    def aliases(self) -> tuple[str, ...]: ...

    def settings(self, alias: str = "default") -> Settings: ...

    def scope(self) -> Scope: ...

    async def connection(self, alias: str = "default") -> Any: ...

    def _enter_loop(self) -> asyncio.AbstractEventLoop: ...

    def _pool(self, alias: str) -> Pool: ...

    def _route(self, alias: str, source: PinnedConnection | None) -> None: ...

    @property
    def _sources(self) -> dict[str, Pool | PinnedConnection]: ...


H = TypeVar("H", bound=Handler)

#: a callback given to ``connections.on_commit()``: called with no argument; awaited if it returns an awaitable
OnCommit = Callable[[], Any]


class _Block:
    """One entered ``atomic()`` block."""

    __slots__ = ("holder", "on_commit", "owns_scope", "savepoint", "scope", "task", "token")

    def __init__(
        self,
        scope: Scope,
        owns_scope: bool,
        holder: Holder,
        savepoint: str | None,
        token: Any,
        task: asyncio.Task[Any] | None,
    ) -> None:
        self.scope = scope
        self.owns_scope = owns_scope  # entered a scope itself (none was open in the task): exits it too
        self.holder = holder
        self.savepoint = savepoint  # None: the outermost block, a transaction of its own
        self.token = token  # what the backend's end_block() needs (asyncpg: its transaction object)
        self.task = task
        #: on_commit() callbacks registered inside the block (its savepoints' too, once released)
        self.on_commit: list[tuple[OnCommit, bool]] = []


def _task_name(task: asyncio.Task[Any] | None) -> str:
    return task.get_name() if task is not None else "?"


class Atomic:
    """``async with connections.atomic(alias) as conn:``: Django's ``transaction.atomic``.

    The outermost block begins a transaction, commits it when the block
    exits normally and rolls it back when it raises; a nested block is a
    savepoint, released or rolled back to, the outer block going on. The block
    uses the current scope of the task, or enters one of its own when none is
    open. Also a decorator: each call of the function runs in a block.

    ``durable=True``: the block must be the outermost, so that its exit is the COMMIT (a
    ``TransactionError`` when entered inside another block or a transaction the app opened;
    allowed directly inside a test's transaction, as Django's ``TestCase`` allows it).

    ``retries=N``, on a decorated function only: a call whose transaction fails with a
    serialization or certification conflict (MySQL/MariaDB 1213 and 1205, PostgreSQL 40001 and
    40P01) is rolled back and the whole function run again, up to N more times, with jittered
    backoff, while ``ACQUIRE_TIMEOUT`` from the first call lasts; only when its block was the
    outermost (a savepoint's conflict aborted a transaction the function does not own).
    """

    def __init__(self, handler: Handler, alias: str, durable: bool = False, retries: int = 0) -> None:
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"atomic({alias!r}): retries must be an integer, 0 or more, got {retries!r}")
        self._handler = handler
        self._alias = alias
        self._durable = durable
        self._retries = retries
        self._blocks: list[_Block] = []  # one object entered again while in use (recursion)
        #: the last block entered was the outermost (its own transaction): a retry may run it again
        self._outermost = False

    def __call__(self, func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        handler, alias, durable, retries = self._handler, self._alias, self._durable, self._retries

        if not retries:

            @functools.wraps(func)
            async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                async with Atomic(handler, alias, durable):
                    return await func(*args, **kwargs)

            return wrapper

        @functools.wraps(func)
        async def retrying(*args: P.args, **kwargs: P.kwargs) -> R:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + handler.settings(alias).acquire_timeout
            pause = Backoff(_RETRY_FIRST, _RETRY_CAP, jitter=0.5)
            attempt = 0
            while True:
                block = Atomic(handler, alias, durable)
                try:
                    async with block:
                        return await func(*args, **kwargs)
                except Exception as exc:
                    pool = handler._pool(alias)
                    if attempt >= retries or not block._outermost or not pool.backend.is_conflict(exc):
                        raise
                    delay = pause.next_delay(deadline - loop.time())
                    if loop.time() + delay >= deadline:
                        raise
                    attempt += 1
                    pool.counters.transaction_retries += 1
                    logger.info(
                        "aconn alias %r: %s conflicted (%s); running it again (retry %d of %d)",
                        alias, getattr(func, "__qualname__", func), exc, attempt, retries,
                    )  # fmt: skip
                await asyncio.sleep(delay)

        return retrying

    async def __aenter__(self) -> Any:
        handler, alias = self._handler, self._alias
        if self._retries:
            raise TransactionError(
                f"aconn alias {alias!r}: atomic(retries={self._retries}) re-runs a function, and a block "
                "cannot be run again: decorate the function (@connections.atomic(alias, retries=N)) instead"
            )
        if not handler.settings(alias).autocommit:  # ConfigError for an unknown alias
            raise TransactionError(
                f"aconn alias {alias!r}: atomic() needs AUTOCOMMIT True (the default); with it off, "
                "each scope is one transaction already, ended by COMMIT by hand or rolled back at exit"
            )
        scope = handler.scope()
        current = await scope.__aenter__()
        try:
            conn = await handler.connection(alias)
            holder = current.held[alias]
            stack = current._blocks(alias)
            backend = holder.pool.backend
            # inside another block, a test's transaction, or a transaction the app opened with the
            # driver's API (or by hand): a savepoint, which that transaction commits or rolls back
            pinned = holder.state is HolderState.PINNED
            if self._durable and (stack or (not pinned and backend.in_transaction(conn))):
                raise TransactionError(
                    f"aconn alias {alias!r}: a durable atomic() block was entered inside "
                    + ("another atomic() block" if stack else "a transaction the app opened itself")
                    + " (ATOMIC_REQUESTS included): its exit would not be the COMMIT. Enter it outside any "
                    "transaction, or drop durable=True"
                )
            nested = stack or pinned or backend.in_transaction(conn)
            savepoint = f"aconn_sp_{next(_SAVEPOINTS)}" if nested else None
            token = await backend.begin_block(conn, savepoint)
        except BaseException as exc:
            if current is scope:
                await scope.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._outermost = savepoint is None
        block = _Block(current, current is scope, holder, savepoint, token, task_of(asyncio.get_running_loop()))
        stack.append(block)
        self._blocks.append(block)
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        block = self._blocks.pop()
        try:
            await self._end(block, exc)
        except BaseException as end_exc:
            if block.owns_scope:
                await block.scope.__aexit__(type(end_exc), end_exc, end_exc.__traceback__)
            raise
        if block.owns_scope:
            await block.scope.__aexit__(exc_type, exc, tb)

    async def _end(self, block: _Block, exc: BaseException | None) -> None:
        """Commit or release the block when it succeeded, else roll it back; refuse misuse, rolling back."""
        try:
            await self._end_block(block, exc)
        finally:
            block.holder.pool.backend.left_block(block.holder.conn)

    async def _end_block(self, block: _Block, exc: BaseException | None) -> None:
        alias = self._alias
        stack = block.scope._blocks(alias)
        if not stack or stack[-1] is not block:
            if block in stack:
                stack.remove(block)
            await _undo(block, exc)
            raise TransactionError(
                f"aconn alias {alias!r}: an atomic() block was exited while a block entered after it was "
                "still open: its work was rolled back. Nest blocks with `async with`, so that they end in "
                "the reverse order they began"
            )
        stack.pop()
        task = task_of(asyncio.get_running_loop())
        if task is not block.task:
            await _undo(block, exc)
            raise TransactionError(
                f"aconn alias {alias!r}: an atomic() block entered by task {_task_name(block.task)!r} was "
                f"exited by task {_task_name(task)!r}: its work was rolled back. A block begins and ends in "
                "one task (a pytest fixture's setup and teardown run in different tasks: for a transaction "
                "around a test, use the aconn_db fixture of aconn.testing)"
            )
        holder = block.holder
        backend = holder.pool.backend
        conn = holder.conn
        if exc is not None:
            await _undo(block, exc)
            return
        if not backend.in_transaction(conn):
            raise TransactionError(
                f"aconn alias {alias!r}: the transaction of an atomic() block {_HAND_ENDED}: what the "
                "block wrote after that point was not in its transaction. Use nested atomic() blocks, not "
                "transaction statements, inside a block"
            )
        try:
            await backend.end_block(conn, block.token, True)
        except BaseException as end_exc:
            await _undo(block, end_exc)
            raise
        if not block.on_commit:
            return
        if stack:  # a savepoint released: its callbacks wait for the enclosing block's outcome
            stack[-1].on_commit.extend(block.on_commit)
        elif block.savepoint is None:  # the COMMIT
            await _run_on_commit(alias, block.on_commit)
        else:  # the outermost block of a test's transaction: kept for the test (aconn_on_commit)
            source = self._handler._sources.get(alias)
            if isinstance(source, PinnedConnection):
                source.on_commit.extend(block.on_commit)


async def on_commit(handler: Handler, scope: Scope | None, callback: OnCommit, alias: str, robust: bool) -> None:
    """``connections.on_commit()``: see there. ``scope`` is the context's current scope, if any."""
    if not callable(callback):
        raise TypeError(f"on_commit() takes a callable, not {type(callback).__name__}")
    handler.settings(alias)  # ConfigError for an unknown alias
    if scope is not None and scope.task is not task_of(asyncio.get_running_loop()):
        scope = None  # another task's scope: none of its blocks or connections are this task's
    stack = cast("list[_Block]", scope._blocks(alias)) if scope is not None else []
    holder = stack[0].holder if stack else scope.held.get(alias) if scope is not None else None
    if holder is not None and holder.state is not HolderState.PINNED:
        # the transaction is the app's own when even the outermost block is a savepoint, or when a
        # transaction is open outside any block (the driver's API, BEGIN by hand, AUTOCOMMIT off)
        if stack[0].savepoint is not None if stack else holder.pool.backend.in_transaction(holder.conn):
            raise TransactionError(
                f"aconn alias {alias!r}: on_commit() inside a transaction the app opened itself (the "
                "driver's API, BEGIN by hand, or AUTOCOMMIT off): aconn cannot tell when it commits. "
                "Open it with atomic()"
            )
    if stack:
        stack[-1].on_commit.append((callback, robust))
        return
    await _run_on_commit(alias, [(callback, robust)])  # no transaction: now, as Django does


async def _run_on_commit(alias: str, callbacks: list[tuple[OnCommit, bool]]) -> None:
    """Call each callback in order, awaiting what it returns if awaitable. A robust one's exception
    is logged and the next runs; any other's propagates (the transaction is committed already)."""
    for callback, robust in callbacks:
        try:
            result = callback()
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            if not robust:
                raise
            logger.error("aconn alias %r: the on_commit callback %r raised %r", alias, callback, exc, exc_info=exc)


async def _undo(block: _Block, exc: BaseException | None) -> None:
    """Roll a block back, shielded and bounded. A connection that cannot be rolled back is aborted,
    so that the scope's release discards it: it never goes back to the pool in a transaction.
    """
    holder = block.holder
    backend = holder.pool.backend
    conn = holder.conn
    if backend.is_dead(conn):
        return  # the session's end rolls it back on the server; the scope's release discards it
    if not backend.in_transaction(conn):
        if exc is not None and block.savepoint is None:
            exc.add_note(
                f"aconn: the atomic() block's transaction {_HAND_ENDED} before this error: nothing rolled back"
            )
        return
    if isinstance(exc, asyncio.CancelledError | TimeoutError):
        backend.interrupt(conn)  # a statement the cancelled caller left running stops first (SQLite)

    async def rollback() -> None:
        async with asyncio.timeout(CLEANUP_TIMEOUT):
            await backend.end_block(conn, block.token, False)

    try:
        await run_shielded(rollback())
    except Exception as rollback_exc:
        logger.info("aconn alias %r: rollback of an atomic() block failed: %r", holder.pool.alias, rollback_exc)
        backend.abort(conn)


class PinnedConnection:
    """Stands in for a :class:`~aconn.pool.Pool` in a test's transaction: every scope gets the one
    connection the transaction runs on.
    """

    def __init__(self, holder: Holder, savepoint: Any) -> None:
        self.holder = holder
        #: the backend's token of the savepoint the test's transaction starts with
        self.savepoint = savepoint
        #: why the test's transaction did not last the whole test, if it did not
        self.lost: str | None = None
        #: on_commit() callbacks of the app's outermost blocks: never run by themselves (the test's
        #: transaction never commits); see TestTransaction.run_on_commit()
        self.on_commit: list[tuple[OnCommit, bool]] = []

    def take_idle(self, task: asyncio.Task[Any] | None) -> Holder | None:
        holder = self.holder
        return holder if holder.pool.backend.in_transaction(holder.conn) else None

    async def acquire(self, task: asyncio.Task[Any] | None) -> Holder:
        """The test's transaction was ended (by hand, or implicitly): say so at the end, and begin
        another so that what follows is still rolled back.
        """
        holder = self.holder
        if self.lost is None:
            self.lost = f"aconn alias {holder.pool.alias!r}: the test's transaction {_HAND_ENDED}"
        self.savepoint = await _begin_test(holder)
        return holder


async def _begin_test(holder: Holder) -> Any:
    """Begin a test's transaction and its first savepoint, through the backend's blocks (so that
    the driver's own transaction API nests inside); the savepoint's token."""
    backend = holder.pool.backend
    await backend.begin_block(holder.conn, None)
    return await backend.begin_block(holder.conn, TEST_SAVEPOINT)


class TestTransaction(Generic[H]):
    """``async with TestTransaction(connections):`` every alias runs on one connection, in a
    transaction rolled back at the end: what the scopes inside wrote, in any task, is undone.

    Every scope (requests served in the same event loop included) shares the one connection of
    each alias, so they see each other's writes; the app's own ``atomic()`` blocks are savepoints.
    Enter and exit may happen in different tasks (a pytest fixture's setup and teardown).

    :raises TransactionError: at exit, when the transaction of an alias was lost during the test
        (committed by hand or implicitly, or its connection broke): what was written before that
        point was not rolled back.
    """

    __test__ = False  # not a test class, for pytest

    def __init__(self, connections: H) -> None:
        self._handler = connections
        self._pinned: dict[str, PinnedConnection] = {}

    async def __aenter__(self) -> H:
        handler = self._handler
        loop = handler._enter_loop()
        try:
            for alias in handler.aliases:
                pool = handler._pool(alias)
                holder = await pool.acquire(task_of(loop))
                try:
                    savepoint = await _begin_test(holder)
                except BaseException as exc:
                    await pool.give_back(holder, exc)
                    raise
                holder.pinned()
                pinned = self._pinned[alias] = PinnedConnection(holder, savepoint)
                handler._route(alias, pinned)
        except BaseException:
            await self._end()
            raise
        return handler

    def on_commit_callbacks(self, alias: str = "default") -> list[OnCommit]:
        """The ``on_commit()`` callbacks of ``alias`` whose blocks "committed" in the test (their
        outermost block succeeded), in order, not yet run: a test's transaction never commits."""
        source = self._pinned.get(alias)
        return [callback for callback, _ in source.on_commit] if source is not None else []

    async def run_on_commit(self, alias: str = "default") -> int:
        """Run the callbacks :meth:`on_commit_callbacks` lists (and those they register in turn),
        as the commit would have; how many ran."""
        source = self._pinned.get(alias)
        ran = 0
        while source is not None and source.on_commit:
            callbacks, source.on_commit = source.on_commit, []
            ran += len(callbacks)
            await _run_on_commit(alias, callbacks)
        return ran

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        problems = await self._end()
        if problems:
            raise TransactionError(
                "the test's writes were not all rolled back:\n- "
                + "\n- ".join(problems)
                + "\nRows written before that point may be left in the database, for later tests to see. "
                "Keep statements that commit (DDL on MySQL/MariaDB, COMMIT by hand) out of tests that use "
                "the transaction, and create the schema before the tests"
            )

    async def _end(self) -> list[str]:
        """Roll every alias back and give its connection back; what went wrong, per alias."""
        handler = self._handler
        problems: list[str] = []
        pinned, self._pinned = self._pinned, {}
        for alias, source in pinned.items():
            handler._route(alias, None)
            holder = source.holder
            holder.unpinned()
            failure: BaseException | None = None
            try:
                problem = await _roll_back_test(holder, source.savepoint)
            except BaseException as exc:
                failure = exc
                problem = f"aconn alias {alias!r}: the test's transaction could not be rolled back: {exc!r}"
            problem = source.lost or problem
            if problem is not None:
                problems.append(problem)
            await holder.pool.give_back(holder, failure)
        return problems


async def _roll_back_test(holder: Holder, savepoint: Any) -> str | None:
    """Roll a test's transaction back; what went wrong, if its savepoint was gone or its connection broke."""
    backend = holder.pool.backend
    conn = holder.conn
    alias = holder.pool.alias
    if backend.is_dead(conn):
        return f"aconn alias {alias!r}: the connection of the test's transaction broke during the test"
    problem = None
    async with asyncio.timeout(CLEANUP_TIMEOUT):
        try:
            await backend.end_block(conn, savepoint, False)
        except Exception:  # no such savepoint: the transaction it was in has ended
            problem = f"aconn alias {alias!r}: the test's transaction {_HAND_ENDED}"
        await backend.rollback(conn)  # the whole transaction, and the driver's record of it
    return problem
