"""A throwaway 3-node MariaDB Galera cluster on localhost, for the cluster tests.

Each node is a ``mariadbd`` with the ``galera-4`` provider, run as the ``mysql`` system user on a
data directory it owns, on free ports (below the kernel's ephemeral range: ``free_port()``):
its SQL port, its group communication ``base_port`` (IST listens on ``base_port + 1``) and its
rsync SST address. The first node bootstraps the cluster (``--wsrep-new-cluster``); the others join one after
another and receive its data by state transfer. A node can be isolated from the others
(``gmcast.isolate``), killed, frozen and started again (it rejoins).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pymysql
from mariadb import APP_PASSWORD, APP_USER, DATABASE, MariaDB, as_user, find_binary, free_port

PROVIDER = "/usr/lib/galera/libgalera_smm.so"
SYNCED = "4"


def find_galera() -> str | None:
    """The Galera provider, when it and rsync (its state transfer) are installed; else None."""
    return PROVIDER if Path(PROVIDER).exists() and find_binary("rsync") else None


class GaleraNode(MariaDB):
    """One node. :meth:`start` launches it (joining the others), :meth:`wait_synced` waits for state 4."""

    def __init__(self, cluster: GaleraCluster, index: int) -> None:
        super().__init__()
        self.cluster = cluster
        self.index = index
        self.base_port = 0
        self.sst_port = free_port()
        self.run_as = "mysql" if os.geteuid() == 0 else None
        if self.run_as:
            shutil.chown(self.dir, self.run_as, self.run_as)

    def _as_server_user(self) -> dict[str, Any]:
        return as_user(self.run_as, self.dir)

    def start(self, *, bootstrap: bool = False) -> GaleraNode:
        if bootstrap and not self.datadir.exists():
            subprocess.run(
                [str(self.install_db), "--no-defaults", f"--datadir={self.datadir}",
                 "--auth-root-authentication-method=normal", "--skip-test-db"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120, **self._as_server_user(),
            )  # fmt: skip
        self.datadir.mkdir(exist_ok=True)
        if self.run_as:
            shutil.chown(self.datadir, self.run_as, self.run_as)
        self._launch_node(bootstrap)
        return self

    def _launch_node(self, bootstrap: bool) -> None:
        log = self.dir / "server.log"
        log.touch()
        if self.run_as:
            shutil.chown(log, self.run_as, self.run_as)
        self.log = open(log, "ab")  # noqa: SIM115
        # A node the others all suspect (no message for evs.suspect_timeout) is evicted by their
        # consensus: a killed node after 3 s here (Galera's default: 5 s). evs.inactive_timeout is
        # the unilateral verdict, with no consensus needed: kept at Galera's default of 15 s. With
        # 6 s, a CI run once saw the survivors of a killed writer change view at 6.3 s instead of
        # ~3.5 s, and go non-Primary for a while (1047, 1180): a stall of the 2-core machine kept
        # the consensus from forming, and the unilateral verdict split them.
        provider_options = f"base_port={self.base_port};gmcast.listen_addr=tcp://127.0.0.1:{self.base_port};" \
            "evs.suspect_timeout=PT3S;evs.inactive_timeout=PT15S;pc.wait_prim_timeout=PT10S"  # fmt: skip
        self.proc = subprocess.Popen(
            [str(self.mariadbd), "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
             f"--port={self.port}", "--bind-address=127.0.0.1", f"--pid-file={self.dir / 'mysqld.pid'}",
             "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M", "--skip-name-resolve",
             "--performance-schema=OFF", "--max-connections=151", "--log-warnings=1",
             "--binlog-format=ROW", "--default-storage-engine=InnoDB", "--innodb-autoinc-lock-mode=2",
             "--wsrep-on=ON", f"--wsrep-provider={PROVIDER}", f"--wsrep-cluster-address={self.cluster.gcomm}",
             f"--wsrep-provider-options={provider_options}", f"--wsrep-node-address=127.0.0.1:{self.base_port}",
             f"--wsrep-node-name=node{self.index}", "--wsrep-cluster-name=aconn-test",
             "--wsrep-sst-method=rsync", f"--wsrep-sst-receive-address=127.0.0.1:{self.sst_port}",
             *(["--wsrep-new-cluster"] if bootstrap else [])],
            stdout=self.log, stderr=self.log, **self._as_server_user(),
        )  # fmt: skip
        self.wait_synced()

    def wait_synced(self, timeout: float = 120.0) -> None:
        """Until the node answers and is Synced (state 4) in the primary component."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"node{self.index} exited: {(self.dir / 'server.log').read_text()[-3000:]}")
            with contextlib.suppress(pymysql.err.MySQLError, OSError):
                status = self.status()
                if status.get("wsrep_local_state") == SYNCED and status.get("wsrep_ready") == "ON":
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"node{self.index} not synced within {timeout:g}s")
            time.sleep(0.1)

    def status(self) -> dict[str, str]:
        # a plain socket first: a refused pymysql connect leaks its socket (a ResourceWarning later)
        with socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(1)
            if probe.connect_ex(self.socket) != 0:
                raise OSError(f"node{self.index} is not listening")
        rows = self.sql("SHOW GLOBAL STATUS LIKE 'wsrep%'")
        return {str(name): str(value) for name, value in rows}

    def isolate(self) -> None:
        """Cut the node off from the others: it goes non-Primary and refuses statements (1047)."""
        self.sql("SET GLOBAL wsrep_provider_options='gmcast.isolate=1'")
        deadline = time.monotonic() + 30
        while self.status().get("wsrep_ready") != "OFF":
            if time.monotonic() > deadline:
                raise RuntimeError(f"node{self.index} still ready 30 s after isolation")
            time.sleep(0.05)

    def rejoin(self) -> None:
        """Undo :meth:`isolate` and wait until the node is synced again."""
        self.sql("SET GLOBAL wsrep_provider_options='gmcast.isolate=0'")
        self.wait_synced()


class GaleraCluster:
    """Three nodes on localhost; :meth:`start` forms the cluster."""

    def __init__(self, size: int = 3) -> None:
        self.nodes = [GaleraNode(self, i) for i in range(size)]
        ports = [free_port(span=2) for _ in range(size)]  # IST listens on base_port + 1
        for node, port in zip(self.nodes, ports, strict=True):
            node.base_port = port
        self.gcomm = "gcomm://" + ",".join(f"127.0.0.1:{p}" for p in ports)
        self.driver = "aiomysql"

    def start(self) -> GaleraCluster:
        first, *others = self.nodes
        first.start(bootstrap=True)
        first.sql(
            f"CREATE DATABASE IF NOT EXISTS {DATABASE}",
            f"CREATE USER IF NOT EXISTS '{APP_USER}'@'%' IDENTIFIED BY '{APP_PASSWORD}'",
            f"GRANT ALL PRIVILEGES ON {DATABASE}.* TO '{APP_USER}'@'%'",
            f"GRANT PROCESS ON *.* TO '{APP_USER}'@'%'",
        )
        for node in others:
            node.start()
        return self

    def close(self) -> None:
        for node in reversed(self.nodes):
            with contextlib.suppress(Exception):
                node.kill()
        for node in self.nodes:
            shutil.rmtree(node.dir, ignore_errors=True)

    def hosts(self) -> list[str]:
        return [f"127.0.0.1:{node.port}" for node in self.nodes]

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """An alias of the three nodes (the first node's entry, with every node in HOST)."""
        first = self.nodes[0]
        first.driver = self.driver
        return first.settings(**{"HOST": self.hosts(), **overrides})

    def synced(self) -> list[GaleraNode]:
        return [n for n in self.nodes if n.proc is not None and not n.frozen and _synced(n)]

    def writer(self) -> GaleraNode:
        """The synced node with the lowest wsrep_local_index: where aconn sends the writes."""
        return min(self.synced(), key=lambda n: int(n.status()["wsrep_local_index"]))


def _synced(node: GaleraNode) -> bool:
    try:
        status = node.status()
    except (pymysql.err.MySQLError, OSError):
        return False
    return status.get("wsrep_local_state") == SYNCED and status.get("wsrep_ready") == "ON"
