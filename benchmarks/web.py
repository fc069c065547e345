"""The web workload when connections are scarce and when they are not: aconn's middleware (health
checks off and on) and aconn's scope inside the endpoint, against the hand-rolled driver-pool app.

    python benchmarks/web.py            # rewrites the web section of docs/performance.md
    python benchmarks/web.py --quick    # fewer rounds, asyncio only
    python benchmarks/web.py --compiled-python PATH   # and the middleware on the compiled build
    python benchmarks/web.py --only "aiomysql, asyncio, SELECT 1, scarce" --rounds 15   # some groups, printed

``nox -s bench`` passes ``--compiled-python``: an interpreter with aconn's opt-in compiled build
(mypyc) installed, whose middleware app then runs beside the others, in the same rounds.

Per driver (aiomysql, asyncmy on MariaDB; asyncpg on PostgreSQL), per query (``SELECT 1``; one
that keeps the connection 2 ms), per setting (10 connections and 20 clients; 10 and 100
clients; 20 connections and 20 clients, so that nobody waits), per event loop: the four apps
under uvicorn, each in its own process on its own core, loaded by
``benchmarks/webapp.py load`` (keep-alive HTTP/1.1 clients) on the other core with the
server, in interleaved rounds, the variants in a shuffled order each round. Requests/s and
app CPU per request are medians over rounds; ratios are medians of per-round ratios to the
pool app.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mariadb import MariaDB  # noqa: E402
from postgres import PostgreSQL  # noqa: E402
from run import MEASURED_CPU, SERVER_CPU, _cpu_seconds, _wrk, interleave_apps, pin_to, write_section  # noqa: E402
from webapp import MATRIX_VARIANTS  # noqa: E402

import aconn  # noqa: E402

QUERIES = {
    "SELECT 1": {"aiomysql": "SELECT 1", "asyncmy": "SELECT 1", "asyncpg": "SELECT 1"},
    "2 ms query": {
        "aiomysql": "SELECT SLEEP(0.002) + 1", "asyncmy": "SELECT SLEEP(0.002) + 1",
        "asyncpg": "SELECT 1 FROM pg_sleep(0.002)",
    },
}  # fmt: skip
#: (label, connections, clients)
SETTINGS = (("scarce: 10 connections, 20 clients", 10, 20), ("scarce: 10 connections, 100 clients", 10, 100),
            ("plentiful: 20 connections, 20 clients", 20, 20))  # fmt: skip
NAMES = {
    "pool": "hand-rolled driver pool",
    "middleware": "aconn middleware",
    "middleware-health": "aconn middleware, health checks on",
    "endpoint": "aconn scope in the endpoint",
    "middleware-compiled": "aconn middleware, compiled build (mypyc)",
}


def load(pid: int, port: int, seconds: int, clients: int) -> dict[str, float]:
    """``clients`` keep-alive clients for ``seconds``: wrk when installed (one thread, in C: it takes far
    less CPU from the server's core), else ``benchmarks/webapp.py load``."""
    cpu_before = _cpu_seconds(pid)
    if shutil.which("wrk"):
        result = _wrk(port, seconds, clients)
    else:
        out = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "webapp.py"), "load", "--port", str(port),
             "--seconds", str(seconds), "--connections", str(clients)],
            capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        result = dict(json.loads(out.stdout))
    result["cpu_us"] = (_cpu_seconds(pid) - cpu_before) / max(result["rps"] * seconds, 1) * 1e6
    return result


def group(
    driver: str,
    settings: dict[str, Any],
    query: str,
    cap: int,
    clients: int,
    loop: str,
    rounds: int,
    compiled_python: str | None = None,
) -> dict[str, list[dict[str, float]]]:
    """The four apps of one driver, query and setting (five with the compiled build's middleware),
    in interleaved rounds."""
    common = ["--cap", str(cap), "--query", query, "--settings", json.dumps(settings), "--loop", loop]
    apps = {variant: ["serve-matrix", driver, variant, *common] for variant in MATRIX_VARIANTS}
    pythons = {}
    if compiled_python is not None:
        apps["middleware-compiled"] = apps["middleware"]
        pythons["middleware-compiled"] = compiled_python
    return interleave_apps(apps, rounds, lambda pid, port: load(pid, port, 1, clients), pythons)


def render(title: str, results: dict[str, list[dict[str, float]]]) -> tuple[str, dict[str, float]]:
    base = results["pool"]
    lines = [f"**{title}**", "", "| variant | requests/s | ratio | p50 ms | p99 ms | app CPU us/request | CPU ratio "
             "| errors |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    ratios: dict[str, float] = {}
    for variant, runs in results.items():
        ratio = statistics.median(r["rps"] / b["rps"] for r, b in zip(runs, base, strict=True))
        cpu_ratio = statistics.median(r["cpu_us"] / b["cpu_us"] for r, b in zip(runs, base, strict=True))
        ratios[variant], ratios[variant + ":cpu"] = ratio, cpu_ratio
        lines.append(
            f"| {NAMES[variant]} | {statistics.median(r['rps'] for r in runs):.0f} | {ratio:.2f}x "
            f"| {statistics.median(r['p50_ms'] for r in runs):.2f} "
            f"| {statistics.median(r['p99_ms'] for r in runs):.2f} "
            f"| {statistics.median(r['cpu_us'] for r in runs):.0f} | {cpu_ratio:.2f}x "
            f"| {sum(int(r['errors']) for r in runs)} |"
        )
    health = statistics.median(
        h["rps"] / m["rps"] for h, m in zip(results["middleware-health"], results["middleware"], strict=True)
    )
    ratios["health"] = health
    return "\n".join(lines), ratios


def targets(summary: list[tuple[str, bool, dict[str, float]]]) -> str:
    compiled = any("middleware-compiled" in r for _, _, r in summary)
    extra = " compiled build: middleware / pool, CPU / pool |" if compiled else ""
    lines = ["| group | middleware / pool (target) | CPU / pool (target <= 1.00x) "
             "| health on / off (target >= 0.97x) |" + extra,
             "| --- | ---: | ---: | ---: |" + (" ---: |" if compiled else "")]  # fmt: skip
    mark = lambda ok: "met" if ok else "missed"  # noqa: E731
    for title, scarce, r in summary:
        want = 1.05 if scarce else 1.0
        line = (
            f"| {title} | {r['middleware']:.2f}x (>= {want:.2f}x: {mark(r['middleware'] >= want)}) "
            f"| {r['middleware:cpu']:.2f}x ({mark(r['middleware:cpu'] <= 1.0)}) "
            f"| {r['health']:.2f}x ({mark(r['health'] >= 0.97)}) |"
        )
        if compiled:
            line += (
                f" {r['middleware-compiled']:.2f}x ({mark(r['middleware-compiled'] >= want)}),"
                f" {r['middleware-compiled:cpu']:.2f}x ({mark(r['middleware-compiled:cpu'] <= 1.0)}) |"
            )
        lines.append(line)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--drivers", nargs="+", default=["aiomysql", "asyncmy", "asyncpg"])
    parser.add_argument("--compiled-python", help="an interpreter with aconn's compiled build installed")
    parser.add_argument("--rounds", type=int, help="rounds per group (default: 7, --quick 3)")
    parser.add_argument("--only", help="only the groups whose title holds this text (printed, docs left alone)")
    args = parser.parse_args()
    rounds, loops = (3, ("asyncio",)) if args.quick else (7, ("asyncio", "uvloop"))
    rounds = args.rounds or rounds
    pin_to(SERVER_CPU)
    mariadb, postgres = MariaDB(extra_args=["--max-connections=500"]).start(), PostgreSQL().start()
    pin_to(MEASURED_CPU)
    tables: list[str] = []
    summary: list[tuple[str, bool, dict[str, float]]] = []
    try:
        for loop in loops:
            for driver in args.drivers:
                settings = (postgres if driver == "asyncpg" else mariadb).settings()
                for query_label, queries in QUERIES.items():
                    for label, cap, clients in SETTINGS:
                        title = f"{driver}, {loop}, {query_label}, {label}"
                        if args.only and args.only not in title:
                            continue
                        print("==", title, flush=True)
                        results = group(
                            driver, settings, queries[driver], cap, clients, loop, rounds, args.compiled_python
                        )
                        table, ratios = render(title, results)
                        print(table, flush=True)
                        tables.append(table)
                        summary.append((title, label.startswith("scarce"), ratios))
    finally:
        mariadb.close()
        postgres.close()
    if args.only:
        print(targets(summary))
        return 0
    write_section(
        "benchmarks/web.py",
        [
            "## The web workload, connections scarce and plentiful",
            f"Written by `python benchmarks/web.py{' --quick' if args.quick else ''}` (also run by `nox -s bench`):"
            f" Python {platform.python_version()}, aconn {aconn.__version__}; each app in its own uvicorn process"
            f" on core {MEASURED_CPU}, the servers and the load generator ("
            + ("wrk -t1" if shutil.which("wrk") else "`benchmarks/webapp.py load`; install wrk")
            + f", keep-alive HTTP/1.1 clients) on core {SERVER_CPU}; {rounds} interleaved rounds of 1 s;"
            " medians, and medians of per-round ratios to the hand-rolled driver-pool app. aconn runs with"
            " RESET_ON_RELEASE off, as the aiomysql and asyncmy pools (asyncpg.Pool resets at every release:"
            " its app here keeps that cost)."
            + (
                " The compiled-build rows run the middleware app unchanged on an interpreter where aconn is"
                " installed from its opt-in compiled wheel (mypyc: the scope, the pool and its holders), in the"
                " same rounds."
                if args.compiled_python
                else ""
            ),
            "### Targets",
            targets(summary),
            "### Tables",
            *tables,
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
