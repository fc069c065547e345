"""Tests of the SQLAlchemy example with aconn's pytest plugin: `pytest examples/test_sqlalchemy_app.py`.

Each test that requests ``aconn_db`` runs in a transaction rolled back at its
end, sessions that commit included: a session's COMMIT inside the test's
transaction is a savepoint released, so the notes one test adds are gone for
the next, whatever the order.
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
from examples.sqlalchemy_app import create_app


@pytest.fixture(scope="session")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The app, with its schema created once (DDL before the tests: it cannot always be rolled back)."""
    url = os.environ.get("DATABASE_URL", f"sqlite:///{tmp_path_factory.mktemp('example') / 'app.db'}")
    app = create_app(url)

    async def setup() -> None:
        async with app.state.connections:
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


async def test_added_notes_are_seen(client: httpx.AsyncClient) -> None:
    assert (await client.post("/notes", params={"text": "a"})).json() == {"added": "a"}
    assert (await client.post("/notes", params={"text": "b"})).json() == {"added": "b"}
    assert (await client.get("/notes")).json() == {"notes": ["a", "b"], "one_connection": True}


async def test_a_failed_add_keeps_nothing(client: httpx.AsyncClient) -> None:
    assert (await client.post("/notes", params={"text": "boom"})).status_code == 400
    assert (await client.get("/notes")).json() == {"notes": [], "one_connection": True}


async def test_sessions_in_child_tasks_after_a_commit(client: httpx.AsyncClient) -> None:
    await client.post("/notes", params={"text": "c"})
    # in the test's transaction the two sessions take turns on its one connection, and see its writes
    assert (await client.get("/notes/count-twice")).json() == [1, 1]
