"""aconn quickstart: scoped, persistent, checked connections on SQLite (no server needed).

Run it with `nox -s demo` or `python examples/quickstart.py [DATABASE_URL]`.
It shows, printing what happens:
1. consecutive scopes reuse one connection (CONN_MAX_AGE > 0);
2. CONN_MAX_AGE=0 gives each scope a fresh connection, closed at scope exit;
3. a connection past its max age is replaced at the next scope;
4. a health check retires a connection that died while idle;
5. a transaction left open is rolled back when the scope exits.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
from pathlib import Path

import aconn


async def main(url: str | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="   log: %(message)s", stream=sys.stdout)
    workdir = Path(tempfile.mkdtemp(prefix="aconn-quickstart-"))
    connections = aconn.Connections(
        {
            # a Django DATABASES entry, pasted as-is, plus aconn's own keys
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(workdir / "app.db"),
                "CONN_MAX_AGE": 60,
                "CONN_HEALTH_CHECKS": True,
                "MAX_CONNS": 4,
            },
            # the URL form; CONN_MAX_AGE=0 is Django's default: close at scope exit
            "scratch": url or f"sqlite:///{workdir / 'scratch.db'}?conn_max_age=0",
            "short": f"sqlite:///{workdir / 'short.db'}?conn_max_age=0.2",
        }
    )
    async with connections:  # open(): connect once per alias, start housekeeping
        print("1. consecutive scopes reuse one connection (CONN_MAX_AGE=60)")
        seen = set()
        for i in range(3):
            async with connections.scope():  # one unit of work: a request, a job
                conn = await connections.connection()  # the aiosqlite connection
                await conn.execute("CREATE TABLE IF NOT EXISTS hits (n INTEGER)")
                await conn.execute("INSERT INTO hits VALUES (?)", (i,))
                seen.add(id(conn))
                print(f"   scope {i}: connection {id(conn):#x}")
        print(f"   -> {len(seen)} connection for 3 scopes; stats: opened={connections.stats().opened}")

        print("2. CONN_MAX_AGE=0: a fresh connection per scope, closed at exit")
        before = connections.stats("scratch")
        for i in range(2):
            async with connections.scope():
                conn = await connections.connection("scratch")
                print(f"   scope {i}: connection {id(conn):#x}")
        s = connections.stats("scratch")
        print(
            f"   -> opened={s.opened - before.opened} closed_max_age={s.closed_max_age - before.closed_max_age}"
            f" open now={s.open}"
        )

        print("3. past its max age (0.2 s), a connection is replaced at the next scope")
        async with connections.scope():
            first = id(await connections.connection("short"))
        async with connections.scope():
            again = id(await connections.connection("short"))
        await asyncio.sleep(0.3)
        async with connections.scope():
            later = id(await connections.connection("short"))
        print(f"   reused within the age: {first == again}; replaced after it: {later != first}")

        print("4. CONN_HEALTH_CHECKS: a connection that died while idle is never handed out")
        async with connections.scope():
            conn = await connections.connection()
            dead = id(conn)
        await conn.close()  # simulate a dead connection sitting in the idle set
        async with connections.scope():
            conn = await connections.connection()
            rows = await conn.execute_fetchall("SELECT count(*) FROM hits")
            print(f"   got a new connection: {id(conn) != dead}; rows in hits: {rows[0][0]}")

        print("5. a transaction left open is rolled back at scope exit")
        async with connections.scope():
            conn = await connections.connection()
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO hits VALUES (99)")
            print(f"   in a transaction at exit: {conn.in_transaction}")
        async with connections.scope():
            conn = await connections.connection()
            rows = await conn.execute_fetchall("SELECT count(*) FROM hits WHERE n = 99")
            print(f"   rows with n=99 afterwards: {rows[0][0]}; rollbacks: {connections.stats().rollbacks}")

        s = connections.stats()
        print(f"stats(default): open={s.open} idle={s.idle} in_use={s.in_use} opened={s.opened} closed={s.closed}")
    print("closed: every connection is closed:", all(connections.stats(a).open == 0 for a in connections.aliases))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
