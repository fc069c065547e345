"""Counters and gauges of one alias, as a frozen snapshot."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("PoolStats",)


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
    opened: int
    #: connections closed because they reached CONN_MAX_AGE (or CONN_MAX_AGE is 0)
    closed_max_age: int
    #: connections closed because they idled past the idle limit
    closed_idle: int
    #: connections closed because a check found them dead
    closed_unusable: int
    #: connections closed because they saw an error, a cancellation or a timeout
    closed_error: int
    #: connections closed by ``aclose()``
    closed_shutdown: int
    #: health-check pings run, and how many failed
    health_checks: int
    health_checks_failed: int
    #: rollbacks run when a scope gave a connection back with a transaction open
    rollbacks: int
    #: acquires that had to wait, the total and the longest wait in seconds
    acquire_waits: int
    acquire_wait_total_s: float
    acquire_wait_max_s: float
    #: acquires that failed with AcquireTimeout
    acquire_timeouts: int
    #: failed attempts to open a connection
    connect_errors: int
    #: connections held longer than LEAK_TIMEOUT
    leaks_detected: int
    #: statements of cancelled callers stopped at the server (CANCEL_ON_SERVER)
    server_cancels: int = 0
    #: such stops that failed or ran out of time (logged as WARNING)
    server_cancels_failed: int = 0
    #: requests refused at once because MAX_WAITING tasks already waited (PoolOverloaded)
    overloaded: int = 0
    #: reads asked of this alias' replicas (read_only=True) that went to the primary: none was healthy
    replica_fallbacks: int = 0

    @property
    def closed(self) -> int:
        """All connections closed, whatever the reason."""
        return (
            self.closed_max_age + self.closed_idle + self.closed_unusable
            + self.closed_error + self.closed_shutdown
        )  # fmt: skip
