"""MySQL / MariaDB on aiomysql.

This module is the only place that reads aiomysql's private attributes
(``_writer``, ``_reader``, ``_result``) and those of asyncio's StreamReader
(``_eof``, ``_exception``), for liveness checks that cost no round trip, and that
hooks its authentication steps (TLS before any credential);
``test_liveness_reads_driver_internals`` fails if either changes them. What does
not depend on the driver is in :mod:`.mysqlcommon`.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import aiomysql
import pymysql

from .mysqlcommon import AUTOCOMMIT, CLIENT_SSL, IN_TRANS, MySQLProtocolBackend, cleartext_refused, tls_not_offered
from .nesting import NestingBeginConnection

__all__ = ("MySQLBackend",)


class _Connection(NestingBeginConnection, aiomysql.Connection):  # type: ignore[misc]
    """aiomysql's connection, with the authentication steps checked before any credential leaves.

    aiomysql starts TLS only if the server's greeting offers it, and otherwise
    authenticates in plain text; it also sends the password itself to a server
    that asks for ``mysql_clear_password``. Both are refused here, before the
    handshake response is written.
    """

    #: the id ``CONNECTION_ID()`` reported at connect, when it matches the handshake's (else None)
    aconn_session_id: int | None = None
    #: the driver dropped the connection itself while talking to the server (a cancelled or
    #: failed read, a stream out of step): a statement may still be running there
    aconn_dropped = False
    #: set by the backend before it closes the connection on purpose
    aconn_closing = False

    async def aconn_statement(self, sql: str) -> None:
        await self.query(sql)

    def close(self) -> None:
        if self._writer is not None and not self.aconn_closing:
            self.aconn_dropped = True  # aiomysql closes from inside a failed or cancelled command
        super().close()

    async def _request_authentication(self) -> None:
        if self._ssl_context and not self.server_capabilities & CLIENT_SSL:
            raise tls_not_offered(pymysql.err, self._host, self._port)
        plugin = self._client_auth_plugin or self._server_auth_plugin
        if plugin == "mysql_clear_password" and not (self._ssl_context or self._unix_socket):
            raise cleartext_refused(pymysql.err, self._host, self._port)
        await super()._request_authentication()

    async def _process_auth(self, plugin_name: bytes, auth_packet: Any) -> Any:
        if plugin_name == b"mysql_clear_password" and not self._secure:
            # an auth switch to the cleartext plugin, outside TLS
            raise cleartext_refused(pymysql.err, self._host, self._port)
        return await super()._process_auth(plugin_name, auth_packet)


def _flagged_dead(conn: Any) -> bool:
    """True if the driver or the event loop already knows the session is unusable (no system call)."""
    # the stream reader's _eof and _exception are what at_eof() and exception() return
    # (asyncio and uvloop share the StreamReader)
    reader = conn._reader
    if conn._writer is None or reader is None or reader._eof or reader._exception is not None:
        return True  # closed by the driver (cancellation, lost connection), or the peer closed it
    result = conn._result
    return result is not None and bool(result.unbuffered_active)  # an unbuffered result left unread


class MySQLBackend(MySQLProtocolBackend):
    """aiomysql connections to MySQL or MariaDB."""

    errors: ClassVar[Any] = pymysql.err
    driver: ClassVar[str] = "aiomysql"
    driver_keys: ClassVar[frozenset[str]] = frozenset(inspect.signature(aiomysql.Connection.__init__).parameters) - {
        "self",
        "loop",
    }

    def _new_connection(self) -> Any:
        return _Connection(**self._kwargs)

    async def _handshake(self, conn: Any) -> None:
        await conn._connect()

    @staticmethod
    def transport_of(conn: Any) -> Any:
        writer = conn._writer
        return None if writer is None else writer.transport

    @staticmethod
    def _detach(conn: Any) -> None:
        conn._writer = conn._reader = None

    flagged_dead = staticmethod(_flagged_dead)

    def reusable(self, conn: Any) -> bool:
        status = conn.server_status
        return bool(status & AUTOCOMMIT) and not status & IN_TRANS and not _flagged_dead(conn)

    async def _quit(self, conn: Any) -> None:
        await conn.ensure_closed()
