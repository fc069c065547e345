"""examples/ported/asyncpg_app.py's own suite on aconn: the fixture is the documented ``aconn_db``
(docs/testing.md), the app's pool setup its aconn_setup(); nothing else changed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from ported.asyncpg_app import aconn_setup, create_app
from ported_asyncpg_suite import *  # noqa: F403
from ported_asyncpg_suite import fresh_schema

import aconn


@pytest.fixture
def setup() -> str:
    return "aconn"


@pytest.fixture
async def aconn_connections(pg: Any) -> AsyncIterator[aconn.Connections]:
    await fresh_schema(pg.url())
    _, _, connections = aconn_setup(pg.url())
    yield connections
    await connections.aclose()


@pytest.fixture
async def client(aconn_db: aconn.Connections) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(lambda: aconn_db.acquire("default", asyncpg.Connection))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        yield c
