"""SQLite on aiosqlite: the embedded default.

Reads aiosqlite's private ``_connection`` and ``_running`` for liveness, and builds its
connection as ``aiosqlite.connect()`` does (``Connection(connector, iter_chunk_size)``);
``test_core_sqlite::test_liveness_reads_aiosqlite_internals`` fails if the driver changes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
from typing import Any, ClassVar

import aiosqlite

from ..errors import ConfigError
from ..settings import Address, Settings
from .base import Backend, ErrorKind, ServerLimits, check_options
from .nesting import CountsBlocks, NestingConnection, forget_blocks

__all__ = ("SQLiteBackend",)

# sqlite3.connect() keyword arguments (a builtin: its signature cannot be introspected)
_DRIVER_KEYS = frozenset(
    {"timeout", "detect_types", "check_same_thread", "factory", "cached_statements", "uri", "autocommit"}
)
_counter = itertools.count()
#: how long a failed connect waits for its thread to stop
CLOSE_WAIT = 1.0


#: aiosqlite.connect()'s default
_ITER_CHUNK_SIZE = 64


class _Connection(NestingConnection, aiosqlite.Connection):
    """aiosqlite's connection, its ``commit()``/``rollback()`` nesting in aconn's blocks (:mod:`.nesting`)."""

    async def aconn_statement(self, sql: str) -> None:
        cursor = await self.execute(sql)
        await cursor.close()


class SQLiteBackend(CountsBlocks, Backend):
    """aiosqlite connections to a file, or to an in-memory database shared by the alias.

    ``NAME=':memory:'`` gives every connection of the alias the same in-memory
    database (SQLite shared cache); it lives until the handler closes.
    """

    vendor: ClassVar[str] = "sqlite"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        options = dict(settings.options)
        check_options(settings.alias, options, {}, _DRIVER_KEYS | {"init_command"}, "not a sqlite3.connect() option")
        if settings.statement_timeout is not None:
            raise ConfigError(
                settings.alias,
                "STATEMENT_TIMEOUT",
                "SQLite has no server-side statement limit; bound statements with asyncio.timeout() "
                "(a cancelled statement is interrupted)",
            )
        if settings.reset_on_release:
            raise ConfigError(
                settings.alias,
                "RESET_ON_RELEASE",
                "SQLite has no session state to reset between scopes (PRAGMAs are per connection: set them "
                "in OPTIONS['init_command'])",
            )
        self._init_command: str | None = options.pop("init_command", None)
        self._anchor: sqlite3.Connection | None = None
        if settings.name == ":memory:":
            self._database = f"file:aconn-{settings.alias}-{next(_counter)}?mode=memory&cache=shared"
            options["uri"] = True
        else:
            self._database = settings.name
        # isolation_level=None: autocommit, the driver never opens a transaction by itself
        self._kwargs: dict[str, Any] = {"isolation_level": None if settings.autocommit else "DEFERRED", **options}

    async def connect(self, address: Address | None = None) -> tuple[Any, ServerLimits]:
        if self._kwargs.get("uri") and self._anchor is None and "mode=memory" in self._database:
            # keep the shared in-memory database alive between connections
            self._anchor = sqlite3.connect(self._database, uri=True, check_same_thread=False)
        database, kwargs = self._database, self._kwargs
        # aiosqlite.connect(), with aconn's connection class: commit() and rollback() nest in aconn's blocks
        conn = _Connection(lambda: sqlite3.connect(database, **kwargs), _ITER_CHUNK_SIZE)
        try:
            await conn
            if self._init_command:
                await conn.executescript(self._init_command)
        except BaseException:
            stopped = conn.stop()
            if stopped is not None:  # let its thread finish with this loop, before the loop may end
                with contextlib.suppress(BaseException):
                    await asyncio.wait([stopped], timeout=CLOSE_WAIT)
            raise
        return conn, ServerLimits(version=sqlite3.sqlite_version)

    async def close(self, conn: Any) -> None:
        if not conn._running:  # aborted: its thread closes it and ends; a second stop would never be served
            stopped = getattr(conn, "aconn_stopped", None)
            if stopped is not None:
                await asyncio.wait([stopped], timeout=CLOSE_WAIT)
            return
        await conn.close()

    def abort(self, conn: Any) -> None:
        self.interrupt(conn)
        if conn._running:
            conn.aconn_stopped = conn.stop()  # closes in the worker thread once the running call returns

    def is_dead(self, conn: Any, *, peek: bool = True) -> bool:
        return conn._connection is None or not conn._running

    async def ping(self, conn: Any) -> None:
        await conn.execute_fetchall("SELECT 1")

    def in_transaction(self, conn: Any) -> bool:
        return not self.settings.autocommit or bool(conn.in_transaction)

    async def rollback(self, conn: Any) -> None:
        forget_blocks(conn)  # the driver's rollback() is then its own
        await conn.rollback()

    async def execute(self, conn: Any, sql: str) -> None:
        cursor = await conn.execute(sql)
        await cursor.close()

    def interrupt(self, conn: Any) -> None:
        raw = conn._connection
        if raw is not None:
            raw.interrupt()  # thread-safe in sqlite3: stops a statement a cancelled caller left running

    def classify(self, exc: BaseException, *, connecting: bool = False) -> ErrorKind:
        if isinstance(exc, sqlite3.ProgrammingError | ValueError) and "closed" in str(exc).lower():
            return ErrorKind.DISCONNECT
        return ErrorKind.OTHER

    async def aclose(self) -> None:
        if self._anchor is not None:
            self._anchor.close()
            self._anchor = None
