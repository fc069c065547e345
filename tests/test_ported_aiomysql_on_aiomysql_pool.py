"""examples/ported/aiomysql_app.py's own suite on aiomysql.Pool, with the app's original fixture."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiomysql
import httpx
import pytest
from asgi_lifespan import LifespanManager
from ported.aiomysql_app import aiomysql_pool_setup, create_app
from ported_aiomysql_suite import *  # noqa: F403
from ported_aiomysql_suite import connect_kwargs, fresh_schema


@pytest.fixture
async def client(db: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app as deployed, on a fresh schema; the tables emptied after each test."""
    await fresh_schema(db)
    acquire, lifespan = aiomysql_pool_setup(**connect_kwargs(db))
    app = create_app(acquire, lifespan)
    async with LifespanManager(app), httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        yield c
    conn = await aiomysql.connect(autocommit=True, **connect_kwargs(db))
    try:
        async with conn.cursor() as cur:
            await cur.execute("DELETE FROM stock")
            await cur.execute("DELETE FROM moves")
    finally:
        conn.close()
