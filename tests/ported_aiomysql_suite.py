"""The test suite of examples/ported/aiomysql_app.py, as the app's authors wrote it: every test
takes a ``client`` and starts from empty tables.

Run twice, with only the fixture swapped (docs/migrating.md): on aiomysql.Pool with the app's
original fixture, which empties the tables after each test (a transaction around the test
would be committed by the app's own ``begin()``), in test_ported_aiomysql_on_aiomysql_pool.py;
and on aconn with ``aconn_db``, whose transaction the app's ``begin()`` nests in, in
test_ported_aiomysql_on_aconn.py.
"""

from __future__ import annotations

import warnings
from typing import Any

import aiomysql
import httpx
import pytest
from ported.aiomysql_app import SCHEMA

pytestmark = pytest.mark.mysql

__all__ = (
    "connect_kwargs",
    "fresh_schema",
    "test_out_of_stock_is_rolled_back",
    "test_receive_and_ship",
    "test_tests_start_empty",
)


def connect_kwargs(server: Any) -> dict[str, Any]:
    settings = server.settings()
    return {
        "host": settings["HOST"],
        "port": settings["PORT"],
        "user": settings["USER"],
        "password": settings["PASSWORD"],
        "db": settings["NAME"],
    }


async def fresh_schema(server: Any) -> None:
    conn = await aiomysql.connect(autocommit=True, **connect_kwargs(server))
    try:
        async with conn.cursor() as cur:
            with warnings.catch_warnings():  # MariaDB warns of a table that is not there
                warnings.simplefilter("ignore")
                await cur.execute("DROP TABLE IF EXISTS stock, moves")
            for statement in SCHEMA:
                await cur.execute(statement)
    finally:
        conn.close()


async def test_receive_and_ship(client: httpx.AsyncClient) -> None:
    assert (await client.post("/receive", json={"sku": "bolt", "quantity": 10})).status_code == 201
    assert (await client.post("/ship", json={"sku": "bolt", "quantity": 4})).status_code == 200
    assert (await client.get("/stock")).json() == {"stock": {"bolt": 6}, "moves": ["in 10 bolt", "out 4 bolt"]}


async def test_out_of_stock_is_rolled_back(client: httpx.AsyncClient) -> None:
    await client.post("/receive", json={"sku": "nut", "quantity": 2})
    assert (await client.post("/ship", json={"sku": "nut", "quantity": 5})).status_code == 409
    assert (await client.get("/stock")).json() == {"stock": {"nut": 2}, "moves": ["in 2 nut"]}


@pytest.mark.parametrize("run", [1, 2])
async def test_tests_start_empty(client: httpx.AsyncClient, run: int) -> None:
    assert (await client.get("/stock")).json() == {"stock": {}, "moves": []}
    await client.post("/receive", json={"sku": f"run{run}", "quantity": 1})
