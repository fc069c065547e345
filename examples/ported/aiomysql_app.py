"""An app written for ``aiomysql.Pool``, as its authors would write it: a stock of items.

Its repositories use aiomysql's own ``begin()``/``commit()``/``rollback()``. Ported to aconn,
only the pool setup below changed (``aiomysql_pool_setup`` -> ``aconn_setup``), and the test
fixture (``tests/test_ported_apps.py``): see docs/migrating.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiomysql
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import aconn

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS stock (sku VARCHAR(20) PRIMARY KEY, quantity INT NOT NULL) ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS moves (id INT AUTO_INCREMENT PRIMARY KEY, what VARCHAR(80)) ENGINE=InnoDB",
)

Acquire = Callable[[], contextlib.AbstractAsyncContextManager[Any]]
Lifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[None]]


class OutOfStock(Exception):
    pass


# -- repositories: the driver's own API, unchanged by the port ------------------------------


async def receive(conn: Any, sku: str, quantity: int) -> None:
    await conn.begin()
    try:
        async with conn.cursor() as cur:
            await cur.execute(
                "INSERT INTO stock (sku, quantity) VALUES (%s, %s) ON DUPLICATE KEY UPDATE quantity = quantity + %s",
                (sku, quantity, quantity),
            )
            await cur.execute("INSERT INTO moves (what) VALUES (%s)", (f"in {quantity} {sku}",))
    except BaseException:
        await conn.rollback()
        raise
    await conn.commit()


async def ship(conn: Any, sku: str, quantity: int) -> None:
    await conn.begin()
    try:
        async with conn.cursor() as cur:
            await cur.execute("UPDATE stock SET quantity = quantity - %s WHERE sku = %s", (quantity, sku))
            await cur.execute("SELECT quantity FROM stock WHERE sku = %s", (sku,))
            row = await cur.fetchone()
            if row is None or row[0] < 0:
                raise OutOfStock(sku)
            await cur.execute("INSERT INTO moves (what) VALUES (%s)", (f"out {quantity} {sku}",))
    except BaseException:
        await conn.rollback()
        raise
    await conn.commit()


# -- the app --------------------------------------------------------------------------------


def create_app(acquire: Acquire, lifespan: Lifespan | None = None) -> Starlette:
    async def post_receive(request: Request) -> JSONResponse:
        body = await request.json()
        async with acquire() as conn:
            await receive(conn, body["sku"], body["quantity"])
        return JSONResponse({"ok": True}, status_code=201)

    async def post_ship(request: Request) -> JSONResponse:
        body = await request.json()
        async with acquire() as conn:
            try:
                await ship(conn, body["sku"], body["quantity"])
            except OutOfStock:
                return JSONResponse({"error": "out of stock"}, status_code=409)
        return JSONResponse({"ok": True})

    async def get_stock(request: Request) -> JSONResponse:
        async with acquire() as conn, conn.cursor() as cur:
            await cur.execute("SELECT sku, quantity FROM stock ORDER BY sku")
            stock = {sku: quantity for sku, quantity in await cur.fetchall()}
            await cur.execute("SELECT what FROM moves ORDER BY id")
            moves = [what for (what,) in await cur.fetchall()]
        return JSONResponse({"stock": stock, "moves": moves})

    routes = [
        Route("/receive", post_receive, methods=["POST"]),
        Route("/ship", post_ship, methods=["POST"]),
        Route("/stock", get_stock),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


# -- the pool setup: the only part the port changed -----------------------------------------


def aiomysql_pool_setup(**connect: Any) -> tuple[Acquire, Lifespan]:
    """Before: aiomysql.Pool, created at startup."""
    pools: list[Any] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        pools.append(await aiomysql.create_pool(minsize=1, maxsize=10, autocommit=True, **connect))
        try:
            yield
        finally:
            pool = pools.pop()
            pool.close()
            await pool.wait_closed()

    def acquire() -> contextlib.AbstractAsyncContextManager[Any]:
        return pools[0].acquire()  # type: ignore[no-any-return]

    return acquire, lifespan


def aconn_setup(**connect: Any) -> tuple[Acquire, Lifespan, aconn.Connections]:
    """After: aconn, with the same connection settings as a Django-style entry."""
    connections = aconn.Connections(
        {
            "default": {
                "ENGINE": "mysql",
                "HOST": connect["host"],
                "PORT": connect["port"],
                "USER": connect["user"],
                "PASSWORD": connect["password"],
                "NAME": connect["db"],
                "CONN_MAX_AGE": 60,
            }
        }
    )
    return connections.acquire, connections.lifespan, connections
