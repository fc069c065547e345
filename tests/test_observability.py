"""Hooks and OpenTelemetry metrics, read with the SDK's in-memory reader after a known workload on MariaDB.

The workload: 10 scopes one after another, 3 tasks made to wait, 1 acquire timeout,
1 idle connection killed on the server. Each metric must then hold the expected value,
under the semantic conventions' exact names and attributes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from helpers import eventually, in_scope
from mariadb import MariaDB
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import aconn
import aconn.otel
from aconn.hooks import HookEvent

POOL = {"db.client.connection.pool.name": "default", "db.system.name": "mariadb"}


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """metric name -> its data points, from one collection."""
    data = reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found[metric.name] = list(metric.data.data_points)
    return found


def value(found: dict[str, list[Any]], name: str, **attributes: str) -> Any:
    wanted = {**POOL, **attributes}
    matches = [p for p in found[name] if dict(p.attributes) == wanted]
    assert len(matches) == 1, (name, [dict(p.attributes) for p in found[name]])
    point = matches[0]
    return point.count if hasattr(point, "bucket_counts") else point.value


async def hold(connections: aconn.Connections, release: asyncio.Event, taken: asyncio.Event) -> None:
    async with connections.scope():
        await connections.connection()
        taken.set()
        await release.wait()


@pytest.mark.mysql
async def test_metrics_after_a_known_workload(db: MariaDB, make: Any) -> None:
    connections: aconn.Connections = make(
        {"default": db.settings(CONN_MAX_AGE=60, MAX_CONNS=2, MIN_CONNS=1, ACQUIRE_TIMEOUT=0.3)}
    )
    reader = InMemoryMetricReader()
    aconn.otel.instrument(connections, MeterProvider(metric_readers=[reader], shutdown_on_exit=False))

    for n in range(10):  # 10 scopes, one after another: one connection, reused
        assert await in_scope(connections, f"SELECT {n}") == n

    release, taken = asyncio.Event(), [asyncio.Event(), asyncio.Event()]
    holders = [asyncio.create_task(hold(connections, release, t)) for t in taken]
    await asyncio.gather(*(t.wait() for t in taken))  # both connections held
    waiters = [asyncio.create_task(in_scope(connections, "SELECT 1")) for _ in range(3)]
    await eventually(lambda: connections.stats().waiting == 3)
    during = points(reader)
    assert value(during, "db.client.connection.pending_requests") == 3
    assert value(during, "db.client.connection.count", **{"db.client.connection.state": "used"}) == 2
    release.set()  # the 3 waiters are served by the 2 connections as they come back
    assert await asyncio.gather(*waiters) == [1, 1, 1]
    await asyncio.gather(*holders)

    release2, taken2 = asyncio.Event(), [asyncio.Event(), asyncio.Event()]
    holders = [asyncio.create_task(hold(connections, release2, t)) for t in taken2]
    await asyncio.gather(*(t.wait() for t in taken2))
    with pytest.raises(aconn.AcquireTimeout):  # one timeout
        await in_scope(connections, "SELECT 1")
    release2.set()
    await asyncio.gather(*holders)

    pool = connections.pool("default")
    top = pool._idle[-1]  # the one the next scope takes: killed on the server
    db.kill_sessions(top.conn.aconn_session_id)
    # the server drops the session from its list a moment before its FIN reaches the client
    await eventually(lambda: pool.backend.is_dead(top.conn))
    assert await in_scope(connections, "SELECT 2") == 2

    found = points(reader)
    stats = connections.stats()
    assert value(found, "db.client.connection.count", **{"db.client.connection.state": "idle"}) == stats.idle
    assert value(found, "db.client.connection.count", **{"db.client.connection.state": "used"}) == 0
    assert value(found, "db.client.connection.max") == 2
    assert value(found, "db.client.connection.idle.max") == 2
    assert value(found, "db.client.connection.idle.min") == 1
    assert value(found, "db.client.connection.pending_requests") == 0
    assert value(found, "db.client.connection.timeouts") == 1
    assert value(found, "db.client.connection.create_time") == stats.opened
    assert value(found, "db.client.connection.wait_time") == 3 + 1  # the 3 served waiters and the one that gave up
    # 10 + 2 holders + 3 waiters + 2 holders + 1 after the kill
    assert value(found, "db.client.connection.use_time") == 18
    assert value(found, "aconn.connection.closes", **{"aconn.close.reason": "unusable"}) == 1
    assert value(found, "aconn.connection.closes", **{"aconn.close.reason": "max_age"}) == 0
    assert value(found, "aconn.rollbacks") == 0 and value(found, "aconn.health_checks") == 0
    data = reader.get_metrics_data()
    units = {m.name: m.unit for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics}
    assert units["db.client.connection.count"] == "{connection}" and units["db.client.connection.wait_time"] == "s"


async def test_hooks(make: Any, tmp_path: Any, aconn_logs: pytest.LogCaptureFixture) -> None:
    connections: aconn.Connections = make({"default": {"ENGINE": "sqlite", "NAME": str(tmp_path / "h.db")}})
    events: list[HookEvent] = []
    pool = connections.pool("default")
    assert pool._watch is None  # nobody listens to "use": the scope path skips the watch
    remove = connections.on("use", events.append)
    assert pool._watch is not None and pool._watch.on_use is not None
    connections.on("connect", events.append)
    connections.on("close", events.append)

    def broken(event: HookEvent) -> None:
        raise RuntimeError("a broken hook")

    connections.on("use", broken)
    for _ in range(3):
        assert await in_scope(connections, "SELECT 1") == 1  # CONN_MAX_AGE=0: connect, use, close each time
    assert [e.kind for e in events] == ["connect", "use", "close"] * 3
    assert all(e.alias == "default" and e.seconds is not None and e.seconds >= 0 for e in events)
    assert {e.reason for e in events if e.kind == "close"} == {"max_age"}
    assert aconn_logs.text.count("hook (") == 1 and "RuntimeError: a broken hook" in aconn_logs.text  # logged once
    remove()
    await in_scope(connections, "SELECT 1")
    assert [e.kind for e in events[9:]] == ["connect", "close"]
    with pytest.raises(ValueError, match="unknown hook 'used'"):
        connections.on("used", events.append)


def test_prometheus_route(tmp_path: Any) -> None:
    """The documented Prometheus path: OpenTelemetry's Prometheus exporter and prometheus_client's text format."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import REGISTRY, generate_latest

    reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    try:
        connections = aconn.Connections({"default": {"ENGINE": "sqlite", "NAME": str(tmp_path / "p.db")}})
        aconn.otel.instrument(connections, provider)
        text = generate_latest(REGISTRY).decode()
        assert 'db_client_connection_count{db_client_connection_pool_name="default",' in text
        assert 'db_client_connection_state="idle",db_system_name="sqlite",' in text
        assert "db_client_connection_max" in text
    finally:
        provider.shutdown()  # unregisters the exporter's collector from prometheus_client's registry
    assert "db_client_connection_count" not in generate_latest(REGISTRY).decode()


def test_use_time_off_leaves_the_scope_path_alone(tmp_path: Any) -> None:
    connections = aconn.Connections({"default": {"ENGINE": "sqlite", "NAME": str(tmp_path / "u.db")}})
    reader = InMemoryMetricReader()
    aconn.otel.instrument(connections, MeterProvider(metric_readers=[reader], shutdown_on_exit=False), use_time=False)
    assert connections.pool("default")._watch is None  # nothing watched while a connection is taken
    found = points(reader)
    assert "db.client.connection.use_time" not in found and "db.client.connection.count" in found
