"""The aconn error family.

Driver errors (``pymysql.err.OperationalError``, ``sqlite3.Error``...) are not
wrapped: they reach the caller unchanged, because users already catch them.
"""

from __future__ import annotations

__all__ = (
    "AconnError",
    "AcquireTimeout",
    "ClosedError",
    "ConfigError",
    "InternalError",
    "PoolOverloaded",
    "ScopeError",
    "TransactionError",
)


class AconnError(Exception):
    """Base class of every error aconn raises itself."""


class ConfigError(AconnError, ValueError):
    """Settings are invalid: the message names the alias and the key."""

    def __init__(self, alias: str, key: str | None, message: str) -> None:
        self.alias = alias
        self.key = key
        where = f"DATABASES[{alias!r}]" + (f"[{key!r}]" if key else "")
        super().__init__(f"{where}: {message}")


class ScopeError(AconnError, RuntimeError):
    """A connection was asked for outside a scope, or from a task that does not own it."""


class AcquireTimeout(AconnError, TimeoutError):
    """No connection could be had within ``ACQUIRE_TIMEOUT``."""


class PoolOverloaded(AcquireTimeout):
    """``MAX_WAITING`` tasks already wait for a connection of the alias: refused at once."""


class ClosedError(AconnError, RuntimeError):
    """The handler (or one of its aliases) is closed."""


class TransactionError(AconnError, RuntimeError):
    """An ``atomic()`` block was misused (ended by hand, left in another task, exited out of order),
    or a test's transaction was lost before its rollback.
    """


class InternalError(RuntimeError):
    """An invariant of aconn itself broke: a bug to report, never a condition of the database or
    of the app's use. Deliberately not an :class:`AconnError`, so that an app's
    ``except AconnError`` (a busy pool, a closed handler) never swallows one.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"{message} (an internal error of aconn: please report it)")
