"""What is asyncmy's own: the contract and fault tests run on both drivers (``mysql_drivers``);
these pin where asyncmy differs from aiomysql and what aconn does about it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from helpers import eventually, fetch, in_scope
from mariadb import MariaDB

import aconn

pytestmark = pytest.mark.mysql
#: the throwaway server, its settings naming asyncmy
on_asyncmy = pytest.mark.parametrize("db", ["asyncmy"], indirect=True)


@on_asyncmy
async def test_statement_cache_survives_a_reset(db: MariaDB, make: Any) -> None:
    """asyncmy's stmt_cache_size keeps server-side prepared statements by id; COM_RESET_CONNECTION
    drops them at the server, so the backend forgets the ids too (else: unknown statement handler)."""
    connections = make({"default": db.settings(CONN_MAX_AGE=60, RESET_ON_RELEASE=True, OPTIONS={"stmt_cache_size": 8})})
    for n in range(3):
        async with connections.scope():
            conn = await connections.connection()
            async with conn.cursor() as cur:
                await cur.execute("SELECT %s + 1", (n,))
                assert (await cur.fetchone())[0] == n + 1
            assert len(conn._stmt_cache) == 1  # the binary protocol was used: one statement prepared
    assert connections.stats().opened == 1


@on_asyncmy
async def test_second_task_on_one_connection_is_refused_not_hung(db: MariaDB, make: Any) -> None:
    """asyncmy keeps one read waiter per connection: a second task's command would strand the
    first task's read for ever. aconn refuses the second command, and the scope's error discards
    the connection; the first task still gets its own reply."""
    connections = make({"default": db.settings(CONN_MAX_AGE=60)})
    async with connections.scope():
        conn = await connections.connection()
        first = asyncio.ensure_future(fetch(conn, "SELECT SLEEP(0.2), 1"))
        await eventually(lambda: conn._proto._read_waiter is not None)  # the first task waits for its reply
        with pytest.raises(RuntimeError, match="another coroutine"):
            await fetch(conn, "SELECT 2")
        assert await asyncio.wait_for(first, 5) == [(0, 1)]


@on_asyncmy
async def test_url_and_engine_name_asyncmy(db: MariaDB, make: Any) -> None:
    connections = make({"default": db.url("conn_max_age=60"), "engine": db.settings()})
    for alias in ("default", "engine"):
        assert connections.settings(alias).engine == "asyncmy"
        assert await in_scope(connections, "SELECT 41 + 1", alias) == 42
    assert type(connections.pool("default").backend).__name__ == "AsyncmyBackend"


def test_unknown_option_names_the_driver() -> None:
    with pytest.raises(aconn.ConfigError, match=r"not an asyncmy.connect\(\) option") as info:
        aconn.Connections({"default": {"ENGINE": "asyncmy", "NAME": "x", "OPTIONS": {"pool_recycle": 3600}}})
    assert info.value.key == "OPTIONS.pool_recycle"
    with pytest.raises(aconn.ConfigError, match="'NAME'"):
        aconn.Connections({"default": {"ENGINE": "asyncmy", "NAME": "x", "OPTIONS": {"db": "y"}}})


@on_asyncmy
async def test_connection_typed_as_asyncmy_connection(db: MariaDB, make: Any) -> None:
    """asyncmy ships type information: ``connection(alias, asyncmy.Connection)`` types and checks it."""
    import asyncmy

    connections = make({"default": db.settings()})
    async with connections.scope():
        conn = await connections.connection("default", asyncmy.Connection)
        assert isinstance(conn, asyncmy.Connection)
        with pytest.raises(TypeError, match="aiomysql"):
            import aiomysql

            await connections.connection("default", aiomysql.Connection)


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "asyncmy", None)  # "import asyncmy" raises ImportError
    monkeypatch.delitem(sys.modules, "aconn.backends.asyncmy", raising=False)
    with pytest.raises(aconn.ConfigError, match=r"needs the asyncmy driver.*pip install 'aconn\[asyncmy\]'") as info:
        aconn.Connections({"default": "mysql+asyncmy://app:s3cret-pw@127.0.0.1/shop"})
    assert info.value.key == "ENGINE"
    assert "s3cret" not in str(info.value)
