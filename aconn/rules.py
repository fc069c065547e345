"""Settings checked against the server's limits: the rules behind the WARNINGs and ``aconn check``.

Two classic failures of persistent connections come from settings that
disagree with the server: connections kept idle longer than its
``wait_timeout`` ("MySQL server has gone away") and processes x connections
above ``max_connections`` ("Too many connections"). Each rule gives a verdict
and the fix in one line; a rule fails only where a setting can lead to a failure.
"""

from __future__ import annotations

from dataclasses import dataclass

from .backends.base import ServerLimits
from .settings import POSTGRESQL_ENGINES, Settings

__all__ = ("Verdict", "evaluate", "idle_limit_from_server")


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one rule for one alias."""

    rule: str
    ok: bool
    message: str
    #: what to change, in one line (empty when the rule passes)
    fix: str = ""


def idle_limit_from_server(idle_timeout: float | None) -> float | None:
    """The idle limit aconn applies below the server's own (MySQL ``wait_timeout``), None if unlimited.

    The margin is a fifth of the server's value, at most 60 s, so that a
    connection is retired well before the server may have dropped it.
    """
    if not idle_timeout:
        return None
    return idle_timeout - min(60.0, idle_timeout * 0.2)


def evaluate(settings: Settings, limits: ServerLimits, workers: int = 1) -> list[Verdict]:
    """Every rule for one alias, given the server's limits and the number of processes."""
    return [
        _idle_rule(settings, limits),
        _budget_rule(settings, limits, workers),
        _cancel_rule(settings, limits),
        _pooler_rule(settings, limits),
    ]


def _idle_rule(settings: Settings, limits: ServerLimits) -> Verdict:
    """Fails only where an idle connection can outlive the server's ``wait_timeout``.

    A long (or no) ``CONN_MAX_AGE`` is fine: aconn retires idle connections below the
    server's limit by itself. What fails is an ``IDLE_TIMEOUT`` set at or above it.
    """
    wait_timeout = limits.idle_timeout
    postgresql = settings.engine in POSTGRESQL_ENGINES
    name = "idle_session_timeout" if postgresql else "wait_timeout"
    symptom = "terminating connection due to idle-session timeout" if postgresql else "MySQL server has gone away"
    if not wait_timeout:
        return Verdict("IDLE_TIMEOUT", True, "the server closes no idle session")
    age = "None" if settings.conn_max_age is None else f"{settings.conn_max_age:g}"
    derived = idle_limit_from_server(wait_timeout)
    if settings.idle_timeout is not None and settings.idle_timeout >= wait_timeout and not settings.health_checks:
        return Verdict(
            "IDLE_TIMEOUT",
            False,
            f"IDLE_TIMEOUT={settings.idle_timeout:g} but {name}={wait_timeout:g}: an idle connection can "
            f'outlive the server\'s idle limit ("{symptom}"; without health checks only the '
            "socket check catches a session the server dropped)",
            f"remove IDLE_TIMEOUT (aconn then retires idle connections after {derived:g}s) or set it below "
            f"{wait_timeout:g}, or enable CONN_HEALTH_CHECKS",
        )
    limit = settings.idle_timeout if settings.idle_timeout is not None else derived
    return Verdict(
        "IDLE_TIMEOUT",
        True,
        f"idle connections retired after {limit:g}s, within the server's {name}={wait_timeout:g} (CONN_MAX_AGE={age})",
    )


def _budget_rule(settings: Settings, limits: ServerLimits, workers: int) -> Verdict:
    budget = workers * settings.max_conns
    budget_text = f"{workers} process(es) x MAX_CONNS={settings.max_conns} = {budget}"
    per_user = limits.max_user_connections
    if per_user and budget > per_user:
        return Verdict(
            "MAX_CONNS",
            False,
            f"{budget_text} is above max_user_connections={per_user}",
            f"set MAX_CONNS to at most {max(1, per_user // workers)} or raise max_user_connections",
        )
    total = limits.max_connections
    if total and budget > total:
        return Verdict(
            "MAX_CONNS",
            False,
            f"{budget_text} is above the server's max_connections={total}",
            f"set MAX_CONNS to at most {max(1, total // workers)} or raise max_connections",
        )
    if total is None:
        return Verdict("MAX_CONNS", True, f"{budget_text}; the server sets no connection limit")
    return Verdict("MAX_CONNS", True, f"{budget_text} within max_connections={total}")


def node_budget_rule(settings: Settings, node: str, limits: ServerLimits, workers: int) -> Verdict:
    """One node of a multi-host alias: every process may open MAX_CONNS on it, plus its side
    session (CANCEL_ON_SERVER) and the monitor session of the node checks."""
    budget = workers * (settings.max_conns + 2)
    text = f"node {node}: {workers} process(es) x (MAX_CONNS={settings.max_conns} + 2 side/monitor sessions) = {budget}"
    total = limits.max_user_connections or limits.max_connections
    name = "max_user_connections" if limits.max_user_connections else "max_connections"
    if total and budget > total:
        fix = f"set MAX_CONNS to at most {max(1, total // workers - 2)} or raise {name} on every node"
        return Verdict("NODES", False, f"{text} is above its {name}={total}", fix)
    return Verdict("NODES", True, f"{text} within its {name}={total if total else 'unlimited'}")


def _cancel_rule(settings: Settings, limits: ServerLimits) -> Verdict:
    bound = (
        f"STATEMENT_TIMEOUT={settings.statement_timeout:g}s bounds each statement"
        if settings.statement_timeout is not None
        else "no STATEMENT_TIMEOUT"
    )
    if not settings.cancel_on_server:
        return Verdict("CANCEL_ON_SERVER", True, f"off: a cancelled caller's statement runs on at the server; {bound}")
    if settings.pooler == "pgbouncer":
        return Verdict(
            "CANCEL_ON_SERVER",
            True,
            f"cancel requests go through PgBouncer, which forwards them to the server; {bound}",
        )
    if settings.pooler is not None:
        ok = settings.statement_timeout is not None
        return Verdict(
            "CANCEL_ON_SERVER",
            ok,
            f"behind {settings.pooler} a KILL id names no session of ours: aconn sends none; {bound}",
            "" if ok else "set STATEMENT_TIMEOUT so that the server bounds each statement itself",
        )
    if not limits.session_id_verified and settings.engine in POSTGRESQL_ENGINES:
        return Verdict(
            "CANCEL_ON_SERVER",
            True,
            "a pooler sits in front of the server (the session's cancel key is not the server's pid): "
            f"cancel requests go through it, which forwards them; {bound}",
        )
    if not limits.session_id_verified:
        return Verdict(
            "CANCEL_ON_SERVER",
            False,
            "the server's session id differs from the handshake's (a proxy in between?): statements "
            f"of cancelled callers cannot be stopped at the server; {bound}",
            "set CANCEL_ON_SERVER=False and STATEMENT_TIMEOUT to bound statements on the server",
        )
    return Verdict("CANCEL_ON_SERVER", True, f"statements of cancelled callers are stopped at the server; {bound}")


def _pooler_rule(settings: Settings, limits: ServerLimits) -> Verdict:
    """Behind a pooler: nothing that pins a server connection or leaks session state to other clients."""
    pooler = settings.pooler
    if pooler is None and not limits.session_id_verified and settings.engine in POSTGRESQL_ENGINES:
        return Verdict(
            "POOLER",
            False,
            "a pooler sits in front of the server, seen at connect (the session's cancel key is not the "
            "server's pid), but POOLER is not set: in transaction mode named prepared statements fail, "
            "session settings leak to other clients, and a reset at release reaches theirs",
            "set POOLER='pgbouncer' (or the pooler in use)",
        )
    if pooler is None:
        return Verdict("POOLER", True, "none configured (POOLER)")
    if pooler == "pgbouncer" and settings.reset_on_release:
        return Verdict(
            "POOLER",
            False,
            "RESET_ON_RELEASE behind PgBouncer in transaction mode resets a server connection other clients "
            "share (PgBouncer resets server connections itself, with server_reset_query, in session mode)",
            "set RESET_ON_RELEASE False",
        )
    init = str(settings.options.get("init_command", ""))
    pinning = [
        name
        for name, present in (
            ("OPTIONS['init_command'] sets session state", "set " in init.lower()),
            ("OPTIONS['isolation_level']", "isolation_level" in settings.options),
            ("STATEMENT_TIMEOUT (a session SET)", settings.statement_timeout is not None and pooler == "rds_proxy"),
        )
        if present
    ]
    if pinning:
        return Verdict(
            "POOLER",
            False,
            f"behind {pooler}, {', '.join(pinning)}: the session is pinned to one server connection "
            "(no multiplexing) or its state leaks to other clients",
            "set it on the server (the user's or the global default) and remove it here",
        )
    what = "no named prepared statements, no session settings" if pooler == "pgbouncer" else "no session settings"
    return Verdict("POOLER", True, f"behind {pooler}: aconn sets {what} per session")
