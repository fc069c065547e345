"""MySQL / MariaDB on asyncmy (its Cython protocol).

This module is the only place that reads asyncmy's private attributes
(``_transport``, ``_proto`` and its ``eof``/``exc``, ``_result``, ``_stmt_cache``), for
liveness checks that cost no round trip, and that hooks its authentication steps (TLS
before any credential); ``test_liveness_reads_driver_internals[asyncmy]`` fails if
asyncmy changes them. What does not depend on the driver is in :mod:`.mysqlcommon`.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import asyncmy
from asyncmy import errors

from ..settings import Settings
from .mysqlcommon import (
    AUTOCOMMIT,
    CLIENT_SSL,
    IN_TRANS,
    QUIT_PACKET,
    MySQLProtocolBackend,
    cleartext_refused,
    tls_not_offered,
)
from .nesting import NestingBeginConnection

__all__ = ("AsyncmyBackend",)

#: asyncmy's stubs declare its public surface only; the subclass reads private attributes
_DriverConnection: Any = asyncmy.Connection
_execute_command = _DriverConnection._execute_command


class _Connection(NestingBeginConnection, _DriverConnection):  # type: ignore[misc]
    """asyncmy's connection, with the authentication steps checked before any credential leaves.

    asyncmy starts TLS whenever a context is given, whatever the greeting offers, and sends
    the password itself to a server that switches to ``mysql_clear_password``. A server
    that does not offer TLS, and a cleartext switch outside TLS, are refused here.
    """

    #: the id ``CONNECTION_ID()`` reported at connect, when it matches the handshake's (else None)
    aconn_session_id: int | None = None
    #: the driver dropped the connection itself while talking to the server (a cancelled read,
    #: a read timeout, a failed write): a statement may still be running there
    aconn_dropped = False
    #: set by the backend before it closes the connection on purpose
    aconn_closing = False

    async def aconn_statement(self, sql: str) -> None:
        await self.query(sql)

    def close(self) -> None:
        if self._transport is not None and not self.aconn_closing:
            self.aconn_dropped = True  # asyncmy closes from inside a failed or cancelled command
        super().close()

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

    async def _request_authentication(self) -> Any:
        if self._ssl_context and not self.server_capabilities & CLIENT_SSL:
            raise tls_not_offered(errors, self._host, self._port)
        if self._auth_plugin_name == "mysql_clear_password" and not (self._ssl_context or self._unix_socket):
            raise cleartext_refused(errors, self._host, self._port)  # asked for in the greeting
        return await super()._request_authentication()

    async def _process_auth(self, plugin_name: bytes, auth_packet: Any) -> Any:
        if plugin_name == b"mysql_clear_password" and not self._secure:
            # an auth switch to the cleartext plugin, outside TLS
            raise cleartext_refused(errors, self._host, self._port)
        return await super()._process_auth(plugin_name, auth_packet)


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

    def _new_connection(self) -> Any:
        conn = _Connection(**self._kwargs)
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

    def reusable(self, conn: Any) -> bool:
        status = conn.server_status
        return bool(status & AUTOCOMMIT) and not status & IN_TRANS and not _flagged_dead(conn)

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
