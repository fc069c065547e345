"""Multi-host aliases against a real 3-node MariaDB Galera cluster and a PostgreSQL primary with
its streaming standby, both started by the suite.

| promise | test |
|---|---|
| HOST lists several hosts: a refused one is passed over | test_a_dead_host_is_passed_over |
| HOST_ORDER="round-robin": new connections in turn | test_round_robin_spreads_new_connections |
| every host failing: the error lists each host and why | test_all_hosts_failing_lists_each |
| Galera: writes go to one node, the synced one with the lowest wsrep_local_index | test_galera_writes_go_to_one_node |
| an isolated node (non-Primary, 1047): nothing new goes to it; back once synced | test_galera_isolated_node |
| a killed node: new connections on the others at once; it rejoins | test_galera_killed_node |
| a certification conflict: atomic(retries=N) runs the function again | test_galera_certification_conflict_retried |
| PostgreSQL: TARGET picks the primary or the standby | test_postgresql_targets |
| 25006 (a write refused as read-only) marks a node down | test_postgresql_read_only_error_marks_the_node_down |
| Galera: reads on the other nodes through REPLICAS, read-your-writes | test_galera_reads_on_the_other_nodes |
| a conflict storm on every node: each function retried until it commits | test_galera_conflict_storm |
| retries on PostgreSQL: 40001 retried; not nested, other errors, past N | test_retries_on_a_serialization_failure |
| PostgreSQL: the standby promoted, the writes follow | test_postgresql_failover |
| check lists the nodes with their state | test_check_lists_the_nodes |
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import pytest
from galera import GaleraCluster
from helpers import eventually, scalar
from mariadb import MariaDB, SessionSampler, free_port
from postgres import PostgreSQL

import aconn
from aconn.errors import AcquireTimeout, TransactionError

pytestmark = pytest.mark.timeout(180)

#: what each scope of a load did: (monotonic time, the node it ran on, "ok" or the error)
Log = list[tuple[float, str, str]]


@pytest.fixture(scope="module")
def galera() -> Iterator[GaleraCluster]:
    cluster = GaleraCluster().start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def cluster(galera: GaleraCluster) -> Iterator[GaleraCluster]:
    """The cluster with every node running, synced and joined, as each test expects it."""
    for node in galera.nodes:
        if node.frozen:
            node.thaw()
        if node.proc is None:
            node.start()
        elif node.status().get("wsrep_ready") != "ON":
            node.rejoin()
    for node in galera.nodes:
        node.wait_synced()
    node0 = galera.nodes[0]
    node0.sql("DROP TABLE IF EXISTS aconn_test.g", "CREATE TABLE aconn_test.g (id INT PRIMARY KEY, n INT)")
    node0.sql("INSERT INTO aconn_test.g VALUES (1, 0)")
    yield galera


async def node_name(connections: aconn.Connections, alias: str = "default") -> str:
    """The node the scope's connection is on (a variable read: answered even by a node out of the cluster)."""
    async with connections.scope():
        return str(await scalar(await connections.connection(alias), "SELECT @@wsrep_node_name"))


async def writer_known(connections: aconn.Connections, alias: str = "default") -> None:
    """Until a round of background checks has found the node that takes the writes."""
    nodes = connections.pool(alias).nodes
    assert nodes is not None
    await eventually(lambda: nodes.writer is not None and all(n.up is not None for n in nodes), timeout=15)


# -- hosts: order, failures -----------------------------------------------------------------


@pytest.mark.mysql
async def test_a_dead_host_is_passed_over(db: MariaDB, make: Any) -> None:
    dead = free_port()
    connections = make({"default": db.settings(HOST=[f"127.0.0.1:{dead}", f"127.0.0.1:{db.port}"], CONN_MAX_AGE=0)})
    async with connections.scope():
        assert await scalar(await connections.connection(), "SELECT @@port") == db.port
    nodes = connections.pool().nodes
    assert nodes is not None
    first, second = nodes.nodes
    assert first.up is False and "2003" in first.reason
    assert second.up is True  # a plain server (wsrep_on OFF): nothing to be in the wrong state of
    assert second.found is not None and second.found.cluster is None
    # the next connects try the refused host last
    assert [n.address[1] for n in nodes.candidates()] == [db.port, dead]


@pytest.mark.mysql
async def test_round_robin_spreads_new_connections(db: MariaDB, make: Any) -> None:
    """The same server under two names: in turn, new connections alternate between them."""
    hosts = [f"127.0.0.1:{db.port}", f"localhost:{db.port}"]
    connections = make({"default": db.settings(HOST=hosts, HOST_ORDER="round-robin", CONN_MAX_AGE=0)})
    seen = []
    for _ in range(4):
        async with connections.scope():
            await connections.connection()
            seen.append(connections.pool()._holders.copy().pop().node.address[0])  # type: ignore[union-attr]
    assert seen == ["127.0.0.1", "localhost", "127.0.0.1", "localhost"]


@pytest.mark.mysql
async def test_all_hosts_failing_lists_each(db: MariaDB, make: Any) -> None:
    dead1, dead2 = free_port(), free_port()
    connections = make(
        {"default": db.settings(HOST=f"127.0.0.1:{dead1},127.0.0.1:{dead2}", ACQUIRE_TIMEOUT=0.5, CONNECT_TIMEOUT=0.3)}
    )
    with pytest.raises(AcquireTimeout) as caught:
        async with connections.scope():
            await connections.connection()
    message = str(caught.value)
    assert f"127.0.0.1:{dead1}" in message and f"127.0.0.1:{dead2}" in message
    assert "ACQUIRE_TIMEOUT" in message and db.settings()["PASSWORD"] not in message

    # an error retrying will not lift (a wrong password on every host): the driver's, naming each host
    wrong = make({"default": db.settings(HOST=[f"127.0.0.1:{db.port}", f"localhost:{db.port}"], PASSWORD="nope")})
    with pytest.raises(db.errors.OperationalError) as denied:
        async with wrong.scope():
            await wrong.connection()
    assert denied.value.args[0] == 1045
    notes = " ".join(getattr(denied.value, "__notes__", []))
    assert f"127.0.0.1:{db.port}" in notes and f"localhost:{db.port}" in notes


def test_host_lists_parse() -> None:
    from aconn.errors import ConfigError
    from aconn.settings import parse_settings

    url = parse_settings("a", "postgresql://u:pw@db1:5433,db2,[::1]:6000/app?target_session_attrs=prefer-standby")
    assert url.addresses == (("db1", 5433), ("db2", 5432), ("::1", 6000))
    assert url.target_node == "prefer-standby" and url.cluster_kind == "detect" and url.name == "app"
    listed = parse_settings("b", {"ENGINE": "mysql", "HOST": ["db1", "db2:3307"], "PORT": 3310, "CLUSTER": "galera"})
    assert listed.addresses == (("db1", 3310), ("db2", 3307)) and listed.cluster_kind == "galera"
    assert "pw" not in repr(url) and "db1:5433,db2:5432" in url.target
    single = parse_settings("c", {"ENGINE": "mysql", "HOST": "db1"})
    assert single.cluster_kind is None and single.addresses == (("db1", 3306),)
    for bad, key in (
        ({"ENGINE": "mysql", "HOST": ["db1", ""]}, "HOST"),
        ({"ENGINE": "mysql", "HOST": "db1:99999,db2"}, "HOST"),
        ({"ENGINE": "mysql", "CLUSTER": "postgresql"}, "CLUSTER"),
        ({"ENGINE": "sqlite", "NAME": "x.db", "CLUSTER": "galera"}, "CLUSTER"),
        ({"ENGINE": "mysql", "TARGET": "standby"}, "TARGET"),
        ({"ENGINE": "asyncpg", "HOST_ORDER": "random"}, "HOST_ORDER"),
    ):
        with pytest.raises(ConfigError) as caught:
            parse_settings("x", bad)
        assert f"['{key}']" in str(caught.value), (bad, caught.value)


# -- Galera -------------------------------------------------------------------------------


@pytest.mark.galera
@pytest.mark.mysql
async def test_galera_writes_go_to_one_node(cluster: GaleraCluster, make: Any) -> None:
    # HOST in reverse order: the writer is chosen by wsrep_local_index, not by HOST's order
    hosts = list(reversed(cluster.hosts()))
    connections = make({"default": cluster.settings(HOST=hosts, CONN_MAX_AGE=60, MAX_CONNS=4)})
    await node_name(connections)
    await writer_known(connections)
    expected = f"node{cluster.writer().index}"

    async def worker() -> set[str]:
        return {await node_name(connections) for _ in range(10)}

    seen = set().union(*await asyncio.gather(*(worker() for _ in range(4))))
    assert seen == {expected}
    # TARGET="any": every synced node takes connections (in turn here)
    spread = make({"any": cluster.settings(TARGET="any", HOST_ORDER="round-robin", CONN_MAX_AGE=0)})
    names = {await node_name(spread, "any") for _ in range(6)}
    assert names == {"node0", "node1", "node2"}


#: what a load's scope does on its connection: ``where(conn)`` names the server, ``work(conn)`` writes
Where = Callable[[Any], Awaitable[str]]
Work = Callable[[Any], Awaitable[None]]


async def galera_where(conn: Any) -> str:
    return str(await scalar(conn, "SELECT @@wsrep_node_name"))


async def galera_work(conn: Any) -> None:
    async with conn.cursor() as cur:
        await cur.execute("UPDATE g SET n = n + 1 WHERE id = 1")
        await cur.execute("SELECT n FROM g WHERE id = 1")
        await cur.fetchone()


async def run_load(connections: aconn.Connections, stop: asyncio.Event, log: Log, where: Where, work: Work) -> None:
    """A scope after another until ``stop``, each ``where`` then ``work``: its (time, server, outcome)."""
    while not stop.is_set():
        node = "?"
        try:
            async with connections.scope():
                conn = await connections.connection()
                node = await where(conn)
                await work(conn)
            log.append((time.monotonic(), node, "ok"))
        except Exception as exc:
            log.append((time.monotonic(), node, f"{type(exc).__name__}{exc.args[:1]}"))
        await asyncio.sleep(0.005)  # pacing, not synchronisation


async def fault_under_load(
    connections: aconn.Connections,
    fault: Callable[[], object],
    seconds_after: float = 4.0,
    sampled: Sequence[MariaDB] = (),
    where: Where = galera_where,
    work: Work = galera_work,
) -> tuple[Log, float, list[int]]:
    """Load on 4 tasks; ``fault()`` after 1 s (in a thread: it returns once the fault is complete; an
    isolated node takes seconds to leave the primary component, and the whole cluster's writes wait
    meanwhile); the log, when the fault was complete, and the most sessions of the alias sampled
    on each server of ``sampled``."""
    stop = asyncio.Event()
    log: Log = []
    with contextlib.ExitStack() as stack:
        samplers = [stack.enter_context(SessionSampler(server)) for server in sampled]
        tasks = [asyncio.create_task(run_load(connections, stop, log, where, work)) for _ in range(4)]
        try:
            await asyncio.sleep(1.0)  # the load's first second, before the fault
            await asyncio.to_thread(fault)
            at = time.monotonic()
            await asyncio.sleep(seconds_after)  # the load's time after it
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    return log, at, [sampler.max_sessions for sampler in samplers]


def report(request: pytest.FixtureRequest, what: str, log: Log, at: float, bad: str, sessions: list[int]) -> None:
    errors = [entry for entry in log if entry[2] != "ok"]
    first = next((t - at for t, node, outcome in log if t > at and outcome == "ok" and node != bad), None)
    request.node.user_properties.append(
        (
            "figures",
            f"{what}: {len(log)} scopes, {len(errors)} errors ({len(errors) * 10000 // max(1, len(log))} per 10k), "
            f"first success on another node {first if first is None else round(first, 3)}s "
            f"after the fault; sessions per node at most {sessions} (MAX_CONNS=4, +1 side, +1 monitor); "
            f"errors: {sorted({e[2] for e in errors})}",
        )
    )


@pytest.mark.galera
@pytest.mark.mysql
@pytest.mark.parametrize("driver", ["aiomysql", "asyncmy"])
async def test_galera_isolated_node(
    cluster: GaleraCluster, make: Any, request: pytest.FixtureRequest, driver: str
) -> None:
    """A node cut off answers pings and variable reads but refuses statements (1047): once a check
    or a 1047 finds it out, no scope gets a connection on it; it is used again once synced."""
    cluster.driver = driver
    try:
        connections = make({"default": cluster.settings(CONN_MAX_AGE=60, MAX_CONNS=4, ACQUIRE_TIMEOUT=10)})
    finally:
        cluster.driver = "aiomysql"
    await node_name(connections)
    await writer_known(connections)
    bad = cluster.writer()
    nodes = connections.pool().nodes
    assert nodes is not None
    bad_node = next(n for n in nodes if n.address[1] == bad.port)
    downs: list[float] = []  # when aconn learnt the node was out (monotonic, like the log)
    pool_down = nodes.on_down

    def on_down(node: Any) -> None:
        if node is bad_node:
            downs.append(time.monotonic())
        pool_down(node)

    nodes.on_down = on_down
    log, at, sessions = await fault_under_load(connections, bad.isolate, sampled=cluster.nodes)
    assert max(sessions) <= 4 + 2, sessions
    assert bad_node.up is False and "wsrep_ready=OFF" in bad_node.reason
    assert len(downs) == 1  # once, by a check or by a 1047, whichever came first
    # only the scopes on the node before aconn knew it was out may fail; a scope ending more than
    # 0.5 s after (the statements in flight then end at once: 1047) ran on another node
    late = [entry for entry in log if entry[1] == f"node{bad.index}" and entry[0] > downs[0] + 0.5]
    assert late == []
    assert any(entry[0] > downs[0] + 0.5 for entry in log)  # the load went on after
    errors = [entry for entry in log if entry[2] != "ok"]
    # a few per connection slot, all before aconn knew (asserted above): a COMMIT cut as the node
    # left the cluster (1180, the connection still sound), then 1047 on the next statement, which
    # tells aconn the node is out; a slot whose connection closed meanwhile may have reopened there
    # while the node still said it was ready
    assert len(errors) <= 3 * 4, errors
    assert all(any(code in e[2] for code in ("1047", "1180", "2013")) for e in errors), errors
    assert any(outcome == "ok" and node != f"node{bad.index}" for t, node, outcome in log if t > at)
    report(request, f"galera on {driver}, writer isolated", log, at, f"node{bad.index}", sessions)
    assert connections.stats().nodes_down >= 1
    # back: the check qualifies it again once synced
    await asyncio.to_thread(bad.rejoin)
    await eventually(lambda: bad_node.up is True, timeout=15)
    async with connections.scope():
        assert await scalar(await connections.connection(), "SELECT n FROM g WHERE id = 1") > 0


@pytest.mark.galera
@pytest.mark.mysql
async def test_galera_killed_node(cluster: GaleraCluster, make: Any, request: pytest.FixtureRequest) -> None:
    connections = make({"default": cluster.settings(CONN_MAX_AGE=60, MAX_CONNS=4, ACQUIRE_TIMEOUT=10)})
    await node_name(connections)
    await writer_known(connections)
    bad = cluster.writer()
    log, at, sessions = await fault_under_load(connections, bad.kill, 8.0, sampled=cluster.nodes)
    assert max(sessions) <= 4 + 2, sessions
    errors = [entry for entry in log if entry[2] != "ok"]
    assert len(errors) <= 4 + 4, errors  # in flight on the killed node, or taken idle before the news
    after = [entry for entry in log if entry[0] > at + 1.5]
    assert after and all(outcome == "ok" and node != f"node{bad.index}" for _, node, outcome in after)
    report(request, "galera, writer killed", log, at, f"node{bad.index}", sessions)
    await asyncio.to_thread(bad.start)  # rejoins the cluster (state transfer), then serves again
    nodes = connections.pool().nodes
    assert nodes is not None
    await eventually(lambda: next(n for n in nodes if n.address[1] == bad.port).up is True, timeout=30)


@pytest.mark.galera
@pytest.mark.mysql
async def test_galera_certification_conflict_retried(cluster: GaleraCluster, make: Any) -> None:
    """A transaction on one node whose row another node changes meanwhile fails (1213, a brute-force
    abort or a certification failure): atomic(retries=N) runs the function again, whole."""
    first, second = cluster.nodes[0], cluster.nodes[1]
    connections = make(
        {
            "a": cluster.settings(HOST=[f"127.0.0.1:{first.port}"], CLUSTER="galera", TARGET="any"),
            "b": cluster.settings(HOST=[f"127.0.0.1:{second.port}"], CLUSTER="galera", TARGET="any"),
        }
    )
    calls = 0

    async def applied_on_first_node() -> None:
        """Until the other node's change is applied here (its applier aborted our transaction to
        take the row): a read outside the transaction sees it. Bounded; no event announces it."""
        async with asyncio.timeout(10):
            while (await asyncio.to_thread(first.sql, "SELECT n FROM aconn_test.g WHERE id = 1"))[0][0] < 100:
                await asyncio.sleep(0.01)

    @connections.atomic("a", retries=3)
    async def add_one() -> int:
        nonlocal calls
        calls += 1
        conn = await connections.connection("a")
        async with conn.cursor() as cur:
            await cur.execute("SELECT n FROM g WHERE id = 1 FOR UPDATE")
            (n,) = await cur.fetchone()
            if calls == 1:
                # meanwhile another node commits a change to the same row
                async with connections.scope():
                    other = await connections.connection("b")
                    async with other.cursor() as cur2:
                        await cur2.execute("UPDATE g SET n = n + 100 WHERE id = 1")
                await applied_on_first_node()
            await cur.execute("UPDATE g SET n = %s WHERE id = 1", (n + 1,))
        return int(n) + 1

    assert await add_one() == 101  # the second run saw the other node's change
    assert calls == 2
    assert connections.stats("a").transaction_retries == 1
    async with connections.scope():
        assert await scalar(await connections.connection("b"), "SELECT n FROM g WHERE id = 1") == 101
    # a block cannot be run again: retries on the context-manager form is refused
    with pytest.raises(TransactionError, match="decorate the function"):
        async with connections.atomic("a", retries=2):
            pass


@pytest.mark.galera
@pytest.mark.mysql
async def test_galera_conflict_storm(cluster: GaleraCluster, make: Any, request: pytest.FixtureRequest) -> None:
    """Writes to every node at once (TARGET="any"), all on one row: conflicts galore, each function
    run again until it commits; no increment lost, none doubled, no error surfaced."""
    connections = make(
        {"default": cluster.settings(TARGET="any", HOST_ORDER="round-robin", MAX_CONNS=6, CONN_MAX_AGE=60)}
    )

    @connections.atomic("default", retries=30)
    async def add_one() -> None:
        conn = await connections.connection()
        async with conn.cursor() as cur:
            await cur.execute("SELECT n FROM g WHERE id = 1 FOR UPDATE")
            (n,) = await cur.fetchone()
            await cur.execute("UPDATE g SET n = %s WHERE id = 1", (n + 1,))

    async def worker() -> None:
        for _ in range(25):
            async with connections.scope():
                await add_one()

    await asyncio.gather(*(worker() for _ in range(6)))
    async with connections.scope():
        assert await scalar(await connections.connection(), "SELECT n FROM g WHERE id = 1") == 150
    retries = connections.stats().transaction_retries
    request.node.user_properties.append(
        ("figures", f"galera conflict storm: 150 increments on 3 nodes, {retries} retries, 0 lost")
    )


@pytest.mark.galera
@pytest.mark.mysql
async def test_galera_reads_on_the_other_nodes(cluster: GaleraCluster, make: Any) -> None:
    """Writes on the cluster alias' one node, reads with read_only=True on the nodes listed as its
    REPLICAS (one alias per node), read-your-writes in a scope."""
    others = [f"node{i}" for i in range(3)]
    connections = make(
        {
            "default": cluster.settings(REPLICAS=others, CONN_MAX_AGE=60),
            **{
                f"node{node.index}": cluster.settings(HOST=[f"127.0.0.1:{node.port}"], CLUSTER="galera", TARGET="any")
                for node in cluster.nodes
            },
        }
    )
    await node_name(connections)
    await writer_known(connections)
    writer = f"node{cluster.writer().index}"
    reads = set()
    for _ in range(6):
        async with connections.scope():
            reads.add(str(await scalar(await connections.connection(read_only=True), "SELECT @@wsrep_node_name")))
    assert reads == set(others)  # in turn over the healthy replicas
    async with connections.scope():
        conn = await connections.connection()
        assert await scalar(conn, "SELECT @@wsrep_node_name") == writer
        async with conn.cursor() as cur:
            await cur.execute("UPDATE g SET n = 7 WHERE id = 1")
        again = await connections.connection(read_only=True)  # after a write: the primary's own
        assert again is conn


@pytest.mark.galera
@pytest.mark.mysql
async def test_check_lists_the_nodes(cluster: GaleraCluster) -> None:
    import io

    from aconn.check import check_alias, render
    from aconn.settings import parse_settings

    settings = parse_settings("default", cluster.settings(MAX_CONNS=60))
    report_ = await check_alias(settings, workers=3)
    json.dumps(report_)  # what --json prints
    assert [n["host"] for n in report_["nodes"]] == cluster.hosts()
    assert all("Synced" in n["state"] and n["cluster_size"] == 3 and n["serves"] for n in report_["nodes"])
    # 3 processes x (MAX_CONNS=60 + side and monitor sessions) above each node's max_connections=151
    failed = [rule for rule in report_["rules"] if rule["rule"] == "NODES" and not rule["ok"]]
    assert len(failed) == 3 and "max_connections=151" in failed[0]["message"]
    out = io.StringIO()
    render([report_], 3, out)
    assert out.getvalue().count("  node  ") == 3 and "Synced" in out.getvalue()
    assert cluster.settings()["PASSWORD"] not in out.getvalue()


# -- PostgreSQL: a primary and its standby behind one alias ----------------------------------


@pytest.fixture(scope="module")
def pg_failover_pair() -> Iterator[tuple[PostgreSQL, PostgreSQL]]:
    primary = PostgreSQL(extra_args=["-c", "wal_level=replica"]).start()
    standby = PostgreSQL(standby_of=primary).start()
    try:
        yield primary, standby
    finally:
        standby.close()
        primary.close()


async def in_recovery(connections: aconn.Connections, alias: str) -> bool:
    async with connections.scope():
        return bool(await pg_value(await connections.connection(alias), "SELECT pg_is_in_recovery()"))


@pytest.mark.postgresql
@pytest.mark.parametrize("engine", ["postgresql", "asyncpg"])
async def test_postgresql_targets(pg_failover_pair: tuple[PostgreSQL, PostgreSQL], make: Any, engine: str) -> None:
    primary, standby = pg_failover_pair
    hosts = [f"127.0.0.1:{standby.port}", f"127.0.0.1:{primary.port}"]  # the standby first
    connections = make(
        {
            target: primary.settings(ENGINE=engine, HOST=hosts, TARGET=target, CONN_MAX_AGE=0)
            for target in ("read-write", "standby", "prefer-standby", "any")
        }
    )
    assert await in_recovery(connections, "read-write") is False
    assert await in_recovery(connections, "standby") is True
    assert await in_recovery(connections, "prefer-standby") is True
    assert await in_recovery(connections, "any") is True  # the first host in order
    nodes = connections.pool("read-write").nodes
    assert nodes is not None and nodes.cluster == "postgresql"
    assert [n.up for n in nodes] == [False, True] and "standby" in nodes.nodes[0].reason


@pytest.mark.postgresql
async def test_postgresql_read_only_error_marks_the_node_down(
    pg_failover_pair: tuple[PostgreSQL, PostgreSQL], make: Any
) -> None:
    """A write refused as read-only (25006) marks that node down at once; nothing new goes to it
    until a check finds it writable again."""
    primary, standby = pg_failover_pair
    hosts = [f"127.0.0.1:{primary.port}", f"127.0.0.1:{standby.port}"]
    connections = make({"default": primary.settings(HOST=hosts, CONN_MAX_AGE=60, ACQUIRE_TIMEOUT=1)})
    assert await in_recovery(connections, "default") is False
    nodes = connections.pool().nodes
    assert nodes is not None
    node = nodes.nodes[0]
    primary.sql("ALTER SYSTEM SET default_transaction_read_only = on", "SELECT pg_reload_conf()")
    try:
        import psycopg

        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            async with connections.scope():
                conn = await connections.connection()
                await eventually_read_only(conn)
                await conn.execute("CREATE TEMPORARY TABLE t (x int)")  # any CREATE: refused as read-only
        assert node.up is False and connections.stats().nodes_down >= 1
        assert connections.stats().idle == 0  # its connections closed
        with pytest.raises(AcquireTimeout, match="read-only"):  # the standby does not qualify either
            await in_recovery(connections, "default")
    finally:
        primary.sql("ALTER SYSTEM RESET default_transaction_read_only", "SELECT pg_reload_conf()")
    await eventually(lambda: node.up is True, timeout=10)
    assert await in_recovery(connections, "default") is False


async def eventually_read_only(conn: Any) -> None:
    """Until the session sees the reloaded setting (a reload reaches each backend asynchronously)."""
    async with asyncio.timeout(5):
        while (await (await conn.execute("SHOW default_transaction_read_only")).fetchone())[0] != "on":
            await asyncio.sleep(0.01)


async def pg_value(conn: Any, sql: str) -> Any:
    """The first column of the first row, on either PostgreSQL driver."""
    if hasattr(conn, "fetchval"):
        return await conn.fetchval(sql)
    return (await (await conn.execute(sql)).fetchone())[0]


@pytest.mark.postgresql
@pytest.mark.parametrize("engine", ["postgresql", "asyncpg"])
async def test_postgresql_failover(make: Any, request: pytest.FixtureRequest, engine: str) -> None:
    """The primary stopped, the standby promoted: the alias' writes go to the new primary."""
    primary = PostgreSQL(extra_args=["-c", "wal_level=replica"]).start()
    standby = PostgreSQL(standby_of=primary).start()
    try:
        hosts = [f"127.0.0.1:{primary.port}", f"127.0.0.1:{standby.port}"]
        settings = primary.settings(ENGINE=engine, HOST=hosts, CONN_MAX_AGE=60, MAX_CONNS=4, ACQUIRE_TIMEOUT=15)
        connections = make({"default": settings})
        async with connections.scope():
            conn = await connections.connection()
            await conn.execute("CREATE TABLE failover_t (id int primary key, n int)")
            await conn.execute("INSERT INTO failover_t VALUES (1, 0)")
        stopped_at: list[float] = []

        def fail_over() -> None:
            stopped_at.append(time.monotonic())
            primary.stop()
            standby.sql("SELECT pg_promote()")

        async def port(conn: Any) -> str:
            return str(await pg_value(conn, "SELECT current_setting('port')"))

        async def update(conn: Any) -> None:
            await conn.execute("UPDATE failover_t SET n = n + 1 WHERE id = 1")

        log, promoted, _ = await fault_under_load(connections, fail_over, 3.0, where=port, work=update)
        at = stopped_at[0]
        after = [entry for entry in log if entry[0] > promoted + 1.5]
        assert after and all(o == "ok" and p == str(standby.port) for _, p, o in after), after[:5]
        errors = [entry for entry in log if entry[2] != "ok"]
        # the scopes in flight when the primary went, at most two per connection (the statement,
        # then a write refused by a connection the news had not reached); the rest waited and went on
        assert len(errors) <= 2 * 4, errors
        first = next(t - promoted for t, p, o in log if t > promoted and o == "ok")
        figures = (
            f"postgresql failover on {engine}: {len(log)} scopes, {len(errors)} errors, first success "
            f"{first:.3f}s after the promotion ({promoted - at:.2f}s to stop the primary and promote)"
        )
        request.node.user_properties.append(("figures", figures))
    finally:
        standby.close()
        primary.close()


# -- atomic(retries=N) on PostgreSQL: a serialization failure (40001) ---------------------------


@pytest.mark.postgresql
async def test_retries_on_a_serialization_failure(pg: PostgreSQL, make: Any) -> None:
    connections = make({"default": pg.settings(ENGINE="postgresql")})
    async with connections.scope():
        conn = await connections.connection()
        await conn.execute("DROP TABLE IF EXISTS ser")
        await conn.execute("CREATE TABLE ser (id int primary key, n int)")
        await conn.execute("INSERT INTO ser VALUES (1, 0)")
    calls = 0

    async def bump_elsewhere() -> None:
        async with connections.scope():  # another session: a child task's scope of its own
            await (await connections.connection()).execute("UPDATE ser SET n = n + 100 WHERE id = 1")

    @connections.atomic(retries=2)
    async def add_one() -> int:
        nonlocal calls
        calls += 1
        conn = await connections.connection()
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        (n,) = await (await conn.execute("SELECT n FROM ser WHERE id = 1")).fetchone()
        if calls == 1:
            await asyncio.create_task(bump_elsewhere())
        await conn.execute("UPDATE ser SET n = %s WHERE id = 1", (n + 1,))  # 40001 on the first run
        return int(n) + 1

    assert await add_one() == 101 and calls == 2
    assert connections.stats().transaction_retries == 1

    # not retried: a nested block (the conflict aborted a transaction it does not own), another error,
    # and a conflict past the retries
    @connections.atomic(retries=5)
    async def inner() -> None:
        await add_one_always_conflicting(isolation=False)

    async def add_one_always_conflicting(isolation: bool = True) -> None:
        conn = await connections.connection()
        if isolation:
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        await conn.execute("SELECT n FROM ser WHERE id = 1")
        await asyncio.create_task(bump_elsewhere())
        await conn.execute("UPDATE ser SET n = n + 1 WHERE id = 1")

    import psycopg

    with pytest.raises(psycopg.errors.SerializationFailure):
        async with connections.atomic():
            await (await connections.connection()).execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            await inner()  # nested: its savepoint's conflict is the outer block's to handle
    assert connections.stats().transaction_retries == 1

    @connections.atomic(retries=3)
    async def broken() -> None:
        nonlocal calls
        calls += 1
        await (await connections.connection()).execute("SELECT * FROM no_such_table")

    calls = 0
    with pytest.raises(psycopg.errors.UndefinedTable):
        await broken()
    assert calls == 1

    @connections.atomic(retries=2)
    async def always() -> None:
        nonlocal calls
        calls += 1
        await add_one_always_conflicting()

    calls = 0
    with pytest.raises(psycopg.errors.SerializationFailure):
        await always()
    assert calls == 3 and connections.stats().transaction_retries == 3
    with pytest.raises(ValueError, match="retries"):
        connections.atomic(retries=-1)
