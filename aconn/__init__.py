"""aconn: asyncio-native database connections, scoped per unit of work.

Django's persistent-connection model (``CONN_MAX_AGE``, ``CONN_HEALTH_CHECKS``,
checks when every request starts and ends) for async code, with connections
scoped by a context variable instead of a thread.
"""

from __future__ import annotations

from .errors import AconnError, AcquireTimeout, ClosedError, ConfigError, PoolOverloaded, ScopeError, TransactionError
from .handler import Connections
from .hooks import HookEvent
from .iteration import Jobs
from .scope import Scope
from .settings import Settings
from .stats import PoolStats
from .transactions import Atomic
from .typed import Alias

__all__ = (
    "AconnError",
    "AcquireTimeout",
    "Alias",
    "Atomic",
    "ClosedError",
    "ConfigError",
    "Connections",
    "HookEvent",
    "Jobs",
    "PoolOverloaded",
    "PoolStats",
    "Scope",
    "ScopeError",
    "Settings",
    "TransactionError",
)

__version__ = "0.1.0"
