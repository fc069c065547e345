"""The test suite of examples/ported/asyncpg_app.py, as the app's authors wrote it: every test
takes a ``client`` whose requests run in one transaction rolled back at the test's end.

Run twice, with only the fixture swapped (as docs/migrating.md says): on asyncpg.Pool with the
app's original fixture (test_ported_asyncpg_on_asyncpg_pool.py) and on aconn with ``aconn_db``
(test_ported_asyncpg_on_aconn.py).
"""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from ported.asyncpg_app import SCHEMA, aconn_setup, asyncpg_pool_setup, create_app

pytestmark = pytest.mark.postgresql

__all__ = (
    "fresh_schema",
    "test_each_test_starts_empty",
    "test_open_account_is_audited",
    "test_refused_transfer_is_rolled_back_and_audited",
    "test_session_setting_does_not_reach_the_next_request",
    "test_transfer_moves_money",
)


async def fresh_schema(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS accounts, audit")
        for statement in SCHEMA:
            await conn.execute(statement)
    finally:
        await conn.close()


async def test_open_account_is_audited(client: httpx.AsyncClient) -> None:
    response = await client.post("/accounts", json={"owner": "ada", "balance": 100})
    assert response.status_code == 201
    account = response.json()["id"]
    assert (await client.get(f"/accounts/{account}")).json() == {"owner": "ada", "balance": 100}
    assert (await client.get("/audit")).json() == [f"open {account}"]


async def test_transfer_moves_money(client: httpx.AsyncClient) -> None:
    a = (await client.post("/accounts", json={"owner": "a", "balance": 100})).json()["id"]
    b = (await client.post("/accounts", json={"owner": "b", "balance": 0})).json()["id"]
    assert (await client.post("/transfers", json={"source": a, "target": b, "amount": 30})).status_code == 200
    assert (await client.get(f"/accounts/{a}")).json()["balance"] == 70
    assert (await client.get(f"/accounts/{b}")).json()["balance"] == 30
    assert (await client.get("/audit")).json()[-1] == f"transfer 30 {a}->{b}"


async def test_refused_transfer_is_rolled_back_and_audited(client: httpx.AsyncClient) -> None:
    a = (await client.post("/accounts", json={"owner": "a", "balance": 10})).json()["id"]
    b = (await client.post("/accounts", json={"owner": "b", "balance": 0})).json()["id"]
    response = await client.post("/transfers", json={"source": a, "target": b, "amount": 30})
    assert response.status_code == 409
    assert (await client.get(f"/accounts/{a}")).json()["balance"] == 10  # the debit was rolled back
    assert (await client.get("/audit")).json() == [f"open {a}", f"open {b}", f"refused 30 {a}->{b}"]


@pytest.mark.parametrize("run", [1, 2])
async def test_each_test_starts_empty(client: httpx.AsyncClient, run: int) -> None:
    assert (await client.get("/audit")).json() == []  # the previous test's writes were rolled back
    await client.post("/accounts", json={"owner": f"run{run}", "balance": 1})


async def test_session_setting_does_not_reach_the_next_request(setup: str, pg: Any) -> None:
    """No test transaction here: the app as deployed, one connection so that both requests share it."""
    dsn = pg.url()
    await fresh_schema(dsn)
    if setup == "asyncpg.Pool":
        acquire, lifespan = asyncpg_pool_setup(dsn)
    else:
        acquire, lifespan, _ = aconn_setup(dsn + "?max_conns=1&conn_max_age=60")
    app = create_app(acquire, lifespan)
    async with LifespanManager(app), httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        assert (await c.get("/report")).json() == {"application_name": "report"}
        assert (await c.get("/session")).json() != {"application_name": "report"}  # reset at release
