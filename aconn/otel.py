"""OpenTelemetry metrics for a handler, by the semantic conventions for database client connections.

``aconn.otel.instrument(connections)`` (``pip install 'aconn[otel]'``: it needs
``opentelemetry-api`` only) reports, per alias, with the attributes
``db.client.connection.pool.name`` (the alias) and ``db.system.name``
(``mysql``, ``mariadb``, ``postgresql``, ``sqlite``):

=======================================  =================  =================================================
metric                                   instrument         value
=======================================  =================  =================================================
``db.client.connection.count``           UpDownCounter      connections open, by ``db.client.connection.state``
                                                            (``idle``, ``used``; opening and closing ones count
                                                            as used: they hold a slot)
``db.client.connection.max``             UpDownCounter      ``MAX_CONNS``
``db.client.connection.idle.max``        UpDownCounter      ``MAX_CONNS`` (no separate idle cap)
``db.client.connection.idle.min``        UpDownCounter      ``MIN_CONNS``
``db.client.connection.pending_requests`` UpDownCounter     tasks waiting for a connection
``db.client.connection.timeouts``        Counter            ``AcquireTimeout`` raised
``db.client.connection.create_time``     Histogram (s)      time to open a connection
``db.client.connection.wait_time``       Histogram (s)      time a task waited for one
``db.client.connection.use_time``        Histogram (s)      time a scope held one
``aconn.connection.closes``              Counter            closes, by ``aconn.close.reason``
``aconn.health_checks``                  Counter            health-check pings (and ``aconn.health_checks.failed``)
``aconn.rollbacks``                      Counter            rollbacks at release
=======================================  =================  =================================================

Gauges and counters are observed when the reader collects (reading the pools'
counters: no cost per scope); the three histograms are fed by the hooks
(``aconn.hooks``), so ``use_time`` adds one histogram record per scope when
instrumented (``use_time=False`` leaves it out).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from .handler import Connections
from .hooks import HookEvent
from .settings import MYSQL_ENGINES, POSTGRESQL_ENGINES
from .stats import PoolStats

__all__ = ("Instrumentation", "instrument")

POOL = "db.client.connection.pool.name"
STATE = "db.client.connection.state"
SYSTEM = "db.system.name"
REASON = "aconn.close.reason"
#: bucket boundaries for the time histograms, in seconds (semantic conventions: seconds)
BOUNDARIES = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)


def _system(connections: Connections, alias: str) -> str:
    engine = connections.settings(alias).engine
    if engine in POSTGRESQL_ENGINES:
        return "postgresql"
    if engine in MYSQL_ENGINES:
        limits = connections.pool(alias).limits
        return "mariadb" if limits is not None and "mariadb" in limits.version.lower() else "mysql"
    return engine


class Instrumentation:
    """What :func:`instrument` registered; :meth:`uninstrument` stops the histograms' hooks."""

    def __init__(self, removers: list[Callable[[], None]]) -> None:
        self._removers = removers

    def uninstrument(self) -> None:
        for remove in self._removers:
            remove()
        self._removers = []


def _total(name: str) -> Callable[[str, PoolStats], Iterable[tuple[float, dict[str, str]]]]:
    """Read the total ``name`` of a snapshot, with no extra attribute."""
    return lambda alias, stats: [(getattr(stats, name), {})]


def instrument(connections: Connections, meter_provider: Any = None, *, use_time: bool = True) -> Instrumentation:
    """Report ``connections``' metrics through OpenTelemetry (the global meter provider by default).

    :param use_time: record ``db.client.connection.use_time``, one histogram record per scope:
        with the OpenTelemetry SDK that costs about 5 us a scope, twice aconn's own scope path
        (``docs/observability.md``). False leaves the scope path untouched; everything else is
        observed at collection time or recorded off the scope path.
    """
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    meter = provider.get_meter("aconn")
    cached: dict[str, dict[str, str]] = {}

    def attributes(alias: str, **extra: str) -> dict[str, str]:
        if extra:
            return {POOL: alias, SYSTEM: _system(connections, alias), **extra}
        found = cached.get(alias)
        if found is None:
            found = {POOL: alias, SYSTEM: _system(connections, alias)}
            if connections.pool(alias).limits is not None or connections.settings(alias).engine not in MYSQL_ENGINES:
                cached[alias] = found  # final once the server said what it is
        return found

    def observe(read: Callable[[str, PoolStats], Iterable[tuple[float, dict[str, str]]]]) -> Any:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            for alias in connections.aliases:
                stats = connections.stats(alias)
                for value, extra in read(alias, stats):
                    yield Observation(value, attributes(alias, **extra))

        return callback

    meter.create_observable_up_down_counter(
        "db.client.connection.count",
        [observe(lambda a, s: [(s.idle, {STATE: "idle"}), (s.open - s.idle, {STATE: "used"})])],
        unit="{connection}",
        description="The number of connections that are currently in the state described by the state attribute",
    )
    meter.create_observable_up_down_counter(
        "db.client.connection.max",
        [observe(lambda a, s: [(s.max_conns, {})])],
        unit="{connection}",
        description="The maximum number of open connections allowed",
    )
    meter.create_observable_up_down_counter(
        "db.client.connection.idle.max",
        [observe(lambda a, s: [(s.max_conns, {})])],
        unit="{connection}",
        description="The maximum number of idle open connections allowed",
    )
    meter.create_observable_up_down_counter(
        "db.client.connection.idle.min",
        [observe(lambda a, s: [(connections.settings(a).min_conns, {})])],
        unit="{connection}",
        description="The minimum number of idle open connections allowed",
    )
    meter.create_observable_up_down_counter(
        "db.client.connection.pending_requests",
        [observe(lambda a, s: [(s.waiting, {})])],
        unit="{request}",
        description="The number of current pending requests for an open connection",
    )
    meter.create_observable_counter(
        "aconn.connection.closes",
        [
            observe(
                lambda a, s: [
                    (s.closed_max_age, {REASON: "max_age"}),
                    (s.closed_idle, {REASON: "idle"}),
                    (s.closed_unusable, {REASON: "unusable"}),
                    (s.closed_error, {REASON: "error"}),
                    (s.closed_shutdown, {REASON: "shutdown"}),
                ]
            )
        ],
        unit="{connection}",
        description="Connections closed by aconn, by reason",
    )
    for f in fields(PoolStats):
        instrument = f.metadata.get("instrument")
        if instrument is not None:
            meter.create_observable_counter(
                instrument.name,
                [observe(_total(f.name))],
                unit=instrument.unit,
                description=instrument.description,
            )
    removers = []
    histograms = [
        ("connect", "db.client.connection.create_time", "The time it took to create a new connection"),
        ("wait", "db.client.connection.wait_time", "The time it took to obtain an open connection from the pool"),
    ]
    if use_time:
        histograms.append(
            ("use", "db.client.connection.use_time", "The time between borrowing a connection and returning it")
        )
    for kind, name, description in histograms:
        histogram = meter.create_histogram(
            name, unit="s", description=description, explicit_bucket_boundaries_advisory=list(BOUNDARIES)
        )

        def record(event: HookEvent, histogram: Any = histogram) -> None:
            if event.seconds is not None:
                histogram.record(event.seconds, attributes(event.alias))

        removers.append(connections.on(kind, record))
    return Instrumentation(removers)
