"""Settings: Django dicts and URLs in, frozen Settings out, precise errors for bad input."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_no_password

import aconn
from aconn.settings import parse_settings

SECRET = "hunter2-very-secret"


def test_django_entry_pasted_as_is() -> None:
    s = parse_settings(
        "default",
        {
            "ENGINE": "django.db.backends.mysql", "NAME": "chipdb", "USER": "chip", "PASSWORD": SECRET,
            "HOST": "db", "PORT": "3307", "CONN_MAX_AGE": 60, "CONN_HEALTH_CHECKS": True,
            "OPTIONS": {"charset": "utf8mb4"}, "ATOMIC_REQUESTS": False, "TIME_ZONE": None, "TEST": {},
        },
    )  # fmt: skip
    assert (s.engine, s.name, s.user, s.host, s.port) == ("mysql", "chipdb", "chip", "db", 3307)
    assert s.conn_max_age == 60.0 and s.health_checks is True and s.autocommit is True
    assert s.options["charset"] == "utf8mb4"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.max_conns = 3  # type: ignore[misc]


def test_defaults_follow_django() -> None:
    s = parse_settings("default", {"ENGINE": "sqlite", "NAME": ":memory:"})
    assert s.conn_max_age == 0.0 and s.health_checks is False and s.autocommit is True
    assert (s.max_conns, s.min_conns, s.acquire_timeout, s.connect_timeout) == (10, 0, 30.0, 10.0)
    assert s.idle_timeout is None and s.leak_timeout is None


def test_mysql_url() -> None:
    s = parse_settings("replica", f"mysql://ro:{SECRET}@db2:3306/chipdb?conn_max_age=60&health_checks=true&max_conns=4")
    assert (s.engine, s.user, s.password, s.host, s.port, s.name) == ("mysql", "ro", SECRET, "db2", 3306, "chipdb")
    assert s.conn_max_age == 60.0 and s.health_checks is True and s.max_conns == 4


def test_url_none_age_and_percent_encoding() -> None:
    s = parse_settings("a", "mysql://u%40x:p%2Fw@h/db?conn_max_age=none")
    assert s.user == "u@x" and s.password == "p/w" and s.conn_max_age is None and s.port is None


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("sqlite:///var/cache.db", "var/cache.db"),
        ("sqlite:////tmp/x.db", "/tmp/x.db"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
def test_sqlite_urls(url: str, name: str) -> None:
    assert parse_settings("cache", url).name == name


@pytest.mark.parametrize(
    ("entry", "key", "fragment"),
    [
        ({"ENGINE": "sqlite", "NAME": "x", "MAX_CONN": 3}, "MAX_CONN", "did you mean 'MAX_CONNS'"),
        ({"ENGINE": "oracle", "NAME": "x"}, "ENGINE", "unsupported engine"),
        ({"ENGINE": "sqlite", "NAME": "x", "CONN_MAX_AGE": -1}, "CONN_MAX_AGE", "0 or more"),
        ({"ENGINE": "sqlite", "NAME": "x", "CONN_MAX_AGE": "60"}, "CONN_MAX_AGE", "number of seconds"),
        ({"ENGINE": "sqlite", "NAME": "x", "CONN_HEALTH_CHECKS": "yes"}, "CONN_HEALTH_CHECKS", "True or False"),
        ({"ENGINE": "sqlite", "NAME": "x", "MAX_CONNS": 0}, "MAX_CONNS", "at least 1"),
        ({"ENGINE": "sqlite", "NAME": "x", "MAX_CONNS": True}, "MAX_CONNS", "integer"),
        ({"ENGINE": "sqlite", "NAME": "x", "MIN_CONNS": 5, "MAX_CONNS": 2}, "MIN_CONNS", "above MAX_CONNS"),
        ({"ENGINE": "mysql", "PORT": "33o6"}, "PORT", "integer"),
        ({"ENGINE": "mysql", "PORT": 70000}, "PORT", "between 1 and 65535"),
        ({"ENGINE": "sqlite", "NAME": "x", "ACQUIRE_TIMEOUT": 0}, "ACQUIRE_TIMEOUT", "above 0"),
        ({"ENGINE": "sqlite", "NAME": "x", "CONNECT_TIMEOUT": float("nan")}, "CONNECT_TIMEOUT", "finite"),
        ({"ENGINE": "sqlite"}, "NAME", "file path"),
        ({"ENGINE": "sqlite", "NAME": "x", "OPTIONS": ["a"]}, "OPTIONS", "dict"),
    ],
)
def test_bad_values_name_alias_and_key(entry: dict[str, object], key: str, fragment: str) -> None:
    with pytest.raises(aconn.ConfigError) as info:
        aconn.Connections({"primary": entry})
    assert info.value.alias == "primary" and info.value.key == key
    assert "DATABASES['primary']" in str(info.value) and repr(key) in str(info.value) and fragment in str(info.value)


@pytest.mark.parametrize(
    ("options", "key"),
    [({"passwd": "x"}, "OPTIONS.passwd"), ({"autocommit": False}, "OPTIONS.autocommit"), ({"nope": 1}, "OPTIONS.nope"),
     ({"isolation_level": "chaos"}, "OPTIONS.isolation_level")],
)  # fmt: skip
def test_mysql_options_checked_against_the_driver(options: dict[str, object], key: str) -> None:
    with pytest.raises(aconn.ConfigError) as info:
        aconn.Connections({"default": {"ENGINE": "mysql", "OPTIONS": options}})
    assert info.value.key == key


def test_sqlite_options_checked() -> None:
    with pytest.raises(aconn.ConfigError, match=r"OPTIONS\.charset"):
        aconn.Connections({"default": {"ENGINE": "sqlite", "NAME": "x", "OPTIONS": {"charset": "x"}}})


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("mysql://u:p@h/db?conn_max_agee=1", "conn_max_agee"),
        ("mysql://u:p@h/db?health_checks=maybe", "CONN_HEALTH_CHECKS"),
        ("oracle://u:p@h/db", "URL"),
        ("sqlite://relative.db", "URL"),
        ("nonsense", "URL"),
    ],
)
def test_bad_urls(url: str, key: str) -> None:
    with pytest.raises(aconn.ConfigError) as info:
        aconn.Connections({"default": url})
    assert info.value.key == key


def test_bad_port_in_url_keeps_password_out() -> None:
    with pytest.raises(aconn.ConfigError) as info:
        aconn.Connections({"default": f"mysql://u:{SECRET}@h:99999999/db"})
    assert info.value.key == "URL"
    assert_no_password(info.value, repr(info.value))
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)


def test_password_never_in_repr_or_str(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    handler = aconn.Connections(
        {"default": {"ENGINE": "mysql", "PASSWORD": SECRET, "OPTIONS": {"charset": "utf8mb4"}},
         "b": f"mysql://u:{SECRET}@h/db"}
    )  # fmt: skip
    for alias in handler.aliases:
        s = handler.settings(alias)
        assert SECRET not in repr(s) and SECRET not in str(s) and SECRET not in s.target
        assert "***" in repr(s)
    assert SECRET not in repr(handler)
    assert SECRET not in caplog.text


def test_unknown_alias() -> None:
    handler = aconn.Connections({"default": "sqlite:///:memory:"})
    with pytest.raises(aconn.ConfigError, match="no such alias"):
        handler.stats("nope")


def test_backend_class_path() -> None:
    with pytest.raises(aconn.ConfigError, match="not an aconn Backend"):
        aconn.Connections({"default": {"ENGINE": "collections.OrderedDict", "NAME": "x"}})
    from fakebackend import FakeServer

    server = FakeServer()
    entry = {"ENGINE": "fakebackend.FakeBackend", "NAME": "x", "OPTIONS": {"server": server}}
    handler = aconn.Connections({"default": entry})
    assert handler.settings().engine == "fakebackend.FakeBackend"
    assert handler.pool("default").backend.server is server  # type: ignore[attr-defined]


def test_public_names_exported() -> None:
    for name in aconn.__all__:
        assert getattr(aconn, name) is not None
    assert set(aconn.__all__) >= {
        "Connections",
        "AconnError",
        "ConfigError",
        "ScopeError",
        "AcquireTimeout",
        "ClosedError",
        "Alias",  # what users meet by name: connections.alias(), atomic(), each(), hooks' events
        "Atomic",
        "Jobs",
        "HookEvent",
    }
    for cls in (aconn.ConfigError, aconn.ScopeError, aconn.AcquireTimeout, aconn.ClosedError):
        assert issubclass(cls, aconn.AconnError)


@pytest.mark.parametrize(
    "url",
    [
        f"mysql://app:{SECRET}?tail@db.example/app",  # unescaped '?': the rest would be the query
        f"mysql://app:{SECRET}/tail@db.example/app",  # unescaped '/': the rest would be NAME
        f"mysql://app:{SECRET}#tail@db.example/app",
    ],
)
def test_malformed_url_never_shows_the_password(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(aconn.ConfigError) as info:
        aconn.Connections({"default": url})
    assert info.value.key == "URL" and "percent-encode" in str(info.value)
    for shown in (str(info.value), repr(info.value)):
        assert SECRET not in shown and "tail" not in shown
    from aconn.check import main

    for json_flag in ([], ["--json"]):
        assert main(["check", "--url", url, *json_flag]) == 2
        out, err = capsys.readouterr()
        assert "percent-encode" in out + err
        assert SECRET not in out + err and "tail" not in out + err


def test_unescaped_at_sign_in_the_password_is_understood() -> None:
    settings = parse_settings("default", f"mysql://app:{SECRET}@x@db.example:3307/app")
    assert (settings.user, settings.password, settings.host, settings.port, settings.name) == (
        "app", f"{SECRET}@x", "db.example", 3307, "app"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("ssl_option", "key", "fragment"),
    [
        ({}, "OPTIONS.ssl", "ssl.SSLContext or a dict"),
        (True, "OPTIONS.ssl", "got bool"),
        ({"ca": "/nonexistent/ca.pem"}, "OPTIONS.ssl.ca", "cannot load the CA certificate"),
        ({"capath": "/etc/ssl"}, "OPTIONS.ssl.capath", "unknown TLS option"),
        ({"check_hostname": "yes"}, "OPTIONS.ssl.check_hostname", "True or False"),
        ({"key": "/k.pem"}, "OPTIONS.ssl.key", "needs its certificate"),
    ],
)
def test_tls_options_checked_at_construction(ssl_option: object, key: str, fragment: str) -> None:
    with pytest.raises(aconn.ConfigError) as info:
        aconn.Connections({"default": {"ENGINE": "mysql", "OPTIONS": {"ssl": ssl_option}}})
    assert info.value.key == key and fragment in str(info.value)


def test_tls_django_form_and_context(tmp_path: Path) -> None:
    import ssl

    from faults import make_certificates

    certs = make_certificates(tmp_path)
    handler = aconn.Connections({"default": {"ENGINE": "mysql", "OPTIONS": {"ssl": {"ca": certs["ca"]}}}})
    context = handler.pool("default").backend._kwargs["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname and context.verify_mode is ssl.CERT_REQUIRED
    given = ssl.create_default_context()
    handler = aconn.Connections({"default": {"ENGINE": "mysql", "OPTIONS": {"ssl": given}}})
    assert handler.pool("default").backend._kwargs["ssl"] is given


def test_new_keys_from_urls() -> None:
    settings = parse_settings("default", "mysql://u@h/db?statement_timeout=2.5&cancel_on_server=false")
    assert settings.statement_timeout == 2.5 and settings.cancel_on_server is False
    assert parse_settings("default", "mysql://u@h/db").cancel_on_server is True


SECRET = "s3cret-value-42"


@pytest.mark.parametrize(
    "entry",
    [
        {"ENGINE": "postgresql", "NAME": "app", "PASSWORD": SECRET, "OPTIONS": {"sslpassword": SECRET}},
        f"postgresql://u:{SECRET}@h/app?sslpassword={SECRET}",
        {"ENGINE": "asyncpg", "NAME": "app", "OPTIONS": {"passfile": "/x", "password_token": SECRET}},
        {"ENGINE": "mysql", "NAME": "app", "OPTIONS": {"passwd": SECRET, "ssl": {"key_password": SECRET}}},
        {"ENGINE": "asyncmy", "NAME": "app", "OPTIONS": {"ssl_key_password": SECRET}},
        {"ENGINE": "sqlite", "NAME": "app.db", "OPTIONS": {"api_secret": SECRET, "auth_token": SECRET}},
        {"ENGINE": "postgresql", "NAME": "app", "OPTIONS": {"PASSWORD": SECRET, "MySecretKey": SECRET}},
    ],
)
def test_every_secret_is_masked(entry: Any) -> None:
    """password, passwd, sslpassword, ssl_key_password, the URL's userinfo, and any OPTIONS key
    naming a password, secret or token, nested ones too: never in repr or str."""
    settings = parse_settings("default", entry)
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    assert "***" in repr(settings)


@pytest.mark.parametrize(
    ("engine", "value", "fragment"),
    [
        ("postgresql", 1e12, "2147483.647"),
        ("asyncpg", 3_000_000, "2147483.647"),
        ("mysql", 1e12, "31536000"),
        ("asyncmy", 1e-9, "below a millisecond"),
        ("postgresql", 0.0004, "below a millisecond"),
    ],
)
def test_statement_timeout_range(engine: str, value: float, fragment: str) -> None:
    with pytest.raises(aconn.ConfigError, match=r"\['STATEMENT_TIMEOUT'\]") as caught:
        parse_settings("db", {"ENGINE": engine, "NAME": "app", "STATEMENT_TIMEOUT": value})
    assert fragment in str(caught.value) and "'db'" in str(caught.value)
    lowest = parse_settings("db", {"ENGINE": engine, "NAME": "app", "STATEMENT_TIMEOUT": 0.001})
    assert lowest.statement_timeout == 0.001


@pytest.mark.parametrize(
    ("engine", "canonical"),
    [
        ("aiomysql", "mysql"),
        ("asyncmy", "asyncmy"),
        ("psycopg", "postgresql"),
        ("asyncpg", "asyncpg"),
        ("aiosqlite", "sqlite"),
        ("postgresql+asyncpg", "asyncpg"),
        ("mysql+asyncmy", "asyncmy"),
        ("django.db.backends.postgresql", "postgresql"),
    ],
)
def test_every_driver_by_its_own_name(engine: str, canonical: str) -> None:
    """Driver names, Django's ENGINE names and the URL schemes, from one table."""
    assert parse_settings("db", {"ENGINE": engine, "NAME": "app.db"}).engine == canonical


def test_alias_typos_are_caught_with_a_suggestion() -> None:
    with pytest.raises(aconn.ConfigError, match="did you mean 'default'"):
        aconn.Connections({"Default": {"ENGINE": "sqlite", "NAME": ":memory:"}})
    handler = aconn.Connections({"default": {"ENGINE": "sqlite", "NAME": ":memory:"}, "reports": "sqlite:///r.db"})
    with pytest.raises(aconn.ConfigError, match="did you mean 'reports'"):
        handler.stats("Reports")
    with pytest.raises(aconn.ConfigError, match="did you mean 'reports'"):
        handler.acquire("report")


def test_the_schema_declares_every_setting_once() -> None:
    """Each setting is declared on its Settings field: the README's table lists exactly those keys,
    every URL spelling sets its key, and the secret ones are masked in the repr."""
    import re

    from aconn.settings import OPTIONS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme[readme.index("| key | default | meaning |") :].split("\n\n", 1)[0]
    documented = {key for row in table.splitlines()[2:] for key in re.findall(r"`([A-Z_]+)`", row.split("|")[1])}
    assert documented == set(OPTIONS)
    samples = {"bool": ("true", True), "int": ("3", 3), "float": ("2.5", 2.5), "str": ("pgbouncer", "pgbouncer")}
    # the settings whose string is one of a few words
    words = {"CLUSTER": "postgresql", "TARGET": "prefer-standby", "HOST_ORDER": "round-robin"}
    for key, option in OPTIONS.items():
        kind = option.parse.url_kind
        for spelling in option.url:
            assert kind is not None, key
            raw, value = (words[key], words[key]) if key in words else samples[kind]
            if key == "ATOMIC_REQUESTS" or key == "POOLER":
                continue  # checked against other settings: covered by their own tests
            parsed = parse_settings("a", f"postgresql://u@h/db?{spelling}={raw}")
            field = next(f.name for f in dataclasses.fields(parsed) if f.metadata.get("aconn") is option)
            if key == "MIN_CONNS":
                value = 3
            assert getattr(parsed, field) == value, (key, spelling)
    secret = {key for key, option in OPTIONS.items() if option.secret}
    assert secret == {"PASSWORD"}
    shown = repr(parse_settings("a", {"ENGINE": "postgresql", "PASSWORD": "hunter2"}))
    assert "hunter2" not in shown and "password='***'" in shown
