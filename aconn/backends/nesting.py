"""The driver's own ``begin()``/``commit()``/``rollback()`` inside aconn's transaction blocks.

aiomysql, asyncmy and aiosqlite send these as plain statements: inside an
``atomic()`` block or a test's transaction, the app's ``begin()`` would commit
aconn's transaction implicitly (MySQL ends a transaction at ``BEGIN``) and its
``commit()`` would end it early. Their connection classes in aconn mix in
:class:`NestingConnection` (with ``begin()``: :class:`NestingBeginConnection`), so that inside aconn's blocks:

- ``begin()`` sets a savepoint instead of a ``BEGIN``;
- ``commit()`` releases the innermost such savepoint, ``rollback()`` rolls back
  to it; with none open both do nothing: as on an autocommit session, the
  statements already belong to the enclosing block, which commits or rolls
  them back with its own work.

Outside aconn's blocks the methods are the driver's own, unchanged.
(asyncpg and psycopg keep their own record of transactions; their backends go
through it instead.)

The backend keeps the count of blocks (:class:`CountsBlocks`, and :func:`forget_blocks`
when the whole transaction is rolled back); the count lives on the connection, so that nothing else is
consulted on the driver's call.
"""

from __future__ import annotations

import itertools
from typing import Any

__all__ = ("CountsBlocks", "NestingBeginConnection", "NestingConnection", "forget_blocks")

#: savepoint names of the driver's nested begin(), unique in the process
_NAMES = itertools.count(1)


class NestingConnection:
    """Mixed in before a driver's connection class (aiosqlite's); the driver class provides
    ``commit`` and ``rollback``, the subclass :meth:`aconn_statement`."""

    #: aconn's transaction blocks open on this connection (atomic(), a test's transaction)
    aconn_blocks = 0
    #: savepoints set by the driver's begin() inside them, innermost last
    aconn_savepoints: tuple[str, ...] = ()

    async def aconn_statement(self, sql: str) -> None:
        """Run a statement that returns no rows, with the driver's own means."""
        raise NotImplementedError

    async def commit(self) -> None:
        savepoints = self.aconn_savepoints
        if savepoints:
            await self.aconn_statement(f"RELEASE SAVEPOINT {savepoints[-1]}")
            self.aconn_savepoints = savepoints[:-1]
        elif not self.aconn_blocks:
            await super().commit()  # type: ignore[misc]

    async def rollback(self) -> None:
        savepoints = self.aconn_savepoints
        if savepoints:
            await self.aconn_statement(f"ROLLBACK TO SAVEPOINT {savepoints[-1]}")
            await self.aconn_statement(f"RELEASE SAVEPOINT {savepoints[-1]}")
            self.aconn_savepoints = savepoints[:-1]
        elif not self.aconn_blocks:
            await super().rollback()  # type: ignore[misc]


class NestingBeginConnection(NestingConnection):
    """:class:`NestingConnection` for a driver that also has ``begin()`` (the MySQL drivers)."""

    async def begin(self) -> None:
        if not self.aconn_blocks:
            await super().begin()  # type: ignore[misc]
            return
        name = f"aconn_begin_{next(_NAMES)}"
        await self.aconn_statement(f"SAVEPOINT {name}")
        self.aconn_savepoints += (name,)


class CountsBlocks:
    """Mixed in before :class:`~aconn.backends.base.Backend` by the backends whose connections
    are a :class:`NestingConnection`: keeps the count of aconn's blocks on the connection."""

    async def begin_block(self, conn: Any, savepoint: str | None) -> Any:
        token = await super().begin_block(conn, savepoint)  # type: ignore[misc]
        conn.aconn_blocks += 1
        return token

    def left_block(self, conn: Any) -> None:
        """One of aconn's blocks ended (committed, rolled back or abandoned)."""
        conn.aconn_blocks = max(0, conn.aconn_blocks - 1)
        if not conn.aconn_blocks:
            conn.aconn_savepoints = ()


def forget_blocks(conn: Any) -> None:
    """The whole transaction is being rolled back: no block, no savepoint is left."""
    conn.aconn_blocks = 0
    conn.aconn_savepoints = ()
