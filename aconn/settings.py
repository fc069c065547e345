"""Parse Django ``DATABASES`` entries and database URLs into frozen settings.

Everything here runs once, when a :class:`~aconn.Connections` is built; the
hot path only reads attributes of :class:`Settings`.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .errors import ConfigError

__all__ = ("Settings", "parse_databases", "parse_settings")

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

_KNOWN = frozenset(
    {
        "ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT", "OPTIONS",
        "CONN_MAX_AGE", "CONN_HEALTH_CHECKS", "AUTOCOMMIT",
        "MAX_CONNS", "MIN_CONNS", "ACQUIRE_TIMEOUT", "CONNECT_TIMEOUT",
        "IDLE_TIMEOUT", "LEAK_TIMEOUT", "STATEMENT_TIMEOUT", "CANCEL_ON_SERVER", "MAX_WAITING",
        "ATOMIC_REQUESTS", "RESET_ON_RELEASE", "POOLER",
        "REPLICAS", "REPLICA_PIN_SECONDS", "MAX_REPLICA_LAG",
    }
)  # fmt: skip

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


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    """Validated settings of one alias. Built by :func:`parse_settings`."""

    alias: str
    engine: str
    name: str
    user: str = ""
    password: str = field(default="", compare=False)
    host: str = ""
    port: int | None = None
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    conn_max_age: float | None = 0.0
    health_checks: bool = False
    autocommit: bool = True
    max_conns: int = 10
    min_conns: int = 0
    acquire_timeout: float = 30.0
    connect_timeout: float = 10.0
    idle_timeout: float | None = None
    leak_timeout: float | None = None
    #: server-side limit on each statement, set once per session (None: the server's own)
    statement_timeout: float | None = None
    #: stop a cancelled caller's statement at the server before its slot is reused
    cancel_on_server: bool = True
    #: tasks that may wait for a connection of the alias; beyond, PoolOverloaded at once (None: no limit)
    max_waiting: int | None = None
    #: ConnectionsMiddleware runs each HTTP request in ``atomic()`` on the alias (Django's setting)
    atomic_requests: bool = False
    #: reset session state when a scope gives the connection back (PostgreSQL ``DISCARD ALL``,
    #: asyncpg's reset, MySQL ``COM_RESET_CONNECTION``); default: see :func:`reset_by_default`
    reset_on_release: bool = False
    #: the connection pooler between aconn and the server: None, "pgbouncer", "proxysql", "rds_proxy"
    pooler: str | None = None
    #: other aliases of the handler that replicate this one: read_only=True reads from them
    replicas: tuple[str, ...] = ()
    #: how long a pinned key's reads stay on the primary after a scope with that key took it
    replica_pin_seconds: float = 5.0
    #: a replica lagging more than this is skipped (None: lag not checked)
    max_replica_lag: float | None = None

    def __repr__(self) -> str:
        shown = masked(self.options)
        return (
            f"Settings(alias={self.alias!r}, engine={self.engine!r}, name={self.name!r}, "
            f"user={self.user!r}, password={'***' if self.password else ''!r}, "
            f"host={self.host!r}, port={self.port!r}, options={shown!r}, "
            f"conn_max_age={self.conn_max_age!r}, health_checks={self.health_checks!r}, "
            f"autocommit={self.autocommit!r}, max_conns={self.max_conns!r}, "
            f"min_conns={self.min_conns!r}, acquire_timeout={self.acquire_timeout!r}, "
            f"connect_timeout={self.connect_timeout!r}, idle_timeout={self.idle_timeout!r}, "
            f"leak_timeout={self.leak_timeout!r}, statement_timeout={self.statement_timeout!r}, "
            f"cancel_on_server={self.cancel_on_server!r}, max_waiting={self.max_waiting!r}, "
            f"atomic_requests={self.atomic_requests!r}, reset_on_release={self.reset_on_release!r}, "
            f"pooler={self.pooler!r}, replicas={self.replicas!r}, replica_pin_seconds={self.replica_pin_seconds!r}, "
            f"max_replica_lag={self.max_replica_lag!r})"
        )

    __str__ = __repr__

    @property
    def target(self) -> str:
        """Where this alias connects, for messages: never includes the password."""
        if self.engine == "sqlite":
            return f"sqlite {self.name if self.name == ':memory:' else os.path.abspath(self.name)}"
        port = self.port or DEFAULT_PORTS.get(self.engine, 3306)
        return f"{self.engine} {self.user}@{self.host or 'localhost'}:{port}/{self.name}"


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
        if not isinstance(key, str) or (key not in _KNOWN and key not in _DJANGO_IGNORED):
            hint = difflib.get_close_matches(str(key), sorted(_KNOWN), n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(alias, str(key), f"unknown setting{suggestion}")

    engine = _engine(alias, entry.get("ENGINE", "sqlite"))
    name = _string(alias, entry, "NAME", "")
    if engine == "sqlite" and not name:
        raise ConfigError(alias, "NAME", "a SQLite database needs a file path or ':memory:'")
    max_conns = _int(alias, entry, "MAX_CONNS", 10, minimum=1)
    min_conns = _int(alias, entry, "MIN_CONNS", 0, minimum=0)
    if min_conns > max_conns:
        raise ConfigError(alias, "MIN_CONNS", f"{min_conns} is above MAX_CONNS={max_conns}")
    options = entry.get("OPTIONS", {})
    if options is None:
        options = {}
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise ConfigError(alias, "OPTIONS", "must be a dict with string keys")
    if _bool(alias, entry, "ATOMIC_REQUESTS", False) and not _bool(alias, entry, "AUTOCOMMIT", True):
        raise ConfigError(
            alias, "ATOMIC_REQUESTS", "needs AUTOCOMMIT True: a request's transaction is begun by atomic()"
        )

    pooler = _pooler(alias, entry.get("POOLER"), engine)
    return Settings(
        alias=alias,
        engine=engine,
        name=name,
        user=_string(alias, entry, "USER", ""),
        password=_string(alias, entry, "PASSWORD", ""),
        host=_string(alias, entry, "HOST", ""),
        port=_port(alias, entry.get("PORT")),
        options=MappingProxyType(dict(options)),
        conn_max_age=_seconds(alias, entry, "CONN_MAX_AGE", 0.0, allow_none=True, allow_zero=True),
        health_checks=_bool(alias, entry, "CONN_HEALTH_CHECKS", False),
        autocommit=_bool(alias, entry, "AUTOCOMMIT", True),
        max_conns=max_conns,
        min_conns=min_conns,
        acquire_timeout=_required_seconds(alias, entry, "ACQUIRE_TIMEOUT", 30.0),
        connect_timeout=_required_seconds(alias, entry, "CONNECT_TIMEOUT", 10.0),
        idle_timeout=_seconds(alias, entry, "IDLE_TIMEOUT", None, allow_none=True),
        leak_timeout=_seconds(alias, entry, "LEAK_TIMEOUT", None, allow_none=True),
        statement_timeout=_statement_timeout(alias, entry, engine),
        cancel_on_server=_bool(alias, entry, "CANCEL_ON_SERVER", True),
        atomic_requests=_bool(alias, entry, "ATOMIC_REQUESTS", False),
        reset_on_release=_bool(alias, entry, "RESET_ON_RELEASE", reset_by_default(engine, pooler)),
        pooler=pooler,
        replicas=_replicas(alias, entry.get("REPLICAS")),
        replica_pin_seconds=_required_seconds_or_zero(alias, entry, "REPLICA_PIN_SECONDS", 5.0),
        max_replica_lag=_seconds(alias, entry, "MAX_REPLICA_LAG", None, allow_none=True),
        max_waiting=None if entry.get("MAX_WAITING") is None else _int(alias, entry, "MAX_WAITING", 0, minimum=0),
    )


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


def _string(alias: str, entry: Mapping[str, Any], key: str, default: str) -> str:
    value = entry.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ConfigError(alias, key, f"must be a string, got {type(value).__name__}")
    return value


def _port(alias: str, value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ConfigError(alias, "PORT", "must be an integer, got bool")
    if isinstance(value, str):
        if not value.strip().isdigit():
            raise ConfigError(alias, "PORT", f"must be an integer, got {value!r}")
        value = int(value)
    if not isinstance(value, int) or not 0 < value < 65536:
        raise ConfigError(alias, "PORT", f"must be between 1 and 65535, got {value!r}")
    return value


def _bool(alias: str, entry: Mapping[str, Any], key: str, default: bool) -> bool:
    value = entry.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(alias, key, f"must be True or False, got {value!r}")
    return value


def _int(alias: str, entry: Mapping[str, Any], key: str, default: int, *, minimum: int) -> int:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(alias, key, f"must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(alias, key, f"must be at least {minimum}, got {value}")
    return value


def _seconds(
    alias: str,
    entry: Mapping[str, Any],
    key: str,
    default: float | None,
    *,
    allow_none: bool = False,
    allow_zero: bool = False,
) -> float | None:
    value = entry.get(key, default)
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


#: what each server accepts as a per-session statement limit, in seconds: PostgreSQL's
#: statement_timeout is whole milliseconds up to 2^31 - 1; MariaDB's max_statement_time goes up to
#: a year (MySQL's max_execution_time, in milliseconds, further): a MySQL alias may be either
_STATEMENT_TIMEOUT_RANGES: Mapping[str, tuple[float, float, str]] = {
    "postgresql": (0.001, 2147483.647, "PostgreSQL's statement_timeout: whole milliseconds up to 2147483647"),
    "mysql": (0.001, 31536000.0, "MariaDB's max_statement_time: up to 31536000 s; MySQL's max_execution_time: ms"),
}


def _plain(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def _statement_timeout(alias: str, entry: Mapping[str, Any], engine: str) -> float | None:
    value = _seconds(alias, entry, "STATEMENT_TIMEOUT", None, allow_none=True)
    family = "postgresql" if engine in POSTGRESQL_ENGINES else "mysql" if engine in MYSQL_ENGINES else None
    if value is None or family is None:
        return value
    lowest, highest, server = _STATEMENT_TIMEOUT_RANGES[family]
    if not lowest <= value <= highest:
        raise ConfigError(
            alias,
            "STATEMENT_TIMEOUT",
            f"must be between {_plain(lowest)} and {_plain(highest)} seconds ({server}); got {value!r}"
            + (": below a millisecond the server would round it to 0, which means no limit" if value < lowest else ""),
        )
    return value


def _required_seconds_or_zero(alias: str, entry: Mapping[str, Any], key: str, default: float) -> float:
    value = _seconds(alias, entry, key, default, allow_zero=True)
    assert value is not None
    return value


def _replicas(alias: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(alias, "REPLICAS", f"must be a list of aliases, got {value!r}")
    if alias in value:
        raise ConfigError(alias, "REPLICAS", "an alias cannot be its own replica")
    return tuple(value)


def _required_seconds(alias: str, entry: Mapping[str, Any], key: str, default: float) -> float:
    value = _seconds(alias, entry, key, default)
    assert value is not None
    return value


# -- URLs ---------------------------------------------------------------------

_QUERY_KEYS: Mapping[str, str] = {
    "conn_max_age": "CONN_MAX_AGE",
    "health_checks": "CONN_HEALTH_CHECKS",
    "conn_health_checks": "CONN_HEALTH_CHECKS",
    "autocommit": "AUTOCOMMIT",
    "max_conns": "MAX_CONNS",
    "min_conns": "MIN_CONNS",
    "acquire_timeout": "ACQUIRE_TIMEOUT",
    "connect_timeout": "CONNECT_TIMEOUT",
    "idle_timeout": "IDLE_TIMEOUT",
    "leak_timeout": "LEAK_TIMEOUT",
    "statement_timeout": "STATEMENT_TIMEOUT",
    "cancel_on_server": "CANCEL_ON_SERVER",
    "max_waiting": "MAX_WAITING",
    "atomic_requests": "ATOMIC_REQUESTS",
    "reset_on_release": "RESET_ON_RELEASE",
    "pooler": "POOLER",
    "replica_pin_seconds": "REPLICA_PIN_SECONDS",
    "max_replica_lag": "MAX_REPLICA_LAG",
}
_INT_KEYS = frozenset({"MAX_CONNS", "MIN_CONNS", "MAX_WAITING"})
_BOOL_KEYS = frozenset({"CONN_HEALTH_CHECKS", "AUTOCOMMIT", "CANCEL_ON_SERVER", "ATOMIC_REQUESTS", "RESET_ON_RELEASE"})


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
    try:
        parts = urlsplit(f"{scheme}://{hostpart}")
        port = parts.port
    except ValueError as exc:
        raise ConfigError(alias, "URL", f"cannot parse the URL: invalid host or port ({type(exc).__name__})") from None
    user, _, password = userinfo.partition(":")
    entry["USER"] = unquote(user)
    entry["PASSWORD"] = unquote(password)
    entry["HOST"] = parts.hostname or ""
    entry["PORT"] = port
    entry["NAME"] = unquote(parts.path.lstrip("/"))
    return parts.query


def _url_value(alias: str, key: str, raw: str) -> Any:
    lowered = raw.strip().lower()
    if key in _BOOL_KEYS:
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(alias, key, f"must be true or false, got {raw!r}")
    if lowered in ("none", "null", ""):
        return None
    if key == "POOLER":
        return lowered
    try:
        return int(lowered) if key in _INT_KEYS else float(lowered)
    except ValueError:
        raise ConfigError(alias, key, f"must be a number, got {raw!r}") from None
