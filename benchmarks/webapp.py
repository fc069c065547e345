"""Workload 5: the same one-query endpoint under uvicorn, one variant per way of getting a connection.

    python benchmarks/webapp.py serve VARIANT --port P --settings JSON   # a server process
    python benchmarks/webapp.py load --port P --seconds S --connections C  # a load generator, if wrk is missing

Variants: aconn with its middleware (health checks off / on), aconn with the
scope inside the endpoint (the connection goes back before the response is
sent, as the hand-rolled pool's does), a hand-rolled aiomysql.Pool (twice, in
two processes: the second is the control that shows how far two runs of the
same app drift apart), SQLAlchemy's async engine, connect-per-request; and on
asyncmy, aconn with its middleware and a hand-rolled asyncmy.Pool. The load generator is a
plain keep-alive HTTP/1.1 client in its own process; it prints requests per
second and latency percentiles as JSON. `benchmarks/run.py` prefers wrk (one
thread, written in C: it takes far less CPU from the app than this one does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

VARIANTS = (
    "aconn", "aconn-health", "aconn-endpoint", "aiomysql-pool", "aiomysql-pool-again", "sqlalchemy",
    "connect-per-request", "aconn-asyncmy", "asyncmy-pool",
)  # fmt: skip
#: the same endpoint on PostgreSQL (benchmarks/postgresql.py): aconn on asyncpg, a hand-rolled asyncpg.Pool
PG_VARIANTS = ("pg-aconn", "pg-asyncpg-pool", "pg-asyncpg-pool-again")
#: the endpoint as a SQLAlchemy app writes it, an AsyncSession per request (benchmarks/sqlalchemy_on_aconn.py): plain
#: SQLAlchemy, with pool_pre_ping, and on aconn (its middleware, aconn.sqlalchemy's engine); "DRIVER:VARIANT"
SA_VARIANTS = tuple(f"{driver}:{v}" for driver in ("aiomysql", "asyncpg") for v in ("sa", "sa-pre-ping", "sa-aconn"))


def build_sa_app(variant: str, settings: dict[str, Any]) -> Any:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    driver, kind = variant.split(":")
    middleware = []
    if kind == "sa-aconn":
        import aconn
        import aconn.sqlalchemy
        from aconn.asgi import ConnectionsMiddleware

        # RESET_ON_RELEASE off: SQLAlchemy's pool does not reset sessions either (it rolls back)
        entry = {**settings, "ENGINE": "mysql" if driver == "aiomysql" else "asyncpg", "CONN_MAX_AGE": 3600,
                 "RESET_ON_RELEASE": False}  # fmt: skip
        connections = aconn.Connections({"default": {**entry, "MAX_CONNS": 10}})
        engine = aconn.sqlalchemy.create_async_engine(connections)
        middleware = [Middleware(ConnectionsMiddleware, connections=connections)]
    else:
        scheme = "mysql+aiomysql" if driver == "aiomysql" else "postgresql+asyncpg"
        s = settings
        url = f"{scheme}://{s['USER']}:{s['PASSWORD']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"
        engine = create_async_engine(url, pool_size=10, max_overflow=0, pool_pre_ping=kind == "sa-pre-ping")
    sessions = async_sessionmaker(engine)
    statement = text("SELECT 1")

    async def endpoint(request: Request) -> PlainTextResponse:
        async with sessions() as session:
            return PlainTextResponse(str((await session.execute(statement)).scalar()))

    return Starlette(routes=[Route("/", endpoint)], middleware=middleware)


def build_pg_app(variant: str, settings: dict[str, Any]) -> Any:
    import asyncpg
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    if variant == "pg-aconn":
        import aconn
        from aconn.asgi import ConnectionsMiddleware

        connections = aconn.Connections({"default": {**settings, "ENGINE": "asyncpg", "CONN_MAX_AGE": 3600}})

        async def endpoint(request: Request) -> PlainTextResponse:
            return PlainTextResponse(str(await (await connections.connection()).fetchval("SELECT 1")))

        return Starlette(
            routes=[Route("/", endpoint)], middleware=[Middleware(ConnectionsMiddleware, connections=connections)]
        )
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        state["pool"] = await asyncpg.create_pool(
            host=settings["HOST"], port=settings["PORT"], user=settings["USER"], password=settings["PASSWORD"],
            database=settings["NAME"], min_size=1, max_size=10,
        )  # fmt: skip
        yield
        await state["pool"].close()

    async def pool_endpoint(request: Request) -> PlainTextResponse:
        async with state["pool"].acquire() as conn:
            return PlainTextResponse(str(await conn.fetchval("SELECT 1")))

    return Starlette(routes=[Route("/", pool_endpoint)], lifespan=lifespan)


#: benchmarks/web.py's matrix: per driver, the hand-rolled driver pool app, aconn's middleware (health
#: checks off and on) and aconn's scope inside the endpoint
MATRIX_VARIANTS = ("pool", "middleware", "middleware-health", "endpoint")


def build_matrix_app(driver: str, variant: str, cap: int, query: str, settings: dict[str, Any]) -> Any:
    """One endpoint running ``query`` on ``driver`` (aiomysql, asyncmy, asyncpg), ``cap`` connections."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def run(conn: Any) -> Any:
        if driver == "asyncpg":
            return await conn.fetchval(query)
        async with conn.cursor() as cur:
            await cur.execute(query)
            return (await cur.fetchone())[0]

    if variant == "pool":
        from peers import asyncmy_kwargs, driver_kwargs

        state: dict[str, Any] = {}

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[None]:
            if driver == "asyncpg":
                import asyncpg

                s = settings
                state["pool"] = await asyncpg.create_pool(
                    host=s["HOST"], port=s["PORT"], user=s["USER"], password=s["PASSWORD"], database=s["NAME"],
                    min_size=1, max_size=cap,
                )  # fmt: skip
                yield
                await state["pool"].close()
                return
            if driver == "asyncmy":
                import asyncmy

                state["pool"] = await asyncmy.create_pool(minsize=1, maxsize=cap, **asyncmy_kwargs(settings))
            else:
                import aiomysql

                state["pool"] = await aiomysql.create_pool(minsize=1, maxsize=cap, **driver_kwargs(settings))
            yield
            state["pool"].close()
            await state["pool"].wait_closed()

        async def pool_endpoint(request: Request) -> PlainTextResponse:
            async with state["pool"].acquire() as conn:
                return PlainTextResponse(str(await run(conn)))

        return Starlette(routes=[Route("/", pool_endpoint)], lifespan=lifespan)

    import aconn
    from aconn.asgi import ConnectionsMiddleware

    engine = {"aiomysql": "mysql", "asyncmy": "asyncmy", "asyncpg": "asyncpg"}[driver]
    entry = {**settings, "ENGINE": engine, "CONN_MAX_AGE": 3600, "MAX_CONNS": cap, "ACQUIRE_TIMEOUT": 60,
             "CONN_HEALTH_CHECKS": variant == "middleware-health", "RESET_ON_RELEASE": False}  # fmt: skip
    connections = aconn.Connections({"default": entry})
    if variant == "endpoint":

        async def scoped_endpoint(request: Request) -> PlainTextResponse:
            async with connections.scope():
                return PlainTextResponse(str(await run(await connections.connection())))

        return Starlette(routes=[Route("/", scoped_endpoint)], lifespan=connections.lifespan)

    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(await run(await connections.connection())))

    middleware = [Middleware(ConnectionsMiddleware, connections=connections)]
    return Starlette(routes=[Route("/", endpoint)], middleware=middleware)


def build_app(variant: str, settings: dict[str, Any]) -> Any:
    if variant in SA_VARIANTS:
        return build_sa_app(variant, settings)
    if variant in PG_VARIANTS:
        return build_pg_app(variant, settings)
    import aiomysql
    import asyncmy
    from peers import asyncmy_kwargs, driver_kwargs
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    kwargs = driver_kwargs(settings)

    async def select1(conn: Any) -> Any:
        async with conn.cursor() as cur:
            await cur.execute("SELECT 1")
            return (await cur.fetchone())[0]

    if variant.startswith("aconn"):
        import aconn
        from aconn.asgi import ConnectionsMiddleware

        entry = {**settings, "CONN_MAX_AGE": 3600, "MAX_CONNS": 10, "CONN_HEALTH_CHECKS": variant == "aconn-health"}
        if variant == "aconn-asyncmy":
            entry["ENGINE"] = "asyncmy"
        connections = aconn.Connections({"default": entry})

        if variant == "aconn-endpoint":  # the scope inside the endpoint: released before the response is sent

            async def scoped_endpoint(request: Request) -> PlainTextResponse:
                async with connections.scope():
                    return PlainTextResponse(str(await select1(await connections.connection())))

            return Starlette(routes=[Route("/", scoped_endpoint)], lifespan=connections.lifespan)

        async def endpoint(request: Request) -> PlainTextResponse:
            return PlainTextResponse(str(await select1(await connections.connection())))

        return Starlette(
            routes=[Route("/", endpoint)], middleware=[Middleware(ConnectionsMiddleware, connections=connections)]
        )

    if variant.startswith(("aiomysql-pool", "asyncmy-pool")):  # "-again": the same app in a second process
        state: dict[str, Any] = {}

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[None]:
            if variant == "asyncmy-pool":
                state["pool"] = await asyncmy.create_pool(minsize=1, maxsize=10, **asyncmy_kwargs(settings))
            else:
                state["pool"] = await aiomysql.create_pool(minsize=1, maxsize=10, **kwargs)
            yield
            state["pool"].close()
            await state["pool"].wait_closed()

        async def pool_endpoint(request: Request) -> PlainTextResponse:
            async with state["pool"].acquire() as conn:
                return PlainTextResponse(str(await select1(conn)))

        return Starlette(routes=[Route("/", pool_endpoint)], lifespan=lifespan)

    if variant == "sqlalchemy":
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        url = f"mysql+aiomysql://{kwargs['user']}:{kwargs['password']}@{kwargs['host']}:{kwargs['port']}/{kwargs['db']}"
        engine = create_async_engine(url, pool_size=10, max_overflow=0)
        statement = text("SELECT 1")

        async def sa_endpoint(request: Request) -> PlainTextResponse:
            async with engine.connect() as conn:
                return PlainTextResponse(str((await conn.execute(statement)).scalar()))

        return Starlette(routes=[Route("/", sa_endpoint)])

    async def connect_endpoint(request: Request) -> PlainTextResponse:
        conn = await aiomysql.connect(**kwargs)
        try:
            return PlainTextResponse(str(await select1(conn)))
        finally:
            await conn.ensure_closed()

    return Starlette(routes=[Route("/", connect_endpoint)])


async def load(port: int, seconds: float, connections: int) -> dict[str, float]:
    """Keep-alive HTTP/1.1 clients hammering GET / for ``seconds``; requests/s and latency percentiles."""
    request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if not head.startswith(b"HTTP/1.1 200") or body != b"1":
                    errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("variant", choices=VARIANTS + PG_VARIANTS + SA_VARIANTS)
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--settings", required=True, help="a DATABASES entry as JSON")
    serve.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"])
    serve.add_argument("--cpu", type=int, help="pin the server process to this CPU")
    matrix = sub.add_parser("serve-matrix", help="benchmarks/web.py's apps")
    matrix.add_argument("driver", choices=["aiomysql", "asyncmy", "asyncpg"])
    matrix.add_argument("variant", choices=MATRIX_VARIANTS)
    matrix.add_argument("--cap", type=int, required=True)
    matrix.add_argument("--query", required=True)
    matrix.add_argument("--port", type=int, required=True)
    matrix.add_argument("--settings", required=True, help="a DATABASES entry as JSON")
    matrix.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"])
    matrix.add_argument("--cpu", type=int, help="pin the server process to this CPU")
    gen = sub.add_parser("load")
    gen.add_argument("--port", type=int, required=True)
    gen.add_argument("--seconds", type=float, default=5)
    gen.add_argument("--connections", type=int, default=20)
    args = parser.parse_args()
    if args.command in ("serve", "serve-matrix"):
        import uvicorn

        if args.cpu is not None:
            os.sched_setaffinity(0, {args.cpu})
        settings = json.loads(args.settings)
        if args.command == "serve":
            app = build_app(args.variant, settings)
        else:
            app = build_matrix_app(args.driver, args.variant, args.cap, args.query, settings)
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", loop=args.loop, access_log=False)
    else:
        print(json.dumps(asyncio.run(load(args.port, args.seconds, args.connections))))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
