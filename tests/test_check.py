"""``python -m aconn check`` run as a subprocess, and the once-per-alias WARNINGs: the rules behind both."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import age_idle, assert_no_password, in_scope
from mariadb import APP_PASSWORD, MariaDB, free_port

ROOT = Path(__file__).resolve().parent.parent


def check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aconn", "check", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
    )  # fmt: skip


@pytest.fixture
def short_wait_timeout(db: MariaDB) -> Iterator[MariaDB]:
    old = db.sql("SELECT @@GLOBAL.wait_timeout")[0][0]
    db.sql("SET GLOBAL wait_timeout=5")
    try:
        yield db
    finally:
        db.sql(f"SET GLOBAL wait_timeout={int(old)}")


@pytest.mark.mysql
async def test_wait_timeout_5_warns_only_where_it_can_fail(
    short_wait_timeout: MariaDB, make: Any, aconn_logs: pytest.LogCaptureFixture
) -> None:
    db = short_wait_timeout
    connections = make({"default": db.settings(CONN_MAX_AGE=None, MAX_CONNS=2)})
    first = await in_scope(connections, "SELECT CONNECTION_ID()")
    pool = connections.pool("default")
    assert pool.limits is not None and pool.limits.idle_timeout == 5
    assert pool._idle[-1].idle_limit < 5
    age_idle(connections, 6)  # idle for 6 s (shifted, rather than slept)
    second = await in_scope(connections, "SELECT CONNECTION_ID()")
    assert second != first and connections.stats().closed_idle == 1
    # no age limit is fine: aconn retires idle connections before the server would drop them
    assert not [r for r in aconn_logs.records if r.levelno == logging.WARNING and "wait_timeout" in r.getMessage()]
    passing = check("--url", db.url("conn_max_age=none"))
    assert passing.returncode == 0, passing.stdout + passing.stderr
    assert "PASS IDLE_TIMEOUT" in passing.stdout and "retired after 4s" in passing.stdout

    # an IDLE_TIMEOUT at or above wait_timeout is what fails: warned once per alias, and by check
    aconn_logs.clear()
    too_long = make({"default": db.settings(IDLE_TIMEOUT=10, MAX_CONNS=2)})
    await in_scope(too_long, "SELECT 1")
    await in_scope(too_long, "SELECT 1")
    warnings = [r for r in aconn_logs.records if r.levelno == logging.WARNING and "wait_timeout=5" in r.getMessage()]
    assert len(warnings) == 1
    assert "remove IDLE_TIMEOUT (aconn then retires idle connections after 4s)" in warnings[0].getMessage()
    result = check("--url", db.url("idle_timeout=10"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL IDLE_TIMEOUT" in result.stdout and "IDLE_TIMEOUT=10 but wait_timeout=5" in result.stdout
    assert check("--url", db.url("idle_timeout=3")).returncode == 0
    assert check("--url", db.url("idle_timeout=10&health_checks=true")).returncode == 0


@pytest.mark.mysql
@pytest.mark.mysql_drivers
def test_budget_with_workers(db: MariaDB) -> None:
    failing = check("--url", db.url("max_conns=10"), "--workers", "50")
    assert failing.returncode == 1, failing.stdout
    assert "50 process(es) x MAX_CONNS=10 = 500 is above the server's max_connections=151" in failing.stdout
    assert "fix: set MAX_CONNS to at most 3" in failing.stdout
    passing = check("--url", db.url("max_conns=10"), "--workers", "4")
    assert passing.returncode == 0, passing.stdout
    assert "PASS MAX_CONNS" in passing.stdout and "reachable" in passing.stdout and "tls          off" in passing.stdout
    assert "session      kept between scopes (set RESET_ON_RELEASE True to reset it)" in passing.stdout
    reset = check("--url", db.url("max_conns=10&reset_on_release=true"))
    assert "session      reset at release (RESET_ON_RELEASE)" in reset.stdout, reset.stdout


@pytest.mark.mysql
@pytest.mark.mysql_drivers
def test_json_report(db: MariaDB) -> None:
    result = check("--url", db.url("max_conns=10"), "--json")
    assert result.returncode == 0
    report = json.loads(result.stdout)
    (alias,) = report["aliases"]
    assert alias["reachable"] is True and alias["limits"]["max_connections"] == 151
    assert alias["limits"]["wait_timeout"] > 0 and alias["connections_open"] >= 1
    assert {rule["rule"] for rule in alias["rules"]} == {"IDLE_TIMEOUT", "MAX_CONNS", "CANCEL_ON_SERVER", "POOLER"}
    assert "MariaDB" in alias["version"] and not alias["version"].startswith("5.5.5-")
    assert_no_password(result.stdout)


@pytest.mark.mysql
@pytest.mark.parametrize("as_json", [False, True])
def test_wrong_password_and_unreachable_port_exit_2(db: MariaDB, as_json: bool) -> None:
    wrong = db.url().replace(APP_PASSWORD, APP_PASSWORD + "-typo")
    unreachable = f"mysql://app:{APP_PASSWORD}@127.0.0.1:{free_port()}/x?connect_timeout=2"
    for url, reason in ((wrong, "Access denied"), (unreachable, "Can't connect")):
        result = check("--url", url, *(["--json"] if as_json else []))
        assert result.returncode == 2, result.stdout + result.stderr
        assert reason in result.stdout
        assert_no_password(result.stdout, result.stderr)
        assert APP_PASSWORD + "-typo" not in result.stdout + result.stderr
        if as_json:
            assert json.loads(result.stdout)["aliases"][0]["reachable"] is False
        else:
            assert "UNREACHABLE" in result.stdout


def test_invalid_settings_exit_2(tmp_path: Path) -> None:
    result = check("--url", f"mysql://u:{APP_PASSWORD}@h/db?max_conn=3")
    assert result.returncode == 2
    assert "max_conn" in result.stderr and "did you mean 'max_conns'" in result.stderr
    assert_no_password(result.stdout, result.stderr)
    assert check().returncode == 2  # nothing to check


def test_module_attribute_and_sqlite_report(tmp_path: Path) -> None:
    (tmp_path / "mysettings.py").write_text(
        "DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': 'app.db'},\n"
        "             'mem': 'sqlite:///:memory:'}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "aconn", "check", "mysettings:DATABASES"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"file         {tmp_path / 'app.db'} (journal_mode=delete, writable)" in result.stdout
    assert "[mem]" in result.stdout and "file         :memory:" in result.stdout
