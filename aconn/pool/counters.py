"""The totals one pool counts, and the :class:`~aconn.PoolStats` snapshot built from them."""

from __future__ import annotations

from ..stats import PoolStats
from .holder import CloseReason

__all__ = ("Counters",)


class Counters:
    """Totals since the pool was built; each name is the :class:`~aconn.PoolStats` field it fills."""

    __slots__ = (
        "acquire_timeouts",
        "acquire_wait_max_s",
        "acquire_wait_total_s",
        "acquire_waits",
        "closed",
        "connect_errors",
        "health_checks",
        "health_checks_failed",
        "leaks_detected",
        "opened",
        "overloaded",
        "replica_fallbacks",
        "rollbacks",
        "server_cancels",
        "server_cancels_failed",
    )

    def __init__(self) -> None:
        self.opened = 0
        #: closes by reason: ``PoolStats.closed_<reason>``
        self.closed: dict[CloseReason, int] = dict.fromkeys(CloseReason, 0)
        self.health_checks = 0
        self.health_checks_failed = 0
        self.rollbacks = 0
        self.acquire_waits = 0
        self.acquire_wait_total_s = 0.0
        self.acquire_wait_max_s = 0.0
        self.acquire_timeouts = 0
        self.connect_errors = 0
        self.leaks_detected = 0
        self.server_cancels = 0
        self.server_cancels_failed = 0
        self.overloaded = 0
        self.replica_fallbacks = 0

    def waited(self, seconds: float) -> None:
        self.acquire_waits += 1
        self.acquire_wait_total_s += seconds
        if seconds > self.acquire_wait_max_s:
            self.acquire_wait_max_s = seconds

    def snapshot(
        self, *, alias: str, max_conns: int, open: int, idle: int, in_use: int, opening: int, closing: int, waiting: int
    ) -> PoolStats:
        """These totals, with the gauges of this instant."""
        totals = {name: getattr(self, name) for name in self.__slots__ if name != "closed"}
        closes = {f"closed_{reason.value}": count for reason, count in self.closed.items()}
        return PoolStats(
            alias=alias, max_conns=max_conns, open=open, idle=idle, in_use=in_use, opening=opening,
            closing=closing, waiting=waiting, **closes, **totals,
        )  # fmt: skip
