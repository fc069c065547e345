"""A controllable in-process backend, for deterministic tests of the pool logic.

Each network step (connect, ping, rollback, close) can be made to block on
a gate until the test releases it, or to fail; tests cancel at each of
those await points and check the pool afterwards. It complements the
tests against the real MariaDB server, it never replaces them.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, ClassVar

from aconn.backends.base import Backend, ErrorKind, ServerLimits
from aconn.settings import Settings

_ids = itertools.count(1)


class FakeConn:
    def __init__(self) -> None:
        self.id = next(_ids)
        self.alive = True
        self.closed = False
        self.in_tx = False
        self.desynced = False
        self.busy = False

    async def query(self, n: int, *, delay: float = 0) -> int:
        """Return n, like SELECT n; a concurrent call desyncs the stream as a real driver would."""
        if self.closed or not self.alive:
            raise ConnectionError("fake connection is closed")
        if self.busy:
            self.desynced = True
            raise RuntimeError("readexactly() called while another coroutine is already waiting")
        self.busy = True
        try:
            if delay:
                await asyncio.sleep(delay)
            return n
        except BaseException:
            self.desynced = True  # cancelled mid-query: the reply is still on the wire
            raise
        finally:
            self.busy = False


class FakeServer:
    """The state a test controls, shared by the fake backends of its handler(s): pass it in the alias'
    ``OPTIONS`` as ``{"server": FakeServer()}``. One per test: nothing is configured on the class.
    """

    def __init__(self) -> None:
        #: op -> an Event the op waits on before completing (the test sets it)
        self.gates: dict[str, asyncio.Event] = {}
        #: op -> an exception the op raises
        self.failures: dict[str, BaseException] = {}
        #: op -> an Event set when an op starts (so the test knows it is blocked there)
        self.entered: dict[str, asyncio.Event] = {}
        #: every connection opened, closed or not
        self.opened: list[FakeConn] = []
        #: what the "server" reports as its idle limit
        self.idle_timeout: float | None = None
        #: NAMEs whose connects fail with an error that is not retried (a wrong password, say)
        self.denied: set[str] = set()

    def live(self) -> list[FakeConn]:
        return [c for c in self.opened if not c.closed]


class FakeBackend(Backend):
    vendor: ClassVar[str] = "fake"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        server = settings.options.get("server")
        if not isinstance(server, FakeServer):
            raise TypeError("the fake backend needs OPTIONS={'server': FakeServer()}")
        self.server = server

    async def _step(self, op: str) -> None:
        server = self.server
        event = server.entered.get(op)
        if event is not None:
            event.set()
        gate = server.gates.get(op)
        if gate is not None:
            await gate.wait()
        failure = server.failures.get(op)
        if failure is not None:
            raise failure

    async def connect(self) -> tuple[Any, ServerLimits]:
        conn = FakeConn()
        self.server.opened.append(conn)
        try:
            await self._step("connect")
            if self.settings.name in self.server.denied:
                raise PermissionError(f"access denied to {self.settings.name} (fake)")
        except BaseException:
            conn.closed = True
            raise
        return conn, ServerLimits(idle_timeout=self.server.idle_timeout)

    async def close(self, conn: FakeConn) -> None:
        try:
            await self._step("close")
        finally:
            conn.closed = True

    def abort(self, conn: FakeConn) -> None:
        conn.closed = True

    def is_dead(self, conn: FakeConn, *, peek: bool = True) -> bool:
        return conn.closed or not conn.alive or conn.desynced

    async def ping(self, conn: FakeConn) -> None:
        await self._step("ping")
        if not conn.alive:
            raise ConnectionError("fake ping failed")

    def in_transaction(self, conn: FakeConn) -> bool:
        return conn.in_tx

    async def rollback(self, conn: FakeConn) -> None:
        await self._step("rollback")
        conn.in_tx = False

    def classify(self, exc: BaseException, *, connecting: bool = False) -> ErrorKind:
        if isinstance(exc, OSError) and "refused" in str(exc):
            return ErrorKind.RETRYABLE
        return ErrorKind.DISCONNECT if isinstance(exc, ConnectionError) else ErrorKind.OTHER
