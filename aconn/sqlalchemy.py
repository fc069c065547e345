"""SQLAlchemy 2 on aconn: ``create_async_engine(connections, alias)``.

The engine is a standard :class:`~sqlalchemy.ext.asyncio.AsyncEngine` (Core,
ORM, ``AsyncSession``, ``async_sessionmaker``) whose connections are aconn's:

- **Inside a scope**, in the task that entered it, an engine connection is the
  scope's connection of the alias: the very driver connection
  ``connections.connection(alias)`` returns, so that raw-driver and ORM code in
  one request share one connection and one transaction. Giving it back to
  SQLAlchemy does not give it back to aconn: the scope's exit does, with all
  of aconn's checks.
- **Otherwise** (no scope; a child task of the scope's task; the scope's
  connection already checked out by SQLAlchemy, e.g. a second session open at
  the same time) an engine connection is a unit of work of its own for as long
  as SQLAlchemy holds it: a connection of the alias taken as a scope takes one
  (counted against ``MAX_CONNS``, checked the same way) and given back when
  SQLAlchemy checks it in.

SQLAlchemy's transactions go through aconn's transaction blocks: the outermost
is a ``BEGIN``/``COMMIT``, one opened while a transaction is already open on
the connection (``connections.atomic()``, ``ATOMIC_REQUESTS``, a test's
transaction of ``aconn.testing``, the driver's own ``begin()``) is a savepoint
that the enclosing transaction commits or rolls back; and ``atomic()`` inside a
SQLAlchemy transaction is a savepoint of it. (On asyncpg SQLAlchemy drives
asyncpg's own transaction objects, which nest the same way.) Connections stay
in aconn's autocommit mode between transactions; on aiomysql the outermost ``BEGIN``
goes out with the transaction's first statement, in one write when that is a
``SELECT`` (one round trip, as the driver's implicit transaction under
SQLAlchemy's own pool), and a transaction with no statement sends nothing. On an alias with ``AUTOCOMMIT``
off, the outermost transaction is the one the driver opens by itself with its first
statement, as under SQLAlchemy's own pool: no ``BEGIN`` is sent.

SQLAlchemy's pool arguments are refused, naming the aconn setting that does the
job; ``engine.dispose()`` leaves the connections to the handler. See
``docs/sqlalchemy.md``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import pool as sa_pool
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.mysql.aiomysql import MySQLDialect_aiomysql
from sqlalchemy.dialects.mysql.asyncmy import MySQLDialect_asyncmy
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.dialects.postgresql.psycopg import PGDialectAsync_psycopg
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as _sa_create_async_engine
from sqlalchemy.util import await_only
from sqlalchemy.util.concurrency import in_greenlet

from ._asyncio import task_of
from .errors import AcquireTimeout, ConfigError, ScopeError
from .handler import Connections
from .scope import LENT, Scope, ScopeState, Unit

if TYPE_CHECKING:
    from .pool import Pool
    from .transactions import PinnedConnection

__all__ = ("create_async_engine",)

#: ENGINE -> (SQLAlchemy's dialect name, the class below that SQLAlchemy loads for it)
_DIALECTS: Final[Mapping[str, tuple[str, str]]] = {
    "sqlite": ("sqlite", "AiosqliteDialect"),
    "mysql": ("mysql", "AiomysqlDialect"),
    "asyncmy": ("mysql", "AsyncmyDialect"),
    "postgresql": ("postgresql", "PsycopgDialect"),
    "asyncpg": ("postgresql", "AsyncpgDialect"),
}

#: SQLAlchemy's pool arguments -> what does the job in aconn
_POOL_ARGUMENTS: Final[Mapping[str, str]] = {
    "pool_size": "the alias' MAX_CONNS",
    "max_overflow": "the alias' MAX_CONNS (aconn has no overflow: MAX_CONNS is the cap)",
    "pool_timeout": "the alias' ACQUIRE_TIMEOUT",
    "pool_recycle": "the alias' CONN_MAX_AGE (and IDLE_TIMEOUT)",
    "pool_pre_ping": "nothing: aconn checks every connection it hands out without a round trip "
    "(CONN_HEALTH_CHECKS adds a ping after a long idle)",
    "pool_use_lifo": "nothing: aconn hands out the most recently used idle connection",
    "pool_reset_on_return": "the alias' RESET_ON_RELEASE",
    "poolclass": "the alias' settings: aconn is the pool",
    "pool": "the alias' settings: aconn is the pool",
    "creator": "the alias' settings (NAME, USER, HOST, OPTIONS...): aconn makes the connections",
    "async_creator": "the alias' settings (NAME, USER, HOST, OPTIONS...): aconn makes the connections",
    "connect_args": "the alias' OPTIONS",
}


_SAVEPOINTS = itertools.count(1)

#: MySQL's server status flag of an open transaction; libpq's idle transaction status
_SERVER_STATUS_IN_TRANS: Final = 1
_PG_IDLE: Final = 0

#: the token of a transaction the driver opened by itself (the alias' AUTOCOMMIT off): no BEGIN sent
_IMPLICIT: Final = object()
#: the token of a transaction whose BEGIN goes with its first statement (aiomysql: one write with a SELECT)
_DEFERRED: Final = object()


def create_async_engine(connections: Connections, alias: str = "default", **kwargs: Any) -> AsyncEngine:
    """A SQLAlchemy :class:`~sqlalchemy.ext.asyncio.AsyncEngine` whose connections are ``alias``' in ``connections``.

    The dialect follows the alias' ``ENGINE`` (``postgresql+asyncpg``, ``postgresql+psycopg``,
    ``mysql+aiomysql``, ``mysql+asyncmy``, ``sqlite+aiosqlite``). ``read_only=True`` reads
    through the alias' ``REPLICAS`` as ``connections.connection(alias, read_only=True)`` does
    (read-your-writes included). Other keyword arguments go to SQLAlchemy's
    ``create_async_engine`` (``echo``, ``json_serializer``, ``execution_options``...), except
    its pool arguments, which are refused with the aconn setting that does the job.

    :raises ConfigError: for an unknown alias, or a pool argument (the key names it).
    """
    settings = connections.settings(alias)  # ConfigError for an unknown alias
    read_only = bool(kwargs.pop("read_only", False))
    for key in kwargs:
        if key in _POOL_ARGUMENTS:
            raise ConfigError(
                alias,
                None,
                f"aconn.sqlalchemy.create_async_engine() got SQLAlchemy's pool argument {key!r}; "
                f"aconn is the pool here: use {_POOL_ARGUMENTS[key]}",
            )
    dialect, dialect_class = _DIALECTS[settings.engine]
    url = URL.create(
        f"{dialect}+{_driver_name(dialect_class)}",
        username=settings.user or None,  # never the password: it is the handler's
        # a multi-host alias: the first host (the URL is for reading; aconn picks the node)
        host=settings.addresses[0][0] if settings.host else None,
        port=settings.addresses[0][1] if settings.host else settings.port,
        database=settings.name or None,
    )
    lender = _Lender(connections, alias, read_only)
    pool = _Pool(lender, echo=kwargs.pop("echo_pool", None), logging_name=kwargs.pop("pool_logging_name", None))
    return _sa_create_async_engine(url, pool=pool, **kwargs)


class _Lease:
    """One checkout: the driver connection, and the unit it was taken in (None: the scope's own)."""

    __slots__ = ("backend", "conn", "unit")

    def __init__(self, conn: Any, unit: Unit | None, backend: Any) -> None:
        self.conn = conn
        self.unit = unit
        self.backend = backend


class _Lender:
    """Takes a connection for each SQLAlchemy checkout and gives it back at checkin."""

    __slots__ = ("alias", "connections", "read_only")

    def __init__(self, connections: Connections, alias: str, read_only: bool) -> None:
        self.connections = connections
        self.alias = alias
        self.read_only = read_only

    @property
    def backend(self) -> Any:
        return self.connections._pool(self.alias).backend

    def lend_now(self) -> _Lease | Coroutine[Any, Any, _Lease]:
        """:meth:`lend`'s common case, with no await (no greenlet switch): in the task that entered
        the scope, the scope's connection of the alias, taken now if it has none and the top idle
        connection passes the hand-out check. Else the coroutine that gets one: the pool's
        acquire, in that same case with nothing idle; :meth:`lend` for the rest."""
        connections, alias = self.connections, self.alias
        scopes = connections._scopes
        scope = scopes.var.get(None)
        if scope is None or self.read_only:
            return self.lend()
        task = scopes.running_task()
        if task is None or scope.task is not task:
            return self.lend()
        holder = scope.held.get(alias)
        if holder is None:
            if alias in connections._reads.sets:
                return self.lend()  # a primary with replicas: connection() marks it taken (read-your-writes)
            source = connections._sources.get(alias) or connections._pool(alias)
            holder = source.take_idle(task)
            if holder is None:
                return self._acquire(scope, task, source)
            scope.held[alias] = holder
        conn = holder.conn
        if id(conn) in LENT:
            return self.lend()  # a second engine connection at once: a unit of its own
        LENT[id(conn)] = None
        return _Lease(conn, None, holder.pool.backend)

    async def _acquire(self, scope: Scope, task: asyncio.Task[Any], source: Pool | PinnedConnection) -> _Lease:
        """:meth:`lend_now` when the scope has no connection of the alias and none is idle: the
        scope's, acquired as ``connections.connection()`` acquires it (the waiter queue)."""
        holder = scope.held[self.alias] = await source.acquire(task)
        if id(holder.conn) in LENT:
            return await self.lend()  # a test's one connection, lent already: a unit of its own
        LENT[id(holder.conn)] = None
        return _Lease(holder.conn, None, holder.pool.backend)

    async def lend(self) -> _Lease:
        connections, alias = self.connections, self.alias
        scope = connections._scopes.var.get(None)
        if scope is not None and scope.task is task_of(asyncio.get_running_loop()):
            conn = await connections.connection(alias, read_only=self.read_only)
            if id(conn) not in LENT:  # else a second engine connection at once: a unit of its own
                LENT[id(conn)] = None
                return _Lease(conn, None, self.backend)
        unit = Unit(connections._scopes)
        await unit.__aenter__()
        try:
            conn = await connections._take_in(unit, alias, self.read_only)
            if id(conn) in LENT:
                await self._turn(id(conn))
        except BaseException as exc:
            await unit.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        LENT[id(conn)] = None
        return _Lease(conn, unit, self.backend)

    async def _turn(self, key: int) -> None:
        """A test's transaction (``aconn_db``) runs every unit on its one connection: engine
        connections wanted at once there (sessions in child tasks) take turns on it."""
        timeout = self.connections.settings(self.alias).acquire_timeout
        try:
            async with asyncio.timeout(timeout):
                while key in LENT:
                    checked_in = LENT[key]
                    if checked_in is None:
                        checked_in = LENT[key] = asyncio.Event()
                    await checked_in.wait()
        except TimeoutError:
            raise AcquireTimeout(
                f"aconn alias {self.alias!r}: a test's transaction (aconn_db) runs every scope on one "
                f"connection, which SQLAlchemy held for all of ACQUIRE_TIMEOUT ({timeout:g} s): two engine "
                "connections (two sessions) open at once in one task wait for each other there. Close the "
                "first session before opening the next, or test it without aconn_db"
            ) from None

    def give_back(self, lease: _Lease) -> None:
        """SQLAlchemy checked the connection in: the scope keeps it; a unit of its own ends."""
        checked_in = LENT.pop(id(lease.conn), None)
        if checked_in is not None:
            checked_in.set()
        unit = lease.unit
        if unit is None:
            return
        if in_greenlet():
            slow = unit.leave()  # no await unless a release needs the network
            if slow is not None:
                await_only(slow)  # shielded, each release to its end
            return
        # the garbage collector returned a connection SQLAlchemy's caller never closed: no I/O
        # here, the unit ends in a task of its own
        loop = self.connections._scopes.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(_end_unit, unit)


#: units ending in a task of their own (a reference held until done)
_ENDING: Final[set[asyncio.Future[None]]] = set()


def _end_unit(unit: Unit) -> None:
    ending = asyncio.ensure_future(unit.__aexit__(None, None, None))
    _ENDING.add(ending)
    ending.add_done_callback(_ENDING.discard)


class _Pool(sa_pool.Pool):
    """SQLAlchemy's pool interface over aconn: each checkout lends an aconn connection.

    SQLAlchemy's record of a driver connection (its adapter, its ``info``, the connect events
    it ran) is kept on the driver connection for its lifetime, so that a connection SQLAlchemy
    has seen before is not set up again.
    """

    def __init__(self, lender: _Lender, **kwargs: Any) -> None:
        super().__init__(self._adapt, **kwargs)
        self._lender = lender
        self._lending: Any = None  # the driver connection _adapt wraps next

    def _adapt(self, rec: sa_pool.ConnectionPoolEntry) -> Any:
        """The pool's creator: the driver connection being lent, in SQLAlchemy's adapter."""
        conn = self._lending

        async def ready() -> Any:
            return conn

        return self._dialect.dbapi.connect(async_creator_fn=ready)  # type: ignore[union-attr]

    def _do_get(self) -> sa_pool.ConnectionPoolEntry:
        lease = self._lender.lend_now()
        if not isinstance(lease, _Lease):
            lease = await_only(lease)
        try:
            conn = lease.conn
            state = _state(conn)
            record = state.records.get(self)
            if record is None or record._is_hard_or_soft_invalidated():
                self._lending = conn
                record = state.records[self] = self._create_connection()
                state.scopes = self._lender.connections._scopes
            record.info["aconn_lease"] = lease
            return record
        except BaseException:
            self._lender.give_back(lease)
            raise

    def _do_return_conn(self, record: sa_pool.ConnectionPoolEntry) -> None:
        lease = record.info.pop("aconn_lease", None)
        if lease is not None:
            self._lender.give_back(lease)

    def _close_connection(self, connection: Any, *, terminate: bool = False) -> None:
        # aconn owns the connection: SQLAlchemy invalidating it (a disconnect, a failed reset)
        # closes it at once, so that aconn discards it when its unit or scope ends
        if terminate:
            self._lender.backend.abort(self._dialect.get_driver_connection(connection))

    def _invalidate(self, connection: Any, exception: BaseException | None = None, _checkin: bool = True) -> None:
        # one dead connection says nothing of the others (SQLAlchemy's pool would recycle them
        # all): aconn checks each connection it hands out
        if _checkin and getattr(connection, "is_valid", False):
            connection.invalidate(exception)

    def recreate(self) -> _Pool:
        return _Pool(
            self._lender,
            echo=self.echo,
            logging_name=self._orig_logging_name,
            reset_on_return=self._reset_on_return,
            _dispatch=self.dispatch,
            dialect=self._dialect,
        )

    def dispose(self) -> None:
        """Nothing: the connections are the handler's (``connections.aclose()`` closes them)."""

    def status(self) -> str:
        stats = self._lender.connections.stats(self._lender.alias)
        return f"aconn pool of alias {self._lender.alias!r}: {stats}"


# -- transactions through aconn's blocks -------------------------------------------------------


class _ConnState:
    """What aconn.sqlalchemy keeps on a driver connection (its ``aconn_sqlalchemy``), for its lifetime."""

    __slots__ = ("autocommit", "blocks", "isolation", "records", "scopes", "user")

    def __init__(self) -> None:
        #: each engine's (each pool's) SQLAlchemy record of the connection
        self.records: dict[_Pool, Any] = {}
        #: (backend, token) of the transaction blocks SQLAlchemy opened, innermost last
        self.blocks: list[tuple[Any, Any]] = []
        #: SQLAlchemy's isolation_level="AUTOCOMMIT" is on: no BEGIN
        self.autocommit = False
        #: the isolation level a PostgreSQL transaction begun here sets (None: the server's)
        self.isolation: str | None = None
        #: the task running a statement on the connection now
        self.user: asyncio.Task[Any] | None = None
        #: the handler's scope state, to read the running task off (no system call)
        self.scopes: ScopeState | None = None


def _state(conn: Any) -> _ConnState:
    state: _ConnState | None = getattr(conn, "aconn_sqlalchemy", None)
    if state is None:
        state = conn.aconn_sqlalchemy = _ConnState()
    return state


class _OneTaskAtATime:
    """Mixed in before every dialect: a statement sent on an engine connection while another
    task's is running on it fails at once with a clear error, before the driver sees it (one
    session shared by two tasks), instead of interleaving on the wire or queueing silently."""

    @classmethod
    def get_async_dialect_cls(cls, url: URL) -> type[Any]:
        return cls  # this class, not the driver's plain one (psycopg's names its async dialect)

    def do_execute(self, cursor: Any, statement: Any, parameters: Any, context: Any = None) -> None:
        state = _claim(cursor._connection)
        try:
            super().do_execute(cursor, statement, parameters, context)  # type: ignore[misc]
        finally:
            state.user = None

    def do_executemany(self, cursor: Any, statement: Any, parameters: Any, context: Any = None) -> None:
        state = _claim(cursor._connection)
        try:
            super().do_executemany(cursor, statement, parameters, context)  # type: ignore[misc]
        finally:
            state.user = None

    def do_execute_no_params(self, cursor: Any, statement: Any, context: Any = None) -> None:
        state = _claim(cursor._connection)
        try:
            super().do_execute_no_params(cursor, statement, context)  # type: ignore[misc]
        finally:
            state.user = None


def _claim(conn: Any) -> _ConnState:
    """The current task becomes the user of driver connection ``conn`` for one statement (the
    caller sets ``user`` back to None after it); another task's statement meanwhile fails at
    once with a ``ScopeError``."""
    state = _state(conn)
    scopes = state.scopes
    task = (scopes.running_task() if scopes is not None else None) or task_of(asyncio.get_running_loop())
    user = state.user
    if user is not None and user is not task:
        raise ScopeError(
            f"one SQLAlchemy session (or engine connection) was used by task {_name(task)!r} while "
            f"task {_name(user)!r} ran a statement on it: a session belongs to one task at a time. "
            "Give each task its own session (async_sessionmaker), as for asyncio.gather over queries"
        )
    state.user = task
    return state


def _name(task: asyncio.Task[Any] | None) -> str:
    return task.get_name() if task is not None else "?"


class _Transactions(_OneTaskAtATime):
    """Mixed in before a SQLAlchemy dialect whose driver aconn runs in autocommit mode: its
    transactions are aconn's blocks (see the module's docstring)."""

    def do_begin(self, dbapi_connection: Any) -> None:
        conn = dbapi_connection.driver_connection
        state = _state(conn)
        if state.autocommit:
            return  # isolation_level="AUTOCOMMIT": each statement on its own
        backend = dbapi_connection.info["aconn_lease"].backend
        # the alias' AUTOCOMMIT off: the driver begins the outermost transaction with its first
        # statement, as under SQLAlchemy's own pool (no BEGIN round trip); the backend's
        # in_transaction() says "maybe" whenever autocommit is off, so ask the driver
        implicit = not backend.settings.autocommit
        outermost = not (self._transaction_open(conn) if implicit else backend.in_transaction(conn))
        if outermost and implicit:
            token = _IMPLICIT
        elif outermost:
            token = self._begin(backend, conn)
        else:
            token = await_only(backend.begin_block(conn, f"aconn_sa_{next(_SAVEPOINTS)}"))
        state.blocks.append((backend, token))
        isolation = state.isolation
        if isolation is not None and outermost:
            await_only(backend.execute(conn, f"SET TRANSACTION ISOLATION LEVEL {isolation}"))

    def _begin(self, backend: Any, conn: Any) -> Any:
        """Begin the outermost transaction: the token :func:`_end` ends it with."""
        return await_only(backend.begin_block(conn, None))

    def _transaction_open(self, conn: Any) -> bool:
        """A transaction is open on ``conn`` now, as the driver knows it."""
        return bool(conn.in_transaction)  # aiosqlite's; psycopg's and the MySQL drivers' below

    def do_commit(self, dbapi_connection: Any) -> None:
        _end(dbapi_connection.driver_connection, True)

    def do_rollback(self, dbapi_connection: Any) -> None:
        try:
            leased = "aconn_lease" in dbapi_connection.info
        except NotImplementedError:  # the ad-hoc connection of SQLAlchemy's first connect event
            leased = False
        if not leased:
            # SQLAlchemy setting up a connection it sees for the first time: its own rollback,
            # as under its own pool (its setup queries may have opened a transaction)
            super().do_rollback(dbapi_connection)  # type: ignore[misc]
            return
        _end(dbapi_connection.driver_connection, False)

    def set_isolation_level(self, dbapi_connection: Any, level: Any) -> None:
        conn = dbapi_connection.driver_connection
        _state(conn).autocommit = level == "AUTOCOMMIT"
        if level != "AUTOCOMMIT":
            self._set_isolation(dbapi_connection, conn, level)

    def _set_isolation(self, dbapi_connection: Any, conn: Any, level: str) -> None:
        super().set_isolation_level(dbapi_connection, level)  # type: ignore[misc]


def _end(conn: Any, commit: bool) -> None:
    """Commit or roll back the innermost block SQLAlchemy opened; nothing if it opened none
    (SQLAlchemy's reset at checkin, with no transaction of its own)."""
    blocks = _state(conn).blocks
    if not blocks:
        return
    backend, token = blocks.pop()
    try:
        if token is _DEFERRED and conn.aconn_drop_begin():
            return  # no statement since: the BEGIN never went, nothing to end
        if backend.is_dead(conn, peek=False) or backend.left_running(conn):
            # the session known ended (its flags: no system call at every commit; a ROLLBACK on a
            # session ended unnoticed fails, and SQLAlchemy invalidates the connection); or a
            # cancelled caller left a statement running, which a ROLLBACK would wait behind: the
            # release stops it, then rolls back (or discards)
            return
        try:
            await_only(_ending(backend, conn, token, commit))
        except BaseException:
            if commit and backend.in_transaction(conn):
                try:
                    await_only(_ending(backend, conn, token, False))
                except Exception:
                    backend.abort(conn)  # neither committed nor rolled back: aconn discards it
            raise
    finally:
        if token is not _IMPLICIT:
            backend.left_block(conn)


def _ending(backend: Any, conn: Any, token: Any, commit: bool) -> Coroutine[Any, Any, None]:
    """What ends the block: the backend's, or the driver's COMMIT/ROLLBACK for an implicit transaction."""
    if token is not _IMPLICIT:
        return backend.end_block(conn, None if token is _DEFERRED else token, commit)  # type: ignore[no-any-return]
    return conn.commit() if commit else backend.rollback(conn)  # type: ignore[no-any-return]


class _MySQL(_Transactions):
    def _begin(self, backend: Any, conn: Any) -> Any:
        # aiomysql: the BEGIN goes with the first statement, in one write with a SELECT (one
        # round trip, as under SQLAlchemy's own pool, where the driver's implicit transaction
        # begins with the first statement)
        return _DEFERRED if backend.defer_begin(conn) else super()._begin(backend, conn)

    def _transaction_open(self, conn: Any) -> bool:
        return bool(conn.server_status & _SERVER_STATUS_IN_TRANS)

    def _set_isolation(self, dbapi_connection: Any, conn: Any, level: str) -> None:
        # SQLAlchemy's own adds a COMMIT, which would end an enclosing atomic() block
        cursor = dbapi_connection.cursor()
        cursor.execute(f"SET SESSION TRANSACTION ISOLATION LEVEL {level}")
        cursor.close()


class _Psycopg(_Transactions):
    def _transaction_open(self, conn: Any) -> bool:
        return bool(conn.pgconn.transaction_status != _PG_IDLE)

    def _set_isolation(self, dbapi_connection: Any, conn: Any, level: str) -> None:
        # psycopg's isolation_level applies to the BEGIN psycopg sends itself, never sent here:
        # do_begin sets it on the transaction
        _state(conn).isolation = level


class AiosqliteDialect(_Transactions, SQLiteDialect_aiosqlite):
    """``sqlite+aiosqlite`` on aconn's connections."""

    driver = "aiosqlite"
    supports_statement_cache = True  # SQLAlchemy looks in each class of the dialect


class AiomysqlDialect(_MySQL, MySQLDialect_aiomysql):
    """``mysql+aiomysql`` on aconn's connections."""

    driver = "aiomysql"
    supports_statement_cache = True  # SQLAlchemy looks in each class of the dialect


class AsyncmyDialect(_MySQL, MySQLDialect_asyncmy):
    """``mysql+asyncmy`` on aconn's connections."""

    driver = "asyncmy"
    supports_statement_cache = True  # SQLAlchemy looks in each class of the dialect


class PsycopgDialect(_Psycopg, PGDialectAsync_psycopg):
    """``postgresql+psycopg`` on aconn's connections."""

    driver = "psycopg"
    supports_statement_cache = True  # SQLAlchemy looks in each class of the dialect


class AsyncpgDialect(_OneTaskAtATime, PGDialect_asyncpg):
    """``postgresql+asyncpg`` on aconn's connections. Its transactions are SQLAlchemy's own:
    they drive asyncpg's transaction objects, which nest inside aconn's blocks (and aconn's
    inside them) by themselves."""

    driver = "asyncpg"
    supports_statement_cache = True  # SQLAlchemy looks in each class of the dialect


def _driver_name(dialect_class: str) -> str:
    """The name SQLAlchemy knows the class by: ``mysql+aconn_aiomysql``..."""
    return "aconn_" + dialect_class.removesuffix("Dialect").lower()


for _dialect, _class in _DIALECTS.values():
    registry.register(f"{_dialect}.{_driver_name(_class)}", __name__, _class)
