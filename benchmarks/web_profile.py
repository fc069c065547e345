"""Where an app's CPU goes per request under wrk: the hand-rolled driver-pool app against aconn's
middleware app, sampled with py-spy, self time grouped by package.

    python benchmarks/web_profile.py [--driver aiomysql] [--rounds 5] [--seconds 6]   # rewrites its section
                                                                                      # of docs/performance.md

The two apps of ``benchmarks/web.py`` (``SELECT 1``, 20 connections and 20 clients: nobody waits)
run under uvicorn on the measured core; each round loads each for ``--seconds`` with wrk while
py-spy samples it (400 Hz, without pausing it). Prints, per app: requests/s, app CPU per request,
and the microseconds per request spent in each package's own frames (self time share x CPU per
request): what the connection manager costs (aconn, or the driver's pool module) beside the
driver, asyncio, uvicorn/h11 and Starlette. Needs ``pip install py-spy`` (``nox -s bench`` installs
it). On asyncmy, whose protocol is compiled, the driver's time shows in the Python frames that call it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mariadb import MariaDB  # noqa: E402
from postgres import PostgreSQL  # noqa: E402
from run import MEASURED_CPU, SERVER_CPU, _cpu_seconds, _wrk, interleave_apps, pin_to, write_section  # noqa: E402

#: the driver's own pool module, named apart from the rest of the driver
POOL_MODULES = {"aiomysql": ("aiomysql/pool.py", "aiomysql/utils.py"), "asyncmy": ("asyncmy/pool",),
                "asyncpg": ("asyncpg/pool.py",)}  # fmt: skip
GROUPS = ("connection manager", "driver", "asyncio", "uvicorn/h11", "starlette", "other")


def group_of(frame: str, driver: str) -> str:
    """The group of a py-spy frame, ``function (package/module.py:line)``."""
    path = frame.rpartition("(")[2]
    if path.startswith("aconn/") or path.startswith(POOL_MODULES[driver]) or path.startswith("_weakrefset"):
        return "connection manager"  # the driver pools keep their connections in WeakSets
    package = path.split("/", 1)[0]
    if package in (driver, "pymysql"):
        return "driver"
    if package in ("asyncio", "selectors", "uvloop"):
        return "asyncio"
    if package in ("uvicorn", "h11", "httptools"):
        return "uvicorn/h11"
    return package if package in GROUPS else "other"


def shares(raw: Path, driver: str) -> dict[str, float]:
    """Each group's share of the samples (self time: the innermost frame of each sample)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        counts[group_of(stack.rsplit(";", 1)[-1], driver)] += int(number)
    total = sum(counts.values()) or 1
    return {group: counts[group] / total for group in GROUPS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--driver", default="aiomysql", choices=sorted(POOL_MODULES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=6)
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists() or not shutil.which("wrk"):
        print("needs py-spy (pip install py-spy) and wrk (apt-get install -y wrk)", file=sys.stderr)
        return 2
    pin_to(SERVER_CPU)
    server = PostgreSQL().start() if args.driver == "asyncpg" else MariaDB(extra_args=["--max-connections=500"]).start()
    pin_to(MEASURED_CPU)
    work = Path(tempfile.mkdtemp(prefix="aconn-profile-"))
    runs: dict[str, int] = collections.Counter()

    def load(pid: int, port: int) -> dict[str, float]:
        raw = work / f"{pid}-{runs[str(pid)]}.txt"
        runs[str(pid)] += 1
        sampler = subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--rate", "400", "--format", "raw", "--nonblocking",
             "--duration", str(args.seconds), "--output", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        cpu_before = _cpu_seconds(pid)
        result = _wrk(port, args.seconds)
        cpu_us = (_cpu_seconds(pid) - cpu_before) / max(result["rps"] * args.seconds, 1) * 1e6
        sampler.wait(60)
        return {"rps": result["rps"], "cpu_us": cpu_us, **shares(raw, args.driver)} if raw.exists() else {}

    settings = json.dumps(server.settings())
    apps = {
        variant: ["serve-matrix", args.driver, variant, "--cap", "20", "--query", "SELECT 1", "--settings", settings]
        for variant in ("pool", "middleware")
    }
    try:
        results = interleave_apps(apps, args.rounds, load)
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)
    lines = [
        "| app | requests/s | CPU us/request | " + " | ".join(f"{g} us" for g in GROUPS) + " |",
        "|---|---:|---:|" + "---:|" * len(GROUPS),
    ]
    for variant, rows in results.items():
        rows = [row for row in rows if row]
        cpu = statistics.median(row["cpu_us"] for row in rows)
        spent = [statistics.median(row[g] * row["cpu_us"] for row in rows) for g in GROUPS]
        name = {"pool": "hand-rolled driver pool", "middleware": "aconn middleware"}[variant]
        rps = statistics.median(row["rps"] for row in rows)
        lines.append(f"| {name} | {rps:.0f} | {cpu:.0f} | " + " | ".join(f"{s:.1f}" for s in spent) + " |")
    table = "\n".join(lines)
    print(table)
    write_section(
        f"benchmarks/web_profile.py {args.driver}",
        [
            f"## Where a web request's CPU goes ({args.driver})",
            f"Written by `python benchmarks/web_profile.py --driver {args.driver}`: the two apps of the web "
            f"workload ({args.driver}, `SELECT 1`, 20 connections and 20 clients: nobody waits) under uvicorn on "
            f"core {MEASURED_CPU}, wrk on core {SERVER_CPU}, sampled by py-spy at 400 Hz without pausing them; "
            f"{args.rounds} interleaved rounds of {args.seconds} s, medians. Each group's microseconds per "
            "request are its share of the samples' innermost frames times the CPU per request: the connection "
            "manager is aconn's own frames, or the driver pool's module (and the WeakSets it keeps).",
            table,
        ],
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
