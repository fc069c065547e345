"""The plot of docs/observability.md: what aconn's metrics look like through a load spike and a server restart.

    python benchmarks/observability.py      # writes docs/observability.png; needs matplotlib

A throwaway MariaDB, one handler (MAX_CONNS=8). A steady load of 4 workers; from
2 s to 5 s a spike of 60 more; at 7 s the server is restarted. Every 50 ms the
pool's gauges are sampled (what ``db.client.connection.count`` and
``db.client.connection.pending_requests`` report), and each wait is recorded
through the ``wait`` hook (what ``db.client.connection.wait_time`` records).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from mariadb import MariaDB  # noqa: E402

import aconn  # noqa: E402
from aconn.hooks import HookEvent  # noqa: E402

SPIKE = (2.0, 5.0)
RESTART_AT = 7.0
END = 10.0


async def run(server: MariaDB) -> dict[str, list[tuple[float, float]]]:
    connections = aconn.Connections(
        {"default": server.settings(CONN_MAX_AGE=60, MAX_CONNS=8, ACQUIRE_TIMEOUT=5, CONN_HEALTH_CHECKS=True)}
    )
    series: dict[str, list[tuple[float, float]]] = {k: [] for k in ("used", "idle", "waiting", "wait", "errors")}
    start = time.monotonic()

    def now() -> float:
        return time.monotonic() - start

    def on_wait(event: HookEvent) -> None:
        series["wait"].append((now(), (event.seconds or 0) * 1000))

    connections.on("wait", on_wait)

    async def worker(until: float, statement: str) -> None:
        while now() < until:
            try:
                async with connections.scope():
                    conn = await connections.connection()
                    async with conn.cursor() as cur:
                        await cur.execute(statement)
                        await cur.fetchall()
            except Exception:
                series["errors"].append((now(), 1))
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.01)

    async def sample() -> None:
        while now() < END:
            stats = connections.stats()
            t = now()
            series["used"].append((t, stats.open - stats.idle))
            series["idle"].append((t, stats.idle))
            series["waiting"].append((t, stats.waiting))
            await asyncio.sleep(0.05)

    async def spike() -> None:
        await asyncio.sleep(SPIKE[0])
        await asyncio.gather(*(worker(SPIKE[1], "SELECT SLEEP(0.02)") for _ in range(60)))

    async def restart() -> None:
        await asyncio.sleep(RESTART_AT)
        await asyncio.to_thread(server.restart)

    async with connections:
        await asyncio.gather(
            sample(), spike(), restart(), *(worker(END, "SELECT SLEEP(0.005)") for _ in range(4))
        )
    return series


def plot(series: dict[str, list[tuple[float, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 7.5), sharex=True)
    for name, label in (("used", "used (in use, opening, closing)"), ("idle", "idle")):
        xs, ys = zip(*series[name], strict=True)
        axes[0].step(xs, ys, where="post", label=label)
    axes[0].axhline(8, linestyle=":", color="grey", label="MAX_CONNS (db.client.connection.max)")
    axes[0].set_ylabel("connections")
    axes[0].set_title("db.client.connection.count, by state")
    axes[0].legend(loc="upper right", fontsize=8)
    xs, ys = zip(*series["waiting"], strict=True)
    axes[1].step(xs, ys, where="post", color="tab:red")
    axes[1].set_ylabel("tasks")
    axes[1].set_title("db.client.connection.pending_requests")
    if series["wait"]:
        xs, ys = zip(*series["wait"], strict=True)
        axes[2].scatter(xs, ys, s=4, color="tab:purple")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("ms")
    axes[2].set_title("db.client.connection.wait_time (each wait)")
    axes[2].set_xlabel("seconds")
    for ax in axes:
        ax.axvspan(*SPIKE, color="orange", alpha=0.12)
        ax.axvline(RESTART_AT, color="black", linestyle="--", linewidth=1)
    axes[0].text(SPIKE[0] + 0.05, 8.3, "load spike: 60 more tasks", fontsize=8)
    axes[0].text(RESTART_AT + 0.05, 8.3, "server restart", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    server = MariaDB().start()
    try:
        series = asyncio.run(run(server))
    finally:
        server.close()
    plot(series, ROOT / "docs" / "observability.png")
    waits = [w for _, w in series["wait"]]
    print(
        f"samples={len(series['used'])} max_used={max(v for _, v in series['used']):g} "
        f"max_waiting={max(v for _, v in series['waiting']):g} waits={len(waits)} "
        f"max_wait_ms={max(waits, default=0):.1f} errors={len(series['errors'])}"
    )
    print("wrote docs/observability.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
