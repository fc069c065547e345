"""ASGI: real uvicorn on loopback, a real HTTP client, MariaDB and SQLite.

A scope per request; the lifespan opens and closes the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pymysql
import pytest
import uvicorn
import websockets
from helpers import assert_balanced, assert_no_password, eventually
from mariadb import APP_PASSWORD, MariaDB, free_port
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

import aconn
from aconn.asgi import ConnectionsMiddleware

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from examples.asgi_app import create_app


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    """Run ``app`` under uvicorn in this event loop on a free loopback port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(20):
        while not server.started:
            if task.done():
                await task
                raise RuntimeError("uvicorn did not start")
            await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        async with asyncio.timeout(30):
            await task


@pytest.mark.mysql
@pytest.mark.mysql_drivers
async def test_hundreds_of_requests_against_mariadb(db: MariaDB) -> None:
    from helpers import ProcesslistSampler

    app = create_app(db.url("conn_max_age=60&max_conns=4"))
    connections: aconn.Connections = app.state.connections
    db.sql("DROP TABLE IF EXISTS aconn_test.items", "DROP TABLE IF EXISTS aconn_test.counters")
    async with serve(app) as (url, _), httpx.AsyncClient(base_url=url, timeout=30) as client:
        with ProcesslistSampler(db) as sampler:
            posts = await asyncio.gather(*(client.post("/items", params={"name": f"n{i}"}) for i in range(100)))
            gets = await asyncio.gather(*(client.get("/items") for _ in range(200)))
        assert all(r.status_code == 201 for r in posts)
        assert sorted(r.json()["added"] for r in posts) == sorted(f"n{i}" for i in range(100))
        assert sorted(r.json()["count"] for r in posts) == list(range(1, 101))  # each its own transaction
        assert all(r.status_code == 200 for r in gets)
        assert len(gets[-1].json()) == 100
        assert max(sampler.samples) <= 4
        stats = (await client.get("/stats")).json()
        assert stats["opened"] <= 4 and stats["in_use"] <= 1  # persisted between requests
        assert stats["pid"] == os.getpid()  # stats are per process: the endpoint says which one
        # a handler that raises mid-transaction: 500, rolled back, the next requests succeed
        failed = await client.post("/items", params={"name": "boom"})
        assert failed.status_code == 500
        assert len((await client.get("/items")).json()) == 100
        assert db.open_transactions(expected=0) == 0
    assert db.wait_app_threads(lambda t: not t) == []  # lifespan shutdown closed every connection
    stats_after = connections.stats()
    assert stats_after.open == 0
    assert_balanced(stats_after)


async def test_same_app_on_sqlite(tmp_path: Path) -> None:
    app = create_app(f"sqlite:///{tmp_path / 'web.db'}?conn_max_age=60")
    async with serve(app) as (url, _), httpx.AsyncClient(base_url=url) as client:
        for i in range(5):
            assert (await client.post("/items", params={"name": f"s{i}"})).status_code == 201
        assert [item["name"] for item in (await client.get("/items")).json()] == [f"s{i}" for i in range(5)]
        assert (await client.get("/stats")).json()["opened"] == 1
    assert app.state.connections.stats().open == 0


async def test_websocket_holds_one_scope_for_its_life(tmp_path: Path) -> None:
    app = create_app(f"sqlite:///{tmp_path / 'ws.db'}?conn_max_age=0")
    connections: aconn.Connections = app.state.connections
    async with serve(app) as (url, _):
        before = connections.stats()
        async with websockets.connect(url.replace("http", "ws") + "/ws") as ws:
            for word in ("a", "b", "c"):
                await ws.send(word)
                assert await ws.recv() == word
            assert connections.stats().in_use == 1 and connections.stats().opened == before.opened + 1
        await eventually(lambda: not connections.stats().open)
        stats = connections.stats()
        assert stats.closed_max_age == before.closed_max_age + 1 and stats.open == 0


async def test_client_disconnect_mid_stream_gives_the_connection_back(tmp_path: Path) -> None:
    connections = aconn.Connections({"default": f"sqlite:///{tmp_path / 's.db'}?conn_max_age=60"})
    streaming = asyncio.Event()

    async def stream(request: Any) -> StreamingResponse:
        conn = await connections.connection()

        async def body() -> AsyncIterator[bytes]:
            for i in range(100000):
                rows = await conn.execute_fetchall("SELECT ?", (i,))
                streaming.set()
                yield f"{rows[0][0]}\n".encode()

        return StreamingResponse(body())

    async def ping(request: Any) -> JSONResponse:
        conn = await connections.connection()
        return JSONResponse((await conn.execute_fetchall("SELECT 1"))[0][0])

    app = Starlette(
        routes=[Route("/stream", stream), Route("/ping", ping)],
        middleware=[Middleware(ConnectionsMiddleware, connections=connections)],
    )
    async with serve(app) as (url, _):
        async with httpx.AsyncClient(base_url=url) as client, client.stream("GET", "/stream") as response:
            async for _ in response.aiter_lines():
                break
        assert streaming.is_set()
        async with asyncio.timeout(10):
            while connections.stats().in_use:
                await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/ping")).json() == 1
        assert_balanced(connections.stats())
    assert connections.stats().open == 0


@pytest.mark.mysql
async def test_startup_fails_on_wrong_password(
    db: MariaDB, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    bad = db.settings(PASSWORD=APP_PASSWORD + "-x")
    connections = aconn.Connections({"default": bad})
    app = ConnectionsMiddleware(Starlette(), connections=connections)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), lifespan="on", log_level="info"))
    with pytest.raises(SystemExit):
        async with asyncio.timeout(20):
            await server.serve()
    assert not server.started
    printed = caplog.text + capsys.readouterr().err  # uvicorn's own loggers do not propagate
    assert "Access denied" in printed
    # said once, with the alias and where it connected (the driver's error alone names neither)
    assert printed.count("aconn could not open") == 1, printed
    assert f"(aconn alias 'default': connecting to mysql app@127.0.0.1:{db.port}/" in printed
    assert_no_password(printed)
    assert (APP_PASSWORD + "-x") not in printed


async def test_startup_fails_on_unreachable_host(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    connections = aconn.Connections(
        {"default": {"ENGINE": "mysql", "HOST": "127.0.0.1", "PORT": free_port(), "PASSWORD": APP_PASSWORD}}
    )

    async def bare_app(scope: Any, receive: Any, send: Any) -> None:  # speaks no lifespan at all
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan here")

    app = ConnectionsMiddleware(bare_app, connections=connections)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), lifespan="on", log_level="info"))
    with pytest.raises(SystemExit):
        async with asyncio.timeout(20):
            await server.serve()
    printed = caplog.text + capsys.readouterr().err
    assert "Can't connect to MySQL server" in printed and printed.count("aconn could not open") == 1
    assert_no_password(printed)


async def test_lifespan_for_framework_parameter(tmp_path: Path) -> None:
    connections = aconn.Connections({"default": f"sqlite:///{tmp_path / 'l.db'}?conn_max_age=60"})

    async def endpoint(request: Any) -> JSONResponse:
        async with connections.scope():
            conn = await connections.connection()
            return JSONResponse((await conn.execute_fetchall("SELECT 4"))[0][0])

    app = Starlette(routes=[Route("/", endpoint)], lifespan=connections.lifespan)
    async with serve(app) as (url, _), httpx.AsyncClient(base_url=url) as client:
        assert connections._opened
        assert (await client.get("/")).json() == 4
    assert connections._closed


async def test_fastapi_dependency_recipe(tmp_path: Path) -> None:
    from fastapi import Depends, FastAPI

    connections = aconn.Connections({"default": f"sqlite:///{tmp_path / 'f.db'}?conn_max_age=60"})

    async def get_connection() -> Any:
        """The recipe: with the middleware installed, a dependency is one line."""
        return await connections.connection()

    api = FastAPI(lifespan=connections.lifespan)
    api.add_middleware(ConnectionsMiddleware, connections=connections)

    @api.get("/double/{n}")
    async def double(n: int, conn: Any = Depends(get_connection)) -> dict[str, int]:  # noqa: B008
        rows = await conn.execute_fetchall("SELECT ? * 2", (n,))
        return {"result": rows[0][0], "conn": id(conn)}

    async with serve(api) as (url, _), httpx.AsyncClient(base_url=url) as client:
        results = [(await client.get(f"/double/{n}")).json() for n in range(5)]
        assert [r["result"] for r in results] == [0, 2, 4, 6, 8]
        assert len({r["conn"] for r in results}) == 1
    assert connections.stats().open == 0


@pytest.mark.mysql
# Starlette now prefers httpx2 under its TestClient; which client it drives is beside the point here
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")
def test_test_client_raises_the_startup_error(db: MariaDB) -> None:
    from starlette.testclient import TestClient

    connections = aconn.Connections({"default": db.settings(PASSWORD=APP_PASSWORD + "-x")})
    app = ConnectionsMiddleware(Starlette(), connections=connections)
    started = time.monotonic()
    with pytest.raises(pymysql.err.OperationalError, match="Access denied"), TestClient(app):
        pass
    assert time.monotonic() - started < 5


@pytest.mark.mysql
async def test_lifespan_manager_raises_the_startup_error(db: MariaDB) -> None:
    from asgi_lifespan import LifespanManager

    connections = aconn.Connections({"default": db.settings(PASSWORD=APP_PASSWORD + "-x")})
    app = ConnectionsMiddleware(Starlette(), connections=connections)
    async with asyncio.timeout(5):
        with pytest.raises(pymysql.err.OperationalError, match="Access denied") as info:
            async with LifespanManager(app):
                pass
    assert "aconn alias 'default': connecting to" in "\n".join(info.value.__notes__)
    assert db.wait_app_threads(lambda ids: not ids) == []


async def test_no_connection_free_is_a_503_with_retry_after(tmp_path: Path) -> None:
    connections = aconn.Connections(
        {"default": f"sqlite:///{tmp_path / 'busy.db'}?conn_max_age=60&max_conns=1&max_waiting=0"}
    )
    gate = asyncio.Event()

    async def slow(request: Any) -> JSONResponse:
        conn = await connections.connection()
        await gate.wait()
        return JSONResponse((await conn.execute_fetchall("SELECT 1"))[0][0])

    app = Starlette(
        routes=[Route("/slow", slow)], middleware=[Middleware(ConnectionsMiddleware, connections=connections)]
    )
    async with serve(app) as (url, _), httpx.AsyncClient(base_url=url, timeout=10) as client:
        first = asyncio.create_task(client.get("/slow"))
        await eventually(lambda: connections.stats().in_use == 1)
        shed = await client.get("/slow")  # the one connection is taken and MAX_WAITING=0: shed at once
        gate.set()
        assert (await first).json() == 1
    assert shed.status_code == 503 and shed.headers["retry-after"] == "1"
    assert connections.stats().overloaded == 1
