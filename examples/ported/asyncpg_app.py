"""An app written for ``asyncpg.Pool``, as its authors would write it: accounts and an audit log.

Its repositories use asyncpg's own ``conn.transaction()``, nested (the audit entry is a
savepoint inside the caller's transaction); one request sets a session setting. Ported to
aconn, only the pool setup below changed (``asyncpg_pool_setup`` -> ``aconn_setup``), and
the test fixture (``tests/test_ported_apps.py``): see docs/migrating.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import aconn

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS accounts (id serial PRIMARY KEY, owner text NOT NULL, balance int NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit (id serial PRIMARY KEY, what text NOT NULL)",
)

Acquire = Callable[[], contextlib.AbstractAsyncContextManager[asyncpg.Connection]]
Lifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[None]]


class InsufficientFunds(Exception):
    pass


# -- repositories: the driver's own API, unchanged by the port ------------------------------


async def audit(conn: asyncpg.Connection, what: str) -> None:
    async with conn.transaction():  # nested in the caller's: a savepoint
        await conn.execute("INSERT INTO audit (what) VALUES ($1)", what)


async def open_account(conn: asyncpg.Connection, owner: str, balance: int) -> int:
    async with conn.transaction():
        account: int = await conn.fetchval(
            "INSERT INTO accounts (owner, balance) VALUES ($1, $2) RETURNING id", owner, balance
        )
        await audit(conn, f"open {account}")
    return account


async def transfer(conn: asyncpg.Connection, source: int, target: int, amount: int) -> None:
    async with conn.transaction():
        balance = await conn.fetchval(
            "UPDATE accounts SET balance = balance - $1 WHERE id = $2 RETURNING balance", amount, source
        )
        if balance < 0:
            raise InsufficientFunds(source)
        await conn.execute("UPDATE accounts SET balance = balance + $1 WHERE id = $2", amount, target)
        await audit(conn, f"transfer {amount} {source}->{target}")


# -- the app --------------------------------------------------------------------------------


def create_app(acquire: Acquire, lifespan: Lifespan | None = None) -> Starlette:
    async def post_account(request: Request) -> JSONResponse:
        body = await request.json()
        async with acquire() as conn:
            account = await open_account(conn, body["owner"], body["balance"])
        return JSONResponse({"id": account}, status_code=201)

    async def get_account(request: Request) -> JSONResponse:
        async with acquire() as conn:
            row = await conn.fetchrow("SELECT owner, balance FROM accounts WHERE id = $1", request.path_params["id"])
        if row is None:
            return JSONResponse({"error": "no such account"}, status_code=404)
        return JSONResponse(dict(row))

    async def post_transfer(request: Request) -> JSONResponse:
        body = await request.json()
        async with acquire() as conn:
            try:
                await transfer(conn, body["source"], body["target"], body["amount"])
            except InsufficientFunds:
                await audit(conn, f"refused {body['amount']} {body['source']}->{body['target']}")
                return JSONResponse({"error": "insufficient funds"}, status_code=409)
        return JSONResponse({"ok": True})

    async def get_audit(request: Request) -> JSONResponse:
        async with acquire() as conn:
            rows = await conn.fetch("SELECT what FROM audit ORDER BY id")
        return JSONResponse([r["what"] for r in rows])

    async def get_report(request: Request) -> JSONResponse:
        async with acquire() as conn:
            await conn.execute("SET application_name = 'report'")  # session state, for this request
            name = await conn.fetchval("SELECT current_setting('application_name')")
        return JSONResponse({"application_name": name})

    async def get_session(request: Request) -> JSONResponse:
        async with acquire() as conn:
            name = await conn.fetchval("SELECT current_setting('application_name')")
        return JSONResponse({"application_name": name})

    routes = [
        Route("/accounts", post_account, methods=["POST"]),
        Route("/accounts/{id:int}", get_account),
        Route("/transfers", post_transfer, methods=["POST"]),
        Route("/audit", get_audit),
        Route("/report", get_report),
        Route("/session", get_session),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


# -- the pool setup: the only part the port changed -----------------------------------------


def asyncpg_pool_setup(dsn: str) -> tuple[Acquire, Lifespan]:
    """Before: asyncpg.Pool, created at startup."""
    pools: list[asyncpg.Pool] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        pools.append(await asyncpg.create_pool(dsn, min_size=1, max_size=10))
        try:
            yield
        finally:
            await pools.pop().close()

    def acquire() -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        return pools[0].acquire()  # type: ignore[return-value]

    return acquire, lifespan


def aconn_setup(dsn: str) -> tuple[Acquire, Lifespan, aconn.Connections]:
    """After: aconn. The same URL with the driver named; pool options become aconn's settings."""
    connections = aconn.Connections({"default": dsn.replace("postgresql://", "postgresql+asyncpg://", 1)})

    def acquire() -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        return connections.acquire("default", asyncpg.Connection)

    return acquire, connections.lifespan, connections
