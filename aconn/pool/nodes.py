"""The servers of a multi-host alias: which node a new connection goes to, and each node's state.

A node qualifies when its last check found it in the state ``TARGET`` asks for
(Galera: ``wsrep_ready=ON`` and Synced; PostgreSQL: primary or standby). Checks
run when a connection opens (:meth:`Nodes.connect`: the node is checked before
the connection is handed out) and in the background, at most once a second per
node (:meth:`Nodes.check_all`, run by the housekeeper on one monitor session per
node): never as a round trip on the scope path. A node found in the wrong state
is reported to the pool (``on_down``), which closes its idle connections at once
and its in-use ones at release.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from time import monotonic
from typing import Any, Final

from ..backends.base import Backend, ErrorKind, NodeState, ServerLimits
from ..settings import Address, Settings, address_name

__all__ = ("CHECK_INTERVAL", "Node", "NodeReadyError", "Nodes")

logger = logging.getLogger("aconn")

#: the background checks look at each node this often
CHECK_INTERVAL: Final = 1.0
#: a check that does not answer within this long finds the node down
CHECK_TIMEOUT: Final = 2.0


class NodeReadyError(Exception):
    """No host of a multi-host alias gave a connection in the right state, this round.

    :param retryable: some host refused for now, or was in the wrong state (a backoff may help);
        False when every host failed with an error retrying will not lift (a wrong password).
    """

    def __init__(self, message: str, retryable: bool, first: BaseException | None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.first = first


class Node:
    """One server of the alias, as the last check found it."""

    __slots__ = ("address", "checked_at", "found", "limits", "monitor", "reason", "up")

    def __init__(self, address: Address) -> None:
        self.address = address
        #: what the last check found (None: never checked, or it failed to answer)
        self.found: NodeState | None = None
        #: it qualifies for TARGET (None: not checked yet)
        self.up: bool | None = None
        #: why it does not, for messages and ``check``
        self.reason = "not checked yet"
        self.checked_at = -1.0
        #: the monitor session the background checks use
        self.monitor: Any = None
        #: what the last connect to it learned of the server
        self.limits: ServerLimits | None = None

    @property
    def name(self) -> str:
        return address_name(self.address)

    def __repr__(self) -> str:
        return f"<Node {self.name} {'up' if self.up else 'down' if self.up is False else 'unchecked'}>"


class Nodes:
    """The nodes of one alias: the order to try them in, what qualifies, their state."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.alias = settings.alias
        self.backend = backend
        #: "galera", "postgresql" or "detect"
        self.cluster = settings.cluster_kind or "detect"
        self.target = settings.target_node
        self.round_robin = settings.host_order == "round-robin"
        self.connect_timeout = settings.connect_timeout
        self.nodes = [Node(address) for address in settings.addresses]
        self._by_address = {node.address: node for node in self.nodes}
        self._turn = 0
        #: the pool's: count a node that left the right state, and close its connections
        self.on_down: Callable[[Node], None] = lambda node: None
        #: the pool's: close the connections of a node that no longer takes the writes
        self.on_writer_moved: Callable[[Node], None] = lambda node: None
        #: the Galera node that takes the writes, as the last round of checks found it
        self.writer: Node | None = None
        #: the background checks, started with the pool's first connection, stopped at its close
        self._watcher: asyncio.Task[None] | None = None

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def node_at(self, address: Address) -> Node | None:
        return self._by_address.get(address)

    # -- which node ----------------------------------------------------------------------

    def candidates(self) -> list[Node]:
        """The nodes in the order a new connection tries them.

        HOST's order (or in turn, ``HOST_ORDER='round-robin'``); for writes to a Galera cluster,
        the synced nodes by ``wsrep_local_index`` first (the one that takes the writes); nodes
        a check found in the wrong state last (tried only when no other qualifies: the connect
        checks them again).
        """
        nodes = self.nodes
        if self.round_robin:
            start = self._turn % len(nodes)
            self._turn += 1
            nodes = nodes[start:] + nodes[:start]
        if self._one_writer():
            ranked = self._by_index(nodes)
            nodes = ranked + [n for n in nodes if n not in ranked]
        return [n for n in nodes if n.up is not False] + [n for n in nodes if n.up is False]

    @staticmethod
    def _by_index(nodes: list[Node]) -> list[Node]:
        """The nodes a check found up with a Galera ``wsrep_local_index``, lowest first: the first
        takes the writes."""
        return sorted((n for n in nodes if n.up and n.found is not None and n.found.index is not None), key=_index)

    def _one_writer(self) -> bool:
        return self.target in ("read-write", "primary") and self.cluster != "postgresql"

    def serves(self, state: NodeState) -> bool:
        """True if a node in ``state`` serves the alias' connections: ready, and in the role TARGET
        asks (which Galera node takes the writes is :meth:`qualifies`' question, not this one)."""
        if state.cluster is None:
            return True  # a plain server: nothing to be in the wrong state of
        if not state.ready:
            return False
        target = self.target
        if state.cluster == "galera":
            return True
        if target == "read-write":
            return state.writable
        if target == "primary":
            return not state.standby
        if target == "read-only":
            return not state.writable
        if target == "standby":
            return state.standby
        return True  # "any", "prefer-standby" (a primary will do when no standby answers)

    def qualifies(self, node: Node, state: NodeState) -> bool:
        """True if a new connection on ``node``, found in ``state``, may be handed out."""
        if not self.serves(state):
            return False
        if state.cluster == "galera" and self._one_writer():
            return self.writer_of(node, state)
        return True

    def writer_of(self, node: Node, state: NodeState) -> bool:
        """A synced Galera node takes the writes unless another node a recent check found synced
        has a lower ``wsrep_local_index`` (cluster proxies choose the same way)."""
        if state.index is None:
            return True
        now = monotonic()
        for other in self.nodes:
            seen = other.found
            if (
                other is not node
                and other.up
                and seen is not None
                and seen.index is not None
                and seen.index < state.index
                and now - other.checked_at < CHECK_INTERVAL * 3
            ):
                return False
        return True

    # -- state ---------------------------------------------------------------------------

    def record(self, node: Node, state: NodeState | None, reason: str = "") -> None:
        """What a check (at connect, in the background) found; a node that leaves the right state
        is reported to the pool (``on_down``)."""
        if state is not None and state.cluster is not None and self.cluster == "detect":
            self.cluster = state.cluster  # detected once: the next checks skip the question
        node.checked_at = monotonic()
        node.found = state
        was = node.up
        node.up = state is not None and self.serves(state)
        if node.up:
            node.reason = ""
        else:
            node.reason = reason or (f"{state.summary}: not {self.target}" if state is not None else "down")
        if was and not node.up:
            self._went_down(node)
        elif was is False and node.up:
            logger.info("aconn alias %r: node %s is back (%s)", self.alias, node.name, state.summary if state else "")

    def mark_down(self, node: Node, reason: str) -> None:
        """A node found in the wrong state by an error a statement raised (Galera's 1047,
        PostgreSQL's 25006): nothing new goes to it until a check qualifies it again."""
        if node.up is not False:
            node.up = False
            node.reason = reason
            self._went_down(node)

    def _went_down(self, node: Node) -> None:
        logger.warning(
            "aconn alias %r: node %s left the state TARGET=%r needs (%s): its connections are closed; "
            "new ones go to the other hosts until a check qualifies it again",
            self.alias,
            node.name,
            self.target,
            node.reason,
        )
        self.on_down(node)

    def error_marks_down(self, kind: ErrorKind) -> bool:
        """An error a statement raised that says the node itself is in the wrong state."""
        return kind is ErrorKind.NODE_NOT_READY or (kind is ErrorKind.READ_ONLY and self.target != "any")

    # -- connecting ----------------------------------------------------------------------

    async def connect(self, deadline: float) -> tuple[Any, ServerLimits, Node]:
        """A connection on a node that qualifies, trying each in :meth:`candidates` order, each
        connect bounded by ``CONNECT_TIMEOUT`` and the ``deadline`` (loop time).

        :raises NodeReadyError: listing each host and why it was passed over.
        """
        self.watch()  # the background checks run from the pool's first connect on
        loop = asyncio.get_running_loop()
        failures: list[str] = []
        retryable = False
        first: BaseException | None = None
        #: prefer-standby: the first primary that answered, handed out if no standby does
        fallback: tuple[Any, ServerLimits, Node] | None = None
        for node in self.candidates():
            remaining = deadline - loop.time()
            if remaining <= 0:
                failures.append(f"{node.name}: not tried, ACQUIRE_TIMEOUT ran out")
                retryable = True
                break
            bound = min(remaining, self.connect_timeout)
            try:
                conn, limits, state = await self.open_checked(node, bound)
            except TimeoutError:
                reason = f"no connection within {bound:g}s"
                self.record(node, None, reason)
                failures.append(f"{node.name}: {reason}")
                retryable = True
                continue
            except Exception as exc:
                kind = self.backend.classify(exc, connecting=True)
                self.record(node, None, f"{type(exc).__name__}: {exc}")
                failures.append(f"{node.name}: {type(exc).__name__}: {exc}")
                # refused, unreachable, restarting: another host (or a retry) may do
                retryable = retryable or kind is not ErrorKind.OTHER or _unreachable(exc)
                first = first or exc
                continue
            node.limits = limits
            self.record(node, state)
            if self.qualifies(node, state) and not (self.target == "prefer-standby" and not state.standby):
                if fallback is not None:
                    await self.close_quietly(fallback[0])
                return conn, limits, node
            if self.target == "prefer-standby" and fallback is None and self.serves(state):
                fallback = (conn, limits, node)
                continue
            failures.append(f"{node.name}: {state.summary}, not {self.target}")
            retryable = True
            await self.close_quietly(conn)
        if fallback is not None:
            return fallback
        message = "; ".join(failures) or "no host to try"
        raise NodeReadyError(f"no host in the state TARGET={self.target!r} needs ({message})", retryable, first)

    async def open_checked(self, node: Node, bound: float) -> tuple[Any, ServerLimits, NodeState]:
        """Connect to ``node`` and read its state, within ``bound`` seconds (the caller records it)."""
        async with asyncio.timeout(bound):
            conn, limits = await self.backend.connect(node.address)
            try:
                state = await self.backend.node_state(conn, self.cluster)
            except BaseException:
                self.backend.abort(conn)
                raise
        return conn, limits, state

    async def close_quietly(self, conn: Any) -> None:
        """Close ``conn`` within the check's bound, else abort it."""
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                await self.backend.close(conn)
        except Exception:
            self.backend.abort(conn)

    # -- background checks ---------------------------------------------------------------

    async def check_all(self) -> None:
        """One round of checks, each node on its monitor session (opened on demand, outside
        MAX_CONNS: one session per node per process), all nodes at once."""
        await asyncio.gather(*(self._check(node) for node in self.nodes))
        if self._one_writer() and self.cluster == "galera":
            writer = next(iter(self._by_index(self.nodes)), None)
            if writer is not None and writer is not self.writer:
                if self.writer is not None:
                    logger.info(
                        "aconn alias %r: writes move from node %s to %s (the synced node with the lowest "
                        "wsrep_local_index): the connections on the others close at release",
                        self.alias, self.writer.name, writer.name,
                    )  # fmt: skip
                for other in self.nodes:  # connections opened before the writer was known, too
                    if other is not writer:
                        self.on_writer_moved(other)
            self.writer = writer

    async def _check(self, node: Node) -> None:
        backend = self.backend
        try:
            async with asyncio.timeout(min(CHECK_TIMEOUT, self.connect_timeout)):
                if node.monitor is None or backend.is_dead(node.monitor, peek=False):
                    if node.monitor is not None:
                        backend.abort(node.monitor)
                        node.monitor = None
                    node.monitor, node.limits = await backend.connect(node.address)
                state = await backend.node_state(node.monitor, self.cluster)
        except Exception as exc:
            if node.monitor is not None:
                backend.abort(node.monitor)
                node.monitor = None
            reason = "no answer to the check" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            self.record(node, None, reason)
            return
        self.record(node, state)

    def watch(self) -> None:
        """Start the background checks in the running loop, unless they run already."""
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name=f"aconn-nodes-{self.alias}")

    async def _watch(self) -> None:
        while True:
            await self.check_all()
            await asyncio.sleep(CHECK_INTERVAL)

    async def aclose(self) -> None:
        """Stop the background checks and close the monitor sessions."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        for node in self.nodes:
            if node.monitor is not None:
                monitor, node.monitor = node.monitor, None
                await self.close_quietly(monitor)

    def forget(self) -> None:
        """Drop the background checks and the monitor sessions with no I/O (their event loop is gone)."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None and not watcher.get_loop().is_closed():
            watcher.cancel()
        for node in self.nodes:
            if node.monitor is not None:
                monitor, node.monitor = node.monitor, None
                self.backend.forget(monitor)


def _unreachable(exc: BaseException) -> bool:
    """A host that refused the TCP connection or could not be reached: another may answer."""
    return isinstance(exc, OSError) or isinstance(exc.__cause__, OSError)


def _index(node: Node) -> int:
    """A Galera node's ``wsrep_local_index`` as its last check found it (-1: unknown)."""
    return node.found.index if node.found is not None and node.found.index is not None else -1
