"""``python -m aconn check``: connect to every alias and check the settings against the server.

Exit status: 0 when every rule passes, 1 when one fails, 2 when an alias is
unreachable or the settings are invalid. Never prints a password.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from .backends import load_backend
from .backends.base import Backend, ServerLimits
from .backends.pgcommon import PostgresBackend
from .errors import AconnError
from .handler import Connections
from .rules import Verdict, evaluate, idle_limit_from_server, node_budget_rule
from .settings import MYSQL_ENGINES, POSTGRESQL_ENGINES, Settings, parse_databases

__all__ = ("main", "run_check")

OK, RULE_FAILED, UNREACHABLE = 0, 1, 2
#: the engines that speak to PostgreSQL


def load_django(settings_module: str) -> dict[str, Settings]:
    """The ``DATABASES`` of a Django project, by its settings module (``myproject.settings``)."""
    os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
    sys.path.insert(0, os.getcwd())
    try:
        import django

        django.setup()
    except ImportError as exc:
        raise AconnError(f"cannot load the Django settings {settings_module!r}: {exc}") from None
    from .django import databases_from_django

    return parse_databases(databases_from_django())


def load_databases(target: str | None, url: str | None, django_settings: str | None = None) -> dict[str, Settings]:
    """Settings from ``module:attribute`` (a Connections or a DATABASES dict), ``--django``, ``--url``, DATABASE_URL."""
    if django_settings:
        return load_django(django_settings)
    if target:
        module_name, _, attribute = target.partition(":")
        if not attribute:
            raise AconnError(f"expected MODULE:ATTRIBUTE, got {target!r}")
        sys.path.insert(0, os.getcwd())
        try:
            found: Any = importlib.import_module(module_name)
            for part in attribute.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError) as exc:
            raise AconnError(f"cannot load {target!r}: {exc}") from None
        if isinstance(found, Connections):
            return {alias: found.settings(alias) for alias in found.aliases}
        if isinstance(found, Mapping):
            return parse_databases(found)
        raise AconnError(f"{target!r} is neither an aconn.Connections nor a DATABASES dict")
    url = url or os.environ.get("DATABASE_URL")
    if not url:
        raise AconnError("nothing to check: give MODULE:ATTRIBUTE, --url, or set DATABASE_URL")
    return parse_databases({"default": url})


async def check_alias(settings: Settings, workers: int) -> dict[str, Any]:
    """Connect once and report on one alias; never raises for a connection problem."""
    report: dict[str, Any] = {"alias": settings.alias, "engine": settings.engine, "target": settings.target}
    backend = load_backend(settings)
    nodes: list[dict[str, Any]] = []
    node_verdicts: list[Verdict] = []
    if settings.cluster_kind is not None:
        nodes, node_verdicts = await _nodes(settings, backend, workers)
        report["nodes"] = nodes
    try:
        # a multi-host alias: the first node that answered (the rules below read its limits)
        address = next((tuple(n["address"]) for n in nodes if n["reachable"]), None)
        async with asyncio.timeout(settings.connect_timeout):
            conn, limits = await backend.connect(address)
    except TimeoutError:
        report.update(reachable=False, reason=f"no answer within CONNECT_TIMEOUT={settings.connect_timeout:g}s")
        return report
    except Exception as exc:  # the driver's message names host and user, never the password
        report.update(reachable=False, reason=f"{type(exc).__name__}: {exc}")
        return report
    if settings.engine != "sqlite":
        report["session_state"] = (
            "reset at release (RESET_ON_RELEASE)"
            if settings.reset_on_release
            else "kept between scopes (set RESET_ON_RELEASE True to reset it)"
        )
    try:
        report.update(reachable=True, version=limits.version)
        if settings.engine in MYSQL_ENGINES:
            report.update(await _mysql_details(conn, limits))
        elif settings.engine in POSTGRESQL_ENGINES:
            report.update(await _postgresql_details(backend, conn, limits))
        elif settings.engine == "sqlite":
            rows = await conn.execute_fetchall("PRAGMA journal_mode")
            report.update(_sqlite_file(settings), journal_mode=str(next(iter(rows))[0]))
        verdicts = evaluate(settings, limits, workers) if settings.engine != "sqlite" else []
        if settings.engine in POSTGRESQL_ENGINES:
            detected = await _pgbouncer_version(settings)
            how = "its admin console answered SHOW VERSION" if detected else None
            if detected is None and not limits.session_id_verified:
                detected = "a pooler (PgBouncer?)"
                how = "the session's cancel key is not the server's pid (no admin rights needed)"
            report["pooler"] = {"configured": settings.pooler, "detected": detected, "how": how}
            if detected and settings.pooler != "pgbouncer":
                verdicts = [v for v in verdicts if v.rule != "POOLER"] + [
                    Verdict(
                        "POOLER",
                        False,
                        f"this alias talks to {detected} but POOLER is not 'pgbouncer': in transaction mode, "
                        "named prepared statements fail and session settings leak",
                        "set POOLER='pgbouncer'",
                    )
                ]
        report["rules"] = [dataclasses.asdict(v) for v in verdicts + node_verdicts]
    finally:
        try:
            async with asyncio.timeout(5):
                await backend.close(conn)
        except Exception:
            backend.abort(conn)
        await backend.aclose()
    return report


async def _nodes(settings: Settings, backend: Backend, workers: int) -> tuple[list[dict[str, Any]], list[Verdict]]:
    """Each host of a multi-host alias: reachable or why not, its state and cluster size, and
    whether every process' MAX_CONNS fits in its max_connections."""
    from .pool.nodes import Nodes

    judge = Nodes(settings, backend)

    async def one(address: tuple[str, int]) -> tuple[dict[str, Any], Verdict | None]:
        node = judge.node_at(address)
        assert node is not None
        entry: dict[str, Any] = {"host": node.name, "address": list(address)}
        try:
            conn, limits, state = await judge.open_checked(node, settings.connect_timeout)
        except Exception as exc:
            reason = (
                "no answer within CONNECT_TIMEOUT" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            )
            entry.update(reachable=False, reason=reason)
            return entry, None
        await judge.close_quietly(conn)
        entry.update(
            reachable=True,
            cluster=state.cluster,
            state=state.summary,
            cluster_size=state.size,
            serves=judge.serves(state),
            max_connections=limits.max_connections,
        )
        return entry, node_budget_rule(settings, node.name, limits, workers)

    found = await asyncio.gather(*(one(address) for address in settings.addresses))
    return [entry for entry, _ in found], [verdict for _, verdict in found if verdict is not None]


async def _mysql_details(conn: Any, limits: ServerLimits) -> dict[str, Any]:
    async with conn.cursor() as cur:
        await cur.execute("SHOW GLOBAL STATUS WHERE Variable_name IN ('Threads_connected', 'Ssl_cipher')")
        status = {str(k): str(v) for k, v in await cur.fetchall()}
        await cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        row = await cur.fetchone()
    cipher = str(row[1]) if row and row[1] else ""
    return {
        "limits": {
            "wait_timeout": limits.idle_timeout,
            "interactive_timeout": limits.interactive_timeout,
            "max_connections": limits.max_connections,
            "max_user_connections": limits.max_user_connections,
            "max_statement_time": limits.max_statement_time,
            "aconn_idle_limit": idle_limit_from_server(limits.idle_timeout),
        },
        "connections_open": int(status.get("Threads_connected", 0)),
        "tls": {"in_use": bool(cipher), "cipher": cipher or None},
    }


async def _postgresql_details(backend: Backend, conn: Any, limits: ServerLimits) -> dict[str, Any]:
    assert isinstance(backend, PostgresBackend)
    fetch_one = backend._fetch_one
    open_now = await fetch_one(conn, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
    tls = await fetch_one(conn, "SELECT ssl, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    keepalives = await fetch_one(
        conn,
        "SELECT current_setting('tcp_keepalives_idle'), current_setting('tcp_keepalives_interval'), "
        "current_setting('tcp_keepalives_count')",
    )
    return {
        "limits": {
            "idle_session_timeout": limits.idle_timeout,
            "idle_in_transaction_session_timeout": limits.idle_in_transaction_timeout,
            "statement_timeout": limits.max_statement_time,
            "max_connections (less superuser_reserved_connections)": limits.max_connections,
            "aconn_idle_limit": idle_limit_from_server(limits.idle_timeout),
            "tcp_keepalives_idle/interval/count": "/".join(str(v) for v in keepalives),
        },
        "connections_open": int(open_now[0]),
        "tls": {"in_use": bool(tls and tls[0]), "cipher": (tls[1] if tls and tls[0] else None)},
    }


async def _pgbouncer_version(settings: Settings) -> str | None:
    """PgBouncer's version, when its admin console answers at the alias' address (the user must be in
    its admin_users or stats_users); None otherwise, including when psycopg is not installed."""
    try:
        import psycopg
    except ImportError:
        return None
    try:
        async with asyncio.timeout(settings.connect_timeout):
            conn = await psycopg.AsyncConnection.connect(
                host=settings.host or "localhost", port=settings.port or 5432, user=settings.user or None,
                password=settings.password or None, dbname="pgbouncer", autocommit=True,
                cursor_factory=psycopg.AsyncClientCursor,  # the admin console speaks the simple protocol only
            )  # fmt: skip
            try:
                row = await (await conn.execute("SHOW VERSION")).fetchone()
            finally:
                await conn.close()
    except Exception:
        return None
    return str(row[0]) if row else None


def _sqlite_file(settings: Settings) -> dict[str, Any]:
    if settings.name == ":memory:":
        return {"file": ":memory:", "writable": True}
    file = Path(settings.name).resolve()
    return {"file": str(file), "writable": os.access(file, os.W_OK) and os.access(file.parent, os.W_OK)}


def run_check(databases: Mapping[str, Settings], workers: int) -> tuple[int, list[dict[str, Any]]]:
    reports = asyncio.run(_check_all(databases, workers))
    status = OK
    for report in reports:
        if not report["reachable"]:
            status = UNREACHABLE
        elif status == OK and not all(rule["ok"] for rule in report.get("rules", ())):
            status = RULE_FAILED
    return status, reports


async def _check_all(databases: Mapping[str, Settings], workers: int) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(check_alias(s, workers) for s in databases.values())))


def render(reports: Sequence[dict[str, Any]], workers: int, out: TextIO) -> None:
    for report in reports:
        print(f"[{report['alias']}] {report['target']}", file=out)
        if not report["reachable"]:
            print(f"  UNREACHABLE  {report['reason']}", file=out)
            continue
        print(f"  reachable    server {report['version']}", file=out)
        for node in report.get("nodes", ()):
            if node["reachable"]:
                size = f", cluster of {node['cluster_size']}" if node["cluster_size"] else ""
                serves = "serves TARGET" if node["serves"] else "does NOT serve TARGET"
                shown = f"{node['state']}{size}; {serves}; max_connections={node['max_connections']}"
            else:
                shown = f"UNREACHABLE {node['reason']}"
            print(f"  node         {node['host']}: {shown}", file=out)
        if "limits" in report:
            limits = report["limits"]
            shown = ", ".join(f"{k}={v if v is not None else '-'}" for k, v in limits.items())
            print(f"  limits       {shown}", file=out)
            print(f"  open now     {report['connections_open']} connection(s) on the server", file=out)
            tls = report["tls"]
            print(f"  tls          {'on, ' + tls['cipher'] if tls['in_use'] else 'off'}", file=out)
        if "pooler" in report:
            pooler = report["pooler"]
            how = f" ({pooler['how']})" if pooler["how"] else ""
            shown = f"configured: {pooler['configured'] or '-'}, detected: {pooler['detected'] or '-'}{how}"
            print(f"  pooler       {shown}", file=out)
        if "session_state" in report:
            print(f"  session      {report['session_state']}", file=out)
        if "journal_mode" in report:
            print(f"  file         {report['file']} (journal_mode={report['journal_mode']}, "
                  f"{'writable' if report['writable'] else 'NOT writable'})", file=out)  # fmt: skip
        for rule in report.get("rules", ()):
            mark = "PASS" if rule["ok"] else "FAIL"
            print(f"  {mark} {rule['rule']:<12} {rule['message']}", file=out)
            if rule["fix"]:
                print(f"       fix: {rule['fix']}", file=out)
    if workers > 1:
        print(f"(budget checked for --workers {workers})", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aconn check", description="Check aconn settings against the database servers."
    )
    parser.add_argument("command", choices=["check"])
    parser.add_argument("target", nargs="?", help="MODULE:ATTRIBUTE of a Connections or a DATABASES dict")
    parser.add_argument("--url", help="a database URL (default: $DATABASE_URL)")
    parser.add_argument("--django", metavar="SETTINGS", help="a Django project's settings module: check its DATABASES")
    parser.add_argument("--workers", type=int, default=1, help="processes that each open MAX_CONNS")
    parser.add_argument("--json", action="store_true", help="print a machine-readable report")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        databases = load_databases(args.target, args.url, args.django)
    except AconnError as exc:  # ConfigError included: names alias and key, never the password
        if args.json:
            print(json.dumps({"status": UNREACHABLE, "error": str(exc)}))
        else:
            print(f"invalid settings: {exc}", file=sys.stderr)
        return UNREACHABLE
    warnings: list[str] = []
    if args.django:
        from .django import serving_warnings

        warnings = serving_warnings()
    status, reports = run_check(databases, args.workers)
    if args.json:
        report = {"status": status, "workers": args.workers, "aliases": reports, "warnings": warnings}
        print(json.dumps(report, indent=2))
    else:
        render(reports, args.workers, sys.stdout)
        for warning in warnings:
            print(f"warning: {warning}")
    return status
