"""examples/ported/aiomysql_app.py's own suite on aconn: the fixture is the documented ``aconn_db``
(docs/testing.md), the app's pool setup its aconn_setup(); nothing else changed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from ported.aiomysql_app import aconn_setup, create_app
from ported_aiomysql_suite import *  # noqa: F403
from ported_aiomysql_suite import connect_kwargs, fresh_schema

import aconn


@pytest.fixture
async def aconn_connections(db: Any) -> AsyncIterator[aconn.Connections]:
    await fresh_schema(db)
    _, _, connections = aconn_setup(**connect_kwargs(db))
    yield connections
    await connections.aclose()


@pytest.fixture
async def client(aconn_db: aconn.Connections) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(aconn_db.acquire)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        yield c
