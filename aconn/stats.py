"""Counters and gauges of one alias, as a frozen snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

__all__ = ("TOTALS", "Instrument", "PoolStats", "total")


class Instrument(NamedTuple):
    """The OpenTelemetry counter that reports a total (``aconn.otel``)."""

    name: str
    unit: str
    description: str


def total(default: Any = 0, instrument: Instrument | None = None) -> Any:
    """A :class:`PoolStats` total, declared once: ``Counters`` counts it and, given an
    ``instrument``, ``aconn.otel`` reports it."""
    return field(default=default, metadata={"total": True, "instrument": instrument})


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of one alias' pool, returned by ``connections.stats(alias)``.

    Gauges describe this instant; totals count since the handler was built.
    ``open == idle + in_use + opening + closing`` always holds.
    """

    alias: str
    #: MAX_CONNS
    max_conns: int
    #: connections counted against MAX_CONNS: idle, in use, being opened or closed
    open: int
    #: connections waiting in the idle set
    idle: int
    #: connections bound to a scope
    in_use: int
    #: connections being opened
    opening: int
    #: connections being closed
    closing: int
    #: tasks waiting for a connection
    waiting: int
    #: connections opened since the start
    opened: int = total()
    #: connections closed because they reached CONN_MAX_AGE (or CONN_MAX_AGE is 0)
    closed_max_age: int = 0
    #: connections closed because they idled past the idle limit
    closed_idle: int = 0
    #: connections closed because a check found them dead
    closed_unusable: int = 0
    #: connections closed because they saw an error, a cancellation or a timeout
    closed_error: int = 0
    #: connections closed by ``aclose()``
    closed_shutdown: int = 0
    #: connections closed because their cluster node left the state TARGET needs (multi-host aliases)
    closed_node: int = 0
    #: health-check pings run, and how many failed
    health_checks: int = total(0, Instrument("aconn.health_checks", "{ping}", "Health-check pings before hand-out"))
    health_checks_failed: int = total(
        0, Instrument("aconn.health_checks.failed", "{ping}", "Health-check pings that failed")
    )
    #: rollbacks run when a scope gave a connection back with a transaction open
    rollbacks: int = total(
        0, Instrument("aconn.rollbacks", "{rollback}", "Transactions rolled back when a scope gave its connection back")
    )
    #: acquires that had to wait, the total and the longest wait in seconds
    acquire_waits: int = total()
    acquire_wait_total_s: float = total(0.0)
    acquire_wait_max_s: float = total(0.0)
    #: acquires that failed with AcquireTimeout
    acquire_timeouts: int = total(
        0,
        Instrument(
            "db.client.connection.timeouts",
            "{timeout}",
            "The number of connection timeouts that have occurred trying to obtain a connection from the pool",
        ),
    )
    #: failed attempts to open a connection
    connect_errors: int = total()
    #: connections held longer than LEAK_TIMEOUT
    leaks_detected: int = total()
    #: statements of cancelled callers stopped at the server (CANCEL_ON_SERVER)
    server_cancels: int = total()
    #: such stops that failed or ran out of time (logged as WARNING)
    server_cancels_failed: int = total()
    #: requests refused at once because MAX_WAITING tasks already waited (PoolOverloaded)
    overloaded: int = total()
    #: reads asked of this alias' replicas (read_only=True) that went to the primary: none was healthy
    replica_fallbacks: int = total()
    #: functions ``atomic(retries=N)`` ran again after a serialization or certification conflict
    transaction_retries: int = total(
        0,
        Instrument(
            "aconn.transaction.retries",
            "{retry}",
            "Transactions run again after a conflict",
        ),
    )
    #: times a multi-host alias found a node in the wrong state (a check, a connect or an error)
    nodes_down: int = total(0, Instrument("aconn.nodes.down", "{node}", "Cluster nodes found in the wrong state"))

    @property
    def closed(self) -> int:
        """All connections closed, whatever the reason."""
        return (
            self.closed_max_age + self.closed_idle + self.closed_unusable
            + self.closed_error + self.closed_shutdown + self.closed_node
        )  # fmt: skip


#: the totals a pool counts (``aconn.pool.counters.Counters``), in PoolStats' order
TOTALS: tuple[str, ...] = tuple(f.name for f in fields(PoolStats) if f.metadata.get("total"))
