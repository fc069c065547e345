"""asyncpg: PostgreSQL through asyncpg's own protocol implementation.

``OPTIONS`` are checked against ``asyncpg.connect()``'s parameters.

Reads asyncpg's ``_protocol`` (``backend_pid``, ``backend_secret``), ``_transport``,
``_cancellations``, ``_addr`` and ``_params`` (for its own cancel request,
``connect_utils._cancel``) and ``_top_xact`` (its record of the outermost
``transaction()``), and overrides ``_cancel_current_command`` (which asyncpg's protocol
calls when a caller is cancelled); ``tests/test_postgresql.py::test_liveness_reads_driver_internals``,
the cancellation storm and ``tests/test_driver_transactions.py`` fail if the driver changes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from typing import Any, ClassVar, Final

import asyncpg
from asyncpg import connect_utils

from ..errors import ConfigError
from ..settings import Address, Settings
from .base import ErrorKind, ServerLimits, check_options, close_socket_of
from .pgcommon import LIMITS_SQL, PostgresBackend, classify_sqlstate, limits_from_row

__all__ = ("AsyncpgBackend",)

_OWN_KEYS: Final = {
    "host": "HOST", "port": "PORT", "user": "USER", "password": "PASSWORD", "database": "NAME",
    "dsn": "the alias' own keys (or a URL)", "timeout": "CONNECT_TIMEOUT",
}  # fmt: skip
#: asyncpg's own cancel request (its stubs do not declare the private function)
_driver_cancel: Any = getattr(connect_utils, "_cancel")  # noqa: B009
_DRIVER_KEYS: Final = frozenset(inspect.signature(asyncpg.connect).parameters) - {"loop", "connection_class"}


class _Connection(asyncpg.connection.Connection):
    """asyncpg's connection, with what aconn needs to cancel its statement once it is closed."""

    # aconn_sqlalchemy: what aconn.sqlalchemy keeps for the connection (its engines' records)
    __slots__ = ("aconn_cancelled", "aconn_pid", "aconn_pooled", "aconn_secret", "aconn_sqlalchemy")

    def _cancel_current_command(self, waiter: Any, cancel_waiter: Any = None) -> None:
        # asyncpg's protocol calls this when the caller of a statement is cancelled: remember it,
        # for the statement is stopped only once the server says so, whatever became of the request
        self.aconn_cancelled = True
        super()._cancel_current_command(waiter, cancel_waiter)  # type: ignore[misc]


class AsyncpgBackend(PostgresBackend):
    """asyncpg connections to PostgreSQL."""

    vendor: ClassVar[str] = "postgresql"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        alias = settings.alias
        options = dict(settings.options)
        check_options(alias, options, _OWN_KEYS, _DRIVER_KEYS, "not an asyncpg.connect() option")
        if not settings.autocommit:
            raise ConfigError(
                alias,
                "AUTOCOMMIT",
                "asyncpg has no autocommit switch: it runs each statement on its own "
                "unless a transaction is opened (connection.transaction()); leave AUTOCOMMIT True",
            )
        server_settings = dict(options.pop("server_settings", None) or {})
        if settings.pooler is not None:
            # no named prepared statements (the next transaction may run on another server
            # connection), and no session settings in the startup packet
            options.setdefault("statement_cache_size", 0)
            if settings.statement_timeout is not None or set(server_settings) - {"application_name"}:
                key = "STATEMENT_TIMEOUT" if settings.statement_timeout is not None else "OPTIONS.server_settings"
                raise ConfigError(
                    alias,
                    key,
                    "behind a transaction-mode pooler a session setting is not passed on or leaks to "
                    "other clients: set it for the role or database on the server (ALTER ROLE ... SET ...)",
                )
        if settings.statement_timeout is not None:
            server_settings["statement_timeout"] = str(max(1, round(settings.statement_timeout * 1000)))
        self._host, self._port = settings.addresses[0]  # a multi-host alias: each connect names its node
        self._kwargs: dict[str, Any] = {
            "host": self._host,
            "port": self._port,
            "user": settings.user or None,
            "password": settings.password or None,
            "database": settings.name or None,
            # None: the pool bounds the whole connect with one asyncio.timeout
            "timeout": None,
            "connection_class": _Connection,
            **({"server_settings": server_settings} if server_settings else {}),
            **options,
        }

    async def _open(self, address: Address | None = None) -> Any:
        return await asyncpg.connect(**self._kwargs_at(address))

    async def connect(self, address: Address | None = None) -> tuple[Any, ServerLimits]:
        conn = await self._open(address)
        try:
            row = await conn.fetchrow(LIMITS_SQL)
        except BaseException:
            conn.terminate()
            raise
        _, limits = limits_from_row(
            tuple(row), pooled=self.settings.pooler is not None, key_pid=conn._protocol.backend_pid
        )
        conn.aconn_pooled = not limits.session_id_verified
        # the key of the cancel request: the server's own, or the one a pooler gave (it forwards)
        conn.aconn_pid = conn._protocol.backend_pid
        conn.aconn_secret = conn._protocol.backend_secret  # gone with the protocol once it is closed
        conn.aconn_cancelled = False
        return conn, limits

    async def close(self, conn: Any) -> None:
        await conn.close(timeout=5)

    def abort(self, conn: Any) -> None:
        pending = conn._cancellations
        if pending and self.pooled(conn):
            # a pooler forwards a cancel request only while the client connection that ran the
            # statement is open: let asyncpg's own cancel requests go out first
            waiting = asyncio.gather(*pending, return_exceptions=True)
            waiting.add_done_callback(lambda _: conn.terminate())
            return
        conn.terminate()

    def forget(self, conn: Any) -> None:
        # terminate() would schedule its work on the connection's own loop
        if conn._transport is not None:
            close_socket_of(conn._transport)
        conn._aborted = True

    def _flagged_dead(self, conn: Any) -> bool:
        return bool(conn.is_closed())

    def _socket(self, conn: Any) -> int | None:
        transport = conn._transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        return sock.fileno() if sock is not None else None

    def reusable(self, conn: Any) -> bool:
        return (
            conn._top_xact is None and not conn.is_in_transaction() and not conn._cancellations and not conn.is_closed()
        )

    async def ping(self, conn: Any) -> None:
        await conn.execute("SELECT 1")

    def in_transaction(self, conn: Any) -> bool:
        # a transaction object left started counts even if the server's transaction has ended
        # (a ROLLBACK sent by hand): asyncpg would take the next conn.transaction() for a savepoint
        return conn._top_xact is not None or bool(conn.is_in_transaction())

    async def rollback(self, conn: Any) -> None:
        # asyncpg's record of a transaction object the app left started goes too, as its own
        # reset does: else every later conn.transaction() on this connection is a savepoint
        # outside any transaction ("SAVEPOINT can only be used in transaction blocks")
        conn._top_xact = None
        await conn.execute("ROLLBACK")

    async def begin_block(self, conn: Any, savepoint: str | None) -> Any:
        # through asyncpg's own transaction objects, so that the app's conn.transaction() inside
        # the block nests (a savepoint) instead of refusing a "manually started transaction"
        if conn._top_xact is not None and not conn.is_in_transaction():
            conn._top_xact = None  # a record of a transaction the server has ended (a COMMIT by hand)
        elif conn._top_xact is None and conn.is_in_transaction():
            return await super().begin_block(conn, savepoint)  # inside a BEGIN sent by hand
        transaction = conn.transaction()
        await transaction.start()
        return transaction

    async def end_block(self, conn: Any, token: Any, commit: bool) -> None:
        if not isinstance(token, asyncpg.transaction.Transaction):
            await super().end_block(conn, token, commit)
        elif commit:
            await token.commit()
        else:
            await token.rollback()

    async def reset(self, conn: Any) -> None:
        await conn.reset()  # asyncpg's reset query: locks, cursors, listeners, settings

    async def execute(self, conn: Any, sql: str) -> None:
        await conn.execute(sql)

    async def _fetch_one(self, conn: Any, sql: str) -> Any:
        return await conn.fetchrow(sql)

    def left_running(self, conn: Any) -> bool:
        # asyncpg sends its own cancel request in a task when a caller is cancelled, and returns at
        # once; closing the connection would cancel that task, and a request that went out is not a
        # statement known stopped: aconn sends one again, then waits for the session to go
        return bool(conn.aconn_cancelled)

    def _pid(self, conn: Any) -> int:
        return int(conn.aconn_pid)

    async def _cancel(self, conn: Any) -> None:
        # asyncpg's own cancel request: to the address the connection actually reached, with TLS
        # as its sslmode says (what asyncpg does itself when a caller is cancelled)
        with contextlib.suppress(ConnectionResetError):  # some servers reset it once they have the request
            await _driver_cancel(
                loop=asyncio.get_running_loop(), addr=conn._addr, params=conn._params,
                backend_pid=conn.aconn_pid, backend_secret=conn.aconn_secret,
            )  # fmt: skip

    def classify(self, exc: BaseException, *, connecting: bool = False) -> ErrorKind:
        if isinstance(exc, asyncpg.PostgresError):
            kind = classify_sqlstate(exc.sqlstate, str(exc), connecting=connecting)
            return kind if kind is not None else ErrorKind.OTHER
        if isinstance(exc, asyncpg.InterfaceError | asyncpg.exceptions.ConnectionDoesNotExistError):
            return ErrorKind.DISCONNECT  # closed, or used by two tasks at once ("another operation")
        if isinstance(exc, OSError | EOFError):
            return ErrorKind.DISCONNECT
        return ErrorKind.OTHER
