"""Instructions per scope, counted by callgrind: repeatable where timings are not.

    python benchmarks/instructions.py                    # needs valgrind (apt-get install -y valgrind)
    python benchmarks/instructions.py --driver asyncmy   # aconn on asyncmy, against asyncmy's own pool

Counts user-space instructions only (a system call's kernel part is not in
them), so it tracks the cost of aconn's Python path from one change to the
next, and sets it beside aiomysql.Pool and a SELECT 1; the time a scope takes
is in `docs/performance.md`. Each part is run for 0 and for N iterations in a
fresh process, and the difference divided by N.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PARTS = {
    "scope": "aconn: async with scope: await connection() (the whole path)",
    "scope-only": "aconn: async with scope: pass (no connection taken)",
    "scope-otel": "aconn instrumented (aconn.otel, SDK in-memory reader): the whole path",
    "scope-otel-nouse": "aconn instrumented with use_time=False: the whole path",
    "take-release": "aconn: pool.take_idle() + pool.release(), the connection's part",
    "liveness": "aconn: the hand-out check alone (flags, poll(0))",
    "coroutine": "an empty coroutine awaited (the measurement's own cost)",
    "contended": "aconn, MAX_CONNS=1: two tasks gathered, each a scope + connection() + one yield (one waits)",
    "contended-pool": "aiomysql.Pool(maxsize=1): the same two tasks, each acquire() + one yield (one waits)",
    "gather": "two tasks gathered, each one yield (the contended parts' own cost)",
    "aiomysql-pool": "aiomysql.Pool: async with pool.acquire()",
    "driver-pool": "the driver's own pool: async with pool.acquire()",
    "select-raw": "SELECT 1 on a raw held connection",
    "select-scope": "SELECT 1 in an aconn scope",
    "select-pool": "SELECT 1 through the driver's own pool",
    "asgi-middleware": "one HTTP call through ConnectionsMiddleware: connection(), response start and body sent",
    "asgi-pool": "the same call, the app acquiring from aiomysql.Pool itself (a hand-rolled app)",
    # benchmarks/web.py's Starlette apps, called in-process (no HTTP server), 20 requests at a time
    # over 10 connections; per request, the SELECT 1 included
    "web-pool": "web app, hand-rolled driver pool: a request, 20 at a time over 10 connections",
    "web-middleware": "web app, aconn's middleware: the same",
    "web-middleware-health": "web app, aconn's middleware with health checks on: the same",
    "web-endpoint": "web app, aconn's scope in the endpoint: the same",
}
#: requests in flight at once in the web-* parts (their pools have 10 connections)
WEB_CLIENTS = 20
ITERATIONS = {"select-raw": 1000, "select-scope": 1000, "select-pool": 1000}  # the rest: -n
ITERATIONS.update({part: 50 for part in PARTS if part.startswith("web-")})  # 20 requests each


async def measure_web(settings: dict[str, Any], variant: str, n: int) -> None:
    """``n`` rounds of WEB_CLIENTS concurrent requests into one of web.py's apps, its lifespan run around them."""
    from webapp import build_matrix_app

    driver = "asyncmy" if settings["ENGINE"] == "asyncmy" else "aiomysql"
    app = build_matrix_app(driver, variant, 10, "SELECT 1", settings)
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    inbox.put_nowait({"type": "lifespan.startup"})
    state: dict[str, Any] = {}
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}, inbox.get, outbox.put)
    )
    started = await outbox.get()
    assert started["type"] == "lifespan.startup.complete", started
    request = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": "/", "raw_path": b"/", "query_string": b"", "root_path": "", "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    answered = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return answered

    async def one() -> None:
        body: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                body.append(message.get("body", b""))

        await app({**request, "state": dict(state)}, receive, send)
        assert body == [b"1"], body

    async def unit() -> None:
        await asyncio.gather(*(one() for _ in range(WEB_CLIENTS)))

    for _ in range(20):  # warm: every connection open, the same state in the 0 and the N runs
        await unit()
    for _ in range(n):
        await unit()
    inbox.put_nowait({"type": "lifespan.shutdown"})
    assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
    await lifespan


async def measure(settings: dict[str, Any], part: str, n: int) -> None:
    import aiomysql
    import asyncmy
    from peers import asyncmy_kwargs, driver_kwargs, select1

    import aconn

    handler = aconn.Connections({"default": {**settings, "CONN_MAX_AGE": 3600}})
    if part.startswith("scope-otel"):
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        import aconn.otel

        provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        aconn.otel.instrument(handler, provider, use_time=part == "scope-otel")
    await handler.open()
    scarce = aconn.Connections({"default": {**settings, "CONN_MAX_AGE": 3600, "MAX_CONNS": 1}})
    await scarce.open()
    pool = handler.pool("default")
    holder = pool._idle[-1]
    kwargs = driver_kwargs(settings)
    aiomysql_pool = await aiomysql.create_pool(minsize=1, maxsize=10, **kwargs)
    scarce_pool = await aiomysql.create_pool(minsize=1, maxsize=1, **kwargs)
    if settings["ENGINE"] == "asyncmy":  # the raw connection and the driver's pool: asyncmy's
        raw = await asyncmy.connect(**asyncmy_kwargs(settings))
        peer = await asyncmy.create_pool(minsize=1, maxsize=10, **asyncmy_kwargs(settings))
    else:
        raw = await aiomysql.connect(**kwargs)
        peer = aiomysql_pool

    async def whole() -> None:
        async with handler.scope():
            await handler.connection()

    async def scope_only() -> None:
        async with handler.scope():
            pass

    async def take_release() -> None:
        taken = pool.take_idle(None)
        assert taken is not None
        pool.release(taken, None)

    async def liveness() -> None:
        holder.alive()

    async def coroutine() -> None:
        pass

    async def scarce_scope() -> None:
        async with scarce.scope():
            await scarce.connection()
            await asyncio.sleep(0)

    async def scarce_acquire() -> None:
        async with scarce_pool.acquire():
            await asyncio.sleep(0)

    async def one_yield() -> None:
        await asyncio.sleep(0)

    async def contended() -> None:
        await asyncio.gather(scarce_scope(), scarce_scope())

    async def contended_pool() -> None:
        await asyncio.gather(scarce_acquire(), scarce_acquire())

    async def gather() -> None:
        await asyncio.gather(one_yield(), one_yield())

    async def aiomysql_pool_only() -> None:
        async with aiomysql_pool.acquire():
            pass

    async def driver_pool() -> None:
        async with peer.acquire():
            pass

    async def select_raw() -> None:
        await select1(raw)

    async def select_scope() -> None:
        async with handler.scope():
            await select1(await handler.connection())

    async def select_pool() -> None:
        async with peer.acquire() as conn:
            await select1(conn)

    from aconn.asgi import ConnectionsMiddleware

    start = {"type": "http.response.start", "status": 200, "headers": []}
    body = {"type": "http.response.body", "body": b"1"}
    request = {"type": "http", "method": "GET", "path": "/", "headers": []}

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        pass

    async def app_on_aconn(scope: Any, receive: Any, send: Any) -> None:
        await handler.connection()
        await send(start)
        await send(body)

    async def app_on_pool(scope: Any, receive: Any, send: Any) -> None:
        async with aiomysql_pool.acquire():
            pass
        await send(start)
        await send(body)

    middleware = ConnectionsMiddleware(app_on_aconn, connections=handler)

    async def asgi_middleware() -> None:
        await middleware(request, receive, send)

    async def asgi_pool() -> None:
        await app_on_pool(request, receive, send)

    unit = {
        "scope": whole, "scope-otel": whole, "scope-otel-nouse": whole, "scope-only": scope_only,
        "take-release": take_release, "liveness": liveness,
        "coroutine": coroutine, "contended": contended, "contended-pool": contended_pool, "gather": gather,
        "aiomysql-pool": aiomysql_pool_only, "driver-pool": driver_pool,
        "select-raw": select_raw, "select-scope": select_scope, "select-pool": select_pool,
        "asgi-middleware": asgi_middleware, "asgi-pool": asgi_pool,
    }[part]  # fmt: skip
    for _ in range(200):  # warm: the same state in the 0 and the N runs
        await unit()
    for _ in range(n):
        await unit()
    raw.close()
    for pool in {id(peer): peer, id(aiomysql_pool): aiomysql_pool, id(scarce_pool): scarce_pool}.values():
        pool.close()
        await pool.wait_closed()
    await handler.aclose()
    await scarce.aclose()


def callgrind_count(script: str, *args: str) -> int:
    """User-space instructions of ``python script args...`` run under callgrind (hash seed fixed)."""
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, script, *args],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"},
    )  # fmt: skip
    match = re.search(r"Collected : (\d+)", out.stderr)
    assert match, out.stderr
    return int(match.group(1))


def valgrind_missing() -> bool:
    """True (and says so on stderr) when valgrind is not installed."""
    if shutil.which("valgrind") is not None:
        return False
    print("valgrind is not installed: apt-get install -y valgrind", file=sys.stderr)
    return True


def count(settings_json: str, part: str, n: int) -> int:
    return callgrind_count(__file__, "--child", part, str(n), settings_json)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=3000, help="iterations per part")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), help="measure only these parts")
    parser.add_argument("--driver", choices=["aiomysql", "asyncmy"], default="aiomysql", help="the MySQL driver")
    parser.add_argument("--child", nargs=3, metavar=("PART", "N", "SETTINGS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import json

        part, n, settings = args.child
        if part.startswith("web-"):
            asyncio.run(measure_web(json.loads(settings), part.removeprefix("web-"), int(n)))
        else:
            asyncio.run(measure(json.loads(settings), part, int(n)))
        return 0
    if valgrind_missing():
        return 2
    import json

    sys.path.insert(0, str(ROOT / "tests"))
    from mariadb import MariaDB

    server = MariaDB().start()
    server.driver = args.driver
    try:
        settings = json.dumps(server.settings())
        print(f"driver: {args.driver}\n\n| part | instructions per iteration |\n| --- | ---: |")
        for part, label in PARTS.items():
            if args.parts and part not in args.parts:
                continue
            n = ITERATIONS.get(part, args.n)
            per = (count(settings, part, n) - count(settings, part, 0)) / n
            if part.startswith("web-"):
                per /= WEB_CLIENTS  # per request
            print(f"| {label} | {per:,.0f} |", flush=True)
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
