"""MySQL / MariaDB on asyncmy (its Cython protocol).

The private attributes of asyncmy read only here: ``_transport``, ``_proto`` and its
``eof``/``exc``/``_read_waiter``, ``_result``, ``_stmt_cache``, ``_auth_plugin_name``,
``_connect_timeout``, for liveness checks that cost no round trip, the one-task guard
and the authentication hook; ``test_liveness_reads_driver_internals[asyncmy]`` fails if
asyncmy changes them. What both drivers share is in :mod:`.mysqlcommon` (see
:mod:`.mysql` for the shared private names it reads).
"""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any, ClassVar

import asyncmy
from asyncmy import errors

from ..settings import Address, Settings
from .mysqlcommon import QUIT_PACKET, CheckedConnection, MySQLProtocolBackend, reusable_unless
from .nesting import NestingBeginConnection

__all__ = ("AsyncmyBackend",)

#: asyncmy's stubs declare its public surface only; the subclass reads private attributes
_DriverConnection: Any = asyncmy.Connection
_execute_command = _DriverConnection._execute_command


class _Connection(CheckedConnection, NestingBeginConnection, _DriverConnection):  # type: ignore[misc]
    """asyncmy's connection, with the authentication steps checked before any credential leaves.

    asyncmy starts TLS whenever a context is given, whatever the greeting offers, and sends
    the password itself to a server that switches to ``mysql_clear_password``. A server
    that does not offer TLS, and a cleartext switch outside TLS, are refused
    (see :class:`.CheckedConnection`).
    """

    aconn_errors: ClassVar[ModuleType] = errors

    def aconn_stream_open(self) -> bool:
        return self._transport is not None

    def aconn_auth_plugin(self) -> str | None:
        return self._auth_plugin_name  # type: ignore[no-any-return]

    def _execute_command(self, command: int, sql: Any) -> Any:
        # asyncmy keeps one read waiter per connection: a second task sending a command while the
        # first waits for its reply would replace the first's waiter and leave it hanging forever.
        # Refused instead, as aiomysql's stream reader refuses it (the error discards the
        # connection). Not a coroutine itself: the driver's own is returned, no frame added.
        proto = self._proto
        if proto is not None and proto._read_waiter is not None:
            raise RuntimeError(
                "this asyncmy connection is in use by another coroutine, which waits for its reply: "
                "a connection serves one task at a time"
            )
        return _execute_command(self, command, sql)  # not super(): ~400 instructions less a statement


def _flagged_dead(conn: Any) -> bool:
    """True if the driver or the event loop already knows the session is unusable (no system call)."""
    # what asyncmy's own _stream_broken property reads, without its property call
    proto = conn._proto
    if conn._transport is None or proto is None or proto.eof or proto.exc is not None:
        return True  # closed by the driver (cancellation, lost connection), or the peer closed it
    result = conn._result
    return result is not None and bool(result.unbuffered_active)  # an unbuffered result left unread


class AsyncmyBackend(MySQLProtocolBackend):
    """asyncmy connections to MySQL or MariaDB."""

    errors: ClassVar[Any] = errors
    driver: ClassVar[str] = "asyncmy"
    driver_keys: ClassVar[frozenset[str]] = frozenset(inspect.signature(asyncmy.Connection.__init__).parameters) - {
        "self",
        "db",  # its deprecated spelling of database, which aconn sets from NAME
        "sock",  # a socket of the caller's cannot be reopened: a pool opens connections itself
    }
    database_key: ClassVar[str] = "database"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._kwargs["connect_timeout"] = 10  # asyncmy refuses None here; replaced on the instance below

    def _new_connection(self, address: Address | None) -> Any:
        conn = _Connection(**self._kwargs_at(address))
        # None: asyncmy bounds its TCP open with asyncio.wait_for, which on Python 3.11 can swallow
        # the caller's cancellation and leave the rest of the handshake unbounded; with None it
        # awaits the open directly, and the pool bounds the whole connect with one asyncio.timeout
        conn._connect_timeout = None
        return conn

    async def _handshake(self, conn: Any) -> None:
        await conn.connect()

    @staticmethod
    def transport_of(conn: Any) -> Any:
        return conn._transport

    @staticmethod
    def _detach(conn: Any) -> None:
        conn._transport = None
        conn._connected = False

    flagged_dead = staticmethod(_flagged_dead)

    reusable = reusable_unless(_flagged_dead)  # type: ignore[assignment]  # a plain function, bound as a method

    async def _quit(self, conn: Any) -> None:
        # asyncmy's ensure_closed() waits for the transport to finish closing, which with TLS is
        # the server's close_notify: the packet is written and the socket closed without that wait
        conn._transport.write(QUIT_PACKET)
        await conn._proto.drain()
        conn.close()

    @staticmethod
    def dropped_mid_command(conn: Any) -> bool:
        if conn.aconn_dropped:
            return True  # asyncmy closed the stream itself (a cancelled read, a read timeout)
        # asyncmy does not close the stream when a read fails: a connection lost under a command
        # (a network reset) shows as the protocol's EOF or error, with the connection not closed
        proto = conn._proto
        return conn._transport is not None and proto is not None and (proto.eof or proto.exc is not None)

    async def reset(self, conn: Any) -> None:
        await super().reset(conn)
        # the reset dropped the server's prepared statements: forget their ids (stmt_cache_size)
        conn._stmt_cache.clear()
