"""examples/ported/asyncpg_app.py's own suite on asyncpg.Pool, with the app's original fixture."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from ported.asyncpg_app import create_app
from ported_asyncpg_suite import *  # noqa: F403
from ported_asyncpg_suite import fresh_schema


@pytest.fixture
def setup() -> str:
    return "asyncpg.Pool"


@pytest.fixture
async def client(pg: Any) -> AsyncIterator[httpx.AsyncClient]:
    """One pool connection in a transaction, rolled back at the test's end; every request uses it."""
    dsn = pg.url()
    await fresh_schema(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    conn = await pool.acquire()
    transaction = conn.transaction()
    await transaction.start()

    @contextlib.asynccontextmanager
    async def acquire() -> AsyncIterator[asyncpg.Connection]:
        yield conn

    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(create_app(acquire)), base_url="http://t") as c:
            yield c
    finally:
        await transaction.rollback()
        await pool.release(conn)
        await pool.close()
