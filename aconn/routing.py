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

import asyncio
import itertools
import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from time import monotonic
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ClosedError, ConfigError

if TYPE_CHECKING:
    from .pool import Holder, Pool
    from .scope import Scope
    from .settings import Settings

__all__ = ("CHECK_INTERVAL", "Reads", "ReplicaSet", "Router", "route")

logger = logging.getLogger("aconn")

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


class ReadsHost(Protocol):
    """What :class:`Reads` needs of its handler (:class:`~aconn.Connections`)."""

    async def _take(self, scope: Scope, task: asyncio.Task[Any] | None, alias: str) -> Holder:
        """The scope's connection of ``alias``, taken now if it has none."""
        ...

    def _in_test_transaction(self, alias: str) -> bool:
        """True while a test's transaction (``aconn.testing``) serves ``alias``."""
        ...

    def pool(self, alias: str) -> Pool: ...

    def settings(self, alias: str) -> Settings: ...

    def acquire(self, alias: str) -> AbstractAsyncContextManager[Any]: ...


class Reads:
    """Where one handler's ``connection(alias, read_only=True)`` reads, for its aliases with ``REPLICAS``,
    and the background checks that qualify each replica."""

    def __init__(self, host: ReadsHost, settings: Mapping[str, Settings]) -> None:
        self._host = host
        #: primary alias -> its replicas' health, turn and pins (aliases with REPLICAS only)
        self.sets = {
            alias: ReplicaSet(alias, s.replicas, s.max_replica_lag, s.replica_pin_seconds)
            for alias, s in settings.items()
            if s.replicas
        }
        self._checks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """At ``open()``: check every replica in the background, so that one qualifies before its first read."""
        for replicas in self.sets.values():
            self._check(replicas)

    async def stop(self) -> None:
        """Cancel the checks running and wait for them."""
        checks = list(self._checks)
        for task in checks:
            task.cancel()
        await asyncio.gather(*checks, return_exceptions=True)

    def primary_taken(self, scope: Scope, replicas: ReplicaSet) -> None:
        """A scope took (or asked for) the primary: its key's reads stay there for ``REPLICA_PIN_SECONDS``."""
        pin = getattr(scope, "pin", None)
        if pin is not None:
            replicas.pin(pin)

    async def holder(self, scope: Scope, task: asyncio.Task[Any] | None, replicas: ReplicaSet) -> Holder:
        """A read: the scope's primary connection if it took one; else its replica; else a healthy replica
        in turn (the primary when the scope's key is pinned, or when no replica is healthy)."""
        host = self._host
        held = scope.held
        primary = replicas.primary
        holder = held.get(primary)
        if holder is not None:
            return holder  # read-your-writes: this scope already uses the primary
        if host._in_test_transaction(primary):
            return await host._take(scope, task, primary)  # the replicas cannot see the test's writes
        for replica in replicas.replicas:
            holder = held.get(replica)
            if holder is not None:
                return holder  # one replica per scope
        self._check(replicas)
        pin = getattr(scope, "pin", None)
        if pin is not None and replicas.pinned(pin):
            return await host._take(scope, task, primary)
        chosen = replicas.pick()
        if chosen is not None:
            try:
                return await host._take(scope, task, chosen)
            except (ConfigError, ClosedError):
                raise
            except Exception as exc:  # unreachable: skip it until its next check finds it back
                logger.warning("aconn alias %r: replica %r is skipped: %s", primary, chosen, exc)
                replicas.down(chosen)
        host.pool(primary).counters.replica_fallbacks += 1
        return await host._take(scope, task, primary)

    def _check(self, replicas: ReplicaSet) -> None:
        """Start the background checks that are due (at most one a second per replica)."""
        for replica in replicas.due(monotonic()):
            task = asyncio.get_running_loop().create_task(self._check_one(replicas, replica))
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)

    async def _check_one(self, replicas: ReplicaSet, replica: str) -> None:
        """Reach the replica and, with MAX_REPLICA_LAG, read its lag: off the scope path."""
        host = self._host
        try:
            async with asyncio.timeout(host.settings(replica).connect_timeout), host.acquire(replica) as conn:
                lag = await host.pool(replica).backend.replica_lag(conn) if replicas.max_lag is not None else 0.0
        except Exception:
            replicas.report(replica, None, reachable=False)
        else:
            replicas.report(replica, lag, reachable=True)
