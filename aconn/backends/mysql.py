"""MySQL / MariaDB on aiomysql.

This module is the only place that reads aiomysql's private attributes
(``_writer``, ``_reader``, ``_result``) and those of asyncio's StreamReader
(``_eof``, ``_exception``), for liveness checks that cost no round trip;
``test_liveness_reads_driver_internals`` fails if either changes them.
"""

from __future__ import annotations

import inspect
import select
from collections.abc import Callable
from typing import Any, ClassVar

import aiomysql
import pymysql
from pymysql.constants import SERVER_STATUS

from ..errors import ConfigError
from ..settings import Settings
from .base import Backend, ErrorKind, ServerLimits

__all__ = ("MySQLBackend",)

# keys aconn sets from the top-level settings; OPTIONS may not override them
_OWN_KEYS = {
    "host": "HOST", "port": "PORT", "user": "USER", "password": "PASSWORD",
    "passwd": "PASSWORD", "db": "NAME", "database": "NAME",
    "autocommit": "AUTOCOMMIT", "connect_timeout": "CONNECT_TIMEOUT",
}  # fmt: skip
_DRIVER_KEYS = frozenset(inspect.signature(aiomysql.Connection.__init__).parameters) - {"self", "loop"}
_ISOLATION_LEVELS = frozenset({"read uncommitted", "read committed", "repeatable read", "serializable"})

# client-side error codes that mean the session is gone or out of step
_DISCONNECT_CODES = frozenset({2003, 2006, 2013, 2014, 2045, 2055, 4031})
# server refused a new session for now: retry inside the acquire deadline
_RETRY_CODES = frozenset({1040, 1203})
_IN_TRANS = SERVER_STATUS.SERVER_STATUS_IN_TRANS
_AUTOCOMMIT = SERVER_STATUS.SERVER_STATUS_AUTOCOMMIT
# one round trip per new connection; the statement-time variable differs between the two servers
_LIMITS_SQL = (
    "SELECT @@SESSION.wait_timeout, @@GLOBAL.max_connections, @@SESSION.max_user_connections, "
    "@@SESSION.interactive_timeout, {statement_time}"
)
_MARIADB_STATEMENT_TIME = "@@SESSION.max_statement_time"  # seconds
_MYSQL_STATEMENT_TIME = "@@SESSION.max_execution_time / 1000"  # milliseconds


def _pending_events(fd: int) -> Callable[[int], list[tuple[int, int]]]:
    """``poll(timeout)`` of a poll object watching ``fd`` for anything to read, an EOF or an error.

    An idle MySQL session receives nothing, so anything pending means the
    server closed it (or wrote an error packet before closing). A poll object
    works on any descriptor number and with any event loop (uvloop's transport
    sockets refuse recv()).
    """
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    return poller.poll


def _flagged_dead(conn: Any) -> bool:
    """True if the driver or the event loop already knows the session is unusable (no system call).

    Runs at every hand-out and release, so it reads attributes instead of calling
    methods: the stream reader's ``_eof`` and ``_exception`` are what ``at_eof()``
    and ``exception()`` return (asyncio and uvloop share the StreamReader).
    """
    reader = conn._reader
    if conn._writer is None or reader is None or reader._eof or reader._exception is not None:
        return True  # closed by the driver (cancellation, lost connection), or the peer closed it
    result = conn._result
    return result is not None and bool(result.unbuffered_active)  # an unbuffered result left unread


class MySQLBackend(Backend):
    """aiomysql connections to MySQL or MariaDB."""

    vendor: ClassVar[str] = "mysql"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        alias = settings.alias
        options = dict(settings.options)
        for key in options:
            if key in _OWN_KEYS:
                raise ConfigError(alias, f"OPTIONS.{key}", f"set it with the top-level key {_OWN_KEYS[key]!r}")
            if key not in _DRIVER_KEYS and key != "isolation_level":
                raise ConfigError(alias, f"OPTIONS.{key}", "not an aiomysql.connect() option")
        isolation = options.pop("isolation_level", None)
        self._setup_sql: str | None = None
        if isolation is not None:
            if not isinstance(isolation, str) or isolation.lower() not in _ISOLATION_LEVELS:
                raise ConfigError(alias, "OPTIONS.isolation_level", f"must be one of {sorted(_ISOLATION_LEVELS)}")
            self._setup_sql = f"SET SESSION TRANSACTION ISOLATION LEVEL {isolation.upper()}"
        self._tls_required = bool(options.get("ssl"))
        self._kwargs: dict[str, Any] = {
            "host": settings.host or "localhost",
            "port": settings.port or 3306,
            "user": settings.user or None,
            "password": settings.password,
            "db": settings.name or None,
            "autocommit": settings.autocommit,
            "connect_timeout": settings.connect_timeout,
            **options,
        }

    async def connect(self) -> tuple[Any, ServerLimits]:
        # aiomysql.connect() does not close the socket when cancelled mid-handshake;
        # building the Connection first lets us close it whatever happens.
        conn = aiomysql.Connection(**self._kwargs)
        try:
            await conn._connect()
            if self._tls_required and conn._writer.get_extra_info("ssl_object") is None:
                raise pymysql.err.OperationalError(
                    2026,
                    f"TLS was requested (OPTIONS['ssl']) but the session to {self.settings.target} is not encrypted",
                )
            mariadb = "mariadb" in conn.server_version.lower()
            statement_time = _MARIADB_STATEMENT_TIME if mariadb else _MYSQL_STATEMENT_TIME
            async with conn.cursor() as cur:
                if self._setup_sql:
                    await cur.execute(self._setup_sql)
                await cur.execute(_LIMITS_SQL.format(statement_time=statement_time))
                wait_timeout, max_conns, max_user, interactive, statement = await cur.fetchone()
        except BaseException:
            conn.close()
            raise
        limits = ServerLimits(
            idle_timeout=float(wait_timeout) if wait_timeout else None,
            max_connections=int(max_conns),
            max_user_connections=int(max_user) or None,
            version=conn.server_version.removeprefix("5.5.5-"),  # MariaDB's handshake prefix
            interactive_timeout=float(interactive) if interactive else None,
            max_statement_time=float(statement) if statement else None,
        )
        return conn, limits

    async def close(self, conn: Any) -> None:
        if conn._writer is None:
            return
        if self.is_dead(conn):
            conn.close()
        else:
            await conn.ensure_closed()  # COM_QUIT: the server logs no aborted connection

    def abort(self, conn: Any) -> None:
        conn.close()

    def is_dead(self, conn: Any, *, peek: bool = True) -> bool:
        if _flagged_dead(conn) or conn._writer.transport.is_closing():
            return True
        if not peek:
            return False
        # The event loop may not have noticed a FIN yet (a killed session):
        # poll the socket once, a system call and no round trip.
        sock = conn._writer.transport.get_extra_info("socket")
        if sock is None:
            return False
        try:
            return bool(_pending_events(sock.fileno())(0))
        except (OSError, ValueError):
            return True  # the descriptor is gone

    def liveness(self, conn: Any) -> Callable[[], bool]:
        sock = conn._writer.transport.get_extra_info("socket")
        if sock is None:
            return super().liveness(conn)
        poll = _pending_events(sock.fileno())  # registered once: each check is one poll(0) system call

        def alive() -> bool:
            # The flags first: asyncio closes the socket only after the reader saw EOF or an
            # error, so while they are clear the descriptor number is still this connection's.
            if _flagged_dead(conn):
                return False
            try:
                return not poll(0)  # anything pending on an idle session (EOF, reset, bytes) means dead
            except (OSError, ValueError):
                return False

        return alive

    def reusable(self, conn: Any) -> bool:
        status = conn.server_status
        return bool(status & _AUTOCOMMIT) and not status & _IN_TRANS and not _flagged_dead(conn)

    async def ping(self, conn: Any) -> None:
        await conn.ping(reconnect=False)

    def in_transaction(self, conn: Any) -> bool:
        status = conn.server_status
        return bool(status & _IN_TRANS) or not status & _AUTOCOMMIT

    async def rollback(self, conn: Any) -> None:
        await conn.rollback()
        if self.settings.autocommit and not conn.server_status & _AUTOCOMMIT:
            await conn.autocommit(True)  # the scope switched it off: restore the session

    def classify(self, exc: BaseException, *, connecting: bool = False) -> ErrorKind:
        if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
            code = exc.args[0]
            if code in _RETRY_CODES or (connecting and code == 2013):
                return ErrorKind.RETRYABLE
            if code in _DISCONNECT_CODES:
                return ErrorKind.DISCONNECT
        if isinstance(exc, pymysql.err.InterfaceError | pymysql.err.InternalError | OSError | EOFError):
            return ErrorKind.DISCONNECT
        if isinstance(exc, RuntimeError) and "another coroutine" in str(exc):
            return ErrorKind.DISCONNECT  # concurrent use: the stream is out of step
        return ErrorKind.OTHER
