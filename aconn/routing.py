"""Read replicas and routers: where ``connection(alias, read_only=True)`` reads from.

An alias with ``REPLICAS`` (other aliases of the same handler) reads from a
healthy replica; the choice is stable within a scope and spread across scopes.
A scope that took the alias' primary connection reads from it too
(read-your-writes), and ``connections.scope(pin=key)`` keeps a key's reads on
the primary for ``REPLICA_PIN_SECONDS`` after a scope with that key took it.
Health and lag are checked in the background, at most once a second per
replica, never on the scope path, starting at ``open()``; with no healthy
replica, reads go to the primary (counted in ``PoolStats.replica_fallbacks``).
With ``MAX_REPLICA_LAG`` a replica serves reads only once a check qualified it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Mapping, Sequence
from time import monotonic
from typing import Any, Protocol

__all__ = ("CHECK_INTERVAL", "ReplicaSet", "Router", "route")

#: how often, at most, the health and lag of one replica are checked
CHECK_INTERVAL = 1.0


class Router(Protocol):
    """Django's router method names: an alias, or None to let the next router (or "default") decide."""

    def db_for_read(self, hints: Mapping[str, Any]) -> str | None: ...

    def db_for_write(self, hints: Mapping[str, Any]) -> str | None: ...


def route(routers: Sequence[Any], read_only: bool, hints: Mapping[str, Any]) -> str:
    """The alias the first router names (``db_for_read`` or ``db_for_write``), else ``"default"``."""
    for router in routers:
        method = getattr(router, "db_for_read" if read_only else "db_for_write", None)
        alias = method(hints) if method is not None else None
        if alias is not None:
            return str(alias)
    return "default"


class ReplicaSet:
    """The replicas of one alias: which are healthy, which one a new scope reads from, the pins."""

    def __init__(self, primary: str, replicas: Sequence[str], max_lag: float | None, pin_seconds: float) -> None:
        self.primary = primary
        self.replicas = tuple(replicas)
        self.max_lag = max_lag
        self.pin_seconds = pin_seconds
        #: replica -> usable now (reachable, and within MAX_REPLICA_LAG when set). With a lag
        #: limit a replica starts unqualified: reads go to the primary until a check found it
        #: within the limit (a replica whose replication stopped is never read unchecked)
        self.healthy: dict[str, bool] = dict.fromkeys(self.replicas, max_lag is None)
        #: replica -> the lag seen at its last check (seconds; inf: replication stopped)
        self.lag: dict[str, float | None] = dict.fromkeys(self.replicas)
        self.next_check: dict[str, float] = dict.fromkeys(self.replicas, 0.0)
        self.checking: set[str] = set()
        self.pins: dict[Hashable, float] = {}
        self._turn = itertools.count()

    def pick(self) -> str | None:
        """A healthy replica, in turn; None when none is."""
        healthy = [r for r in self.replicas if self.healthy[r]]
        if not healthy:
            return None
        return healthy[next(self._turn) % len(healthy)]

    def due(self, now: float) -> list[str]:
        """Replicas whose check is due now (and not running); their next check is set a second ahead."""
        found = [r for r in self.replicas if now >= self.next_check[r] and r not in self.checking]
        for replica in found:
            self.next_check[replica] = now + CHECK_INTERVAL
            self.checking.add(replica)
        return found

    def report(self, replica: str, lag: float | None, reachable: bool) -> None:
        """The outcome of a check."""
        self.checking.discard(replica)
        self.lag[replica] = lag
        lagging = self.max_lag is not None and lag is not None and (math.isinf(lag) or lag > self.max_lag)
        self.healthy[replica] = reachable and not lagging

    def down(self, replica: str) -> None:
        """A connect to ``replica`` failed in a scope: skip it until its next check finds it back."""
        self.healthy[replica] = False
        self.next_check[replica] = min(self.next_check[replica], monotonic() + CHECK_INTERVAL)

    def pin(self, key: Hashable) -> None:
        now = monotonic()
        if len(self.pins) > 10_000:  # forget the expired ones now and then
            self.pins = {k: until for k, until in self.pins.items() if until > now}
        self.pins[key] = now + self.pin_seconds

    def pinned(self, key: Hashable) -> bool:
        until = self.pins.get(key)
        return until is not None and until > monotonic()
