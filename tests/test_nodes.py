"""Which node of a multi-host alias a connection may go to, decided from node states alone (no
server: the states are built by hand; tests/test_clusters.py runs the same against real ones).

| promise | test |
|---|---|
| each TARGET qualifies the PostgreSQL roles libpq's target_session_attrs names | test_postgresql_targets |
| Galera: only a synced node in the primary component; the writer is the lowest index | test_galera_writer |
| candidates: HOST's order or in turn; nodes found down last | test_candidates_order |
"""

from __future__ import annotations

from typing import Any

import pytest

from aconn.backends.base import NodeState
from aconn.pool.nodes import Nodes
from aconn.settings import parse_settings

PRIMARY = NodeState("postgresql", ready=True, writable=True, summary="primary")
READ_ONLY_PRIMARY = NodeState("postgresql", ready=True, writable=False, summary="primary, read-only")
STANDBY = NodeState("postgresql", ready=True, writable=False, standby=True, summary="standby")


def nodes_for(engine: str, **settings: Any) -> Nodes:
    entry = {"ENGINE": engine, "HOST": ["db1", "db2", "db3"], **settings}
    return Nodes(parse_settings("default", entry), backend=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("target", "qualified"),
    [
        ("read-write", {"primary"}),
        ("primary", {"primary", "primary, read-only"}),
        ("read-only", {"primary, read-only", "standby"}),
        ("standby", {"standby"}),
        ("any", {"primary", "primary, read-only", "standby"}),
        ("prefer-standby", {"primary", "primary, read-only", "standby"}),  # a primary will do: Nodes.connect prefers
    ],
)
def test_postgresql_targets(target: str, qualified: set[str]) -> None:
    nodes = nodes_for("postgresql", TARGET=target)
    node = nodes.nodes[0]
    assert {s.summary for s in (PRIMARY, READ_ONLY_PRIMARY, STANDBY) if nodes.qualifies(node, s)} == qualified
    plain = NodeState(None, ready=True, writable=True)
    assert nodes.qualifies(node, plain)  # a server in no cluster: nothing to be in the wrong state of


def galera(index: int, synced: bool = True) -> NodeState:
    return NodeState("galera", ready=synced, writable=synced, index=index, size=3, summary="Synced")


def test_galera_writer() -> None:
    nodes = nodes_for("mysql", CLUSTER="galera")
    first, second, third = nodes.nodes
    assert not nodes.qualifies(first, galera(0, synced=False))  # non-Primary, donor, joiner
    # before any check of the others: the first synced node serves
    assert nodes.qualifies(second, galera(1))
    nodes.record(first, galera(0))
    nodes.record(second, galera(1))
    assert nodes.qualifies(first, galera(0)) and not nodes.qualifies(second, galera(1))
    # the writer found out: the next lowest index takes the writes
    nodes.record(first, galera(0, synced=False))
    assert first.up is False and nodes.qualifies(second, galera(1))
    assert nodes.candidates()[-1] is first and nodes.candidates()[0] is second
    # TARGET="any": every synced node
    spread = nodes_for("mysql", CLUSTER="galera", TARGET="any")
    spread.record(spread.nodes[0], galera(0))
    assert spread.qualifies(spread.nodes[2], galera(2))
    assert third.up is None  # never checked


def test_candidates_order() -> None:
    nodes = nodes_for("postgresql", HOST_ORDER="round-robin")
    names = [[n.address[0] for n in nodes.candidates()] for _ in range(3)]
    assert names == [["db1", "db2", "db3"], ["db2", "db3", "db1"], ["db3", "db1", "db2"]]
    in_order = nodes_for("postgresql")
    in_order.record(in_order.nodes[0], None, "refused")
    assert [n.address[0] for n in in_order.candidates()] == ["db2", "db3", "db1"]
    assert in_order.nodes[0].reason == "refused"
    in_order.record(in_order.nodes[0], PRIMARY)
    assert [n.address[0] for n in in_order.candidates()] == ["db1", "db2", "db3"]
