"""The pytest plugin, as a user meets it: a throwaway project run by pytest in a subprocess.

The project (written here into a temporary folder) has a Starlette app with
``ConnectionsMiddleware`` and ``connections.atomic()``, a conftest overriding
``aconn_connections``, and two tests that each insert through the app and count
the rows. Against SQLite and the real MariaDB, with function- and
session-scoped event loops, a lazy handler and one opened per test, in both
orders: both tests pass, and the table is empty afterwards.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mariadb import MariaDB

APP = '''
import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import aconn
from aconn.asgi import ConnectionsMiddleware

URL = os.environ["APP_DATABASE_URL"]
connections = aconn.Connections({"default": URL})


async def run(sql: str) -> list:
    conn = await connections.connection()
    if URL.startswith("sqlite"):
        return [tuple(r) for r in await conn.execute_fetchall(sql)]
    async with conn.cursor() as cur:
        await cur.execute(sql)
        return list(await cur.fetchall())


async def add(request: Request) -> PlainTextResponse:
    async with connections.atomic():
        await run("INSERT INTO plugin_items (name) VALUES ('kept')")
    try:
        async with connections.atomic():  # the app's own rollback still means something in a test
            await run("INSERT INTO plugin_items (name) VALUES ('undone')")
            raise ValueError
    except ValueError:
        pass
    return PlainTextResponse("added", status_code=201)


async def count(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str((await run("SELECT count(*) FROM plugin_items"))[0][0]))


app = Starlette(
    routes=[Route("/items", add, methods=["POST"]), Route("/count", count)],
    middleware=[Middleware(ConnectionsMiddleware, connections=connections)],
)
'''

CONFTEST = '''
import os

import httpx
import pytest
import pytest_asyncio

import app as app_module

if os.environ["APP_HANDLER"] == "lazy":

    @pytest.fixture
    def aconn_connections():
        return app_module.connections

else:  # the module-level handler opened and closed around each test

    @pytest_asyncio.fixture
    async def aconn_connections():
        async with app_module.connections:
            yield app_module.connections


@pytest_asyncio.fixture
async def client(aconn_db):
    transport = httpx.ASGITransport(app=app_module.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        yield client
'''

TESTS = '''
import app as app_module


async def test_one(client):
    assert (await client.post("/items")).status_code == 201
    assert (await client.get("/count")).text == "1"


async def test_two(client, aconn_db):
    assert (await client.post("/items")).status_code == 201
    async with aconn_db.scope():  # the test sees what the app wrote
        assert await app_module.run("SELECT count(*) FROM plugin_items") == [(1,)]
    async with aconn_db.atomic():  # and the app sees what the test writes
        await app_module.run("INSERT INTO plugin_items (name) VALUES ('by the test')")
    assert (await client.get("/count")).text == "2"
'''

INI = """[pytest]
asyncio_mode = auto
timeout = 60
"""

RUNS = [  # (loop scope, order, handler)
    ("function", ["test_one", "test_two"], "lazy"),
    ("function", ["test_two", "test_one"], "open"),
    ("session", ["test_one", "test_two"], "open"),
    ("session", ["test_two", "test_one"], "lazy"),
]


def write_project(folder: Path) -> None:
    for name, text in (("app.py", APP), ("conftest.py", CONFTEST), ("test_app.py", TESTS), ("pytest.ini", INI)):
        (folder / name).write_text(text)


def run_project(folder: Path, url: str, loop_scope: str, order: list[str], handler: str) -> str:
    env = {**os.environ, "APP_DATABASE_URL": url, "APP_HANDLER": handler}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
         "-o", f"asyncio_default_fixture_loop_scope={loop_scope}",
         "-o", f"asyncio_default_test_loop_scope={loop_scope}",
         "-o", "log_cli=true", "-o", "log_cli_level=WARNING",
         *[f"test_app.py::{name}" for name in order]],
        cwd=folder, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout, result.stdout
    if handler == "open":  # docs/testing.md's recipe (opened and closed by the fixture) is quiet
        assert "WARNING" not in result.stdout, result.stdout
    return result.stdout


@pytest.mark.parametrize(("loop_scope", "order", "handler"), RUNS)
def test_project_on_sqlite(tmp_path: Path, loop_scope: str, order: list[str], handler: str) -> None:
    write_project(tmp_path)
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as setup:
        setup.execute("CREATE TABLE plugin_items (id INTEGER PRIMARY KEY, name TEXT)")
    run_project(tmp_path, f"sqlite:///{db}", loop_scope, order, handler)
    with sqlite3.connect(db) as check:
        assert check.execute("SELECT count(*) FROM plugin_items").fetchone() == (0,)


@pytest.mark.mysql
@pytest.mark.parametrize(("loop_scope", "order", "handler"), RUNS)
def test_project_on_mariadb(db: MariaDB, tmp_path: Path, loop_scope: str, order: list[str], handler: str) -> None:
    write_project(tmp_path)
    db.sql(
        "DROP TABLE IF EXISTS aconn_test.plugin_items",
        "CREATE TABLE aconn_test.plugin_items (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(40)) ENGINE=InnoDB",
    )
    run_project(tmp_path, db.url("conn_max_age=60"), loop_scope, order, handler)
    assert db.sql("SELECT count(*) FROM aconn_test.plugin_items") == [(0,)]
    assert db.open_transactions() == 0


def test_default_aconn_connections_says_to_override_it(tmp_path: Path) -> None:
    (tmp_path / "test_x.py").write_text("async def test_x(aconn_db):\n    pass\n")
    (tmp_path / "pytest.ini").write_text(INI)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_x.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "define a fixture named `aconn_connections` in your conftest.py" in result.stdout


def test_plugin_is_registered_by_entry_point() -> None:
    from importlib.metadata import entry_points

    found: Any = [e for e in entry_points(group="pytest11") if e.name == "aconn"]
    assert [e.value for e in found] == ["aconn.testing"]
