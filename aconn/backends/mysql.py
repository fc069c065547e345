"""MySQL / MariaDB on aiomysql.

The private attributes of aiomysql read only here: ``_writer``, ``_reader``, ``_result``,
``_client_auth_plugin``/``_server_auth_plugin``, and those of asyncio's StreamReader
(``_eof``, ``_exception``), for liveness checks that cost no round trip and the
authentication hook; ``test_liveness_reads_driver_internals`` fails if they change.
What both drivers share is in :mod:`.mysqlcommon`, including the private names they both
have (``_host``, ``_port``, ``_ssl_context``, ``_unix_socket``, ``_secure`` in
``CheckedConnection``; ``_execute_command`` and ``_read_ok_packet`` for
``COM_RESET_CONNECTION``).
"""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any, ClassVar

import aiomysql
import pymysql

from ..settings import Address
from .mysqlcommon import CheckedConnection, MySQLProtocolBackend, reusable_unless
from .nesting import NestingBeginConnection

__all__ = ("MySQLBackend",)


class _Connection(CheckedConnection, NestingBeginConnection, aiomysql.Connection):  # type: ignore[misc]
    """aiomysql's connection, with the authentication steps checked before any credential leaves.

    aiomysql starts TLS only if the server's greeting offers it, and otherwise
    authenticates in plain text; it also sends the password itself to a server
    that asks for ``mysql_clear_password``. Both are refused (see :class:`.CheckedConnection`).
    """

    aconn_errors: ClassVar[ModuleType] = pymysql.err

    def aconn_stream_open(self) -> bool:
        return self._writer is not None

    def aconn_auth_plugin(self) -> str | None:
        return self._client_auth_plugin or self._server_auth_plugin  # type: ignore[no-any-return]


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

    def _new_connection(self, address: Address | None) -> Any:
        return _Connection(**self._kwargs_at(address))

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

    reusable = reusable_unless(_flagged_dead)  # type: ignore[assignment]  # a plain function, bound as a method

    async def _quit(self, conn: Any) -> None:
        await conn.ensure_closed()
