"""MySQL / MariaDB on aiomysql.

The private attributes of aiomysql read only here: ``_writer``, ``_reader``, ``_result``,
``_client_auth_plugin``/``_server_auth_plugin``, and those of asyncio's StreamReader
(``_eof``, ``_exception``), for liveness checks that cost no round trip and the
authentication hook; ``test_liveness_reads_driver_internals`` fails if they change.
The BEGIN sent in one write with a transaction's first SELECT (:class:`_PipelinedBegin`)
uses ``_execute_command``, ``_read_query_result`` and ``_next_seq_id``.
What both drivers share is in :mod:`.mysqlcommon`, including the private names they both
have (``_host``, ``_port``, ``_ssl_context``, ``_unix_socket``, ``_secure`` in
``CheckedConnection``; ``_execute_command`` and ``_read_ok_packet`` for
``COM_RESET_CONNECTION``).
"""

from __future__ import annotations

import inspect
import struct
from types import ModuleType
from typing import Any, ClassVar

import aiomysql
import pymysql

from ..settings import Address
from .mysqlcommon import IN_TRANS, CheckedConnection, MySQLProtocolBackend, reusable_unless
from .nesting import NestingBeginConnection

__all__ = ("MySQLBackend",)

_COM_QUERY = 3
_BEGIN = b"BEGIN"
#: BEGIN as a command packet: 3-byte length, sequence number 0, COM_QUERY, the statement
_BEGIN_PACKET = struct.pack("<iB", len(_BEGIN) + 1, _COM_QUERY) + _BEGIN
_SELECT = b"SELECT"


class _PipelinedBegin:
    """A transaction's ``BEGIN`` held back until its first statement, and written together with
    it when that is a ``SELECT``: one round trip where the driver makes two.

    SQLAlchemy on aconn begins its transactions with a ``BEGIN`` (the connections are in
    autocommit mode between transactions), where SQLAlchemy's own pool lets the driver's
    implicit transaction begin with the first statement; this makes the two cost the same.
    While it is held back, the connection's ``server_status`` says a transaction is open (what
    every check of one reads), and its ``query`` and ``_execute_command`` are this class's
    (instance attributes over the class's methods, so that a connection with nothing held back
    pays nothing). Only a ``SELECT`` is written with it: if the server refused the ``BEGIN``,
    the ``SELECT`` has run on its own, its reply is read, and the refusal raised. Any other
    statement or command has the ``BEGIN`` sent first on its own; a transaction that ends
    before any statement sends neither (:meth:`aconn_drop_begin`).
    """

    server_status: int
    encoding: str
    _next_seq_id: int
    _affected_rows: int

    def aconn_defer_begin(self) -> None:
        """Begin a transaction with the next statement."""
        self.server_status |= IN_TRANS  # the next reply sets it for real
        self.__dict__["query"] = self._aconn_query_after_begin
        self.__dict__["_execute_command"] = self._aconn_command_after_begin

    def aconn_drop_begin(self) -> bool:
        """The transaction ends: True if its ``BEGIN`` was still held back (and is now never sent)."""
        if not self._aconn_sending():
            return False
        self.server_status &= ~IN_TRANS
        return True

    def _aconn_sending(self) -> bool:
        """The held-back ``BEGIN`` goes now (or never): the driver's own methods again. True if one was held."""
        held = self.__dict__.pop("query", None) is not None
        self.__dict__.pop("_execute_command", None)
        return held

    async def _aconn_begin(self) -> None:
        await self._execute_command(_COM_QUERY, _BEGIN)  # type: ignore[attr-defined]
        await self._read_ok_packet()  # type: ignore[attr-defined]  # a refusal raises the server's error

    def _aconn_write_after_begin(self, data: bytes) -> None:
        """The statement's first write, with the ``BEGIN`` packet in front of it: one send."""
        del self.__dict__["_write_bytes"]
        self._write_bytes(_BEGIN_PACKET + data)  # type: ignore[attr-defined]

    async def _aconn_command_after_begin(self, command: int, sql: Any) -> None:
        """Any command but a query (a ping, the driver's commit()...): the ``BEGIN`` goes first, on its own."""
        self._aconn_sending()
        await self._aconn_begin()
        await self._execute_command(command, sql)  # type: ignore[attr-defined]

    async def _aconn_query_after_begin(self, sql: Any, unbuffered: bool = False) -> int:
        self._aconn_sending()
        if isinstance(sql, str):
            sql = sql.encode(self.encoding, "surrogateescape")
        if unbuffered or sql.lstrip()[:6].upper() != _SELECT:
            await self._aconn_begin()
            return await self.query(sql, unbuffered)  # type: ignore[attr-defined,no-any-return]
        self.__dict__["_write_bytes"] = self._aconn_write_after_begin
        try:
            await self._execute_command(_COM_QUERY, sql)  # type: ignore[attr-defined]
        finally:
            self.__dict__.pop("_write_bytes", None)
        refused: pymysql.err.MySQLError | None = None
        try:
            await self._read_ok_packet()  # type: ignore[attr-defined]  # the BEGIN's reply, numbered 1
        except pymysql.err.MySQLError as exc:
            if exc.args and isinstance(exc.args[0], int) and 2000 <= exc.args[0] < 3000:
                # the client's own error (the connection lost, a reply out of step), not the
                # server refusing the BEGIN: the stream cannot be trusted any more
                self.close()  # type: ignore[attr-defined]
                raise
            refused = exc
        self._next_seq_id = 1  # the SELECT's reply is numbered as a command's first
        await self._read_query_result()  # type: ignore[attr-defined]
        if refused is not None:
            raise refused
        return self._affected_rows


class _Connection(_PipelinedBegin, CheckedConnection, NestingBeginConnection, aiomysql.Connection):  # type: ignore[misc]
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
