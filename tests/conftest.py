"""Shared fixtures: the throwaway MariaDB (one per test session) and helpers."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.append(str(Path(__file__).parent.parent / "examples"))  # the ported apps: `import ported.asyncpg_app`

from galera import find_galera
from mariadb import DRIVERS, MariaDB, find_binary
from pgbouncer import PgBouncer, find_pgbouncer
from postgres import PostgreSQL, find_postgres

import aconn


@functools.cache
def _compiled_modules() -> tuple[str, ...]:
    """The modules the opt-in compiled build compiles: pyproject.toml's mypyc hook names them."""
    import tomllib

    with open(Path(__file__).parent.parent / "pyproject.toml", "rb") as file:
        hook = tomllib.load(file)["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["mypyc"]
    return tuple(path.strip("/").removesuffix(".py").replace("/", ".") for path in hook["include"])


@functools.cache
def _compiled_now() -> list[str]:
    """Those of them that this run imports compiled (read once: the session start checks it, the header shows it)."""
    import importlib

    return [name for name in _compiled_modules() if not str(importlib.import_module(name).__file__).endswith(".py")]


def pytest_sessionstart(session: pytest.Session) -> None:
    """nox says which build a run is for (``ACONN_COMPILED``: "1" in tests_compiled, "0" in tests):
    a run on the other one stops here, whatever the verbosity."""
    compiled, wanted = _compiled_now(), os.environ.get("ACONN_COMPILED")
    if wanted == "1" and len(compiled) != len(_compiled_modules()):
        raise pytest.UsageError(
            f"ACONN_COMPILED=1 (nox -s tests_compiled) but aconn from {Path(aconn.__file__).parent} "
            f"is not the compiled build: compiled {compiled or 'none'} of {list(_compiled_modules())}"
        )
    if wanted == "0" and compiled:
        raise pytest.UsageError(
            f"ACONN_COMPILED=0 (nox -s tests) but aconn from {Path(aconn.__file__).parent} has compiled "
            f"modules {compiled}, which would run instead of their .py files: remove them (git clean -fX aconn)"
        )


def pytest_report_header(config: pytest.Config) -> str:
    compiled = _compiled_now()
    return f"aconn {aconn.__version__} from {Path(aconn.__file__).parent}: " + (
        f"compiled with mypyc ({', '.join(compiled)})" if compiled else "pure Python"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    servers = (
        ("mysql", find_binary("mariadbd", "mysqld"), "MariaDB", "mariadb-server"),
        ("postgresql", find_postgres(), "PostgreSQL", "postgresql"),
        ("pgbouncer", find_pgbouncer(), "PgBouncer", "pgbouncer"),
        ("galera", find_galera(), "Galera (galera-4, rsync)", "galera-4 rsync"),
    )
    for marker, found, name, package in servers:
        if found:
            continue
        if os.environ.get("CI"):
            raise pytest.UsageError(f"CI=true but {name} server binaries are missing: .ci/run installs them")
        skip = pytest.mark.skip(reason=f"{name} server not installed (apt-get install -y {package})")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``mysql_drivers`` that use ``db`` run once per MySQL driver (aiomysql, asyncmy)."""
    if "db" in metafunc.fixturenames and metafunc.definition.get_closest_marker("mysql_drivers"):
        metafunc.parametrize("db", list(DRIVERS), indirect=True)


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    server = MariaDB().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def db(mariadb: MariaDB, request: pytest.FixtureRequest) -> Iterator[MariaDB]:
    """The session's server, with no application session left over from the previous test; its
    settings name the test's driver (aiomysql unless the test is marked ``mysql_drivers``)."""
    mariadb.driver = getattr(request, "param", "aiomysql")
    if mariadb.proc is None:
        mariadb.start()
    if mariadb.frozen:
        mariadb.thaw()
    mariadb.kill_app_sessions()
    try:
        yield mariadb
    finally:
        mariadb.driver = "aiomysql"
    if mariadb.frozen:
        mariadb.thaw()
    if mariadb.proc is None:
        mariadb.start()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgreSQL]:
    server = PostgreSQL().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg(postgres: PostgreSQL) -> Iterator[PostgreSQL]:
    """The session's PostgreSQL, with no application session left over from the previous test."""
    if postgres.proc is None:
        postgres.start()
    if postgres.frozen:
        postgres.thaw()
    postgres.kill_app_sessions()
    yield postgres
    if postgres.frozen:
        postgres.thaw()
    if postgres.proc is None:
        postgres.start()


@pytest.fixture(scope="session")
def pgbouncer_server(postgres: PostgreSQL) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(postgres).start()
    try:
        yield bouncer
    finally:
        bouncer.close()


@pytest.fixture
def bouncer(pg: PostgreSQL, pgbouncer_server: PgBouncer) -> Iterator[PgBouncer]:
    """PgBouncer (transaction mode) in front of the session's PostgreSQL, running and resumed."""
    if pgbouncer_server.proc is None:
        pgbouncer_server.start()
    yield pgbouncer_server
    if pgbouncer_server.proc is None:
        pgbouncer_server.start()


@pytest.fixture(scope="session")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MariaDB, dict[str, str]]]:
    """A second throwaway server, with TLS: (server, {"ca", "cert", "key"} file paths)."""
    from faults import make_certificates

    certs = make_certificates(tmp_path_factory.mktemp("certs"))
    server = MariaDB(extra_args=[f"--ssl-ca={certs['ca']}", f"--ssl-cert={certs['cert']}", f"--ssl-key={certs['key']}"])
    server.start()
    try:
        yield server, certs
    finally:
        server.close()


@pytest.fixture
def sqlite_path(tmp_path: Path) -> str:
    return str(tmp_path / "app.db")


@pytest.fixture
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """Build handlers that are closed at the end of the test whatever happens."""
    made: list[aconn.Connections] = []

    def factory(databases: Any) -> aconn.Connections:
        handler = aconn.Connections(databases)
        made.append(handler)
        return handler

    yield factory
    for handler in made:
        await handler.aclose()


@pytest.fixture
def aconn_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="aconn")
    return caplog


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The figures tests report beside their assertions (a peer's, measured in the same run)."""
    lines = [
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        for name, value in getattr(report, "user_properties", ())
        if name == "figures" and getattr(report, "when", "call") == "call"
    ]
    if lines:
        terminalreporter.section("figures")
        for line in lines:
            terminalreporter.write_line(line)
