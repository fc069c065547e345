"""The structure the code promises, checked: imports run one way, slots change state only through
the holder's transitions, and the scope path's inlined copies agree with the general steps.
"""

from __future__ import annotations

import ast
import asyncio
import itertools
import math
import subprocess
import sys
from pathlib import Path
from time import monotonic
from typing import Any

import pytest
from fakebackend import FakeBackend, FakeConn, FakeServer

import aconn
from aconn.errors import InternalError
from aconn.pool import PING_BYPASS, CloseReason, Holder, HolderState, Pool
from aconn.pool.holder import SLOT
from aconn.settings import parse_settings

PACKAGE = Path(aconn.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every aconn module ``path`` imports: at the top, under TYPE_CHECKING, or inside a function."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("aconn"):
                found.add(target)
                for alias in node.names:  # `from . import x` names a module
                    candidate = f"{target}.{alias.name}"
                    if (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists():
                        found.add(candidate)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("aconn"))
    found.discard(name)
    return found


def test_imports_run_one_way() -> None:
    """No circle in aconn's import graph, counting imports for type hints and inside functions."""
    graph = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "visiting"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "visiting":
                cycle = [*path[path.index(target) :], target] if target in path else [node, target]
                raise AssertionError(f"import circle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # the layers: nothing below the handler imports it
    for module in ("aconn.scope", "aconn.iteration", "aconn.transactions", "aconn.housekeeping", "aconn.pool"):
        assert "aconn.handler" not in graph[module], module


def test_import_pulls_no_module_lazily() -> None:
    """``python -X importtime -c 'import aconn'``: the package and its layers load at import; the only
    modules left for later are the backends' drivers (loaded when an alias needs them) and the
    integrations (asgi, testing, check), which import aconn, never the other way."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import aconn"], capture_output=True, text=True, check=True
    ).stderr
    loaded = {line.rsplit("|", 1)[1].strip() for line in out.splitlines() if "|" in line}
    core = {
        "aconn", "aconn.handler", "aconn.scope", "aconn.pool", "aconn.pool.pool", "aconn.pool.holder",
        "aconn.pool.waiters", "aconn.pool.connect", "aconn.pool.counters", "aconn.transactions",
        "aconn.iteration", "aconn.housekeeping", "aconn.settings", "aconn.errors", "aconn.stats",
        "aconn.rules", "aconn.backends", "aconn.backends.base", "aconn._asyncio",
    }  # fmt: skip
    assert core <= loaded, core - loaded
    assert not {"aconn.backends.mysql", "aconn.backends.sqlite", "aconn.testing", "aconn.asgi"} & loaded


def test_state_changes_only_through_transitions() -> None:
    """Outside holder.py, a slot's state is written only at the two inlined sites of the scope path."""
    writes = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "holder.py":
            continue
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Attribute) and t.attr == "state" for t in targets):
                    writes.append((path.name, lines[node.lineno - 1].strip()))
    assert [w[0] for w in writes] == ["pool.py", "pool.py"], writes
    assert "# Holder.taken() and Holder.handed_out(), inlined" in writes[0][1]
    assert "_IDLE" in writes[1][1]


def test_owner_and_leak_timer_change_only_in_the_holder() -> None:
    """A holder's owner (``task``), its taken time, its leak timer and stack are written only by its
    own methods, and by the two inlined sites of the scope path (``take_idle``, ``release``)."""
    watched = {"task", "taken_at", "leak_timer", "taken_stack"}
    writes = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        owners = {id(f): c.name for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for f in ast.walk(c)}
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            owner = owners.get(id(func), path.name)  # a module-level function: its file
            for node in ast.walk(func):
                for target in node.targets if isinstance(node, ast.Assign) else []:
                    if isinstance(target, ast.Attribute) and target.attr in watched:
                        # self.task of a Scope or a block is their own; any other object's is a holder's
                        holder_write = not (isinstance(target.value, ast.Name) and target.value.id == "self")
                        if owner == "Holder" or holder_write:
                            writes.append((owner, func.name, target.attr))
    outside = {w for w in writes if w[0] != "Holder"}
    assert outside == {("Pool", "take_idle", "taken_at"), ("Pool", "take_idle", "task"), ("Pool", "release", "task")}


def test_slot_counts_change_only_in_their_methods() -> None:
    """``size`` and ``opening`` are written only by the pool's slot methods; ``in_use`` and
    ``closing`` only by the holder's transitions and the two inlined sites of the scope path."""
    allowed = {
        "_size": {"_new_slot", "_free_slot", "__init__"},
        "_opening": {"_new_slot", "_open_in_slot", "_abandon_opening", "__init__", "opened"},
        "_in_use": {"__init__", "opened", "taken", "idled", "closing", "dropped", "take_idle", "release"},
        "_closing": {"__init__", "closing", "closed"},
    }
    writes = []
    for path in (PACKAGE / "pool").glob("*.py"):
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Assign | ast.AugAssign):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for target in targets:
                        if isinstance(target, ast.Attribute) and target.attr in allowed:
                            writes.append((target.attr, function.name))
    stray = [(attr, where) for attr, where in writes if where not in allowed[attr]]
    assert stray == [], stray
    assert {where for attr, where in writes if attr == "_opening"} >= {"_new_slot", "_abandon_opening"}


def test_pools_read_through_the_public_accessor() -> None:
    """Tests, benchmarks, examples and aconn.otel read a pool with ``connections.pool(alias)``,
    never the handler's private mapping."""
    root = PACKAGE.parent
    needle = "._" + "pools"
    files = [PACKAGE / "otel.py", *(root / "tests").glob("*.py"), *(root / "benchmarks").glob("*.py")]
    files += list((root / "examples").rglob("*.py"))
    assert [path.name for path in files if needle in path.read_text()] == []


# -- the decide steps, on a pool of the fake backend, no event loop work -------------------------


def make_pool(**settings: Any) -> Pool:
    entry = {"ENGINE": "fakebackend.FakeBackend", "NAME": "x", "OPTIONS": {"server": FakeServer()}, **settings}
    parsed = parse_settings("default", entry)
    return Pool(parsed, FakeBackend(parsed))


def idle_holder(pool: Pool, *, since: float, age_left: float, idle_limit: float = 10.0, dead: bool = False) -> Holder:
    """An idle connection, its slot counted, last used ``since`` seconds ago."""
    conn = FakeConn()
    conn.alive = not dead
    now = monotonic()
    pool._new_slot()
    holder = Holder(pool, conn, pool.backend.liveness(conn), now, now + age_left, idle_limit)
    holder.opened()
    holder.last_used = now - since
    holder.idled()
    pool._idle.append(holder)
    return holder


def gauges(pool: Pool) -> tuple[int, int, int, int, int]:
    return pool._size, len(pool._idle), pool._in_use, pool._opening, pool._closing


CASES = list(itertools.product([False, True], [0.1, 1.0, 20.0], [-1.0, 100.0], [False, True]))


@pytest.mark.parametrize(("health_checks", "since", "age_left", "dead"), CASES)
def test_take_idle_agrees_with_the_general_checks(
    health_checks: bool, since: float, age_left: float, dead: bool
) -> None:
    """``take_idle`` writes out ``_unusable_reason``, ``_needs_ping``, ``Holder.taken``: same verdicts and gauges."""
    inlined, general = make_pool(CONN_HEALTH_CHECKS=health_checks), make_pool(CONN_HEALTH_CHECKS=health_checks)
    a = idle_holder(inlined, since=since, age_left=age_left, dead=dead)
    b = idle_holder(general, since=since, age_left=age_left, dead=dead)
    usable = general._unusable_reason(b, monotonic()) is None and not (health_checks and since > PING_BYPASS)
    taken = inlined.take_idle(None)
    assert (taken is a) is usable
    if usable:
        popped = general._pop_idle()
        assert popped is b and not general._needs_ping(b)
        assert (a.state, gauges(inlined)) == (b.state, gauges(general)) == (HolderState.IN_USE, (1, 0, 1, 0, 0))
    else:
        assert a.state is HolderState.IDLE and gauges(inlined) == (1, 1, 0, 0, 0)  # untouched: acquire decides


async def test_release_fast_path_agrees_with_put_back() -> None:
    """``release`` writes out ``Holder.idled`` and ``_put_back``'s last line: same state and gauges."""
    inlined, general = make_pool(CONN_MAX_AGE=60), make_pool(CONN_MAX_AGE=60)
    idle_holder(inlined, since=0.0, age_left=60)
    idle_holder(general, since=0.0, age_left=60)
    a, b = inlined.take_idle(None), general.take_idle(None)
    assert isinstance(a, Holder) and isinstance(b, Holder)
    assert inlined.release(a, None) is None
    general._put_back(b)
    assert (a.state, gauges(inlined), inlined._idle[-1] is a) == (b.state, gauges(general), general._idle[-1] is b)
    assert a.state is HolderState.IDLE and gauges(inlined) == (1, 1, 0, 0, 0)


def test_illegal_transition_names_both_states() -> None:
    pool = make_pool()
    holder = idle_holder(pool, since=0.0, age_left=60)
    with pytest.raises(InternalError, match="moved from 'idle' to 'idle'"):
        holder.idled()
    with pytest.raises(InternalError, match="moved from 'idle' to 'pinned'"):
        holder.pinned()
    with pytest.raises(InternalError, match="moved from 'idle' to 'closed'") as info:
        holder.closed()
    assert not isinstance(info.value, aconn.AconnError)  # an app's `except AconnError` never swallows a bug
    assert gauges(pool) == (1, 1, 0, 0, 0)  # a refused move changes nothing


async def test_a_freed_slot_goes_to_the_oldest_live_waiter() -> None:
    pool = make_pool(MAX_CONNS=1, ACQUIRE_TIMEOUT=30)
    loop = asyncio.get_running_loop()
    holder = idle_holder(pool, since=0.0, age_left=60)  # the one slot is taken
    pool._idle.remove(holder)
    holder.taken(0.0)
    first = asyncio.ensure_future(pool._wait(loop, loop.time() + 30))
    second = asyncio.ensure_future(pool._wait(loop, loop.time() + 30))
    await asyncio.sleep(0)  # one step each: both queue (no await before they do)
    assert pool.waiting == 2
    first.cancel()  # a dead future at the head of the queue is skipped
    await asyncio.sleep(0)
    assert pool.waiting == 1
    holder.closing(CloseReason.ERROR)
    holder.closed()  # its slot goes on
    assert await second is SLOT and gauges(pool) == (1, 0, 0, 1, 0)  # the waiter's, to open in
    pool._abandon_opening()  # it opens nothing: nobody waits, freed
    assert gauges(pool) == (0, 0, 0, 0, 0) and not pool._waiters


async def test_one_timer_times_out_every_waiter_in_order() -> None:
    pool = make_pool(MAX_CONNS=1)
    loop = asyncio.get_running_loop()
    pool._new_slot()
    now = loop.time()
    waits = [asyncio.ensure_future(pool._wait(loop, now + d)) for d in (0.01, 0.02, math.inf)]
    await asyncio.sleep(0)
    assert pool._waiters._timer is not None  # one timer, for the oldest
    await asyncio.wait(waits[:2], timeout=5)
    assert all(isinstance(w.exception(), aconn.AcquireTimeout) for w in waits[:2])
    assert not waits[2].done() and pool.waiting == 1 and pool.counters.acquire_timeouts == 2
    waits[2].cancel()
    await asyncio.gather(waits[2], return_exceptions=True)
    assert pool.waiting == 0 and not pool._waiters


def test_counters_follow_the_pool_stats_totals() -> None:
    """A total is declared on PoolStats once: Counters counts exactly those (its annotations, for
    mypy, agree), a snapshot fills them, and the ones with an instrument are what aconn.otel reports."""
    import dataclasses

    from aconn.pool.counters import Counters
    from aconn.stats import TOTALS, PoolStats

    assert set(Counters.__annotations__) == set(TOTALS)
    counters = Counters()
    for i, name in enumerate(TOTALS):
        setattr(counters, name, i + 1)
    stats = counters.snapshot(alias="a", max_conns=1, open=0, idle=0, in_use=0, opening=0, closing=0, waiting=0)
    assert [getattr(stats, name) for name in TOTALS] == list(range(1, len(TOTALS) + 1))
    instruments = [f.metadata["instrument"].name for f in dataclasses.fields(PoolStats) if f.metadata.get("instrument")]
    source = (PACKAGE / "otel.py").read_text()
    assert instruments and not any(f'"{name}"' in source for name in instruments)  # declared once, on PoolStats
