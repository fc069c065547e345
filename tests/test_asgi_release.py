"""ConnectionsMiddleware gives a request's connections back once its response is complete, on
every backend, when that is safe; ``release="call"`` keeps today's one connection per call.

| promise | test |
|---|---|
| a clean connection goes back with the response's end | test_clean_connection_goes_back_before_background_tasks |
| a transaction left open: kept to the end of the call | test_busy_connection_is_kept_to_the_end |
| an SQLAlchemy session still open: kept | test_sqlalchemy_session_open_is_kept |
| a streaming body keeps its connection until its last chunk | test_streaming_body_keeps_its_connection |
| ATOMIC_REQUESTS: given back after the COMMIT | test_atomic_requests_gives_back_after_commit |
| release="call": kept to the end, as one unit of work | test_release_at_the_end_of_the_call |
| a call that joins the caller's scope gives nothing of the caller's back | test_joined_scope_gives_nothing_back |
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from helpers import DRIVER_PARAMS, settings_for
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route
from test_driver_transactions import DRIVERS

import aconn
from aconn.asgi import ConnectionsMiddleware


@pytest.fixture(params=DRIVER_PARAMS)
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> tuple[str, dict[str, Any]]:
    return request.param, settings_for(request, request.param, tmp_path, CONN_MAX_AGE=60)


async def call(app: Any, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.get(path)


def app_of(connections: aconn.Connections, routes: list[Route], **options: Any) -> Starlette:
    return Starlette(routes=routes, middleware=[Middleware(ConnectionsMiddleware, connections=connections, **options)])


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "no-reset"])
async def test_clean_connection_goes_back_before_background_tasks(
    backend: tuple[str, dict[str, Any]], make: Any, reset: bool
) -> None:
    """With RESET_ON_RELEASE, the reset runs after the response's last message; without, the
    release is the scope path's (no I/O)."""
    name, settings = backend
    if reset and name == "sqlite":  # no session state to reset: refused, naming the key
        with pytest.raises(aconn.ConfigError, match=r"\['default'\]\['RESET_ON_RELEASE'\]"):
            make({"default": {**settings, "RESET_ON_RELEASE": reset}})
        return
    run = DRIVERS[name].run
    connections = make({"default": {**settings, "RESET_ON_RELEASE": reset}})
    seen: dict[str, Any] = {}

    async def later() -> None:
        seen["in_use_after_response"] = connections.stats().in_use
        conn = await connections.connection()  # taken again, through the same checks
        await run(conn, "SELECT 1")
        seen["again"] = conn
        seen["in_use_in_background"] = connections.stats().in_use

    async def endpoint(request: Request) -> PlainTextResponse:
        conn = await connections.connection()
        await run(conn, "SELECT 1")
        seen["first"] = conn
        return PlainTextResponse("ok", background=BackgroundTask(later))

    assert (await call(app_of(connections, [Route("/", endpoint)]), "/")).text == "ok"
    assert seen["in_use_after_response"] == 0
    assert seen["in_use_in_background"] == 1
    assert seen["again"] is seen["first"]  # the pool's most recent idle connection: the same one
    stats = connections.stats()
    assert stats.in_use == 0 and stats.opened == 1


async def test_busy_connection_is_kept_to_the_end(backend: tuple[str, dict[str, Any]], make: Any) -> None:
    name, settings = backend
    run = DRIVERS[name].run
    connections = make({"default": settings})
    seen: dict[str, int] = {}

    async def later() -> None:
        seen["in_use"] = connections.stats().in_use

    async def endpoint(request: Request) -> PlainTextResponse:
        conn = await connections.connection()
        await run(conn, "BEGIN")  # a transaction left open: not given back early
        await run(conn, "SELECT 1")
        return PlainTextResponse("ok", background=BackgroundTask(later))

    assert (await call(app_of(connections, [Route("/", endpoint)]), "/")).text == "ok"
    assert seen["in_use"] == 1
    stats = connections.stats()
    assert stats.in_use == 0 and stats.rollbacks == 1  # the scope's exit rolled it back, as always


async def test_sqlalchemy_session_open_is_kept(backend: tuple[str, dict[str, Any]], make: Any) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession

    from aconn.sqlalchemy import create_async_engine

    _, settings = backend
    connections = make({"default": settings})
    engine = create_async_engine(connections)
    seen: dict[str, int] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async with AsyncSession(engine) as session:
            await session.execute(text("SELECT 1"))
            await PlainTextResponse("ok")(scope, receive, send)  # the session still holds it
            seen["in_use"] = connections.stats().in_use
            await session.commit()

    assert (await call(ConnectionsMiddleware(app, connections=connections), "/")).text == "ok"
    assert seen["in_use"] == 1
    assert connections.stats().in_use == 0


async def test_streaming_body_keeps_its_connection(backend: tuple[str, dict[str, Any]], make: Any) -> None:
    name, settings = backend
    run = DRIVERS[name].run
    connections = make({"default": settings})
    in_use: list[int] = []

    async def endpoint(request: Request) -> StreamingResponse:
        conn = await connections.connection()

        async def body() -> AsyncIterator[bytes]:
            for i in range(3):
                await run(conn, f"SELECT {i}")  # the connection the endpoint took, chunk after chunk
                in_use.append(connections.stats().in_use)
                yield b"x"

        return StreamingResponse(body())

    assert (await call(app_of(connections, [Route("/", endpoint)]), "/")).text == "xxx"
    assert in_use == [1, 1, 1]
    assert connections.stats().in_use == 0


async def test_atomic_requests_gives_back_after_commit(backend: tuple[str, dict[str, Any]], make: Any) -> None:
    name, settings = backend
    driver = DRIVERS[name]
    connections = make({"default": {**settings, "ATOMIC_REQUESTS": True}})
    async with connections.acquire() as conn:
        await driver.run(conn, "DROP TABLE IF EXISTS aconn_release")
        await driver.run(conn, "CREATE TABLE aconn_release (id INT PRIMARY KEY)")
    seen: dict[str, int] = {}

    async def later() -> None:
        seen["in_use"] = connections.stats().in_use  # background tasks run inside the request's block

    async def endpoint(request: Request) -> PlainTextResponse:
        await driver.run(await connections.connection(), "INSERT INTO aconn_release VALUES (1)")
        return PlainTextResponse("ok", background=BackgroundTask(later))

    assert (await call(app_of(connections, [Route("/", endpoint)]), "/")).text == "ok"
    assert seen["in_use"] == 1
    async with connections.acquire() as conn:
        await driver.run(conn, "SELECT 1")
    stats = connections.stats()
    assert stats.in_use == 0 and stats.rollbacks == 0 and stats.opened == 1


async def test_release_at_the_end_of_the_call(backend: tuple[str, dict[str, Any]], make: Any) -> None:
    name, settings = backend
    run = DRIVERS[name].run
    connections = make({"default": settings})
    seen: dict[str, Any] = {}

    async def later() -> None:
        seen["in_use"] = connections.stats().in_use
        seen["again"] = await connections.connection()

    async def endpoint(request: Request) -> PlainTextResponse:
        seen["first"] = await connections.connection()
        await run(seen["first"], "SELECT 1")
        return PlainTextResponse("ok", background=BackgroundTask(later))

    app = app_of(connections, [Route("/", endpoint)], release="call")
    assert (await call(app, "/")).text == "ok"
    assert seen["in_use"] == 1 and seen["again"] is seen["first"]  # one connection for the whole call
    with pytest.raises(ValueError, match="release"):
        ConnectionsMiddleware(app, connections=connections, release="never")


async def test_joined_scope_gives_nothing_back(make: Any, tmp_path: Any) -> None:
    connections = make({"default": {"ENGINE": "sqlite", "NAME": str(tmp_path / "j.db")}})

    async def endpoint(request: Request) -> PlainTextResponse:
        await connections.connection()
        return PlainTextResponse("ok")

    app = app_of(connections, [Route("/", endpoint)])
    async with connections.scope():  # the test's own scope: the in-process call joins it
        mine = await connections.connection()
        assert (await call(app, "/")).text == "ok"
        assert connections.stats().in_use == 1
        assert await connections.connection() is mine
    assert connections.stats().in_use == 0
