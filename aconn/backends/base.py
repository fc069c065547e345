"""The small protocol every backend implements.

A backend adapts one driver. The pool never touches a driver object except
through these methods, so a backend is the only place allowed to read a
driver's private attributes (for liveness checks with no round trip).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import select
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .._backoff import Backoff
from ..errors import ConfigError
from ..settings import PEER_POOL_OPTIONS, Address, Settings

__all__ = (
    "Backend",
    "ErrorKind",
    "NodeState",
    "ServerLimits",
    "check_options",
    "close_socket_of",
    "pending_events",
    "poll_liveness",
    "polled_dead",
)


def pending_events(fd: int) -> Callable[[int], list[tuple[int, int]]]:
    """``poll(timeout)`` of a poll object watching ``fd`` for anything to read, an EOF or an error.

    An idle session receives nothing, so anything pending means the server closed it (or wrote
    its last words before closing). A poll object works on any descriptor number and with any
    event loop (uvloop's transport sockets refuse recv()).
    """
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    return poller.poll


def polled_dead(fd: int | None) -> bool:
    """One poll of an idle connection's socket, a system call and no round trip: the event loop may
    not have noticed a FIN yet (a killed session)."""
    if fd is None:
        return False
    try:
        return bool(pending_events(fd)(0))
    except (OSError, ValueError):
        return True  # the descriptor is gone


def poll_liveness(conn: Any, fd: int, flagged_dead: Callable[[Any], bool]) -> Callable[[], bool]:
    """The hand-out check of a socket connection: the driver's flags, then one ``poll(0)``.

    The poll object is registered once; each check is one system call. The flags come first:
    the loop closes a socket only after the driver saw EOF or an error, so while they are clear
    the descriptor number is still this connection's.
    """
    poll = pending_events(fd)

    def alive() -> bool:
        if flagged_dead(conn):
            return False
        try:
            return not poll(0)  # anything pending on an idle session (EOF, reset, bytes) means dead
        except (OSError, ValueError):
            return False

    return alive


def close_socket_of(transport: Any) -> None:
    """Close a transport's socket with no event loop (its loop is gone or elsewhere): asyncio's
    selector transports by their socket (the server sees the FIN), others by their own abort."""
    sock = getattr(transport, "_sock", None)
    if sock is not None:
        sock.close()
        transport._sock = None  # nothing left for the transport's __del__ to close or warn about
    else:
        with contextlib.suppress(RuntimeError):  # its loop already closed
            transport.abort()


def check_options(
    alias: str, options: Iterable[str], own: Mapping[str, str], allowed: Collection[str], what: str
) -> None:
    """Refuse an ``OPTIONS`` key aconn sets itself (naming the top-level key to use) or one the driver lacks
    (naming aconn's setting for the job when it is another pool's option: ``max_size``...).

    :raises ConfigError: naming ``OPTIONS.<key>``.
    """
    for key in options:
        if key in own:
            raise ConfigError(alias, f"OPTIONS.{key}", f"set it with the top-level key {own[key]!r}")
        if key not in allowed:
            peer = PEER_POOL_OPTIONS.get(key)
            raise ConfigError(alias, f"OPTIONS.{key}", f"{what}: {peer}" if peer else what)


class ErrorKind(enum.Enum):
    """How the pool should treat an exception raised by the driver."""

    #: the connection is gone or its byte stream is out of step: discard it
    DISCONNECT = "disconnect"
    #: the server refused a new connection for now (e.g. MySQL 1040): retry with backoff
    RETRYABLE = "retryable"
    #: the server refuses writes (a demoted primary after a failover): reconnect, do not reuse
    READ_ONLY = "read_only"
    #: a cluster node not in a state to serve (Galera 1047, "WSREP has not yet prepared node"):
    #: reconnect, to another node
    NODE_NOT_READY = "node_not_ready"
    #: anything else (SQL errors, constraint violations...): the connection may be fine
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Server-side limits that apply to one connection, read when it opens."""

    #: seconds the server keeps an idle session (MySQL ``wait_timeout``), None if unlimited
    idle_timeout: float | None = None
    #: the server's ``max_connections`` (None when not applicable)
    max_connections: int | None = None
    #: the per-user limit (MySQL ``max_user_connections``; None or 0 = unlimited)
    max_user_connections: int | None = None
    #: server version string, for reports
    version: str = ""
    #: MySQL ``interactive_timeout`` (applies instead of wait_timeout to interactive clients)
    interactive_timeout: float | None = None
    #: server-side statement time limit in seconds (MariaDB ``max_statement_time``,
    #: MySQL ``max_execution_time``), None when unlimited
    max_statement_time: float | None = None
    #: the session id the server reports (``CONNECTION_ID()``) is the handshake's: a cancel
    #: request names this very session (False behind a proxy that maps sessions)
    session_id_verified: bool = True
    #: PostgreSQL ``idle_in_transaction_session_timeout``: a scope idle inside a transaction this
    #: long loses its session (None when off)
    idle_in_transaction_timeout: float | None = None


@dataclass(frozen=True, slots=True)
class NodeState:
    """What one check of a cluster node found (:meth:`Backend.node_state`)."""

    #: "galera", "postgresql", or None: a plain server (no cluster to be in the wrong state of)
    cluster: str | None
    #: it serves statements (Galera: ``wsrep_ready=ON`` and Synced; PostgreSQL: always)
    ready: bool
    #: it takes writes (Galera: ready; PostgreSQL: a primary not in read-only mode)
    writable: bool
    #: a PostgreSQL standby (in recovery)
    standby: bool = False
    #: Galera ``wsrep_local_index``: the node that takes writes is the synced one with the lowest
    index: int | None = None
    #: Galera ``wsrep_cluster_size``
    size: int | None = None
    #: for people: "Synced, 3 nodes", "non-Primary, wsrep_ready=OFF", "primary", "standby"
    summary: str = ""


#: the pauses between the steps of a wait until the server has dropped a session
_STEP_FIRST, _STEP_CAP = 0.002, 0.05


def refused(exc: BaseException) -> bool:
    """True if ``exc``, or an exception it was raised from, is a refused connection: nothing
    listens at the address, so the server process is gone (killed, stopped, restarting) and every
    session it held with it. The network drivers keep the ``ConnectionRefusedError`` as the cause."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain is short; bounded against a cycle
        if seen is None:
            return False
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def _until_done(step: Callable[[Any], Awaitable[bool]], conn: Any) -> None:
    """Call ``step(conn)`` until it returns True, with growing pauses between."""
    pause = Backoff(_STEP_FIRST, _STEP_CAP)
    while not await step(conn):
        await pause.sleep()


class _Side:
    """The side session to one server: its connection, the lock each stop takes it with, its users."""

    __slots__ = ("conn", "lock", "loop", "users")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = asyncio.Lock()
        self.conn: Any = None
        self.users = 0


class Backend:
    """Base class of backends. Subclasses implement the methods that raise ``NotImplementedError``
    here (connect, close, ping, the transaction state...) and may override the rest, which hold
    what the socket backends share.

    One backend instance serves one alias; it is built from the alias'
    :class:`~aconn.settings.Settings` when the handler is constructed, and
    must validate driver options there (raising ``ConfigError``).
    """

    #: short name used in messages and stats
    vendor: ClassVar[str] = "base"

    #: the driver's connect keywords (host and port among them), for the socket backends
    _kwargs: dict[str, Any]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # the side session that stops cancelled statements (CANCEL_ON_SERVER), one at most per
        # server (a multi-host alias stops a statement from a session on the same node)
        self._sides: dict[Address | None, _Side] = {}
        #: side sessions lost mid-work (a network reset): the server may hold each until it has
        #: torn it down, one session above the "+1" of CANCEL_ON_SERVER's bound meanwhile
        self.side_sessions_lost = 0

    async def connect(self, address: Address | None = None) -> tuple[Any, ServerLimits]:
        """Open a connection, handshake and session setup included, and read the limits.

        ``address``: the server of a multi-host alias to connect to (None: HOST and PORT).
        The caller bounds the whole call in time.
        """
        raise NotImplementedError

    def _kwargs_at(self, address: Address | None) -> dict[str, Any]:
        """The driver's connect keywords, aimed at ``address`` when given."""
        if address is None:
            return self._kwargs
        return {**self._kwargs, "host": address[0], "port": address[1]}

    async def node_state(self, conn: Any, cluster: str) -> NodeState:
        """One round trip or two: the state of the node ``conn`` is on, as ``cluster`` reads it
        ("galera", "postgresql", or "detect": whichever the server is part of, if any)."""
        return NodeState(None, ready=True, writable=True, summary="a single server")

    async def close(self, conn: Any) -> None:
        """Close gracefully. The caller bounds it in time and calls :meth:`abort` on timeout."""
        raise NotImplementedError

    def abort(self, conn: Any) -> None:
        """Close at once, with no I/O to wait for."""
        raise NotImplementedError

    def forget(self, conn: Any) -> None:
        """Release a connection whose event loop is gone or elsewhere: no I/O, no loop needed.

        The default calls :meth:`abort`, ignoring a closed loop's complaint.
        """
        with contextlib.suppress(RuntimeError):  # "Event loop is closed": nothing more to do from here
            self.abort(conn)

    def forget_own(self) -> None:
        """:meth:`forget` for what the backend itself holds (side sessions)."""
        for side in self._sides.values():
            if side.conn is not None:
                conn, side.conn = side.conn, None
                self.forget(conn)

    async def _open_side(self, address: Address | None) -> Any:
        """A connection for the side session: through the handshake, no setup needed."""
        raise NotImplementedError

    async def _on_another_session(
        self, via: Any, step: Callable[[Any], Awaitable[bool]], address: Address | None = None
    ) -> None:
        """Call ``step(conn)`` until it returns True (done), on ``via`` (an idle connection of the
        pool), else on the side session; a short backoff between calls.

        The side session is one per backend, outside the cap, opened on demand and closed when
        the last user is done (one per burst of cancellations: no session kept for it). Each
        user holds it for one step (a round trip or two), not for its whole wait: in a storm,
        the KILL or the check of one stop never queues behind another's wait until its session
        is gone. It is opened again when it is lost or refused (a network reset, a server
        restarting), until the caller's time bound ends the retries; any other error is raised.
        ``address``: the node of a multi-host alias the stopped session was on.
        """
        if via is not None:
            try:
                await _until_done(step, via)
                return
            except Exception as exc:
                if self.classify(exc) is not ErrorKind.DISCONNECT:
                    raise
                # that connection was lost too (the pool closes it at release): use the side session
        loop = asyncio.get_running_loop()
        held = self._sides.get(address)
        if held is None or held.loop is not loop:
            held = self._sides[address] = _Side(loop)
        held.users += 1
        try:
            pause = Backoff(_STEP_FIRST, _STEP_CAP)
            while True:
                async with held.lock:
                    side = held.conn
                    try:
                        if side is None or self.is_dead(side, peek=False):
                            if side is not None:  # the server dropped it between two steps: close our end
                                held.conn = None
                                self.abort(side)
                            side = None
                            side = held.conn = await self._open_side(address)
                        if await step(side):
                            return
                    except Exception as exc:
                        if side is None and refused(exc):
                            return  # the server process is gone, the session with it
                        if held.conn is side:
                            held.conn = None
                        if side is not None:
                            self.side_sessions_lost += 1
                            self.abort(side)
                        if self.classify(exc, connecting=True) is ErrorKind.OTHER:
                            raise
                        pause.reset()  # a refused connect is cheap: try again soon
                await pause.sleep()  # outside the lock: the other stops take their steps meanwhile
        finally:
            held.users -= 1
            if held.users == 0 and held.conn is not None:
                side, held.conn = held.conn, None
                try:
                    await self.close(side)
                except BaseException:  # the caller's time bound cut the goodbye short
                    self.abort(side)
                    raise

    def is_dead(self, conn: Any, *, peek: bool = True) -> bool:
        """Cheap liveness: True if the connection is known unusable. No round trip.

        ``peek=False`` asks for flags only (no system call), for the release path.
        """
        raise NotImplementedError

    def liveness(self, conn: Any) -> Callable[[], bool]:
        """A check built once per connection, called each time it is handed out: True if usable.

        The scope path calls it on every hand-out, so backends prepare what they
        can here (MySQL registers the socket with a poll object once). The
        default asks :meth:`is_dead`.
        """
        return lambda: not self.is_dead(conn)

    def reusable(self, conn: Any) -> bool:
        """True if ``conn`` can go back to the idle set with no I/O: alive and no transaction open.

        Called at every release; when False the pool works out why, slowly.
        """
        return not self.is_dead(conn, peek=False) and not self.in_transaction(conn)

    async def ping(self, conn: Any) -> None:
        """One round trip proving the session is alive; never reconnects. Raises if not."""
        raise NotImplementedError

    def in_transaction(self, conn: Any) -> bool:
        """True if a transaction may be open (when unsure, True)."""
        raise NotImplementedError

    async def rollback(self, conn: Any) -> None:
        """Roll back any open transaction, and clear the driver's record of it (transaction
        objects left started), so that the next user's transaction API starts afresh."""
        raise NotImplementedError

    async def begin_block(self, conn: Any, savepoint: str | None) -> Any:
        """Open one of aconn's transaction blocks (``atomic()``, a test's transaction) on ``conn``:
        ``BEGIN`` when ``savepoint`` is None, else that savepoint. Returns what :meth:`end_block` needs.

        Backends whose driver keeps its own record of transactions go through the driver's API
        (asyncpg), or teach the driver's ``begin()``/``commit()``/``rollback()`` to nest inside
        the block (the MySQL drivers, aiosqlite): the app's own transaction code keeps working.
        """
        await self.execute(conn, "BEGIN" if savepoint is None else f"SAVEPOINT {savepoint}")
        return savepoint

    async def end_block(self, conn: Any, token: Any, commit: bool) -> None:
        """Commit (or release) the block :meth:`begin_block` opened, else roll it back.

        :raises Exception: the driver's error, e.g. when the savepoint is gone.
        """
        if token is None:
            if commit:
                await self.execute(conn, "COMMIT")
            else:
                await self.rollback(conn)
        elif commit:
            await self.execute(conn, f"RELEASE SAVEPOINT {token}")
        else:
            await self.execute(conn, f"ROLLBACK TO SAVEPOINT {token}")
            await self.execute(conn, f"RELEASE SAVEPOINT {token}")

    def left_block(self, conn: Any) -> None:
        """One of aconn's blocks on ``conn`` is over, whatever became of it (no I/O): called once
        per :meth:`begin_block`, after its :meth:`end_block` if one ran."""

    async def reset(self, conn: Any) -> None:
        """Reset the session's state (``RESET_ON_RELEASE``), then set it up again as at connect.

        :raises ConfigError: at construction, from backends that cannot (checked in ``__init__``).
        """
        raise NotImplementedError

    async def replica_lag(self, conn: Any) -> float | None:
        """How far behind its primary this server is, in seconds: 0 for a primary, ``inf`` when
        replication is stopped, None when the server will not say (privileges)."""
        return 0.0

    async def execute(self, conn: Any, sql: str) -> None:
        """Run one statement that returns no rows: transaction control (``BEGIN``, ``SAVEPOINT``...)."""
        raise NotImplementedError

    def classify(self, exc: BaseException, *, connecting: bool = False) -> ErrorKind:
        """Tell what an exception means; ``connecting`` is True for errors from :meth:`connect`."""
        raise NotImplementedError

    def is_conflict(self, exc: BaseException) -> bool:
        """True if ``exc`` ended the transaction as a serialization or certification conflict, one
        that running the whole transaction again may get past (``atomic(retries=N)``)."""
        return False

    def left_running(self, conn: Any) -> bool:
        """True if a statement may still run on the server for a connection the client dropped
        mid-command (a cancelled caller, a lost or out-of-step stream). No I/O.
        """
        return False

    async def cancel_on_server(self, conn: Any, via: Any = None, address: Address | None = None) -> None:
        """Stop the statement :meth:`left_running` reported, from another session, and wait until
        the server has let go of it. ``conn`` is already aborted; ``via`` is an idle connection
        of the pool (on the same server) to send the request on, or None for a side session of
        the backend's own, to ``address`` (a multi-host alias' node; None: HOST and PORT).
        The caller bounds it in time.
        """

    def interrupt(self, conn: Any) -> None:
        """Stop a statement still running for a cancelled caller (no-op where not needed)."""

    async def aclose(self) -> None:
        """Release what the backend itself holds, after every connection is closed."""
        for side in self._sides.values():
            if side.conn is not None:
                conn, side.conn = side.conn, None
                self.abort(conn)
