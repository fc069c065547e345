"""psycopg 3 (``psycopg.AsyncConnection``): PostgreSQL, Django's own driver.

A Django ``DATABASES`` entry for PostgreSQL works as it is, ``OPTIONS``
included: libpq's connection parameters (``sslmode``, ``options``...),
psycopg's ``connect()`` arguments, and Django's ``isolation_level``,
``server_side_binding`` and ``assume_role``. ``pool`` is refused: aconn is
the pool.

Reads psycopg's ``pgconn`` (``socket``, ``status``, ``transaction_status``,
``get_cancel()``), its count of ``transaction()`` blocks entered
(``_num_transactions``) and its prepared-statement cache (``_prepared``);
``tests/test_postgresql.py::test_liveness_reads_driver_internals``
fails if the driver changes them.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, ClassVar, Final

import psycopg
from psycopg import generators, pq
from psycopg.waiting import wait_async, wait_conn_async

from ..errors import ConfigError
from ..settings import Address, Settings
from .base import ErrorKind, ServerLimits, check_options
from .pgcommon import LIMITS_SQL, PostgresBackend, classify_sqlstate, limits_from_row

__all__ = ("PsycopgBackend",)

#: keys aconn sets from the top-level settings; OPTIONS may not override them
_OWN_KEYS: Final = {
    "host": "HOST", "hostaddr": "HOST", "port": "PORT", "user": "USER", "password": "PASSWORD",
    "dbname": "NAME", "autocommit": "AUTOCOMMIT", "connect_timeout": "CONNECT_TIMEOUT",
}  # fmt: skip
#: libpq's connection parameters, and psycopg's own connect() arguments
_LIBPQ_KEYS: Final = frozenset(o.keyword.decode() for o in pq.Conninfo.get_defaults())
_PSYCOPG_KEYS: Final = frozenset(inspect.signature(psycopg.AsyncConnection.connect).parameters) - {"conninfo", "kwargs"}
#: Django's OPTIONS that are not libpq's
_DJANGO_KEYS: Final = frozenset({"isolation_level", "server_side_binding", "assume_role"})
_ISOLATION: Final = {
    psycopg.IsolationLevel.READ_UNCOMMITTED: "read uncommitted",
    psycopg.IsolationLevel.READ_COMMITTED: "read committed",
    psycopg.IsolationLevel.REPEATABLE_READ: "repeatable read",
    psycopg.IsolationLevel.SERIALIZABLE: "serializable",
}
#: libpq 17's cancel connections (PQcancelCreate): TLS and the connected host, as psycopg's cancel_safe()
_CANCEL_CONN: Final = psycopg.capabilities.has_cancel_safe()
#: psycopg's own bounds on a cancelled statement: the cancel request, then the statement's end
DRAIN_TIMEOUT: Final = 5.0
_WAIT_INTERVAL: Final = 0.1
_IDLE: Final = pq.TransactionStatus.IDLE
_ACTIVE: Final = pq.TransactionStatus.ACTIVE
_BAD: Final = pq.ConnStatus.BAD


class _Connection(psycopg.AsyncConnection[Any]):
    """psycopg's connection, with what aconn needs to cancel its statement once it is closed, and
    a caller's cancellation that returns at once.

    psycopg answers a cancelled caller by cancelling the statement and waiting for the server
    (up to 5 s for the request, 5 s more for the statement) before the ``CancelledError`` goes
    on: a caller's ``asyncio.timeout(2)`` returned after 5 s during a network black hole. Here
    the same cancel-and-drain runs in a task of its own and the caller gets its error at its
    deadline; the next command on the connection waits for that task first (the connection
    stays usable, as psycopg's), and a scope that ends meanwhile leaves the stop to aconn, which
    holds the slot until the server has let go of the session.
    """

    #: the server's process id of this session
    aconn_pid: int = 0
    #: the cancel-and-drain of a statement whose caller was cancelled, still running
    aconn_draining: asyncio.Task[None] | None = None

    async def wait(self, gen: Any, interval: float = _WAIT_INTERVAL, timeout: float | None = None) -> Any:
        draining = self.aconn_draining
        if draining is not None:
            await asyncio.shield(draining)  # the cancelled statement's result is consumed first
            self.aconn_draining = None
        try:
            return await wait_async(gen, self.pgconn.socket, interval=interval, timeout=timeout)
        except asyncio.CancelledError:
            if self.pgconn.transaction_status == _ACTIVE:
                self.aconn_draining = asyncio.get_running_loop().create_task(self._aconn_drain(gen, interval))
            raise

    async def _aconn_drain(self, gen: Any, interval: float) -> None:
        """psycopg's own answer to a cancelled caller, off the caller's path: cancel, then consume
        the statement's end; a connection that does not get there is closed (as psycopg does)."""
        try:
            await self.cancel_safe(timeout=DRAIN_TIMEOUT)
            await wait_async(gen, self.pgconn.socket, interval=interval, timeout=DRAIN_TIMEOUT)
        except asyncio.CancelledError:
            self.pgconn.finish()  # aborted by aconn meanwhile (its stop takes over)
        except psycopg.errors.QueryCanceled:
            pass  # as expected: the session is usable
        except Exception:
            self.pgconn.finish()  # not cancelled in time, or lost: its state is unknown

    #: libpq's cancel connection or handle, taken at connect (usable after the connection is closed)
    aconn_cancel: Any = None
    #: a pooler sits between this connection and the server (seen at connect)
    aconn_pooled: bool = False


def _refuse_session_state(settings: Settings, options: dict[str, Any]) -> None:
    """Behind a pooler, what aconn would set per session: refused, with where to set it instead."""
    where = (
        "behind a transaction-mode pooler a session setting is not passed on (PgBouncer refuses "
        "startup parameters) or leaks to the clients sharing the server connection: set it for the "
        "role or database on the server instead (ALTER ROLE ... SET ...)"
    )
    if settings.statement_timeout is not None:
        raise ConfigError(settings.alias, "STATEMENT_TIMEOUT", f"{where}: statement_timeout")
    for key in ("isolation_level", "options", "assume_role"):
        if key in options:
            raise ConfigError(settings.alias, f"OPTIONS.{key}", where)


def _option_value(value: str) -> str:
    """A value inside libpq's ``options``: spaces and backslashes escaped."""
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


class PsycopgBackend(PostgresBackend):
    """psycopg 3 async connections to PostgreSQL."""

    vendor: ClassVar[str] = "postgresql"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        alias = settings.alias
        options = dict(settings.options)
        if "pool" in options:
            raise ConfigError(
                alias, "OPTIONS.pool", "aconn is the pool: remove it (Django's psycopg_pool settings do not apply)"
            )
        check_options(
            alias, options, _OWN_KEYS, _LIBPQ_KEYS | _PSYCOPG_KEYS | _DJANGO_KEYS,
            "not a libpq connection parameter nor a psycopg.connect() option",
        )  # fmt: skip
        if settings.pooler is not None:
            _refuse_session_state(settings, options)
            options.setdefault("prepare_threshold", None)  # no named prepared statements: another client's
        startup: list[str] = []
        isolation = options.pop("isolation_level", None)
        if isolation is not None:
            try:
                level = _ISOLATION[psycopg.IsolationLevel(isolation)]
            except (ValueError, KeyError):
                raise ConfigError(
                    alias, "OPTIONS.isolation_level", "must be a psycopg.IsolationLevel (1 to 4)"
                ) from None
            startup.append(f"-c default_transaction_isolation={_option_value(level)}")
        if settings.statement_timeout is not None:
            startup.append(f"-c statement_timeout={max(1, round(settings.statement_timeout * 1000))}")
        if startup:
            user_options = options.get("options")
            options["options"] = " ".join([*([user_options] if user_options else []), *startup])
        binding = options.pop("server_side_binding", None)
        if binding is not None:
            if not isinstance(binding, bool):
                raise ConfigError(alias, "OPTIONS.server_side_binding", f"must be True or False, got {binding!r}")
            options["cursor_factory"] = psycopg.AsyncCursor if binding else psycopg.AsyncClientCursor
        role = options.pop("assume_role", None)
        self._setup_sql: str | None = None
        if role is not None:
            if not isinstance(role, str) or not role:
                raise ConfigError(alias, "OPTIONS.assume_role", f"must be a role name, got {role!r}")
            self._setup_sql = 'SET ROLE "{}"'.format(role.replace('"', '""'))
        self._host, self._port = settings.addresses[0]  # a multi-host alias: each connect names its node
        self._kwargs: dict[str, Any] = {
            "host": self._host,
            "port": self._port,
            "user": settings.user or None,
            "password": settings.password or None,
            "dbname": settings.name or None,
            "autocommit": settings.autocommit,
            **options,
        }

    async def _open(self, address: Address | None = None) -> Any:
        return await _Connection.connect(**self._kwargs_at(address))

    async def connect(self, address: Address | None = None) -> tuple[Any, ServerLimits]:
        conn = await self._open(address)
        try:
            if self._setup_sql:
                await conn.execute(self._setup_sql)
            cur = await conn.execute(LIMITS_SQL)
            row = await cur.fetchone()
            if not self.settings.autocommit:
                await conn.rollback()  # the limits query opened the transaction: start clean
        except BaseException:
            await self._close_quietly(conn)
            raise
        pid, limits = limits_from_row(row, pooled=self.settings.pooler is not None, key_pid=conn.pgconn.backend_pid)
        conn.aconn_pooled = not limits.session_id_verified
        conn.aconn_pid = pid
        # libpq's cancel connection (libpq 17: TLS as the connection negotiated it, to the host it
        # reached), else its legacy cancel handle; both outlive the connection they cancel for
        conn.aconn_cancel = conn.pgconn.cancel_conn() if _CANCEL_CONN else conn.pgconn.get_cancel()
        return conn, limits

    @staticmethod
    async def _close_quietly(conn: Any) -> None:
        try:
            await conn.close()
        except Exception:
            conn.pgconn.finish()

    async def close(self, conn: Any) -> None:
        await conn.close()  # a Terminate message: the server logs no lost client

    def abort(self, conn: Any) -> None:
        draining = conn.aconn_draining
        if draining is not None:
            conn.aconn_draining = None
            if self.pooled(conn) and not draining.done():
                # a pooler forwards a cancel request only while the client connection that ran the
                # statement is open: psycopg's own cancel goes out first (bounded), then the close
                draining.add_done_callback(lambda _: conn.pgconn.finish())
                return
            draining.cancel()  # aconn's own stop of the statement takes over
        conn.pgconn.finish()  # closes the socket at once, no I/O

    def forget(self, conn: Any) -> None:
        conn.pgconn.finish()  # libpq owns the socket: closing it needs no event loop

    def _flagged_dead(self, conn: Any) -> bool:
        return bool(conn.pgconn.status == _BAD)

    def _socket(self, conn: Any) -> int | None:
        try:
            fd: int = conn.pgconn.socket
        except psycopg.OperationalError:
            return None
        return fd

    def reusable(self, conn: Any) -> bool:
        pgconn = conn.pgconn
        return bool(pgconn.transaction_status == _IDLE and pgconn.status != _BAD and not conn._num_transactions)

    async def ping(self, conn: Any) -> None:
        await conn.execute("SELECT 1")

    def in_transaction(self, conn: Any) -> bool:
        # a conn.transaction() block the app entered and never exited counts too
        return bool(conn.pgconn.transaction_status != _IDLE or conn._num_transactions)

    async def rollback(self, conn: Any) -> None:
        # psycopg's count of conn.transaction() blocks entered goes too: a block left entered
        # (its exit never ran) makes psycopg refuse rollback() and the next user's transaction()
        conn._num_transactions = 0
        await conn.rollback()

    async def reset(self, conn: Any) -> None:
        await conn.execute("DISCARD ALL", prepare=False)
        # the server forgot the session's prepared statements: psycopg must too (it notices a
        # DISCARD ALL only the first time it runs one, while the statement is new to its cache)
        prepared = conn._prepared
        prepared._counts.clear()
        prepared._names.clear()
        if self._setup_sql:
            await conn.execute(self._setup_sql)

    async def execute(self, conn: Any, sql: str) -> None:
        await conn.execute(sql)

    async def _fetch_one(self, conn: Any, sql: str) -> Any:
        cur = await conn.execute(sql)
        return await cur.fetchone()

    async def _end_read(self, conn: Any) -> None:
        if not self.settings.autocommit:
            await conn.rollback()

    def left_running(self, conn: Any) -> bool:
        # psycopg cancels a cancelled caller's statement itself and waits for the server before
        # the CancelledError goes on; a statement is left only when that was cut short
        return bool(conn.pgconn.transaction_status == _ACTIVE or (conn.pgconn.status == _BAD and conn.aconn_pid != 0))

    def _pid(self, conn: Any) -> int:
        return int(conn.aconn_pid)

    async def _cancel(self, conn: Any) -> None:
        cancel = conn.aconn_cancel
        if cancel is None:
            return
        if _CANCEL_CONN:
            # libpq's non-blocking cancel connection, polled by the event loop (as psycopg's own
            # cancel_safe does): bounded by the caller. Its blocking() would keep the GIL while a
            # silent network path holds it up, stopping every thread of the process.
            cancel.start()
            try:
                await wait_conn_async(generators.cancel(cancel), interval=_WAIT_INTERVAL)
            finally:
                cancel.finish()
        else:
            await asyncio.to_thread(cancel.cancel)  # PQcancel (libpq before 17: no TLS), bounded by the caller

    def classify(self, exc: BaseException, *, connecting: bool = False) -> ErrorKind:
        if isinstance(exc, psycopg.Error):
            kind = classify_sqlstate(exc.sqlstate, str(exc), connecting=connecting)
            if kind is not None:
                return kind
            if isinstance(exc, psycopg.errors.QueryCanceled):
                return ErrorKind.OTHER  # a statement_timeout: the session is fine
            if isinstance(exc, psycopg.InterfaceError) or (
                isinstance(exc, psycopg.OperationalError) and not exc.sqlstate
            ):
                return ErrorKind.DISCONNECT  # libpq: the connection is closed or lost
            return ErrorKind.OTHER
        if isinstance(exc, OSError | EOFError):
            return ErrorKind.DISCONNECT
        return ErrorKind.OTHER
