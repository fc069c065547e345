"""Small async helpers shared by the tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aconn


async def fetch(conn: Any, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement on an aiomysql or aiosqlite connection; its rows."""
    if hasattr(conn, "execute_fetchall"):  # aiosqlite
        return [tuple(r) for r in await conn.execute_fetchall(sql, args or ())]
    async with conn.cursor() as cur:
        await cur.execute(sql, args)
        return list(await cur.fetchall())


async def scalar(conn: Any, sql: str, args: Any = None) -> Any:
    rows = await fetch(conn, sql, args)
    return rows[0][0]


async def in_scope(connections: aconn.Connections, sql: str, alias: str = "default") -> Any:
    """One scope, one statement, its first value."""
    async with connections.scope():
        return await scalar(await connections.connection(alias), sql)


async def eventually(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll a condition that no event announces (a pool gauge, the server's processlist), within a bound."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def age_idle(connections: aconn.Connections, seconds: float, alias: str = "default") -> None:
    """Make every idle connection of ``alias`` look idle for ``seconds`` more (no sleep)."""
    for holder in connections._pools[alias]._idle:
        holder.last_used -= seconds
