"""A Starlette app on aconn: `uvicorn examples.asgi_app:app`.

SQLite by default (a file in the temp directory); MySQL/MariaDB with
`DATABASE_URL=mysql://user:pw@host:3306/db?conn_max_age=60`. Its tests, with
aconn's pytest plugin: `examples/test_asgi_app.py`. Endpoints:

- `GET /items`            read: every item
- `POST /items?name=x`    write: insert an item and bump a counter, in one `atomic()` block
                          (`name=boom` fails inside it: nothing is kept)
- `GET /stats`            `connections.stats()` as JSON, with the pid of the worker process that answered
- `WS /ws`                a WebSocket session holding one scope for its life
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

import aconn
from aconn.asgi import ConnectionsMiddleware

DEFAULT_URL = f"sqlite:///{Path(tempfile.gettempdir()) / 'aconn-asgi-example.db'}?conn_max_age=60"


def create_app(database_url: str) -> Starlette:
    connections = aconn.Connections({"default": database_url})
    sqlite = database_url.startswith("sqlite")

    async def run(sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """One statement on this request's connection, in either driver's placeholder style."""
        conn = await connections.connection()
        if sqlite:
            return [tuple(r) for r in await conn.execute_fetchall(sql.replace("%s", "?"), args)]
        async with conn.cursor() as cur:
            await cur.execute(sql, args)
            return list(await cur.fetchall())

    async def list_items(request: Request) -> JSONResponse:
        rows = await run("SELECT id, name FROM items ORDER BY id")
        return JSONResponse([{"id": r[0], "name": r[1]} for r in rows])

    async def add_item(request: Request) -> JSONResponse:
        name = request.query_params.get("name", "unnamed")
        async with connections.atomic():  # committed at exit; rolled back if the block raises
            await run("INSERT INTO items (name) VALUES (%s)", (name,))
            await run("UPDATE counters SET n = n + 1 WHERE name = 'items'")
            if name == "boom":
                raise RuntimeError("failing mid-transaction: the atomic() block rolls it back")
            count = (await run("SELECT n FROM counters WHERE name = 'items'"))[0][0]  # our own update: row locked
        return JSONResponse({"added": name, "count": count}, status_code=201)

    async def stats(request: Request) -> JSONResponse:
        # stats are per process: under `uvicorn --workers N` each worker answers for itself
        return JSONResponse({"pid": os.getpid(), **dataclasses.asdict(connections.stats())})

    async def echo_session(websocket: WebSocket) -> None:
        await websocket.accept()
        async for text in websocket.iter_text():  # one scope, one connection, for the whole session
            rows = await run("SELECT %s", (text,))
            await websocket.send_text(str(rows[0][0]))

    async def create_schema() -> None:
        async with connections.scope():
            key = "INTEGER PRIMARY KEY AUTOINCREMENT" if sqlite else "INT AUTO_INCREMENT PRIMARY KEY"
            await run(f"CREATE TABLE IF NOT EXISTS items (id {key}, name VARCHAR(100))")
            await run("CREATE TABLE IF NOT EXISTS counters (name VARCHAR(20) PRIMARY KEY, n INT)")
            if not await run("SELECT n FROM counters WHERE name = 'items'"):
                await run("INSERT INTO counters VALUES ('items', 0)")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await create_schema()  # runs after ConnectionsMiddleware opened the handler
        yield

    app = Starlette(
        routes=[
            Route("/items", list_items, methods=["GET"]),
            Route("/items", add_item, methods=["POST"]),
            Route("/stats", stats),
            WebSocketRoute("/ws", echo_session),
        ],
        middleware=[Middleware(ConnectionsMiddleware, connections=connections)],
        lifespan=lifespan,
    )
    app.state.connections = connections
    app.state.create_schema = create_schema  # for tests, which run without the lifespan
    return app


app = create_app(os.environ.get("DATABASE_URL", DEFAULT_URL))
