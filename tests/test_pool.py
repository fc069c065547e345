"""Pool logic, deterministically, on the controllable fake backend.

Cancels at every await point of acquire, health check, release and close,
and checks afterwards that the counts balance, the cap held, and that no
desynced connection is handed out again.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from fakebackend import FakeConn, FakeServer
from helpers import age_idle, assert_balanced, eventually

import aconn

ENGINE = "fakebackend.FakeBackend"


@pytest.fixture
def server() -> FakeServer:
    """This test's fake server: gates, failures, the connections opened."""
    return FakeServer()


def entry(server: FakeServer, **settings: Any) -> dict[str, Any]:
    return {"ENGINE": ENGINE, "NAME": "fake", "CONN_MAX_AGE": 60, "OPTIONS": {"server": server}, **settings}


@pytest.fixture
async def fake(make: Any, server: FakeServer) -> AsyncIterator[Any]:
    def build(**settings: Any) -> aconn.Connections:
        return make({"default": entry(server, **settings)})

    yield build


async def use(connections: aconn.Connections, n: int, *, delay: float = 0) -> int:
    async with connections.scope():
        conn: FakeConn = await connections.connection()
        return await conn.query(n, delay=delay)


def check(connections: aconn.Connections) -> aconn.PoolStats:
    stats = connections.stats()
    assert_balanced(stats)
    live = connections.pool("default").backend.server.live()  # type: ignore[attr-defined]
    assert len(live) == stats.open - stats.opening, (stats, live)
    return stats


@contextlib.asynccontextmanager
async def holding(connections: aconn.Connections, n: int = 1, name: str = "holder") -> AsyncIterator[None]:
    """``n`` tasks, each holding a connection in a scope of its own until the block exits."""
    release = asyncio.Event()

    async def hold() -> None:
        async with connections.scope():
            await connections.connection()
            await release.wait()

    expected = connections.stats().in_use + n
    tasks = [asyncio.create_task(hold(), name=name if n == 1 else f"{name}-{i}") for i in range(n)]
    await eventually(lambda: connections.stats().in_use == expected)
    try:
        yield
    finally:
        release.set()
        await asyncio.gather(*tasks)


async def test_waiters_are_served_first_in_first_out(fake: Any) -> None:
    connections = fake(MAX_CONNS=1)
    order: list[int] = []

    async def waiter(i: int) -> None:
        async with connections.scope():
            await connections.connection()
            order.append(i)

    tasks = []
    async with holding(connections):
        for i in range(5):
            tasks.append(asyncio.create_task(waiter(i)))
            await eventually(lambda i=i: connections.stats().waiting == i + 1)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    stats = check(connections)
    assert stats.opened == 1 and stats.acquire_waits == 5 and stats.acquire_wait_max_s > 0


async def test_cancelled_waiter_does_not_swallow_the_connection(fake: Any) -> None:
    connections = fake(MAX_CONNS=1)
    async with holding(connections):
        first = asyncio.create_task(use(connections, 1))
        await eventually(lambda: connections.stats().waiting == 1)
        second = asyncio.create_task(use(connections, 2))
        await eventually(lambda: connections.stats().waiting == 2)
        first.cancel()
    assert await second == 2
    with pytest.raises(asyncio.CancelledError):
        await first
    assert check(connections).idle == 1


async def test_grant_racing_a_cancellation_is_passed_on(fake: Any) -> None:
    """The connection is handed to a waiter that is cancelled before it resumes."""
    connections = fake(MAX_CONNS=1)
    async with connections.scope():
        await connections.connection()
        doomed = asyncio.create_task(use(connections, 1))
        await eventually(lambda: connections.stats().waiting == 1)
    # the scope exit (no I/O: no suspension) handed the connection to the waiter; cancel it now
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    stats = check(connections)
    assert stats.idle == 1 and stats.in_use == 0
    assert await use(connections, 5) == 5


async def test_acquire_timeout_names_alias_cap_and_holders(fake: Any) -> None:
    connections = fake(MAX_CONNS=1, ACQUIRE_TIMEOUT=0.05)
    async with holding(connections, name="report-builder"):
        with pytest.raises(aconn.AcquireTimeout) as info:
            await use(connections, 1)
    message = str(info.value)
    for fragment in ("'default'", "MAX_CONNS=1", "1 in use", "1 waiting", "report-builder", "ACQUIRE_TIMEOUT=0.05"):
        assert fragment in message, message
    stats = check(connections)
    assert stats.acquire_timeouts == 1 and stats.waiting == 0


async def test_each_waiter_times_out_at_its_own_deadline(fake: Any) -> None:
    """Waiters share one timer: a cancelled or served head must not delay or skip the others' deadlines."""
    connections = fake(MAX_CONNS=1, ACQUIRE_TIMEOUT=0.3)
    loop = asyncio.get_running_loop()
    outcomes: dict[int, tuple[str, float]] = {}

    async def waiter(i: int) -> None:
        started = loop.time()
        try:
            await use(connections, i)
            outcomes[i] = ("served", loop.time() - started)
        except aconn.AcquireTimeout:
            outcomes[i] = ("timed out", loop.time() - started)

    async with holding(connections):
        tasks = []
        for i in range(4):
            tasks.append(asyncio.create_task(waiter(i)))
            await eventually(lambda i=i: connections.stats().waiting == i + 1)
            await asyncio.sleep(0.05)  # spread the deadlines out
        tasks[0].cancel()  # the head of the queue, whose deadline the timer is armed for
        await asyncio.gather(*tasks[1:])
    assert tasks[0].cancelled()
    assert [outcomes[i][0] for i in (1, 2, 3)] == ["timed out"] * 3
    for i in (1, 2, 3):
        assert 0.3 <= outcomes[i][1] < 1.5, outcomes  # its own deadline: neither early nor stalled
    stats = check(connections)
    assert stats.acquire_timeouts == 3 and stats.waiting == 0
    # a waiter queued after all that is served, and its old timer does not fire on it
    async with holding(connections):
        late = asyncio.create_task(waiter(9))
        await eventually(lambda: connections.stats().waiting == 1)
    await late
    assert outcomes[9][0] == "served"


async def test_slow_connect_does_not_block_a_free_connection(server: FakeServer, fake: Any) -> None:
    """Failure 15: no decision lock held across I/O."""
    connections = fake(MAX_CONNS=3)
    assert await use(connections, 0) == 0  # one idle connection
    gate = server.gates["connect"] = asyncio.Event()
    entered = server.entered["connect"] = asyncio.Event()
    async with holding(connections):  # the idle one is busy: the next acquire must connect
        stuck = asyncio.create_task(use(connections, 1))
        await entered.wait()
    async with asyncio.timeout(1):
        assert await use(connections, 2) == 2  # served from the idle set while the connect hangs
    assert not stuck.done()
    gate.set()
    assert await stuck == 1
    check(connections)


@pytest.mark.parametrize("point", ["connect", "ping", "rollback", "close", "wait"])
async def test_cancel_at_each_await_point(server: FakeServer, fake: Any, point: str) -> None:
    connections = fake(MAX_CONNS=2, CONN_HEALTH_CHECKS=True)
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def scope_body() -> None:
        async with connections.scope():
            conn: FakeConn = await connections.connection()
            if point == "rollback":
                conn.in_tx = True
            await conn.query(1)

    if point in ("ping", "rollback", "close"):
        await use(connections, 0)  # an idle connection to ping / roll back / close
        age_idle(connections, 1)  # past the ping bypass window
    if point == "close":
        connections.pool("default")._idle[-1].close_at = 0  # expired: closed at the next acquire
    if point == "wait":
        async with holding(connections, n=2):
            victim = asyncio.create_task(scope_body())
            await eventually(lambda: connections.stats().waiting == 1)
            victim.cancel()
    else:
        server.gates[point] = gate
        server.entered[point] = entered
        victim = asyncio.create_task(scope_body())
        await entered.wait()
        victim.cancel()
        gate.set()
    result = (await asyncio.gather(victim, return_exceptions=True))[0]
    # the expired connection closes in the background: the victim itself may finish first
    assert isinstance(result, asyncio.CancelledError) or point == "close"
    await eventually(lambda: connections.stats().closing == 0)
    stats = check(connections)
    assert stats.in_use == 0 and stats.waiting == 0 and stats.open <= 2
    assert all(not c.desynced for c in server.live())
    for n in range(10):
        assert await use(connections, n) == n
    check(connections)


async def test_random_cancellations_keep_the_pool_consistent(server: FakeServer, fake: Any) -> None:
    connections = fake(MAX_CONNS=4, CONN_HEALTH_CHECKS=True)
    rng = random.Random(7)

    async def one(i: int) -> None:
        conn_delay = rng.random() * 0.004
        # The last unit of each batch cannot miss its deadline on a working pool, so both
        # outcomes are there however fast the machine is.
        async with asyncio.timeout(10.0 if i % 10 == 9 else rng.random() * 0.006):
            assert await use(connections, i, delay=conn_delay) == i

    results: list[Any] = []
    for batch in range(0, 1000, 10):  # ten at a time over four connections
        results += await asyncio.gather(*(one(i) for i in range(batch, batch + 10)), return_exceptions=True)
    assert all(r is None or isinstance(r, TimeoutError) for r in results), {type(r) for r in results}
    assert any(isinstance(r, TimeoutError) for r in results) and all(r is None for r in results[9::10])
    await eventually(lambda: connections.stats().closing == 0)
    stats = check(connections)
    assert stats.in_use == 0 and stats.waiting == 0
    assert max(len(server.live()), stats.open) <= 4
    for n in range(100):
        assert await use(connections, n) == n
    check(connections)


async def test_refused_connects_are_retried_within_the_deadline(server: FakeServer, fake: Any, aconn_logs: Any) -> None:
    connections = fake(MAX_CONNS=2, ACQUIRE_TIMEOUT=5)
    server.failures["connect"] = OSError("refused: too many connections")
    entered = server.entered["connect"] = asyncio.Event()
    task = asyncio.create_task(use(connections, 3))
    await entered.wait()
    await eventually(lambda: connections.stats().connect_errors >= 2)
    del server.failures["connect"]
    assert await task == 3
    assert "retrying with backoff" in aconn_logs.text
    check(connections)


async def test_refused_until_the_deadline_explains_the_budget(server: FakeServer, fake: Any) -> None:
    connections = fake(MAX_CONNS=3, ACQUIRE_TIMEOUT=0.3)
    server.failures["connect"] = OSError("refused: too many connections")
    with pytest.raises(aconn.AcquireTimeout, match=r"processes x MAX_CONNS") as info:
        await use(connections, 1)
    assert "MAX_CONNS=3" in str(info.value)
    stats = check(connections)
    assert stats.open == 0 and stats.connect_errors >= 2


async def test_a_wait_that_ran_out_says_the_server_refused_meanwhile(server: FakeServer, fake: Any) -> None:
    """A task queued while the server refused new connections, whose wait runs out after a connect
    succeeded again: the refusal was during its wait, so its error still explains the budget
    (it said so only while the last connect was refused: CI saw a worker's timeouts without it)."""
    connections = fake(MAX_CONNS=2, ACQUIRE_TIMEOUT=1)
    keep = asyncio.Event()

    async def take_and_keep() -> None:
        async with connections.scope():
            await connections.connection()
            await keep.wait()

    async with holding(connections):  # the first slot, held throughout
        server.failures["connect"] = OSError("refused: too many connections")
        opener = asyncio.create_task(take_and_keep())  # the second slot: refused, backing off
        await eventually(lambda: connections.stats().connect_errors >= 1)
        waiter = asyncio.create_task(use(connections, 3))  # queues: both slots are taken
        await eventually(lambda: connections.stats().waiting == 2)
        del server.failures["connect"]
        try:
            await eventually(lambda: connections.stats().in_use == 2)  # the opener's retry got one
            with pytest.raises(aconn.AcquireTimeout, match=r"refused new connections meanwhile.*processes x MAX_CONNS"):
                await waiter
        finally:
            keep.set()
            await opener
    check(connections)


async def test_failed_connect_passes_the_slot_on(server: FakeServer, fake: Any) -> None:
    connections = fake(MAX_CONNS=1)
    server.failures["connect"] = ConnectionError("server down")
    with pytest.raises(ConnectionError):
        await use(connections, 1)
    del server.failures["connect"]
    assert await use(connections, 2) == 2
    assert check(connections).connect_errors == 1


async def test_child_tasks_never_share_the_scope_connection(server: FakeServer, fake: Any) -> None:
    connections = fake(MAX_CONNS=4)

    async def child_without_scope(n: int) -> int:
        conn: FakeConn = await connections.connection()
        return await conn.query(n)

    async def child_with_scope(n: int) -> tuple[int, int]:
        async with connections.scope():
            conn: FakeConn = await connections.connection()
            return await conn.query(n, delay=0.001), conn.id

    async with connections.scope():
        parent: FakeConn = await connections.connection()
        with pytest.raises(aconn.ScopeError, match=r"[Oo]pen a scope of its own"):
            await asyncio.gather(child_without_scope(1), child_without_scope(2))
        results = await asyncio.gather(*(child_with_scope(n) for n in range(6)))
        assert [r[0] for r in results] == list(range(6))
        assert parent.id not in {r[1] for r in results}
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(child_with_scope(n)) for n in range(3)]
        assert [t.result()[0] for t in tasks] == [0, 1, 2]
        assert await parent.query(42) == 42
    assert not any(c.desynced for c in server.opened)
    check(connections)


async def test_leak_timeout_warns_with_task_and_stack(fake: Any, aconn_logs: Any) -> None:
    connections = fake(LEAK_TIMEOUT=0.01)

    async def forgetful_job() -> None:
        async with connections.scope():
            await connections.connection()
            await eventually(lambda: connections.stats().leaks_detected == 1)

    await asyncio.create_task(forgetful_job(), name="forgetful-job")
    record = next(r for r in aconn_logs.records if "LEAK_TIMEOUT" in r.getMessage())
    assert record.levelno == logging.WARNING
    assert "forgetful-job" in record.getMessage() and "forgetful_job" in record.getMessage()


async def test_idle_limit_from_the_server(server: FakeServer, fake: Any) -> None:
    server.idle_timeout = 10.0
    connections = fake(CONN_MAX_AGE=None)
    await use(connections, 1)
    holder = connections.pool("default")._idle[-1]
    assert holder.idle_limit == 8.0
    age_idle(connections, 9)
    await use(connections, 2)
    assert connections.stats().closed_idle == 1


def test_open_handler_refuses_another_live_loop_then_reopens_there(aconn_logs: Any) -> None:
    connections = aconn.Connections({"default": entry(FakeServer(), NAME="x")})
    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(connections.open())

        async def while_open_elsewhere() -> None:
            with pytest.raises(aconn.AconnError, match="in use in another event loop"):
                await use(connections, 2)
            with pytest.raises(aconn.AconnError, match="in use in another event loop"):
                await connections.open()
            with pytest.raises(aconn.AconnError, match="another event loop"):
                await connections.aclose()

        asyncio.run(while_open_elsewhere())
        first.run_until_complete(connections.aclose())
    finally:
        first.close()

    async def reopened() -> int:
        async with connections:  # open() after aclose(), in another loop
            return await use(connections, 3)

    assert asyncio.run(reopened()) == 3
    assert asyncio.run(reopened()) == 3  # and again: one module-level handler, a loop per test
    assert "event loop is ending" not in aconn_logs.text


async def test_another_thread_gets_no_connection_while_the_bound_loop_runs_a_task(
    server: FakeServer, fake: Any
) -> None:
    """The scope path reads the running task off the bound loop (no system call); from another
    thread that read would see this loop's task, so it is not trusted there. This task blocks in
    ``join()`` on purpose: the bound loop's running task is this one all the while."""
    connections = fake()
    outcomes: list[BaseException | None] = []

    def in_thread(coro: Callable[[], Awaitable[Any]]) -> None:
        try:
            asyncio.run(coro())
            outcomes.append(None)
        except BaseException as exc:
            outcomes.append(exc)

    async def new_scope() -> None:
        async with connections.scope():
            await connections.connection()

    async with connections.scope():
        conn = await connections.connection()
        # a thread of its own: a scope of its own, in its own loop
        thread = threading.Thread(target=in_thread, args=(new_scope,))
        thread.start()
        thread.join(10)
        # a thread that sees this scope (its context copied, as asyncio.to_thread does)
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(in_thread, connections.connection))
        thread.start()
        thread.join(10)
        assert await connections.connection() is conn
    assert isinstance(outcomes[0], aconn.AconnError) and "in use in another event loop" in str(outcomes[0])
    assert isinstance(outcomes[1], aconn.ScopeError) and "a connection is never shared between tasks" in str(
        outcomes[1]
    )
    stats = check(connections)
    assert stats.in_use == 0 and stats.open == 1


def test_lazy_handler_moves_to_the_next_loop(aconn_logs: Any) -> None:
    """Used without open() in one asyncio.run(), then in the next: works, and the first loop's end says so."""
    connections = aconn.Connections({"default": entry(FakeServer(), NAME="x")})
    assert asyncio.run(use(connections, 1)) == 1
    assert connections.stats().open == 0  # closed politely as the loop ended
    assert "the event loop is ending with 1 connection(s) of this handler open" in aconn_logs.text
    assert asyncio.run(use(connections, 2)) == 2


async def test_open_failure_closes_what_it_opened(server: FakeServer, make: Any) -> None:
    connections = make({"default": entry(server, NAME="x"), "other": entry(server, NAME="y", CONN_MAX_AGE=0)})
    server.denied = {"y"}  # "default" connects, then "other" is refused
    with pytest.raises(PermissionError) as info:
        await connections.open()
    assert len(server.opened) == 2 and all(c.closed for c in server.opened)  # default's too
    assert "aconn alias 'other': connecting to" in "\n".join(info.value.__notes__)
    assert not connections._opened and connections.stats("default").open == 0
    server.denied = set()
    await connections.open()  # and it can be tried again
    assert connections.stats("default").open == 1 and connections.stats("other").opened == 1


async def test_max_waiting_refuses_at_once(fake: Any) -> None:
    connections = fake(MAX_CONNS=1, MAX_WAITING=1, ACQUIRE_TIMEOUT=30)
    gate = asyncio.Event()

    async def hold() -> None:
        async with connections.scope():
            await connections.connection()
            await gate.wait()

    holder = asyncio.create_task(hold())
    waiter = asyncio.create_task(use(connections, 7))
    await eventually(lambda: connections.stats().waiting == 1)
    with pytest.raises(aconn.PoolOverloaded, match="MAX_WAITING=1") as info:
        await use(connections, 8)
    assert isinstance(info.value, aconn.AcquireTimeout)
    gate.set()
    await holder
    assert await waiter == 7
    stats = connections.stats()
    assert stats.overloaded == 1 and stats.acquire_timeouts == 0
    assert_balanced(stats)


async def test_aclose_waits_for_scopes_in_flight(server: FakeServer, fake: Any) -> None:
    connections = fake()
    await connections.open()
    release = asyncio.Event()

    async def request() -> int:
        async with connections.scope():
            conn: FakeConn = await connections.connection()
            await release.wait()
            return await conn.query(3)

    task = asyncio.create_task(request())
    await eventually(lambda: connections.stats().in_use == 1)
    closing = asyncio.create_task(connections.aclose())
    await eventually(lambda: connections._scopes.closing)
    with pytest.raises(aconn.ClosedError):
        async with connections.scope():
            pass
    assert not closing.done()
    release.set()
    assert await task == 3
    await closing
    assert connections.stats().open == 0 and server.live() == []


async def test_reopened_in_the_same_loop_stays_open(fake: Any) -> None:
    """The loop-end watch of the handler's previous life, finalised meanwhile, must not close the new one."""
    connections = fake()
    await connections.open()
    old_watch = connections._binding.watch
    assert old_watch is not None
    await connections.aclose()
    await connections.open()
    await old_watch.aclose()  # finalised now, as the garbage collector would at any time
    assert connections._opened and connections.stats().open == 1
    assert await use(connections, 5) == 5


async def test_a_dead_side_session_is_closed_before_another_opens(make: Any, server: FakeServer) -> None:
    """The side session that stops statements died between two steps of a stop (the server
    dropped it): its end is closed before another opens, not left open for the garbage collector
    (aiomysql's warns: "Unclosed connection", an error under pytest)."""
    connections = make({"default": entry(server)})
    backend = connections.pool("default").backend
    sides: list[FakeConn] = []

    async def open_side(address: Any) -> FakeConn:
        conn, _ = await backend.connect()
        sides.append(conn)
        return conn

    backend._open_side = open_side
    steps = 0

    async def step(conn: FakeConn) -> bool:
        nonlocal steps
        steps += 1
        if steps == 1:
            conn.alive = False  # dropped by the server after this step, the stop not yet done
            return False
        return True

    async with asyncio.timeout(5):
        await backend._on_another_session(None, step)
    assert steps == 2 and len(sides) == 2
    assert sides[0].closed and sides[1].closed  # the dead one closed, the second at the end
    assert backend.side_sessions_lost == 0  # gone from the server: nothing runs on there


async def test_a_stop_that_gets_no_answer_says_so(
    make: Any, server: FakeServer, aconn_logs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop of a statement left running that the server does not answer within its bound is
    counted as failed, its slot freed, and the WARNING says why in words (a bare TimeoutError
    has no message of its own)."""
    # 5 s on the compiled build, whose pool module has the Final constant inlined
    monkeypatch.setattr(aconn.pool.pool, "CLEANUP_TIMEOUT", 0.2)
    connections = make({"default": entry(server)})
    backend = connections.pool("default").backend
    never = asyncio.Event()

    async def unanswered(conn: Any, via: Any = None, address: Any = None) -> None:
        await never.wait()  # a server that takes the KILL and never answers

    backend.left_running = lambda conn: True
    backend.cancel_on_server = unanswered
    async with connections.scope():
        conn: FakeConn = await connections.connection()
        conn.alive = False  # dropped mid-command: released as dead, its statement maybe running
    await connections.close_old()  # waits for the stop
    stats = check(connections)
    assert stats.server_cancels_failed == 1 and stats.server_cancels == 0 and stats.open == 0
    record = next(r for r in aconn_logs.records if "could not stop" in r.getMessage())
    assert record.levelno == logging.WARNING
    assert re.search(r"\(no answer within (0\.2|5) s\)", record.getMessage()), record.getMessage()
