"""Run every benchmark against a throwaway MariaDB and write docs/performance.md and docs/performance.png.

    nox -s bench                      # what the docs show
    python benchmarks/run.py --quick  # a fast pass, same tables, fewer rounds

Needs nothing but the packages of the `bench` extra and MariaDB's server
binaries: it starts its own server (the test harness) and a TCP proxy that
adds latency for workload 6.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import aiomysql  # noqa: E402
import peers  # noqa: E402
from faults import Proxy  # noqa: E402
from mariadb import MariaDB, free_port  # noqa: E402
from webapp import VARIANTS  # noqa: E402

import aconn  # noqa: E402

LATENCY = 0.0005  # seconds added each way by the proxy in workload 6
# Where processes run, on a machine with 2 cores or more: MariaDB, the latency proxy and the
# load generator on one core, the measured Python process (this one, or the app) on another,
# so that the measured code does not share its core with the server it talks to.
SERVER_CPU, MEASURED_CPU = 0, 1
PINNED = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2


def pin_to(cpu: int) -> None:
    """Run this thread (and the threads and processes it starts from now on) on ``cpu``."""
    if PINNED:
        os.sched_setaffinity(0, {cpu})


def run_loop(coro_factory: Callable[[], Coroutine[Any, Any, Any]], use_uvloop: bool) -> Any:
    if use_uvloop:
        import uvloop

        return uvloop.run(coro_factory())
    return asyncio.run(coro_factory())


async def in_process(
    settings: dict[str, Any], latent: dict[str, Any], quick: bool, loop_name: str
) -> list[peers.Table]:
    ops, rounds = (500, 5) if quick else (2000, 15)
    tables: list[peers.Table] = []

    def done(table: peers.Table) -> None:
        tables.append(table)
        print(f"   {table.title}: done", flush=True)

    async with peers.Contenders(settings) as c:
        done(await peers.workload_overhead(c, ops, rounds))
        done(await peers.workload_select(c, ops // 5, rounds, "2. One SELECT 1 per scope"))
        done(await peers.workload_concurrency(c))
        done(await peers.workload_connect(c, max(10, ops // 50), rounds))
    async with peers.Contenders(latent) as c:
        title = f"6a. One SELECT 1 per scope, +{LATENCY * 1000:g} ms each way (TCP proxy)"
        done(await peers.workload_select(c, ops // 50, rounds, title))
    done(await peers.workload_scale(settings, ops, rounds // 2))
    if loop_name == "asyncio":
        done(await peers.workload_memory(settings, 200_000 if quick else 1_000_000))
    return tables


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def web(settings: dict[str, Any], quick: bool, loop_name: str, title: str) -> peers.Table:
    """Each variant in its own uvicorn process; the load generator in another; rounds interleaved.

    The app runs alone on its core; the load generator (wrk when installed) shares the other
    one with MariaDB. Besides requests/s, each round reads the app process' CPU time: CPU per
    request moves less with the machine's noise than requests/s does.
    """
    seconds, rounds = (1, 4) if quick else (1, 15)  # whole seconds: what wrk takes
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    pin_to(SERVER_CPU)  # the load generator runs beside the server, away from the app
    try:
        for variant in VARIANTS:
            port = free_port()
            cpu = ["--cpu", str(MEASURED_CPU)] if PINNED else []
            proc = subprocess.Popen(
                [sys.executable, str(ROOT / "benchmarks" / "webapp.py"), "serve", variant, "--port", str(port),
                 "--settings", json.dumps(settings), "--loop", loop_name, *cpu],
                cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "0"},  # same dict layouts in every process
            )  # fmt: skip
            servers[variant] = (proc, port)
        for _, port in servers.values():
            wait_port(port)
        results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
        for proc, port in servers.values():  # warm up
            load_app(proc.pid, port, 1)
        order = list(servers.items())
        shuffle = random.Random(8).shuffle
        for _ in range(rounds):
            shuffle(order)
            for variant, (proc, port) in order:
                results[variant].append(load_app(proc.pid, port, seconds))
    finally:
        pin_to(MEASURED_CPU)
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
    base = results["aiomysql-pool"]
    names = {
        "aconn": "aconn, health checks off", "aconn-health": "aconn, health checks on",
        "aconn-endpoint": "aconn, scope in the endpoint (no middleware)",
        "aiomysql-pool": "hand-rolled aiomysql.Pool",
        "aiomysql-pool-again": "control: the same aiomysql.Pool app, another process",
        "sqlalchemy": "SQLAlchemy async engine",
        "connect-per-request": "connect per request",
        "aconn-asyncmy": "aconn on asyncmy, health checks off",
        "asyncmy-pool": "hand-rolled asyncmy.Pool",
    }  # fmt: skip
    table = peers.Table(title, unit="requests/s")
    lines = ["| variant | requests/s | ratio to aiomysql.Pool | p50 ms | p99 ms | app CPU us/request | CPU ratio "
             "| errors |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for variant in ("aiomysql-pool", "aiomysql-pool-again", "aconn", "aconn-health", "aconn-endpoint", "sqlalchemy",
                    "connect-per-request", "asyncmy-pool", "aconn-asyncmy"):  # fmt: skip
        runs = results[variant]
        rps = statistics.median(r["rps"] for r in runs)
        p50 = statistics.median(r["p50_ms"] for r in runs)
        p99 = statistics.median(r["p99_ms"] for r in runs)
        cpu = statistics.median(r["cpu_us"] for r in runs)
        errors = sum(int(r["errors"]) for r in runs)
        # ratios to the aiomysql.Pool app measured in the same round, then their median
        ratio = statistics.median(r["rps"] / b["rps"] for r, b in zip(runs, base, strict=True))
        cpu_ratio = statistics.median(r["cpu_us"] / b["cpu_us"] for r, b in zip(runs, base, strict=True))
        table.rows.append((names[variant], rps, ratio))
        table.samples[names[variant]] = [r["rps"] for r in runs]
        lines.append(
            f"| {names[variant]} | {rps:.0f} | {ratio:.2f}x | {p50:.2f} | {p99:.2f} | {cpu:.0f} "
            f"| {cpu_ratio:.2f}x | {errors} |"
        )
    generator = "wrk -t1 -c20" if shutil.which("wrk") else "benchmarks/webapp.py load (20 clients; install wrk)"
    placement = (
        f"the app on core {MEASURED_CPU}, MariaDB and the load generator on core {SERVER_CPU}"
        if PINNED
        else "no CPU pinning"
    )
    lines += [
        "",
        f"Load generator: {generator}; {placement}; {rounds} rounds of {seconds} s, the variants in a shuffled"
        " order each round; ratios are medians of the per-round ratios to the aiomysql.Pool app.",
    ]
    table.note = "\n".join(lines)
    return table


def interleave_apps(
    apps: dict[str, list[str]],
    rounds: int,
    load: Callable[[int, int], dict[str, float]],
    pythons: dict[str, str] | None = None,
) -> dict[str, list[dict[str, float]]]:
    """Each app (``benchmarks/webapp.py`` arguments; ``--port`` and ``--cpu`` added) in a uvicorn
    process of its own on the measured core; each loaded once to warm up, then once per round in
    an order shuffled each round. ``load(pid, port)`` measures one run; the runs, per app.
    ``pythons`` names another interpreter for some apps (the compiled build's); the rest run on this one."""
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    pin_to(SERVER_CPU)  # the load generator runs beside the server, away from the apps
    try:
        for name, arguments in apps.items():
            port = free_port()
            cpu = ["--cpu", str(MEASURED_CPU)] if PINNED else []
            python = (pythons or {}).get(name, sys.executable)
            command = [python, str(ROOT / "benchmarks" / "webapp.py"), *arguments, "--port", str(port), *cpu]
            env = {**os.environ, "PYTHONHASHSEED": "0"}  # same dict layouts in every process
            servers[name] = (subprocess.Popen(command, cwd=ROOT, env=env), port)
        for _, port in servers.values():
            wait_port(port)
        for proc, port in servers.values():
            load(proc.pid, port)  # warm up: every connection opened
        results: dict[str, list[dict[str, float]]] = {name: [] for name in apps}
        order = list(servers.items())
        shuffle = random.Random(29).shuffle
        for _ in range(rounds):
            shuffle(order)
            for name, (proc, port) in order:
                results[name].append(load(proc.pid, port))
        return results
    finally:
        pin_to(MEASURED_CPU)
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_app(pid: int, port: int, seconds: int) -> dict[str, float]:
    """Load the app on ``port`` for ``seconds``: requests/s, latency percentiles, errors, app CPU per request."""
    cpu_before = _cpu_seconds(pid)
    if shutil.which("wrk"):
        result = _wrk(port, seconds)
    else:
        out = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "webapp.py"), "load", "--port", str(port),
             "--seconds", str(seconds), "--connections", "20"],
            capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        result = dict(json.loads(out.stdout))
    requests = result["rps"] * seconds
    result["cpu_us"] = (_cpu_seconds(pid) - cpu_before) / max(requests, 1) * 1e6
    return result


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _wrk(port: int, seconds: int, clients: int = 20) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    result: dict[str, float] = {"errors": 0.0}
    for line in out.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            result["rps"] = float(words[1])
        elif len(words) == 2 and words[0] in ("50%", "99%"):
            number = words[1].rstrip("mus")
            result[f"p{words[0][:2]}_ms"] = float(number) * _WRK_UNITS[words[1][len(number):]]
        elif line.startswith("Non-2xx"):
            result["errors"] += float(words[-1])
        elif line.strip().startswith("Socket errors:"):
            result["errors"] += sum(float(w.rstrip(",")) for w in words[3::2])
    return result


def plot(tables: dict[str, list[peers.Table]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [t for t in tables["asyncio"] if t.title.startswith(("1.", "2.", "5.", "6b."))]
    fig, axes = plt.subplots(len(chosen), 1, figsize=(9, 3 * len(chosen)))
    for ax, table in zip(axes, chosen, strict=True):
        names = [r[0] for r in table.rows]
        ratios = [r[2] for r in table.rows]
        colors = ["tab:blue" if n.startswith("aconn") else "tab:gray" for n in names]
        ax.barh(names, ratios, color=colors)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.invert_yaxis()
        better = "higher is better" if table.unit == "requests/s" else "lower is better"
        ax.set_title(f"{table.title} (ratio, {better})", fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(tables: dict[str, list[peers.Table]], server_version: str, path: Path, quick: bool) -> None:
    import importlib.metadata

    import sqlalchemy
    import uvicorn

    versions = (
        f"Python {platform.python_version()}, aconn {aconn.__version__}, aiomysql {aiomysql.__version__}, "
        f"asyncmy {importlib.metadata.version('asyncmy')}, "
        f"SQLAlchemy {sqlalchemy.__version__}, uvicorn {uvicorn.__version__}, MariaDB {server_version}, "
        f"{platform.machine()}, {os.cpu_count()} cores, loopback"
    )
    parts = [
        "# Performance",
        "",
        "Generated by `nox -s bench` (`python benchmarks/run.py`"
        + (" --quick" if quick else "")
        + "): it starts its own throwaway MariaDB and measures every contender in the same run, rounds"
        " interleaved, reporting medians and ratios to a baseline of the same run.",
        "",
        f"Machine and versions: {versions}.",
        "",
        "![ratios](performance.png)",
        "",
        "Each table's ratio column is against its first row (workload 5: against the hand-rolled"
        " `aiomysql.Pool` app), as the median of per-round ratios: every round times each contender once, in"
        " a shuffled order, so a slow spell of the machine hits both sides of a ratio. Absolute times move"
        " with the machine's load (on the VM these figures come from, by 10-20% from one second to the"
        " next); read the ratios. MariaDB, the latency proxy and the load generator run on one core, the"
        " measured Python process on the other. Workload 5 has a control row: the same aiomysql.Pool app"
        " in a second process; how far it lands from 1.00x is how far apart two runs of one app drift, so"
        " differences smaller than that are not resolved.",
        "",
        targets(tables),
        "",
        REMAINING_COST,
    ]
    for loop_name, loop_tables in tables.items():
        parts += ["", f"## Event loop: {loop_name}", ""]
        for table in loop_tables:
            if table.unit == "value" or table.unit == "requests/s":
                parts += [f"**{table.title}**", "", table.note, ""]
            else:
                parts += [table.render(), ""]
    # the sections other scripts write into this file (write_section) stay
    previous = path.read_text() if path.exists() else ""
    for kept in re.finditer(r"<!-- (benchmarks/[\w.]+) -->.*?<!-- /\1 -->", previous, flags=re.S):
        parts += ["", kept.group(0)]
    path.write_text("\n".join(parts) + "\n")


def write_section(script: str, parts: list[str]) -> str:
    """Write the section of docs/performance.md that ``script`` (``"benchmarks/web.py"``) owns,
    between its markers, in place of its previous one (else at the end); :func:`write_report`
    keeps it. Returns the section."""
    start, end = f"<!-- {script} -->", f"<!-- /{script} -->"
    section = "\n\n".join([start, *parts, end])
    path = ROOT / "docs" / "performance.md"
    doc = path.read_text()
    if start in doc:
        doc = doc[: doc.index(start)] + section + doc[doc.index(end) + len(end) :]
    else:
        doc = doc.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(doc)
    return section


def targets(tables: dict[str, list[peers.Table]]) -> str:
    """The targets of the benchmark issue, checked against this run, one column per event loop."""
    columns = {loop_name: _checks(loop_tables) for loop_name, loop_tables in tables.items()}
    labels = list(dict.fromkeys(label for checks in columns.values() for label in checks))
    lines = [
        "## Against the targets (this run)",
        "",
        "| target | " + " | ".join(columns) + " |",
        "| --- |" + " ---: |" * len(columns),
    ]
    for label in labels:
        cells = []
        for checks in columns.values():
            ok, shown = checks.get(label, (None, "-"))
            cells.append(shown if ok is None else f"{shown} {'met' if ok else '**missed**'}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _checks(tables: list[peers.Table]) -> dict[str, tuple[bool, str]]:
    by_title = {t.title.split(".")[0]: {name: (value, ratio) for name, value, ratio in t.rows} for t in tables}
    table_of = {t.title.split(".")[0]: t for t in tables}
    checks: dict[str, tuple[bool, str]] = {}

    def pair(workload: str, name: str, base: str) -> float | None:
        table = table_of.get(workload)
        return None if table is None else table.pair_ratio(name, base)

    def ratio(workload: str, name: str) -> float | None:
        row = by_title.get(workload, {}).get(name)
        return None if row is None else row[1]

    def add(label: str, value: float | None, ok: Callable[[float], bool], extra: str = "") -> None:
        if value is not None:
            checks[label] = (ok(value), f"{value:.2f}x{extra}")

    add("scope overhead, health checks off <= 0.25x aiomysql.Pool (0.5x before #19)",
        ratio("1", "aconn, health checks off"), lambda v: v <= 0.25)
    add("scope overhead, health checks on <= 0.75x aiomysql.Pool", ratio("1", "aconn, health checks on"),
        lambda v: v <= 0.75)
    add("scope + SELECT 1, health checks on, within 3% of a raw held connection",
        ratio("2", "aconn, health checks on"), lambda v: v <= 1.03)
    add("asyncmy: scope + SELECT 1, health checks on, within 3% of a raw held asyncmy connection",
        pair("2", "aconn on asyncmy, health checks on", "asyncmy: raw held connection"), lambda v: v <= 1.03)
    add("asyncmy: scope overhead, health checks off <= 0.25x aiomysql.Pool",
        ratio("1", "aconn on asyncmy, health checks off"), lambda v: v <= 0.25)
    control = ratio("5", "control: the same aiomysql.Pool app, another process")
    same_app = f" (control: {control:.2f}x)" if control is not None else ""
    add("web app, health checks off >= 0.97x aiomysql.Pool", ratio("5", "aconn, health checks off"),
        lambda v: v >= 0.97, same_app)
    add("web app, health checks on >= 0.95x aiomysql.Pool", ratio("5", "aconn, health checks on"),
        lambda v: v >= 0.95, same_app)
    add("web app on asyncmy, aconn >= 0.97x hand-rolled asyncmy.Pool",
        pair("5", "aconn on asyncmy, health checks off", "hand-rolled asyncmy.Pool"), lambda v: v >= 0.97, same_app)
    aconn_web, sqlalchemy_web = ratio("5", "aconn, health checks off"), ratio("5", "SQLAlchemy async engine")
    if aconn_web is not None and sqlalchemy_web is not None:  # both per-round ratios to the same baseline
        add("web app >= 2x SQLAlchemy", aconn_web / sqlalchemy_web, lambda v: v >= 2)
    scale = by_title.get("4", {})
    if scale:
        idle = [v for n, (v, _) in scale.items() if "idle" in n]
        add("cost per scope flat (10%) from 1 to 100 idle connections", max(idle) / min(idle), lambda v: v <= 1.1)
        waiting = [v for n, (v, _) in scale.items() if "waiters queued" in n]
        bare = [v for n, (v, _) in scale.items() if "Semaphore" in n]
        add("cost per scope flat (10%) from 10 to 10,000 queued waiters", max(waiting) / min(waiting),
            lambda v: v <= 1.1, f" (bare Semaphore: {max(bare) / min(bare):.2f}x)")
    memory = by_title.get("7", {})
    if memory:
        add("memory flat over 1,000,000 scopes", max(r for _, r in memory.values()), lambda v: v <= 1.05)
    return checks


REMAINING_COST = """## What a scope costs, and where it goes

A scope with health checks on does no round trip in steady state: a
connection used within the last 0.5 s is not pinged, and a release with no
transaction open does no I/O (SQLAlchemy's pool rolls back on every return,
a round trip per checkout). What is left is Python. Counted by callgrind
(`python benchmarks/instructions.py [--driver asyncmy]`, which needs
valgrind: user-space instructions, repeatable where timings on this VM are
not), per iteration, the measurement's own loop (~1,200) included in every
row:

| | aiomysql | asyncmy |
| --- | ---: | ---: |
| aconn: `async with scope: await connection()` | 25,300 | 27,700 |
| (a) of which entering and leaving the scope | 11,200 | 11,200 |
| (c) of which taking and giving back the connection | 10,900 | 13,300 |
| (d) of (c), the hand-out check with its `poll(0)` | 3,900 | 5,000 |
| aiomysql.Pool: `async with pool.acquire()` (it starts a task at every release) | 83,700 | 83,700 |
| asyncmy.Pool: `async with pool.acquire()` (compiled with Cython; no socket check) | | 7,900 |
| `SELECT 1` on a raw held connection | 266,800 | 99,500 |
| `SELECT 1` in an aconn scope | 290,900 (+9.0%) | 127,300 (+27.9%) |
| `SELECT 1` through the driver's own pool | 349,400 (+31%) | 107,000 (+7.5%) |

(a) the `__aenter__` and `__aexit__` coroutines, the `Scope` object, the
ContextVar set and reset, the owning task, the once-a-second sweep gate;
the rest of the whole path is `connection()`: its coroutine, the owner
check, the alias lookup. (c) the idle-stack pop and push, two `monotonic()`
reads, the deadline, idle-limit and ping-bypass compares, the driver's
stream flags and the transaction status; (d) the check that catches a
session the server closed while it sat idle, before the event loop noticed
(the kernel's part of the system call, ~0.2 us here, is not counted).
asyncmy's flags are Cython attributes, each read from Python a descriptor
call: its checks cost ~2,400 more than aiomysql's. aconn's asyncmy
connection also refuses a command sent while another task waits for a
reply (asyncmy would strand that task's read for ever): ~1,300 a statement.

Why the targets of the second performance round stay out of reach, and what
would change that:

- Scope overhead at most 0.25x aiomysql.Pool's acquire/release (table 1
  measures ~0.3x on asyncio, ~0.45x on uvloop, where aiomysql.Pool is
  faster). A minimal path (a ContextVar set and reset, a list pop and push,
  one `poll(0)`) would be ~0.2x; aconn's bookkeeping on top of it is the
  owning-task check, the per-connection deadline and idle limit, the
  counters behind `stats()`, the sweep gate, and three coroutines (an
  `async with` needs two, an awaitable `connection()` one; each costs
  ~1,000 instructions, the cheapest awaitable Python has: an object with
  `__await__`, or a completed future, measured costlier). Taken out one at
  a time, the sweep gate is ~450 instructions and the closed and loop
  checks ~230, each under 2% of the path: reaching 0.25x means dropping
  checks the reliability spec needs, or compiling the path.
- Scope + `SELECT 1` within 3% of a raw held connection, on aiomysql and
  asyncmy. On aiomysql a query is ~267,000 instructions, so 3% is ~8,000,
  and the scope path is ~24,000. asyncmy makes the query itself 2.7x
  cheaper, so the same scope is a larger share (+28% of the instructions;
  in time, table 2, ~5%, the rest of the time being the kernel and the
  round trip). asyncmy's own pool is compiled: 7,900 instructions, checks
  included, against aconn's 27,700.
- What would change it: compiling the scope and the pool (mypyc), with the
  pure-Python modules kept as the fallback that `pip install` from source
  uses without a compiler. Tried: `mypyc aconn/scope.py aconn/pool/pool.py
  aconn/pool/holder.py`, unchanged, builds, and the whole path drops from
  25,300 to 19,800 instructions; a quick run of table 1 then measured 0.24x
  aiomysql.Pool on asyncio (0.34x on uvloop), 0.27x on asyncmy. It is not
  shipped, because it is not yet the same library: `pool/waiters.py` (a
  `deque` subclass) crashes the interpreter when compiled, the
  `LEAK_TIMEOUT` report loses the caller's frames (compiled code has none),
  and `observe_use()` replaces a method on one pool instance, which a
  compiled class cannot have; each needs another shape, and the suite has to
  run in both modes.
- Flat from 10 to 10,000 waiters. Each hand-off costs O(1) in aconn's
  structures (a FIFO deque, one timer); the growth is memory: with 1,000 or
  more tasks waiting, each task's frames and objects are cold in the CPU
  cache when its turn comes. A bare `asyncio.Semaphore(10)` under the same
  load grows too (the figure in parentheses).
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-web", action="store_true", help="skip workloads 5 and 6b (uvicorn)")
    args = parser.parse_args()
    pin_to(SERVER_CPU)  # MariaDB and the proxy's thread inherit this core
    server = MariaDB(extra_args=["--max-connections=500"]).start()
    proxy = Proxy(server.port).start()
    proxy.latency = LATENCY
    pin_to(MEASURED_CPU)
    try:
        settings = server.settings()
        latent = server.settings(PORT=proxy.port)
        version = server.sql("SELECT VERSION()")[0][0]
        tables: dict[str, list[peers.Table]] = {}
        for loop_name in ("asyncio", "uvloop"):
            print(f"== in-process workloads, {loop_name}", flush=True)
            tables[loop_name] = run_loop(
                lambda name=loop_name: in_process(settings, latent, args.quick, name), loop_name == "uvloop"
            )
            if not args.no_web:
                print(f"== web workloads, {loop_name}", flush=True)
                tables[loop_name].append(
                    web(
                        settings,
                        args.quick,
                        loop_name,
                        "5. Web app: one-query endpoint, uvicorn, 20 keep-alive clients",
                    )
                )
                tables[loop_name].append(
                    web(latent, args.quick, loop_name, f"6b. Web app through +{LATENCY * 1000:g} ms each way")
                )
            for table in tables[loop_name]:
                print(table.render() if table.unit not in ("value", "requests/s") else f"{table.title}\n{table.note}")
                print()
    finally:
        proxy.close()
        server.close()
    write_report(tables, version, ROOT / "docs" / "performance.md", args.quick)
    if not args.no_web:
        plot(tables, ROOT / "docs" / "performance.png")
    print("wrote docs/performance.md" + ("" if args.no_web else " and docs/performance.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
