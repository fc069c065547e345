"""Parse Django ``DATABASES`` entries and database URLs into frozen settings.

Everything here runs once, when a :class:`~aconn.Connections` is built; the
hot path only reads attributes of :class:`Settings`.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .errors import ConfigError

__all__ = ("Address", "Settings", "parse_databases", "parse_settings")

#: one server of an alias: ``(host, port)``
Address = tuple[str, int]

#: Engine names accepted for each built-in backend.
ENGINE_ALIASES: Mapping[str, str] = {
    "mysql": "mysql",
    "mariadb": "mysql",
    "django.db.backends.mysql": "mysql",
    "sqlite": "sqlite",
    "sqlite3": "sqlite",
    "django.db.backends.sqlite3": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "django.db.backends.postgresql": "postgresql",
    "asyncpg": "asyncpg",
    "asyncmy": "asyncmy",
    # every driver by its own name
    "aiomysql": "mysql",
    "psycopg": "postgresql",
    "aiosqlite": "sqlite",
}

#: the engines that speak MySQL's protocol (aiomysql, asyncmy) and PostgreSQL's (psycopg, asyncpg)
MYSQL_ENGINES = frozenset({"mysql", "asyncmy"})
POSTGRESQL_ENGINES = frozenset({"postgresql", "asyncpg"})

#: the server's port when PORT is not set
DEFAULT_PORTS: Mapping[str, int] = {"mysql": 3306, "asyncmy": 3306, "postgresql": 5432, "asyncpg": 5432}

_URL_SCHEMES: Mapping[str, str] = {
    "mysql": "mysql",
    "mariadb": "mysql",
    # SQLAlchemy's spellings: aiomysql speaks PyMySQL's options, aiosqlite sqlite3's
    "mysql+aiomysql": "mysql",
    "mysql+pymysql": "mysql",
    "mariadb+aiomysql": "mysql",
    "mariadb+pymysql": "mysql",
    "mysql+asyncmy": "asyncmy",
    "mariadb+asyncmy": "asyncmy",
    "sqlite": "sqlite",
    "sqlite3": "sqlite",
    "sqlite+aiosqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "postgresql+psycopg": "postgresql",
    "postgresql+asyncpg": "asyncpg",
    "postgres+asyncpg": "asyncpg",
}

#: URL parameters for the driver's TLS options, gathered into OPTIONS["ssl"] (Django's form)
_TLS_PARAMETERS: Mapping[str, str] = {
    "ssl_ca": "ca",
    "ssl_cert": "cert",
    "ssl_key": "key",
    "ssl_check_hostname": "check_hostname",
}

#: Django keys that aconn accepts so that settings can be pasted as-is, but
#: that have no meaning here (transactions per request are the app's choice).
_DJANGO_IGNORED = frozenset({"TIME_ZONE", "TEST", "DISABLE_SERVER_SIDE_CURSORS"})

_PEER_POOL_OPTIONS: Mapping[str, tuple[str, ...]] = {
    "aconn's is MIN_CONNS (connections kept open by housekeeping)": ("min_size", "minsize"),
    "aconn's is MAX_CONNS (the cap per alias per process)": ("max_size", "maxsize", "pool_size"),
    "aconn has no overflow: MAX_CONNS is the whole cap": ("max_overflow",),
    "aconn's is IDLE_TIMEOUT (seconds idle before closing)": ("max_inactive_connection_lifetime", "max_idle"),
    "aconn's is CONN_MAX_AGE (seconds before a connection is replaced)": ("max_lifetime", "pool_recycle"),
    "aconn has none: connections are replaced by age (CONN_MAX_AGE)": ("max_queries",),
    "aconn's is ACQUIRE_TIMEOUT (and CONNECT_TIMEOUT for one connect)": ("timeout",),
    "aconn's is ACQUIRE_TIMEOUT (seconds to wait for a connection)": ("pool_timeout",),
    "aconn's is MAX_WAITING (tasks that may wait; beyond, PoolOverloaded)": ("max_waiting",),
    "aconn's is CONN_HEALTH_CHECKS (a ping only when idle > 0.5 s)": ("pool_pre_ping",),
    "aconn's is RESET_ON_RELEASE": ("reset",),
}
#: options of the pools aconn replaces (asyncpg.Pool, aiomysql/asyncmy pools, psycopg_pool,
#: SQLAlchemy), given in OPTIONS or a URL: what aconn does instead
PEER_POOL_OPTIONS: Mapping[str, str] = {
    key: f"a pool option; {what}" for what, keys in _PEER_POOL_OPTIONS.items() for key in keys
}

#: Keys of OPTIONS whose values are secrets and are never shown, beside any key whose name
#: contains one of SECRET_WORDS (libpq's sslpassword, a driver's ssl_key_password, an auth token)
SECRET_OPTIONS = frozenset({"password", "passwd", "sslpassword", "ssl_key_password"})
SECRET_WORDS = ("password", "passwd", "secret", "token")


def is_secret(key: str) -> bool:
    """True if the value of the option ``key`` must never be shown."""
    lowered = key.lower()
    return lowered in SECRET_OPTIONS or any(word in lowered for word in SECRET_WORDS)


def masked(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` as they may be shown: secret values replaced by ``***``, nested dicts too."""
    return {
        key: "***" if is_secret(str(key)) else masked(value) if isinstance(value, Mapping) else value
        for key, value in options.items()
    }


#: a check of one setting's value in its context: ``(alias, key, value, parsed)``, where ``parsed``
#: holds the fields parsed before it (ENGINE first); returns the field's value or raises ``ConfigError``
Check = Callable[[str, str, Any, Mapping[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class Parser:
    """Reads one setting's value (its default when absent) into its field."""

    #: how the value is spelled in a URL's query: "bool", "int", "float", "str"; None: not in URLs
    url_kind: str | None
    check: Check

    def __call__(self, alias: str, key: str, value: Any, parsed: Mapping[str, Any]) -> Any:
        return self.check(alias, key, value, parsed)


def _alone(url_kind: str | None, check: Callable[[str, str, Any], Any]) -> Parser:
    """A parser whose check needs no other setting."""
    return Parser(url_kind, lambda alias, key, value, parsed: check(alias, key, value))


#: a setting absent from the entry
MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class Option:
    """One setting, declared once on its :class:`Settings` field: parsing, validation, URL
    spellings, masking and the README's table all follow from it."""

    #: the ``DATABASES`` key
    key: str
    parse: Parser
    #: the value when absent, or a function of the fields parsed before it
    default: Any
    #: what it does (the README's table says it at length)
    doc: str
    #: the URL query parameters that set it (lowercase)
    url: tuple[str, ...] = ()
    #: never shown: masked in repr, messages and ``check``
    secret: bool = False


def setting(key: str, parse: Parser, default: Any, doc: str, *, url: tuple[str, ...] = (), secret: bool = False) -> Any:
    """A :class:`Settings` field declared with its :class:`Option`."""
    option = Option(key, parse, default, doc, url, secret)
    metadata = {"aconn": option}
    if isinstance(default, Mapping):  # read-only, shared: a factory all the same, as dataclasses ask
        return field(default_factory=lambda: default, compare=not secret, metadata=metadata)
    return field(default=None if callable(default) else default, compare=not secret, metadata=metadata)


def _string(alias: str, key: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(alias, key, f"must be a string, got {type(value).__name__}")
    return value


def _boolean(alias: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(alias, key, f"must be True or False, got {value!r}")
    return value


def _integer(minimum: int, *, allow_none: bool = False) -> Parser:
    def check(alias: str, key: str, value: Any) -> int | None:
        if value is None and allow_none:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(alias, key, f"must be an integer, got {value!r}")
        if value < minimum:
            raise ConfigError(alias, key, f"must be at least {minimum}, got {value}")
        return value

    return _alone("int", check)


def _seconds(*, allow_none: bool = False, allow_zero: bool = False) -> Parser:
    def check(alias: str, key: str, value: Any) -> float | None:
        return _checked_seconds(alias, key, value, allow_none=allow_none, allow_zero=allow_zero)

    return _alone("float", check)


def _checked_seconds(alias: str, key: str, value: Any, *, allow_none: bool, allow_zero: bool) -> float | None:
    if value is None:
        if allow_none:
            return None
        raise ConfigError(alias, key, "must be a number of seconds, got None")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(alias, key, f"must be a number of seconds, got {value!r}")
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        lowest = "0 or more" if allow_zero else "above 0"
        raise ConfigError(alias, key, f"must be a finite number of seconds {lowest}, got {value!r}")
    return float(value)


def _port(alias: str, key: str, value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ConfigError(alias, key, "must be an integer, got bool")
    if isinstance(value, str):
        if not value.strip().isdigit():
            raise ConfigError(alias, key, f"must be an integer, got {value!r}")
        value = int(value)
    if not isinstance(value, int) or not 0 < value < 65536:
        raise ConfigError(alias, key, f"must be between 1 and 65535, got {value!r}")
    return value


def address_name(address: Address) -> str:
    """``host:port`` for messages (``[v6]:port`` for an IPv6 address)."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _host_entry(alias: str, key: str, entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address -> ``(host, port or None)``."""
    entry = entry.strip()
    if not entry:
        raise ConfigError(alias, key, "an empty host in the list")
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ConfigError(alias, key, f"cannot read the host {entry!r}")
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:
        host, port = entry, ""
    return host, _port(alias, key, port) if port else None


def _hosts(alias: str, key: str, value: Any) -> str:
    """HOST: one host, libpq's comma-separated list, or a list; stored as the comma form."""
    if isinstance(value, list | tuple):
        if not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(alias, key, f"must be a host or a non-empty list of hosts, got {value!r}")
        value = ",".join(value)
    host = _string(alias, key, value)
    if host and not host.startswith("/"):
        for entry in host.split(","):
            _host_entry(alias, key, entry)
    return host


def _options(alias: str, key: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(alias, key, "must be a dict with string keys")
    return MappingProxyType(dict(value))


def _replicas(alias: str, key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(alias, key, f"must be a list of aliases, got {value!r}")
    if alias in value:
        raise ConfigError(alias, key, "an alias cannot be its own replica")
    return tuple(value)


def _engine_of(alias: str, key: str, value: Any, parsed: Mapping[str, Any]) -> str:
    return _engine(alias, value)


def _name(alias: str, key: str, value: Any, parsed: Mapping[str, Any]) -> str:
    name = _string(alias, key, value)
    if parsed["engine"] == "sqlite" and not name:
        raise ConfigError(alias, key, "a SQLite database needs a file path or ':memory:'")
    return name


def _min_conns(alias: str, key: str, value: Any, parsed: Mapping[str, Any]) -> int:
    count: int = _integer(0)(alias, key, value, parsed)
    if count > parsed["max_conns"]:
        raise ConfigError(alias, key, f"{count} is above MAX_CONNS={parsed['max_conns']}")
    return count


def _atomic_requests(alias: str, key: str, value: Any, parsed: Mapping[str, Any]) -> bool:
    on = _boolean(alias, key, value)
    if on and not parsed["autocommit"]:
        raise ConfigError(alias, key, "needs AUTOCOMMIT True: a request's transaction is begun by atomic()")
    return on


def _statement_timeout_of(alias: str, key: str, value: Any, parsed: Mapping[str, Any]) -> float | None:
    return _statement_timeout(alias, key, value, parsed["engine"])


def _pooler_of(alias: str, key: str, value: Any, parsed: Mapping[str, Any]) -> str | None:
    return _pooler(alias, value, parsed["engine"])


#: CLUSTER's values: what the node state checks read (``detect``: ask the server)
CLUSTERS = ("galera", "postgresql", "detect")
#: TARGET's values per family: libpq's ``target_session_attrs`` names; a Galera cluster has no
#: standbys: ``read-write`` is the one node that takes writes, ``any`` every synced node
TARGETS: Mapping[str, tuple[str, ...]] = {
    "postgresql": ("read-write", "primary", "any", "read-only", "standby", "prefer-standby"),
    "mysql": ("read-write", "primary", "any"),
}
HOST_ORDERS = ("in-order", "round-robin")


def _family(engine: str) -> str | None:
    return "postgresql" if engine in POSTGRESQL_ENGINES else "mysql" if engine in MYSQL_ENGINES else None


def _cluster_of(alias: str, key: str, value: Any, parsed: Mapping[str, Any]) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value.lower() not in CLUSTERS:
        raise ConfigError(alias, key, f"must be None or one of {', '.join(map(repr, CLUSTERS))}, got {value!r}")
    cluster = value.lower()
    family = _family(parsed["engine"])
    if (
        family is None
        or (cluster == "galera" and family != "mysql")
        or (cluster == "postgresql" and family != "postgresql")
    ):
        raise ConfigError(alias, key, f"{cluster!r} does not apply to ENGINE {parsed['engine']!r}")
    return cluster


def _target_of(alias: str, key: str, value: Any, parsed: Mapping[str, Any]) -> str:
    family = _family(parsed["engine"])
    allowed = TARGETS.get(family or "", ("read-write",))
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ConfigError(alias, key, f"must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value.lower()


def _host_order(alias: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in HOST_ORDERS:
        raise ConfigError(alias, key, f"must be one of {', '.join(map(repr, HOST_ORDERS))}, got {value!r}")
    return value.lower()


_STRING = _alone(None, _string)
_BOOL = _alone("bool", _boolean)


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    """Validated settings of one alias. Built by :func:`parse_settings`.

    Each field is declared once, with its ``DATABASES`` key, parser, default, URL spellings and
    doc line (:func:`setting`): parsing, URL parameters, masking and the README's table follow.
    """

    alias: str
    engine: str = setting("ENGINE", Parser(None, _engine_of), "sqlite", "the database and driver")
    name: str = setting("NAME", Parser(None, _name), "", "the database (SQLite: the file, or ':memory:')")
    user: str = setting("USER", _STRING, "", "as in Django")
    password: str = setting("PASSWORD", _STRING, "", "as in Django; never shown", secret=True)
    host: str = setting(
        "HOST", _alone(None, _hosts), "", "as in Django; several: a list, or libpq's 'db1,db2:3307' (failover)"
    )
    port: int | None = setting("PORT", _alone(None, _port), None, "as in Django; an int or a string")
    options: Mapping[str, Any] = setting(
        "OPTIONS", _alone(None, _options), MappingProxyType({}), "the driver's connect options"
    )
    conn_max_age: float | None = setting(
        "CONN_MAX_AGE",
        _seconds(allow_none=True, allow_zero=True),
        0.0,
        "seconds a connection may live; 0 closes it at scope exit, None: no age limit",
        url=("conn_max_age",),
    )
    health_checks: bool = setting(
        "CONN_HEALTH_CHECKS",
        _BOOL,
        False,
        "ping a reused connection before handing it out",
        url=("health_checks", "conn_health_checks"),
    )
    autocommit: bool = setting("AUTOCOMMIT", _BOOL, True, "autocommit mode", url=("autocommit",))
    max_conns: int = setting("MAX_CONNS", _integer(1), 10, "connections per alias in this process", url=("max_conns",))
    min_conns: int = setting(
        "MIN_CONNS", Parser("int", _min_conns), 0, "connections the housekeeper keeps open", url=("min_conns",)
    )
    acquire_timeout: float = setting(
        "ACQUIRE_TIMEOUT", _seconds(), 30.0, "seconds to wait for a connection", url=("acquire_timeout",)
    )
    connect_timeout: float = setting(
        "CONNECT_TIMEOUT", _seconds(), 10.0, "bound on a whole connect", url=("connect_timeout",)
    )
    idle_timeout: float | None = setting(
        "IDLE_TIMEOUT",
        _seconds(allow_none=True),
        None,
        "seconds an idle connection is kept (None: from the server)",
        url=("idle_timeout",),
    )
    leak_timeout: float | None = setting(
        "LEAK_TIMEOUT",
        _seconds(allow_none=True),
        None,
        "warn when a connection is held longer",
        url=("leak_timeout",),
    )
    #: server-side limit on each statement, set once per session (None: the server's own)
    statement_timeout: float | None = setting(
        "STATEMENT_TIMEOUT",
        Parser("float", _statement_timeout_of),
        None,
        "a server-side limit on each statement, in seconds",
        url=("statement_timeout",),
    )
    #: stop a cancelled caller's statement at the server before its slot is reused
    cancel_on_server: bool = setting(
        "CANCEL_ON_SERVER",
        _BOOL,
        True,
        "stop a dropped caller's statement at the server",
        url=("cancel_on_server",),
    )
    #: tasks that may wait for a connection of the alias; beyond, PoolOverloaded at once (None: no limit)
    max_waiting: int | None = setting(
        "MAX_WAITING",
        _integer(0, allow_none=True),
        None,
        "tasks that may wait; beyond, PoolOverloaded",
        url=("max_waiting",),
    )
    #: ConnectionsMiddleware runs each HTTP request in ``atomic()`` on the alias (Django's setting)
    atomic_requests: bool = setting(
        "ATOMIC_REQUESTS",
        Parser("bool", _atomic_requests),
        False,
        "each HTTP request in atomic()",
        url=("atomic_requests",),
    )
    #: the connection pooler between aconn and the server: None, "pgbouncer", "proxysql", "rds_proxy"
    pooler: str | None = setting(
        "POOLER", Parser("str", _pooler_of), None, "the transaction-mode pooler in front of the server", url=("pooler",)
    )
    #: reset session state when a scope gives the connection back (PostgreSQL ``DISCARD ALL``,
    #: asyncpg's reset, MySQL ``COM_RESET_CONNECTION``); default: see :func:`reset_by_default`
    reset_on_release: bool = setting(
        "RESET_ON_RELEASE",
        _BOOL,
        lambda parsed: reset_by_default(parsed["engine"], parsed["pooler"]),
        "reset session state at release",
        url=("reset_on_release",),
    )
    #: other aliases of the handler that replicate this one: read_only=True reads from them
    replicas: tuple[str, ...] = setting(
        "REPLICAS", _alone(None, _replicas), (), "aliases replicating this one, for read_only=True"
    )
    #: how long a pinned key's reads stay on the primary after a scope with that key took it
    replica_pin_seconds: float = setting(
        "REPLICA_PIN_SECONDS",
        _seconds(allow_zero=True),
        5.0,
        "seconds a pinned key reads the primary",
        url=("replica_pin_seconds",),
    )
    #: a replica lagging more than this is skipped (None: lag not checked)
    max_replica_lag: float | None = setting(
        "MAX_REPLICA_LAG",
        _seconds(allow_none=True),
        None,
        "seconds of lag beyond which a replica is skipped",
        url=("max_replica_lag",),
    )

    #: what the node state checks read on a multi-host alias (None: ``detect`` when HOST lists several)
    cluster: str | None = setting(
        "CLUSTER",
        Parser("str", _cluster_of),
        None,
        "'galera', 'postgresql' or 'detect': a connection only on a node in the right state",
        url=("cluster",),
    )
    #: which node a connection goes to (libpq's target_session_attrs names)
    target_node: str = setting(
        "TARGET",
        Parser("str", _target_of),
        "read-write",
        "the node a connection goes to: 'read-write', 'any', 'prefer-standby'...",
        url=("target", "target_session_attrs"),
    )
    #: the order the hosts of a multi-host alias are tried in: the first healthy one, or in turn
    host_order: str = setting(
        "HOST_ORDER", _alone("str", _host_order), "in-order", "'in-order' or 'round-robin'", url=("host_order",)
    )

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            option = f.metadata.get("aconn")
            if option is not None and option.secret:
                value = "***" if value else ""
            elif f.name == "options":
                value = masked(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    __str__ = __repr__

    @property
    def target(self) -> str:
        """Where this alias connects, for messages: never includes the password."""
        if self.engine == "sqlite":
            return f"sqlite {self.name if self.name == ':memory:' else os.path.abspath(self.name)}"
        hosts = ",".join(map(address_name, self.addresses))
        return f"{self.engine} {self.user}@{hosts}/{self.name}"

    @property
    def addresses(self) -> tuple[Address, ...]:
        """The servers of the alias, ``(host, port)`` each, in HOST's order (PORT the default port)."""
        port = self.port or DEFAULT_PORTS.get(self.engine, 3306)
        if not self.host or self.host.startswith("/"):
            return ((self.host or "localhost", port),)  # a unix socket's directory or path (Django's)
        entries = (_host_entry(self.alias, "HOST", e) for e in self.host.split(","))
        return tuple((host, own or port) for host, own in entries)

    @property
    def cluster_kind(self) -> str | None:
        """CLUSTER as it applies: ``detect`` for a multi-host alias that does not say."""
        if self.cluster is None and "," in self.host:
            return "detect"
        return self.cluster


def _check_replicas(parsed: Mapping[str, Settings]) -> None:
    for alias, settings in parsed.items():
        for replica in settings.replicas:
            found = parsed.get(replica)
            if found is None:
                raise ConfigError(alias, "REPLICAS", f"{replica!r} is not an alias of this handler")
            if found.engine != settings.engine:
                raise ConfigError(
                    alias, "REPLICAS", f"{replica!r} has ENGINE {found.engine!r}, not {settings.engine!r}"
                )


def parse_databases(databases: Mapping[str, Any]) -> dict[str, Settings]:
    """Parse a whole ``DATABASES``-like mapping: alias -> dict or URL string.

    :raises ConfigError: naming the alias and key of the first problem found.
    """
    if not isinstance(databases, Mapping):
        raise ConfigError("*", None, f"expected a mapping of alias -> settings, got {type(databases).__name__}")
    if not databases:
        raise ConfigError("*", None, "no database aliases configured")
    out: dict[str, Settings] = {}
    for alias, entry in databases.items():
        if not isinstance(alias, str) or not alias:
            raise ConfigError(str(alias), None, "an alias must be a non-empty string")
        if alias != "default" and alias.lower() == "default" and "default" not in databases:
            raise ConfigError(
                alias, None, "did you mean 'default'? connection() and atomic() use the alias 'default' by default"
            )
        out[alias] = parse_settings(alias, entry)
    _check_replicas(out)
    return out


def parse_settings(alias: str, entry: Any) -> Settings:
    """Parse one alias: a Django-style dict or a URL string.

    :raises ConfigError: naming the alias and the key at fault.
    """
    if isinstance(entry, str):
        entry = _url_to_dict(alias, entry)
    elif isinstance(entry, Settings):
        return entry
    if not isinstance(entry, Mapping):
        raise ConfigError(alias, None, f"expected a dict or a URL string, got {type(entry).__name__}")

    for key in entry:
        if not isinstance(key, str) or (key not in OPTIONS and key not in _DJANGO_IGNORED):
            hint = difflib.get_close_matches(str(key), sorted(OPTIONS), n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(alias, str(key), f"unknown setting{suggestion}")

    parsed: dict[str, Any] = {"alias": alias}
    for name, option in _FIELDS:
        value = entry.get(option.key, MISSING)
        if value is MISSING:
            value = option.default(parsed) if callable(option.default) else option.default
        parsed[name] = option.parse(alias, option.key, value, parsed)
    return Settings(**parsed)


def reset_by_default(engine: str, pooler: str | None) -> bool:
    """``RESET_ON_RELEASE``'s default: what the pool an app on this engine replaces does at release.

    asyncpg.Pool resets every connection it takes back (asyncpg's reset: advisory locks, cursors,
    listeners, ``RESET ALL``), and apps written for it rely on that: on asyncpg, reset (one round
    trip per scope that used the connection). Django, psycopg_pool and the MySQL drivers' pools
    keep session state: elsewhere, kept. Behind a transaction-mode pooler never (it would reset a
    server connection that other clients share).
    """
    return engine == "asyncpg" and pooler is None


def _engine(alias: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(alias, "ENGINE", f"must be a string such as 'mysql' or 'sqlite', got {value!r}")
    engine = ENGINE_ALIASES.get(value) or _URL_SCHEMES.get(value.lower())  # the URL spellings too
    if engine is not None:
        return engine
    if ("." in value or ":" in value) and not value.startswith("django.db.backends."):
        return value  # a backend class path, resolved by aconn.backends.load_backend
    raise ConfigError(alias, "ENGINE", unsupported_engine(value))


#: the poolers aconn knows, and the engines each fronts
POOLERS: Mapping[str, frozenset[str]] = {
    "pgbouncer": frozenset({"postgresql", "asyncpg"}),
    "proxysql": MYSQL_ENGINES,
    "rds_proxy": MYSQL_ENGINES | POSTGRESQL_ENGINES,
}


def _pooler(alias: str, value: Any, engine: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value.lower() not in POOLERS:
        raise ConfigError(alias, "POOLER", f"must be None or one of {', '.join(map(repr, POOLERS))}, got {value!r}")
    pooler = value.lower()
    if engine not in POOLERS[pooler]:
        raise ConfigError(alias, "POOLER", f"{pooler!r} does not front ENGINE {engine!r}")
    return pooler


def unsupported_engine(value: str) -> str:
    """The message for an engine aconn does not serve: the supported ones and the closest match
    (a ``+driver`` spelling suggests the driver's name; a database aconn does not serve suggests
    nothing: its last dotted name is compared, not the shared ``django.db.backends.`` prefix)."""
    known = sorted(ENGINE_ALIASES)
    driver = value.rpartition("+")[2]
    prefix, _, name = value.rpartition(".")
    same_prefix = [k for k in known if k.rpartition(".")[0] == prefix] or known
    by_name = {k.rpartition(".")[2]: k for k in same_prefix}
    if "+" in value and driver in ENGINE_ALIASES:
        hint = [driver]
    else:
        hint = [by_name[m] for m in difflib.get_close_matches(name, sorted(by_name), n=1, cutoff=0.8)]
    suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
    return (
        f"unsupported engine {value!r}{suggestion}; aconn serves {', '.join(known)}, "
        "or an aconn Backend class given by its import path"
    )


#: what each server accepts as a per-session statement limit, in seconds: PostgreSQL's
#: statement_timeout is whole milliseconds up to 2^31 - 1; MariaDB's max_statement_time goes up to
#: a year (MySQL's max_execution_time, in milliseconds, further): a MySQL alias may be either
_STATEMENT_TIMEOUT_RANGES: Mapping[str, tuple[float, float, str]] = {
    "postgresql": (0.001, 2147483.647, "PostgreSQL's statement_timeout: whole milliseconds up to 2147483647"),
    "mysql": (0.001, 31536000.0, "MariaDB's max_statement_time: up to 31536000 s; MySQL's max_execution_time: ms"),
}


def _plain(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def _statement_timeout(alias: str, key: str, value: Any, engine: str) -> float | None:
    seconds = _checked_seconds(alias, key, value, allow_none=True, allow_zero=False)
    family = _family(engine)
    if seconds is None or family is None:
        return seconds
    lowest, highest, server = _STATEMENT_TIMEOUT_RANGES[family]
    if not lowest <= seconds <= highest:
        raise ConfigError(
            alias,
            key,
            f"must be between {_plain(lowest)} and {_plain(highest)} seconds ({server}); got {seconds!r}"
            + (
                ": below a millisecond the server would round it to 0, which means no limit" if seconds < lowest else ""
            ),
        )
    return seconds


# -- URLs ---------------------------------------------------------------------

#: each setting's Option, by its DATABASES key, and the fields in the order they are parsed
_FIELDS: tuple[tuple[str, Option], ...] = tuple(
    (f.name, f.metadata["aconn"]) for f in fields(Settings) if "aconn" in f.metadata
)
OPTIONS: Mapping[str, Option] = {option.key: option for _, option in _FIELDS}
#: URL query parameter -> the setting's key
_QUERY_KEYS: Mapping[str, str] = {spelling: option.key for _, option in _FIELDS for spelling in option.url}


def _url_to_dict(alias: str, url: str) -> dict[str, Any]:
    """Turn ``scheme://user:pw@host:port/name?key=value`` into a settings dict."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(alias, "URL", "expected a URL such as 'mysql://user:pw@host/db' or 'sqlite:///path'")
    engine = _URL_SCHEMES.get(scheme.lower())
    if engine is None:
        known = ", ".join(sorted(_URL_SCHEMES))
        raise ConfigError(alias, "URL", f"unsupported scheme {scheme!r}; use one of {known}")
    entry: dict[str, Any] = {"ENGINE": engine}
    if engine == "sqlite":
        # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute.db
        path, _, query = rest.partition("?")
        if not path.startswith("/"):
            raise ConfigError(alias, "URL", "a SQLite URL is 'sqlite:///relative/path' or 'sqlite:////absolute/path'")
        entry["NAME"] = unquote(path[1:])
    else:
        query = _server_url(alias, scheme, rest, entry)
    options: dict[str, Any] = {}
    for raw_key, raw_value in parse_qsl(query, keep_blank_values=True):
        key = _QUERY_KEYS.get(raw_key.lower())
        if key is not None:
            entry[key] = _url_value(alias, key, raw_value)
            continue
        hint = difflib.get_close_matches(raw_key.lower(), sorted(_QUERY_KEYS), n=1, cutoff=0.8)
        if hint:  # a typo of aconn's own parameters, not a driver option
            raise ConfigError(alias, raw_key, f"unknown URL parameter (did you mean {hint[0]!r}?)")
        if raw_key in _TLS_PARAMETERS:
            options.setdefault("ssl", {})[_TLS_PARAMETERS[raw_key]] = _option_value(raw_value)
        else:  # a driver option, checked by the backend exactly as OPTIONS is
            options[raw_key] = _option_value(raw_value)
    if options:
        entry["OPTIONS"] = options
    return entry


def _option_value(raw: str) -> Any:
    """A driver option from a URL: a number or a boolean where it reads as one, else the string."""
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(raw.lower(), raw)


def _server_url(alias: str, scheme: str, rest: str, entry: dict[str, Any]) -> str:
    """Fill USER, PASSWORD, HOST, PORT and NAME from ``user:pw@host:port/name?query``; return the query.

    The userinfo is split off first, at the last ``@``, so that a password is never
    mistaken for a host, a path or a query. No message here quotes the URL.
    """
    userinfo, at, hostpart = rest.rpartition("@")
    if at and any(c in userinfo for c in "/?#"):
        raise ConfigError(
            alias,
            "URL",
            "the user or password contains '/', '?' or '#': percent-encode them "
            "(urllib.parse.quote(password, safe=''))",
        )
    netloc_end = min((i for i in (hostpart.find("/"), hostpart.find("?")) if i >= 0), default=len(hostpart))
    several = hostpart[:netloc_end] if "," in hostpart[:netloc_end] else None
    if several is not None:  # libpq's and SQLAlchemy's multi-host form: host1:port1,host2:port2
        hostpart = "multi-host" + hostpart[netloc_end:]
    try:
        parts = urlsplit(f"{scheme}://{hostpart}")
        port = parts.port
    except ValueError as exc:
        raise ConfigError(alias, "URL", f"cannot parse the URL: invalid host or port ({type(exc).__name__})") from None
    user, _, password = userinfo.partition(":")
    entry["USER"] = unquote(user)
    entry["PASSWORD"] = unquote(password)
    entry["HOST"] = several if several is not None else parts.hostname or ""
    entry["PORT"] = port
    entry["NAME"] = unquote(parts.path.lstrip("/"))
    return parts.query


def _url_value(alias: str, key: str, raw: str) -> Any:
    lowered = raw.strip().lower()
    kind = OPTIONS[key].parse.url_kind
    if kind == "bool":
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(alias, key, f"must be true or false, got {raw!r}")
    if lowered in ("none", "null", ""):
        return None
    if kind == "str":
        return lowered
    try:
        return int(lowered) if kind == "int" else float(lowered)
    except ValueError:
        raise ConfigError(alias, key, f"must be a number, got {raw!r}") from None
