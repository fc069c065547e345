"""Backends: one module per driver, behind the protocol in :mod:`aconn.backends.base`."""

from __future__ import annotations

import importlib
import importlib.util

from ..errors import ConfigError
from ..settings import Settings, unsupported_engine
from .base import Backend, ErrorKind, ServerLimits

__all__ = ("Backend", "ErrorKind", "ServerLimits", "load_backend")


def _missing_driver(settings: Settings, driver: str, extra: str, exc: ImportError, other: str = "") -> ConfigError:
    return ConfigError(
        settings.alias,
        "ENGINE",
        f"{settings.engine!r} needs the {driver} driver, which is not installed ({exc}): "
        f"pip install 'aconn[{extra}]'{other}",
    )


def load_backend(settings: Settings) -> Backend:
    """Build the backend for one alias from its engine, or from a ``Backend`` class path.

    The engines: ``mysql`` (aiomysql), ``asyncmy``, ``sqlite``, ``postgresql`` (psycopg), ``asyncpg``.

    :raises ConfigError: if the engine cannot be loaded or rejects the options.
    """
    engine = settings.engine
    cls: type[Backend]
    if engine == "mysql":
        from .mysql import MySQLBackend

        cls = MySQLBackend
    elif engine == "asyncmy":
        try:
            from .asyncmy import AsyncmyBackend
        except ImportError as exc:
            raise _missing_driver(settings, "asyncmy", "asyncmy", exc) from None
        cls = AsyncmyBackend
    elif engine == "sqlite":
        from .sqlite import SQLiteBackend

        cls = SQLiteBackend
    elif engine == "postgresql":
        try:
            from .postgresql import PsycopgBackend
        except ImportError as exc:
            other = (
                "; or, since asyncpg is installed, use it: a postgresql+asyncpg:// URL or ENGINE 'asyncpg'"
                if importlib.util.find_spec("asyncpg") is not None
                else ""
            )
            raise _missing_driver(settings, "psycopg", "postgresql", exc, other) from None
        cls = PsycopgBackend
    elif engine == "asyncpg":
        try:
            from .asyncpg import AsyncpgBackend
        except ImportError as exc:
            raise _missing_driver(settings, "asyncpg", "asyncpg", exc) from None
        cls = AsyncpgBackend
    else:
        module_name, sep, attr = engine.replace(":", ".").rpartition(".")
        try:
            found = getattr(importlib.import_module(module_name), attr) if sep else None
        except ImportError as exc:
            raise ConfigError(
                settings.alias, "ENGINE", f"{unsupported_engine(engine)}; importing it failed: {exc}"
            ) from None
        except AttributeError:
            found = None
        if not (isinstance(found, type) and issubclass(found, Backend)):
            raise ConfigError(settings.alias, "ENGINE", f"{engine!r} is not an aconn Backend class")
        cls = found
    return cls(settings)
