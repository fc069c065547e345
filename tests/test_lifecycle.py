"""Lifecycle and first-hour edges: a failed start leaks nothing, a handler opens again in any loop,
errors say where, settings mistakes are explained, the connection can be typed.

| item | tests |
| --- | --- |
| open() failing on one alias closes the others | test_failed_open_leaves_no_session (here), test_pool::test_open_failure_closes_what_it_opened |
| open() after aclose(), in the same or another loop; lazy use across loops | test_module_level_handler_across_asyncio_runs (here), test_pool::test_open_handler_refuses_another_live_loop_then_reopens_there, test_pool::test_lazy_handler_moves_to_the_next_loop |
| a failed lifespan startup raises | test_asgi::test_test_client_raises_the_startup_error, test_asgi::test_lifespan_manager_raises_the_startup_error |
| a loop ending with connections open is said out loud | test_loop_end_closes_and_warns (here) |
| connect errors name the alias and host:port | test_connect_errors_say_where (here) |
| unsupported engines explained | test_unsupported_engines (here) |
| driver options and +driver spellings in URLs | test_driver_options_in_urls (here) |
| the quickstart runs anywhere; a SQLite file that cannot open names alias and path | test_examples::test_readme_quickstart_runs_in_an_empty_folder, test_unopenable_sqlite_file_says_where (here) |
| ATOMIC_REQUESTS=True: served since, see test_transactions.py | test_atomic_requests_settings |
| no false wait_timeout alarm | test_check::test_wait_timeout_5_warns_only_where_it_can_fail |
| ScopeError for a scope entered by another task | test_scope_entered_by_another_task (here) |
| a typed connection | test_typed_connection_for_mypy, test_alias_declared_once_is_typed_for_mypy (here) |
| MAX_WAITING, 503 + Retry-After | test_pool::test_max_waiting_refuses_at_once, test_asgi::test_no_connection_free_is_a_503_with_retry_after |
"""

from __future__ import annotations

import asyncio
import contextvars
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import aiosqlite
import pymysql
import pytest
from helpers import assert_no_password, in_scope
from mariadb import APP_PASSWORD, MariaDB, free_port

import aconn
from aconn.settings import parse_settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.mysql
@pytest.mark.mysql_drivers
async def test_failed_open_leaves_no_session(db: MariaDB) -> None:
    connections = aconn.Connections(
        {"default": db.settings(CONN_MAX_AGE=60), "other": db.settings(PASSWORD=APP_PASSWORD + "-typo")}
    )
    with pytest.raises(db.errors.OperationalError, match="Access denied") as info:
        await connections.open()
    assert db.wait_app_threads(lambda ids: not ids) == []  # default's session was closed too
    notes = "\n".join(info.value.__notes__)
    engine = connections.settings("other").engine
    assert f"aconn alias 'other': connecting to {engine} app@127.0.0.1:{db.port}/aconn_test" in notes
    assert_no_password(str(info.value), notes)
    await connections.aclose()


@pytest.mark.mysql
@pytest.mark.mysql_drivers
def test_module_level_handler_across_asyncio_runs(db: MariaDB) -> None:
    """One module-level handler, a loop per test (asyncio.run twice): each run works and leaves nothing."""
    connections = aconn.Connections({"default": db.settings(CONN_MAX_AGE=60)})

    async def run() -> int:
        async with connections:
            return int(await in_scope(connections, "SELECT CONNECTION_ID()"))

    first = asyncio.run(run())
    assert db.wait_app_threads(lambda ids: not ids) == []
    second = asyncio.run(run())
    assert second != first
    assert db.wait_app_threads(lambda ids: not ids) == []

    async def lazily(handler: aconn.Connections) -> int:
        return int(await in_scope(handler, "SELECT 1"))

    assert asyncio.run(lazily(connections)) == 1  # closed in another loop: a new loop, a new life
    lazy = aconn.Connections({"default": db.settings(CONN_MAX_AGE=60)})  # never opened at all
    assert asyncio.run(lazily(lazy)) == 1
    assert asyncio.run(lazily(lazy)) == 1  # the end of each loop closed what it had opened
    assert db.wait_app_threads(lambda ids: not ids) == []


async def test_loop_end_closes_and_warns(tmp_path: Path) -> None:
    script = tmp_path / "forgot.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio, logging
            import aconn
            logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
            connections = aconn.Connections({{"default": "sqlite:///{tmp_path / "f.db"}?conn_max_age=60"}})

            async def main():
                await connections.open()  # and never aclose()
                async with connections.scope():
                    await connections.connection()

            asyncio.run(main())
            print("stats after the loop:", connections.stats().open)
            """
        )
    )
    result = subprocess.run([sys.executable, "-W", "error", str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "WARNING aconn: the event loop is ending with 1 connection(s) of this handler open" in result.stderr
    assert "in tests, a fixture that opens and closes it" in result.stderr  # how to silence it properly
    assert "Event loop is closed" not in result.stderr
    assert "stats after the loop: 0" in result.stdout


async def test_connect_errors_say_where(make: Any) -> None:
    port = free_port()
    connections = make({"default": {"ENGINE": "mysql", "HOST": "127.0.0.1", "PORT": port, "USER": "u",
                                    "PASSWORD": APP_PASSWORD, "CONNECT_TIMEOUT": 2}})  # fmt: skip
    with pytest.raises(pymysql.err.OperationalError) as info:  # still the driver's type: catchable as before
        await in_scope(connections, "SELECT 1")
    assert info.value.args[0] == 2003
    notes = "\n".join(info.value.__notes__)
    assert f"aconn alias 'default': connecting to mysql u@127.0.0.1:{port}/" in notes
    assert_no_password(str(info.value), notes)


@pytest.mark.parametrize(
    ("engine", "fragment"),
    [
        ("django.db.backends.oracle", "unsupported engine 'django.db.backends.oracle'"),
        ("django.db.backends.mysq", "did you mean 'django.db.backends.mysql'?"),
        ("myapp.backends.Nope", "importing it failed"),
        ("mssql+aiomysql", "(did you mean 'aiomysql'?)"),  # a +driver spelling suggests the driver
        ("asyncpgg", "(did you mean 'asyncpg'?)"),
        ("oracle", "unsupported engine 'oracle'; aconn serves"),  # the supported ones, not a random neighbour
    ],
)
def test_unsupported_engines(engine: str, fragment: str) -> None:
    with pytest.raises(aconn.ConfigError) as info:
        aconn.Connections({"default": {"ENGINE": engine, "NAME": "x"}})
    assert info.value.key == "ENGINE" and fragment in str(info.value)
    assert "django.db.backends.sqlite3" in str(info.value)  # the supported ones are listed


def test_driver_options_in_urls() -> None:
    settings = parse_settings(
        "default", "mysql+pymysql://u:p@h/db?charset=utf8mb4&unix_socket=/run/mysqld/mysqld.sock&conn_max_age=60"
    )
    assert settings.engine == "mysql" and settings.conn_max_age == 60
    assert dict(settings.options) == {"charset": "utf8mb4", "unix_socket": "/run/mysqld/mysqld.sock"}
    tls = parse_settings("default", "mysql+aiomysql://u:p@h/db?ssl_ca=/etc/ca.pem&ssl_check_hostname=false")
    assert dict(tls.options) == {"ssl": {"ca": "/etc/ca.pem", "check_hostname": False}}
    with pytest.raises(aconn.ConfigError) as info:  # checked exactly as OPTIONS is
        aconn.Connections({"default": "mysql://u:p@h/db?charsett=utf8"})
    assert info.value.key == "OPTIONS.charsett"
    assert parse_settings("c", "sqlite+pysqlite:///x.db?timeout=2.5").options["timeout"] == 2.5


async def test_unopenable_sqlite_file_says_where(make: Any, tmp_path: Path) -> None:
    connections = make({"cache": f"sqlite:///{tmp_path / 'missing-dir' / 'cache.db'}"})
    with pytest.raises(Exception, match="unable to open database file") as info:
        await in_scope(connections, "SELECT 1", alias="cache")
    assert f"aconn alias 'cache': connecting to sqlite {tmp_path / 'missing-dir' / 'cache.db'}" in "\n".join(
        info.value.__notes__
    )


async def test_scope_entered_by_another_task(make: Any, tmp_path: Path) -> None:
    connections = make({"default": f"sqlite:///{tmp_path / 's.db'}"})
    entered = asyncio.Event()
    done = asyncio.Event()
    contexts: list[contextvars.Context] = []

    async def fixture_like() -> None:  # enters the scope, as a pytest fixture's task would
        async with connections.scope():
            contexts.append(contextvars.copy_context())
            entered.set()
            await done.wait()

    task = asyncio.create_task(fixture_like())
    await entered.wait()
    # the test runs in a copy of the fixture's context, as pytest-asyncio does, in a task of its own
    ctx = contexts[0]
    with pytest.raises(aconn.ScopeError, match="entered by another task that is not its parent"):
        await asyncio.get_running_loop().create_task(connections.connection(), context=ctx)
    done.set()
    await task


def test_typed_connection_for_mypy(tmp_path: Path) -> None:
    """``connection(alias, aiosqlite.Connection)`` is typed: mypy --strict catches a misspelt method."""
    code = textwrap.dedent(
        """
        import aiosqlite
        import aconn

        connections = aconn.Connections({"default": "sqlite:///x.db"})

        async def job() -> None:
            async with connections.scope():
                conn = await connections.connection("default", aiosqlite.Connection)
                await conn.execute("SELECT 1")
                await conn.executee("SELECT 1")
        """
    )
    (tmp_path / "typed.py").write_text(code)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(tmp_path / "typed.py")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,  # aconn as installed (editable or built)
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and '"Connection" has no attribute "executee"' in errors[0], result.stdout


def test_alias_declared_once_is_typed_for_mypy(tmp_path: Path) -> None:
    """``connections.alias(name, cls)``: the class named once, every call typed (mypy --strict)."""
    code = textwrap.dedent(
        """
        import aiosqlite
        import asyncmy
        import aconn

        connections = aconn.Connections({"default": "sqlite:///x.db", "my": "mysql+asyncmy://u@h/d"})
        db = connections.alias("default", aiosqlite.Connection)
        my = connections.alias("my", asyncmy.Connection)

        async def job() -> int:
            async with connections.scope():
                conn = await db.connection()
                await conn.execute("SELECT 1")
                await conn.executee("SELECT 1")
            async with db.acquire() as conn2:
                await conn2.commit()
            async with my.atomic() as conn3:
                await conn3.ping()
                await conn3.pingg()
            await db.on_commit(lambda: None)
            return 0
        """
    )
    (tmp_path / "typed_alias.py").write_text(code)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(tmp_path / "typed_alias.py")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,  # aconn as installed (editable or built)
    )  # fmt: skip
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 2, result.stdout + result.stderr
    assert '"Connection" has no attribute "executee"' in errors[0]
    assert '"Connection" has no attribute "pingg"' in errors[1]


async def test_alias_checks_what_it_declares(make: Any, tmp_path: Path) -> None:
    connections = make({"default": f"sqlite:///{tmp_path / 't.db'}?conn_max_age=60"})
    db = connections.alias("default", aiosqlite.Connection)
    assert repr(db) == "<aconn.Alias 'default' of aiosqlite.core.Connection>" and db.name == "default"
    async with db.acquire() as conn:
        assert isinstance(conn, aiosqlite.Connection)
        assert await db.connection() is conn  # the scope's connection
    async with db.atomic() as conn:
        await conn.execute("CREATE TABLE t (n INTEGER)")
        ran: list[int] = []
        await db.on_commit(lambda: ran.append(1))
        assert ran == []
    assert ran == [1]
    wrong = connections.alias("default", pymysql.connections.Connection)
    async with connections.scope():
        with pytest.raises(TypeError, match=r"hands out aiosqlite\.core\.Connection, not"):
            await wrong.connection()
    with pytest.raises(aconn.ConfigError, match="did you mean 'default'"):
        connections.alias("defualt", aiosqlite.Connection)
    with pytest.raises(TypeError, match="takes the connection class"):
        connections.alias("default", "aiosqlite.Connection")  # type: ignore[arg-type]
    assert connections.stats().in_use == 0


async def test_typed_connection_checked_at_run_time(make: Any, tmp_path: Path) -> None:
    connections = make({"default": f"sqlite:///{tmp_path / 't.db'}"})
    async with connections.scope():
        conn = await connections.connection("default", aiosqlite.Connection)
        assert isinstance(conn, aiosqlite.Connection)
        with pytest.raises(TypeError, match=r"hands out aiosqlite\.core\.Connection, not"):
            await connections.connection("default", pymysql.connections.Connection)


def test_pytest_module_with_a_loop_per_test(tmp_path: Path) -> None:
    """A user's pytest module: one module-level handler, every test in its own event loop."""
    (tmp_path / "test_users_app.py").write_text(
        textwrap.dedent(
            f"""
            import pytest
            import aconn

            connections = aconn.Connections({{"default": "sqlite:///{tmp_path / "app.db"}?conn_max_age=60"}})

            @pytest.fixture
            async def db():
                async with connections:
                    yield connections

            @pytest.mark.parametrize("n", range(3))
            async def test_opened_per_test(db, n):
                async with db.scope():
                    conn = await db.connection()
                    assert (await conn.execute_fetchall(f"SELECT {{n}}"))[0][0] == n

            @pytest.mark.parametrize("n", range(3))
            async def test_lazy(n):
                async with connections.scope():
                    conn = await connections.connection()
                    assert (await conn.execute_fetchall("SELECT 1"))[0][0] == 1
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error::ResourceWarning",
         "-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function", "test_users_app.py"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 passed" in result.stdout
