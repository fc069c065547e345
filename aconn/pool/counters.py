"""The totals one pool counts, and the :class:`~aconn.PoolStats` snapshot built from them."""

from __future__ import annotations

from dataclasses import fields

from ..stats import TOTALS, PoolStats
from .holder import CloseReason

__all__ = ("Counters",)


_ZEROS = {f.name: f.default for f in fields(PoolStats) if f.name in TOTALS}


class Counters:
    """Totals since the pool was built; each name is the :class:`~aconn.PoolStats` field it fills."""

    __slots__ = ("closed", *TOTALS)

    # one line per total, for mypy: the totals themselves are declared on PoolStats (a test checks
    # that the two lists agree)
    opened: int
    health_checks: int
    health_checks_failed: int
    rollbacks: int
    acquire_waits: int
    acquire_wait_total_s: float
    acquire_wait_max_s: float
    acquire_timeouts: int
    connect_errors: int
    leaks_detected: int
    server_cancels: int
    server_cancels_failed: int
    overloaded: int
    replica_fallbacks: int
    transaction_retries: int
    nodes_down: int

    def __init__(self) -> None:
        for name in TOTALS:
            setattr(self, name, _ZEROS[name])
        #: closes by reason: ``PoolStats.closed_<reason>``
        self.closed: dict[CloseReason, int] = dict.fromkeys(CloseReason, 0)

    def waited(self, seconds: float) -> None:
        self.acquire_waits += 1
        self.acquire_wait_total_s += seconds
        if seconds > self.acquire_wait_max_s:
            self.acquire_wait_max_s = seconds

    def snapshot(
        self, *, alias: str, max_conns: int, open: int, idle: int, in_use: int, opening: int, closing: int, waiting: int
    ) -> PoolStats:
        """These totals, with the gauges of this instant."""
        totals = {name: getattr(self, name) for name in TOTALS}
        closes = {f"closed_{reason.value}": count for reason, count in self.closed.items()}
        return PoolStats(
            alias=alias, max_conns=max_conns, open=open, idle=idle, in_use=in_use, opening=opening,
            closing=closing, waiting=waiting, **closes, **totals,
        )  # fmt: skip
