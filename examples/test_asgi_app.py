"""Tests of the ASGI example with aconn's pytest plugin: `pytest examples/test_asgi_app.py`.

Each test that requests ``aconn_db`` runs in a transaction rolled back at its
end: the items one test adds are gone for the next, whatever the order.
Requests go through ``httpx.ASGITransport``, in the test's own event loop.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import aconn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from examples.asgi_app import create_app


@pytest.fixture(scope="session")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The app, with its schema created once (DDL before the tests: it cannot always be rolled back)."""
    url = os.environ.get("DATABASE_URL", f"sqlite:///{tmp_path_factory.mktemp('example') / 'app.db'}")
    app = create_app(url)

    async def setup() -> None:
        async with app.state.connections:  # open, create, close: later tests use it in their own loops
            await app.state.create_schema()

    asyncio.run(setup())
    return app


@pytest.fixture
def aconn_connections(app: Any) -> aconn.Connections:
    """What the plugin rolls back: the app's handler."""
    connections: aconn.Connections = app.state.connections
    return connections


@pytest.fixture
async def client(app: Any, aconn_db: aconn.Connections) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://example") as client:
        yield client


async def names(client: httpx.AsyncClient) -> list[str]:
    return [item["name"] for item in (await client.get("/items")).json()]


async def test_added_items_are_seen(client: httpx.AsyncClient) -> None:
    assert (await client.post("/items", params={"name": "a"})).json() == {"added": "a", "count": 1}
    assert (await client.post("/items", params={"name": "b"})).json() == {"added": "b", "count": 2}
    assert await names(client) == ["a", "b"]


async def test_a_failed_add_keeps_nothing(client: httpx.AsyncClient) -> None:
    assert (await client.post("/items", params={"name": "boom"})).status_code == 500
    assert await names(client) == []
    assert (await client.post("/items", params={"name": "c"})).json() == {"added": "c", "count": 1}


async def test_the_test_sees_the_app_s_writes(client: httpx.AsyncClient, aconn_db: aconn.Connections) -> None:
    await client.post("/items", params={"name": "d"})
    async with aconn_db.acquire() as conn:  # the test's own scope shares the app's transaction
        if hasattr(conn, "execute_fetchall"):  # aiosqlite
            rows = list(await conn.execute_fetchall("SELECT name FROM items"))
        else:  # aiomysql
            async with conn.cursor() as cur:
                await cur.execute("SELECT name FROM items")
                rows = list(await cur.fetchall())
    assert [r[0] for r in rows] == ["d"]
    assert await names(client) == ["d"]
