"""aconn in a Django project: DATABASES as they are, the ASGI app under uvicorn, check --django, jobs.

The example project (examples/django_project) runs against the throwaway MariaDB,
with Django's MySQL backend on PyMySQL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import assert_no_password
from mariadb import APP_PASSWORD, APP_USER, DATABASE, MariaDB, free_port

import aconn
from aconn.django import databases_from_django

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "examples" / "django_project"


def project_env(db: MariaDB, max_conns: int = 4) -> dict[str, str]:
    return {
        **os.environ, "DB_NAME": DATABASE, "DB_USER": APP_USER, "DB_PASSWORD": APP_PASSWORD, "DB_HOST": "127.0.0.1",
        "DB_PORT": str(db.port), "ACONN_MAX_CONNS": str(max_conns), "PYTHONPATH": str(PROJECT),
    }  # fmt: skip


def test_databases_as_django_has_them(caplog: pytest.LogCaptureFixture) -> None:
    databases = {
        "default": {"ENGINE": "django.db.backends.postgresql", "NAME": "app", "HOST": "", "PORT": "", "TEST": {}},
        "legacy": {"ENGINE": "django.db.backends.oracle", "NAME": "xe"},
        "cache": {"ENGINE": "django.db.backends.sqlite3", "NAME": "cache.db", "TIME_ZONE": None, "OPTIONS": {}},
    }
    caplog.set_level(logging.INFO, logger="aconn")
    served = databases_from_django(databases)
    assert list(served) == ["default", "cache"]  # the Oracle alias skipped, with a note
    assert "DATABASES['legacy'] skipped" in caplog.text and "django.db.backends.oracle" in caplog.text
    assert aconn.Connections(served).aliases == ("default", "cache")
    with pytest.raises(aconn.ConfigError) as info:  # named explicitly: not skipped
        databases_from_django(databases, aliases=["default", "legacy"])
    assert info.value.alias == "legacy" and info.value.key == "ENGINE"
    with pytest.raises(aconn.ConfigError, match="not in DATABASES"):
        databases_from_django(databases, aliases=["nope"])


@pytest.mark.mysql
def test_check_reads_the_project_settings(db: MariaDB) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aconn", "check", "--django", "mysite.settings", "--workers", "40", "--json"],
        cwd=PROJECT, env=project_env(db), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    report = json.loads(result.stdout)
    assert result.returncode == 1, result.stderr  # 40 processes x MAX_CONNS=4 = 160 > max_connections=151
    alias = report["aliases"][0]
    assert alias["alias"] == "default" and alias["reachable"]
    budget = next(r for r in alias["rules"] if r["rule"] == "MAX_CONNS")
    assert not budget["ok"] and "40 process(es) x MAX_CONNS=4 = 160" in budget["message"]
    # the example has no daphne: runserver would serve it over WSGI, where aconn's scopes cannot work
    assert any("serves this project over WSGI" in w for w in report["warnings"]), report["warnings"]
    assert_no_password(result.stdout, result.stderr)


def example_commands() -> dict[str, list[str]]:
    """The commands docs/django.md gives to run the example, by program (python, uvicorn, ...)."""
    text = (ROOT / "docs" / "django.md").read_text()
    block = text.split("<!-- the example's commands")[1].split("```sh\n")[1].split("```")[0]
    commands = {}
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        commands[" ".join(words[:2]) if words[0] == "python" else words[0]] = words
    return commands


def test_the_example_needs_only_its_extra() -> None:
    """The docs install the example with `pip install -e '.[django]'`: that extra names all it imports."""
    commands = example_commands()
    assert commands["pip"] == ["pip", "install", "-e", ".[django]"]
    assert commands["cd"] == ["cd", PROJECT.relative_to(ROOT).as_posix()]
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["django"]
    assert {re.split("[<>=]", requirement)[0] for requirement in extra} == {"django", "pymysql", "uvicorn"}
    assert set(commands) == {"pip", "cd", "export", "python manage.py", "python -m", "uvicorn"}
    documented_env = {word.split("=")[0] for word in commands["export"][1:]}  # what project_env() sets
    assert documented_env == {"DB_NAME", "DB_USER", "DB_PASSWORD", "DB_HOST", "DB_PORT"}


def documented(program: str) -> list[str]:
    """That command, run by this interpreter (`python`, and `uvicorn` as `python -m uvicorn`)."""
    words = example_commands()[program]
    return [sys.executable, *words[1:]] if words[0] == "python" else [sys.executable, "-m", *words]


def run_documented(db: MariaDB, program: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        documented(program), cwd=PROJECT, env=project_env(db), capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def migrated(db: MariaDB) -> None:
    """A database the example has never seen, then `python manage.py migrate` as documented."""
    db.sql(f"DROP TABLE IF EXISTS {DATABASE}.django_items", f"DROP TABLE IF EXISTS {DATABASE}.django_migrations")
    result = run_documented(db, "python manage.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Applying mysite.0001_initial... OK" in result.stdout


@pytest.mark.mysql
def test_job_from_synchronous_code(db: MariaDB, migrated: None) -> None:
    result = run_documented(db, "python -m")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "items: 0"  # what the docs say it prints
    db.sql(f"INSERT INTO {DATABASE}.django_items (name) VALUES ('a'), ('b')")
    result = run_documented(db, "python -m")
    assert result.stdout.strip() == "items: 2"
    assert "WARNING" not in result.stderr  # closed before its loop ended


@pytest.fixture
def served(db: MariaDB, migrated: None) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """The example project under uvicorn as documented (lifespan auto), on a free port."""
    db.sql(f"INSERT INTO {DATABASE}.django_items (name) VALUES ('x')")
    port = free_port()
    proc = subprocess.Popen(
        [*documented("uvicorn"), "--port", str(port), "--log-level", "info"],
        cwd=PROJECT, env=project_env(db), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.mysql
async def test_django_project_under_uvicorn(db: MariaDB, served: tuple[str, subprocess.Popen[str]]) -> None:
    """Concurrent requests to the aconn view and the ORM view: all succeed, aconn's sessions are reused
    within MAX_CONNS, and shutdown (the lifespan) closes them before the loop ends."""
    url, proc = served
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async with asyncio.timeout(30):
            while True:
                try:
                    if (await client.get("/stats/")).status_code == 200:
                        break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
        semaphore = asyncio.Semaphore(20)

        async def get(path: str) -> Any:
            async with semaphore:
                response = await client.get(path)
                assert response.status_code == 200, response.text
                return response.json()

        answers = await asyncio.gather(*(get("/aconn/" if i % 3 else "/orm/") for i in range(150)))
        assert all(a["items"] == 1 for a in answers)
        assert {a["via"] for a in answers} == {"aconn", "orm"}
        stats = (await client.get("/stats/")).json()
    # the server sessions that served aconn's 100 requests: at most MAX_CONNS=4, reused. (Django's ORM
    # meanwhile opens a session per request thread under ASGI: the wall docs/django.md describes.)
    aconn_sessions = {a["session"] for a in answers if a["via"] == "aconn"}
    assert 1 <= len(aconn_sessions) <= 4 and stats["opened"] == len(aconn_sessions)
    assert stats["open"] >= 1 and stats["in_use"] == 0 and stats["max_conns"] == 4
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert "Application startup complete" in out and "Application shutdown complete" in out, out
    assert "aconn: the event loop is ending" not in out and "ERROR" not in out, out  # the lifespan closed it
    assert db.wait_app_threads(lambda t: not t) == []


def in_the_project(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` run by this interpreter with the example project's settings (no database needed)."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mysite.settings", "PYTHONPATH": str(PROJECT)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=60
    )


def test_asgi_application_asks_for_the_scope_middleware() -> None:
    result = in_the_project(
        "import django; django.setup(); from django.conf import settings; settings.MIDDLEWARE = []\n"
        "import aconn.django\n"
        "try:\n    aconn.django.asgi_application()\nexcept aconn.AconnError as exc:\n    print(exc)\n"
    )
    assert "add 'aconn.django.scope_middleware' to settings.MIDDLEWARE" in result.stdout, result.stderr


def test_a_view_served_over_wsgi_is_told_why_it_has_no_scope() -> None:
    """Under WSGI (Django's test Client, runserver) scope_middleware cannot open a scope: the
    ScopeError says that, not "add the middleware" (which is already there)."""
    result = in_the_project(
        "import django; django.setup()\n"
        "from django.test import Client\n"
        "try:\n    Client().get('/aconn/')\nexcept Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    assert result.stdout.startswith("ScopeError"), result.stdout + result.stderr
    assert "over WSGI" in result.stdout and "uvicorn mysite.asgi:application" in result.stdout
    assert "add aconn.asgi.ConnectionsMiddleware" not in result.stdout
