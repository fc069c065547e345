"""One alias' connections: the idle stack and the decide steps of acquire and release.

Every state change is a plain synchronous step (decide), and the network is
awaited after it (do I/O), so no lock exists and nothing is held across I/O.
The gauges obey ``size == idle + in_use + opening + closing`` at every
``await`` point; the transitions of :class:`~aconn.pool.holder.Holder` move
them. The waiting tasks live in :mod:`.waiters`, connecting with backoff in
:mod:`.connect`, the totals in :mod:`.counters`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import random
from collections.abc import Callable, Coroutine
from time import monotonic
from typing import Any, Final

from .._asyncio import run_shielded
from ..backends.base import Backend, ErrorKind, ServerLimits
from ..errors import AcquireTimeout, ClosedError, InternalError, PoolOverloaded
from ..hooks import HookEvent, Hooks
from ..rules import evaluate, idle_limit_from_server
from ..settings import Settings
from ..stats import PoolStats
from .connect import Connector
from .counters import Counters
from .holder import SLOT, CloseReason, Holder, HolderState, Watch, _Slot
from .nodes import Node, Nodes
from .waiters import Waiters

__all__ = ("CLEANUP_TIMEOUT", "PING_BYPASS", "Pool")

logger = logging.getLogger("aconn")

#: a health-check ping is skipped for a connection used successfully this recently
PING_BYPASS: Final = 0.5
#: bound on each network step the pool takes itself at release (ping, rollback, close)
CLEANUP_TIMEOUT: Final = 5.0

# bound to module globals: the scope path reads them as fast as it read strings
_IDLE, _IN_USE, _PINNED = HolderState.IDLE, HolderState.IN_USE, HolderState.PINNED
_MAX_AGE, _IDLE_LIMIT, _UNUSABLE, _ERROR, _SHUTDOWN, _NODE = (
    CloseReason.MAX_AGE, CloseReason.IDLE, CloseReason.UNUSABLE, CloseReason.ERROR, CloseReason.SHUTDOWN,
    CloseReason.NODE,
)  # fmt: skip


class HealthCheck(enum.Enum):
    """What a health check (a ping before hand-out) came to."""

    #: the connection answered: hand it out
    PASSED = "passed"
    #: it failed and was closed; its slot is the caller's, to open a connection in or free
    DROPPED = "dropped"
    #: it failed while its session may live on at the server (a ping cut short on a frozen
    #: server): the slot waits, in the background, until the server has dropped the session
    STOPPING = "stopping"


_PASSED, _DROPPED, _STOPPING = HealthCheck.PASSED, HealthCheck.DROPPED, HealthCheck.STOPPING
#: the deadline of a connection whose node left the state TARGET needs: past for any clock
_NODE_RETIRED: Final = -math.inf
#: errors after which a connection is not reused, and new ones are opened
_NEW_CONNECTION_KINDS: Final = (ErrorKind.DISCONNECT, ErrorKind.READ_ONLY, ErrorKind.NODE_NOT_READY)


def _never(conn: Any) -> bool:
    """The release's check with RESET_ON_RELEASE: no connection goes back without its reset."""
    return False


class Pool:
    """The connections of one alias in this process."""

    def __init__(self, settings: Settings, backend: Backend, hooks: Hooks | None = None) -> None:
        self.settings = settings
        #: the handler's hook callbacks (aconn.hooks), shared by its pools
        self.hooks = hooks if hooks is not None else Hooks()
        self.alias = settings.alias
        self.backend = backend
        self.closed = False
        self.counters = Counters()
        self._background: set[asyncio.Task[Any]] = set()
        #: a multi-host alias' nodes (or one node with CLUSTER set); None: HOST alone, unchecked
        self.nodes: Nodes | None = None
        if settings.cluster_kind is not None:
            self.nodes = Nodes(settings, backend)
            self.nodes.on_down = self._node_down
            self.nodes.on_writer_moved = self._retire_node
        self._connector = Connector(settings, backend, self.counters, self._background, self.nodes)
        self._idle: list[Holder] = []  # a stack: the most recently used on top
        self._holders: set[Holder] = set()  # every open connection, for error messages
        self._waiters = Waiters(self._timed_out, self._regrant, self.counters)
        # the gauges; the transitions of Holder move them
        self._size = 0
        self._in_use = 0
        self._opening = 0
        self._closing = 0
        self._health_checks = settings.health_checks
        self._reset_on_release = settings.reset_on_release
        #: the release's "back to idle as it is?" check: with RESET_ON_RELEASE, every connection
        #: needs I/O to go back (the reset), chosen here once so that the others pay nothing for it
        self._reusable: Callable[[Any], bool] = _never if settings.reset_on_release else backend.reusable
        #: what is watched while a connection is taken (LEAK_TIMEOUT, the use hook); None: nothing
        self._watch: Watch | None = None
        if settings.leak_timeout is not None:
            self._watch = Watch(settings.leak_timeout, self._leaked, None)
        self._rules_checked = False
        self._read_only_warned = False
        self._stops_failing = False

    def __repr__(self) -> str:
        return (
            f"<Pool {self.alias!r} {'closed' if self.closed else 'open'} size={self._size}/{self.settings.max_conns} "
            f"idle={len(self._idle)} in_use={self._in_use} opening={self._opening} closing={self._closing} "
            f"waiting={self._waiters.live}>"
        )

    @property
    def size(self) -> int:
        """Connections open or being opened or closed: what the cap counts."""
        return self._size

    @property
    def waiting(self) -> int:
        """Tasks waiting for a connection."""
        return self._waiters.live

    @property
    def limits(self) -> ServerLimits | None:
        """What the last connect learned of the server (None before the first)."""
        return self._connector.limits

    # -- acquire --------------------------------------------------------------------------

    async def acquire(self, task: asyncio.Task[Any] | None) -> Holder:
        """Take a connection for ``task``: a checked idle one, a new one, or one a release hands over.

        Waiters come first: while any task waits, a newcomer queues behind it.

        :raises AcquireTimeout: when none could be had within ``ACQUIRE_TIMEOUT``.
        :raises PoolOverloaded: at once, when ``MAX_WAITING`` tasks already wait.
        :raises ClosedError: when the pool is closed.
        """
        if self.closed:
            raise ClosedError(f"aconn alias {self.alias!r} is closed")
        # one deadline for every step from here: pings, connects and the wait (the loop read off
        # the task: 3.11's get_running_loop() makes a system call, getpid(), at every call)
        loop = task.get_loop() if task is not None else asyncio.get_running_loop()
        deadline = loop.time() + self.settings.acquire_timeout
        waiters = self._waiters
        if not waiters and self._idle:
            holder = await self._checked_idle(deadline)
            if holder is not None:
                return self._taken(holder, task)
        # nothing idle (or tasks already waiting): open in a free slot, else queue
        if not waiters and self._size < self.settings.max_conns:
            self._new_slot()
            return self._taken(await self._open(deadline), task)
        while True:
            granted = await self._wait(loop, deadline)
            if granted is SLOT:
                return self._taken(await self._open(deadline), task)
            assert isinstance(granted, Holder)
            # A hand-off from a release passes the same checks as any other hand-out, here in
            # the waiter's task: the session may have died while its last user held it.
            now = monotonic()
            granted.handed_over(now)
            reason = self._unusable_reason(granted, now)
            if reason is not None:
                granted.dropped(reason)
                self.backend.abort(granted.conn)
                break
            if not self._needs_ping(granted):
                return self._taken(granted, task)
            checked = await self._health_check(granted, deadline)
            if checked is _PASSED:
                return self._taken(granted, task)
            if checked is _DROPPED:
                break
            # _STOPPING: its slot waits for the server to drop the session; queue again
        self._open_in_slot()  # the slot of the connection just dropped is this waiter's
        return self._taken(await self._open(deadline), task)

    async def _checked_idle(self, deadline: float) -> Holder | None:
        """While nobody waits: the most recent usable idle connection, pinged if due (within the
        acquire ``deadline``); None when none is left. Unusable ones are closed on the way."""
        while not self._waiters and self._idle:
            holder = self._pop_idle()
            if holder is None:
                break
            if self._needs_ping(holder):
                checked = await self._health_check(holder, deadline)
                if checked is not _PASSED:
                    if checked is _DROPPED:  # its slot left to us: free it
                        self._release_slot()
                    continue  # try the next idle one
            return holder
        return None

    def take_idle(self, task: asyncio.Task[Any] | None) -> Holder | None:
        """The common case of :meth:`acquire`, with no await: the top idle connection, if it passes.

        None when the caller must go through :meth:`acquire`, which sorts out the rest
        (nothing idle, tasks waiting, the top one expired or dead, a ping or a leak timer due,
        the pool closed). This is the scope path: it writes out :meth:`_unusable_reason`,
        :meth:`_needs_ping`, :meth:`Holder.taken` and :meth:`Holder.handed_out`;
        ``tests/test_structure.py`` checks they agree.
        """
        idle = self._idle
        if not idle or self._waiters or self.closed:
            return None
        holder = idle[-1]
        now = monotonic()
        since = now - holder.last_used
        if (
            now >= holder.close_at
            or since >= holder.idle_limit
            or (self._health_checks and since > PING_BYPASS)
            or not holder.alive()
        ):
            return None
        idle.pop()
        holder.state = _IN_USE  # Holder.taken() and Holder.handed_out(), inlined
        self._in_use += 1
        holder.taken_at = now
        holder.task = task
        if self._watch is not None:
            holder.watched(self._watch)
        return holder

    def _pop_idle(self) -> Holder | None:
        """Pop the most recent usable idle connection; discard the unusable ones found on the way."""
        idle = self._idle
        now = monotonic()
        while idle:
            holder = idle.pop()
            reason = self._unusable_reason(holder, now)
            if reason is not None:
                self._discard(holder, reason)
            else:
                holder.taken(now)
                return holder
        return None

    def _unusable_reason(self, holder: Holder, now: float) -> CloseReason | None:
        """Why an idle connection must not be handed out (a close reason), or None: no round trip."""
        if now >= holder.close_at:
            return _NODE if holder.close_at == _NODE_RETIRED else _MAX_AGE
        if now - holder.last_used >= holder.idle_limit:
            return _IDLE_LIMIT
        if not holder.alive():
            return _UNUSABLE
        return None

    def _needs_ping(self, holder: Holder) -> bool:
        """With health checks on, a connection not used successfully within ``PING_BYPASS`` is pinged."""
        return self._health_checks and holder.taken_at - holder.last_used > PING_BYPASS

    async def _health_check(self, holder: Holder, deadline: float) -> HealthCheck:
        """Ping a connection about to be handed out, within the acquire ``deadline``: see
        :class:`HealthCheck` for the three outcomes. On failure the connection is closed.

        :raises AcquireTimeout: when the deadline runs out during the ping (slot freed).
        """
        self.counters.health_checks += 1
        remaining = deadline - asyncio.get_running_loop().time()
        bound = min(remaining, self.settings.connect_timeout, CLEANUP_TIMEOUT)
        try:
            if bound <= 0:
                raise TimeoutError
            async with asyncio.timeout(bound):
                await self.backend.ping(holder.conn)
        except BaseException as exc:
            self.counters.health_checks_failed += 1
            dropped = self._ping_failed(holder)
            if not isinstance(exc, Exception) or (isinstance(exc, TimeoutError) and bound == remaining):
                if dropped:
                    self._release_slot()
                if isinstance(exc, Exception):
                    self.counters.acquire_timeouts += 1
                    raise self._timed_out() from None
                raise  # cancelled while pinging: the connection is closed, its slot freed or stopping
            return _DROPPED if dropped else _STOPPING
        return _PASSED

    def _ping_failed(self, holder: Holder) -> bool:
        """Close a connection whose ping failed; True if it was dropped, its slot left to the caller.

        A ping cut short (timed out, cancelled) may leave the session alive at the server:
        then, as for a cancelled statement, the slot waits until the server has dropped it.
        """
        if self.settings.cancel_on_server and self.backend.left_running(holder.conn):
            self._stop_in_background(holder, _UNUSABLE)
            return False
        holder.dropped(_UNUSABLE)
        self.backend.abort(holder.conn)
        return True

    async def _wait(self, loop: asyncio.AbstractEventLoop, deadline: float) -> Holder | _Slot:
        """Queue behind the other waiters; refused at once beyond ``MAX_WAITING``."""
        max_waiting = self.settings.max_waiting
        if max_waiting is not None and self._waiters.live >= max_waiting:
            self.counters.overloaded += 1
            raise PoolOverloaded(
                f"aconn alias {self.alias!r}: {self._waiters.live} task(s) already wait for a connection "
                f"(MAX_WAITING={max_waiting}, MAX_CONNS={self.settings.max_conns}, {self._in_use} in use): "
                "refused at once instead of waiting ACQUIRE_TIMEOUT; shed load or raise the limits"
            )
        if not self.hooks.wants("wait"):
            return await self._waiters.wait(loop, deadline)
        started = loop.time()
        reason = None
        try:
            return await self._waiters.wait(loop, deadline)
        except AcquireTimeout:
            reason = "timeout"
            raise
        finally:
            self.hooks.emit(HookEvent("wait", self.alias, seconds=loop.time() - started, reason=reason))

    def _regrant(self, granted: Holder | _Slot) -> None:
        """A grant reached a waiter as it was cancelled: pass it on."""
        if granted is SLOT:
            self._abandon_opening()
        else:
            assert isinstance(granted, Holder)
            self._put_back(granted)

    def _timed_out(self) -> AcquireTimeout:
        holders = sorted({h.task.get_name() if h.task else "?" for h in self._holders if h.state is _IN_USE})
        shown = ", ".join(holders[:10]) + (f" and {len(holders) - 10} more" if len(holders) > 10 else "")
        # the server refused new connections during the wait: why, as the connects' own error says
        refusals = self._connector.refusals_note(asyncio.get_running_loop().time())
        return AcquireTimeout(
            f"aconn alias {self.alias!r}: no connection within ACQUIRE_TIMEOUT="
            f"{self.settings.acquire_timeout:g}s (MAX_CONNS={self.settings.max_conns}, "
            f"{self._in_use} in use, {self._opening} opening, {self._waiters.live} waiting; "
            f"held by tasks: {shown or 'none'}){refusals}"
        )

    async def _open(self, deadline: float, background: bool = False) -> Holder:
        """Open a connection in a slot already counted in ``size`` and ``opening``; ``background``:
        for the pool itself (``MIN_CONNS``), finished even if the caller is cancelled."""
        started = monotonic()
        try:
            opened = await self._connector.connect(deadline, self._timed_out, self._rest, background)
        except BaseException:
            self._abandon_opening()
            raise
        if isinstance(opened, Holder):  # given back to us while the connect backed off
            self._abandon_opening()
            return opened
        conn, limits, node = opened
        if self.closed:
            self.backend.abort(conn)
            self._abandon_opening()
            raise ClosedError(f"aconn alias {self.alias!r} is closed")
        self.counters.opened += 1
        if not self._rules_checked:
            self._warn_rules_once(limits)
        now = monotonic()
        holder = Holder(self, conn, self.backend.liveness(conn), now, *self._deadlines(limits))
        holder.node = node
        self._holders.add(holder)
        holder.opened()
        if self.hooks.wants("connect"):
            self.hooks.emit(HookEvent("connect", self.alias, seconds=now - started))
        return holder

    async def _rest(self, seconds: float, deadline: float) -> Holder | None:
        """The backoff of a connect the server refused for now (too many connections), spent as a
        waiter: a connection idle already, or one given back meanwhile (to the oldest waiter, this
        one included), ends the backoff. None when the backoff ran out, or a slot (not a connection) came:
        the connect is retried.

        :raises AcquireTimeout: at the acquire deadline.
        """
        idle = await self._checked_idle(deadline)
        if idle is not None:  # given back before this backoff began, with nobody waiting for it
            return idle
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(seconds):
                granted = await self._waiters.wait(loop, deadline)
        except TimeoutError as exc:
            if isinstance(exc, AcquireTimeout):
                raise
            return None
        if granted is SLOT:  # a slot freed (counted opening for us); this connect holds one already: pass it on
            self._abandon_opening()
            return None
        assert isinstance(granted, Holder)
        now = monotonic()
        granted.handed_over(now)
        reason = self._unusable_reason(granted, now)
        if reason is not None:
            granted.dropped(reason)
            self.backend.abort(granted.conn)
            self._release_slot()  # its slot: this connect holds one already
            return None
        return granted

    def _deadlines(self, limits: ServerLimits) -> tuple[float, float]:
        """``(close_at, idle_limit)`` of a connection opening now."""
        settings = self.settings
        now = monotonic()
        max_age = settings.conn_max_age
        # jittered down by up to 5% so that a fleet does not reconnect at once
        close_at = math.inf if max_age is None else now + max_age * (1 - random.random() * 0.05)
        if settings.idle_timeout is not None:
            idle_limit = settings.idle_timeout
        else:
            idle_limit = idle_limit_from_server(limits.idle_timeout) or math.inf
        return close_at, idle_limit

    def _warn_rules_once(self, limits: ServerLimits) -> None:
        """The settings checked against the server once per alias (not per connection): a WARNING per rule failed."""
        self._rules_checked = True
        for verdict in evaluate(self.settings, limits):
            if not verdict.ok:
                logger.warning("aconn alias %r: %s; %s", self.alias, verdict.message, verdict.fix)

    def _taken(self, holder: Holder, task: asyncio.Task[Any] | None) -> Holder:
        holder.handed_out(task, self._watch)
        return holder

    def _leaked(self, holder: Holder) -> None:
        self.counters.leaks_detected += 1
        task = holder.task.get_name() if holder.task is not None else "?"
        logger.warning(
            "aconn alias %r: a connection has been held by task %r for more than "
            "LEAK_TIMEOUT=%gs; it was taken at:\n%s",
            self.alias,
            task,
            self.settings.leak_timeout,
            "".join(holder.taken_stack or ()),
        )
        if self.hooks.wants("leak"):
            self.hooks.emit(HookEvent("leak", self.alias, seconds=monotonic() - holder.taken_at, task=task))

    # -- release --------------------------------------------------------------------------

    def release(
        self, holder: Holder, exc: BaseException | None, clean: bool = False
    ) -> Coroutine[Any, Any, None] | None:
        """Give a connection back at scope exit.

        Returns None when done (the common case: no I/O at all), else a
        coroutine with the work that needs the network, to be awaited shielded.
        ``clean``: the caller has just found it reusable (the backend's ``reusable``), so that
        is not asked again.
        """
        if holder.state is not _IN_USE:
            if holder.state is _PINNED:
                return None  # shared by every scope until unpinned: nothing to give back
            raise InternalError(f"aconn alias {self.alias!r}: released a {holder.state.value} connection")
        holder.task = None  # no owner any more; the watch (leak timer, use hook) ends with it
        if self._watch is not None:
            holder.unwatched(self._watch)
        now = monotonic()
        if (
            exc is None
            and now < holder.close_at
            and not self.closed
            and ((clean and not self._reset_on_release) or self._reusable(holder.conn))
        ):
            holder.last_used = now
            if self._waiters:
                self._put_back(holder)
            else:  # Holder.idled() and _put_back's last line, inlined: the calls cost ~3% of a scope
                holder.state = _IDLE
                self._in_use -= 1
                self._idle.append(holder)
            return None
        return self._release_slow(holder, exc)

    async def give_back(self, holder: Holder, exc: BaseException | None) -> None:
        """:meth:`release`, and its network work awaited to the end even if the caller is cancelled
        (the scope path writes this out for each alias it holds)."""
        slow = self.release(holder, exc)
        if slow is not None:
            await run_shielded(slow)

    def observe_use(self) -> None:
        """Report how long each scope held a connection (the ``use`` hook) from now on; until then,
        the scope path of a pool nobody observes pays nothing for it."""
        watch = self._watch
        if watch is None:
            self._watch = Watch(None, self._leaked, self._used)
        elif watch.on_use is None:
            watch.on_use = self._used

    def _used(self, holder: Holder) -> None:
        if holder.state is _IN_USE:
            self.hooks.emit(HookEvent("use", self.alias, seconds=monotonic() - holder.taken_at))

    async def _release_slow(self, holder: Holder, exc: BaseException | None) -> None:
        backend = self.backend
        conn = holder.conn
        reason: CloseReason | None = None
        if isinstance(exc, asyncio.CancelledError | TimeoutError):
            # cancelled or timed out, maybe mid-query: its byte stream may be out of step
            backend.interrupt(conn)
            reason = _ERROR
        elif not holder.alive():
            reason = _UNUSABLE
        elif backend.left_running(conn):
            # a statement still in flight, its caller timed out and went on: stopped in the background
            reason = _ERROR
        elif exc is not None and (kind := backend.classify(exc)) in _NEW_CONNECTION_KINDS:
            if holder.node is not None and self.nodes is not None and self.nodes.error_marks_down(kind):
                # a multi-host alias: that node is out (Galera 1047, a standby after a failover)
                self.nodes.mark_down(holder.node, f"a statement failed: {exc}")
            elif kind is not ErrorKind.DISCONNECT:
                # a demoted primary: the idle connections reach the same server; new ones, after a
                # DNS or proxy failover, reach the new primary
                self._retire_idle()
            # lost, or out of step (e.g. two tasks on one connection): a ping could read stale bytes
            reason = _ERROR
        elif exc is not None:
            try:
                async with asyncio.timeout(CLEANUP_TIMEOUT):
                    await backend.ping(conn)
            except Exception:
                reason = _UNUSABLE
        if reason is None and backend.in_transaction(conn):
            try:
                async with asyncio.timeout(CLEANUP_TIMEOUT):
                    await backend.rollback(conn)
                self.counters.rollbacks += 1
            except Exception as rollback_exc:
                logger.info("aconn alias %r: rollback at release failed: %r", self.alias, rollback_exc)
                reason = _ERROR
        if reason is None and self._reset_on_release:
            try:
                async with asyncio.timeout(CLEANUP_TIMEOUT):
                    await backend.reset(conn)
            except Exception as reset_exc:
                logger.info("aconn alias %r: session reset at release failed: %r", self.alias, reset_exc)
                reason = _ERROR
        now = monotonic()
        if reason is None:
            if self.closed:
                reason = _SHUTDOWN
            elif holder.close_at == _NODE_RETIRED:
                reason = _NODE
            elif now >= holder.close_at:
                reason = _MAX_AGE
        if reason is None:
            holder.last_used = now
            self._put_back(holder)
        else:
            await self._close_in_use(holder, reason)

    def _put_back(self, holder: Holder) -> None:
        """A reusable connection in use: to the oldest live waiter (still in use), else on top of the idle stack."""
        if not self._waiters.hand_over(holder):
            holder.idled()
            self._idle.append(holder)

    # -- slots: the only writes of size and opening outside the holder's transitions --------

    def _new_slot(self) -> None:
        """Count a new slot below the cap, to open a connection in."""
        self._size += 1
        self._opening += 1

    def _open_in_slot(self) -> None:
        """A slot counted in ``size`` (its connection just dropped, or handed over) is opened in."""
        self._opening += 1

    def _abandon_opening(self) -> None:
        """An opening ended without a connection of its own: its slot goes on (:meth:`_release_slot`)."""
        self._opening -= 1
        self._release_slot()

    def _release_slot(self) -> None:
        """A slot no connection holds any more: to the oldest live waiter (to open in), else freed."""
        if self._waiters.hand_over(SLOT):
            self._open_in_slot()
        else:
            self._free_slot()

    def _free_slot(self) -> None:
        """A slot nobody opens in: uncounted."""
        self._size -= 1

    # -- close ----------------------------------------------------------------------------

    def _discard(self, holder: Holder, reason: CloseReason) -> None:
        """Close an idle connection (expired, or failed a check): a dead one at once, others in the background."""
        if self.backend.is_dead(holder.conn, peek=False):
            holder.dropped(reason)
            self.backend.abort(holder.conn)
            self._release_slot()
            return
        holder.closing(reason)
        self._in_background(self._finish_close(holder))

    def _in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run pool work in a task that :meth:`close` waits for."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _close_in_use(self, holder: Holder, reason: CloseReason) -> None:
        """Close a connection that was in use, now; bounded, then aborted."""
        if self.settings.cancel_on_server and self.backend.left_running(holder.conn):
            # A statement still runs on the server for a connection dropped mid-command (its
            # caller cancelled, or the network lost): stop it there before the slot is reused,
            # so that the server never holds more than MAX_CONNS sessions of this alias. In the
            # background: the cancelled caller goes on at once.
            self._stop_in_background(holder, reason)
            return
        holder.closing(reason)
        await self._finish_close(holder)

    def _stop_in_background(self, holder: Holder, reason: CloseReason) -> None:
        """An in-use connection whose session may live on: abort it, stop the session at the
        server in the background, and free the slot only then."""
        holder.closing(reason)
        self.backend.abort(holder.conn)
        self._in_background(self._stop_on_server(holder))

    async def _stop_on_server(self, holder: Holder) -> None:
        """Stop at the server the session of a connection dropped mid-command (a cancelled
        statement, a lost network path, a ping cut short); then free its slot. Bounded."""
        # an idle connection of the pool sends the KILL if there is one (no extra session on
        # the server); else the backend opens its side session, outside the cap
        # (a multi-host alias: the side session of the node the session is on)
        node = holder.node
        via = self._pop_idle() if not self._waiters and not self.closed and node is None else None
        via_exc: BaseException | None = None
        try:
            async with asyncio.timeout(CLEANUP_TIMEOUT):
                address = node.address if node is not None else None
                await self.backend.cancel_on_server(holder.conn, via.conn if via else None, address)
            self.counters.server_cancels += 1
            self._stops_failing = False
        except Exception as exc:
            via_exc = exc
            self.counters.server_cancels_failed += 1
            # WARNING once until a stop succeeds again (a server restarting fails them all)
            why = (
                f"no answer within {CLEANUP_TIMEOUT:g} s"
                if isinstance(exc, TimeoutError) and not str(exc)
                else f"{type(exc).__name__}: {exc}"
            )
            logger.log(
                logging.INFO if self._stops_failing else logging.WARNING,
                "aconn alias %r: could not stop a statement left running at the server (%s); "
                "its session may run on until the statement ends",
                self.alias,
                why,
            )
            self._stops_failing = True
        finally:
            holder.closed()
            if via is not None:
                await self.give_back(via, via_exc)

    async def _finish_close(self, holder: Holder) -> None:
        """The I/O half of a close already decided and counted; frees the slot at the end."""
        try:
            async with asyncio.timeout(CLEANUP_TIMEOUT):
                await self.backend.close(holder.conn)
        except BaseException:
            self.backend.abort(holder.conn)
            raise
        finally:
            holder.closed()

    def _count_closed(self, holder: Holder, reason: CloseReason) -> None:
        """Every close is counted here once (by the holder's transition): count, log, forget the holder."""
        self._holders.discard(holder)
        self.counters.closed[reason] += 1
        if self.hooks.wants("close"):
            self.hooks.emit(HookEvent("close", self.alias, seconds=monotonic() - holder.opened_at, reason=reason.value))
        if reason is not _SHUTDOWN:
            # CONN_MAX_AGE=0 closes at every scope exit by design: not worth an INFO line each
            level = logging.DEBUG if reason is _MAX_AGE and self.settings.conn_max_age == 0 else logging.INFO
            logger.log(
                level,
                "aconn alias %r: closed a connection (%s) after %.1fs",
                self.alias,
                reason.message,
                monotonic() - holder.opened_at,
            )

    def _retire_idle(self) -> None:
        """Close every idle connection now (the server they reach refused a write as read-only)."""
        if not self._read_only_warned:
            self._read_only_warned = True
            logger.warning(
                "aconn alias %r: the server refused a write as read-only (a failover?): closing the idle "
                "connections, so that the next scopes connect again",
                self.alias,
            )
        idle, self._idle = self._idle, []
        for holder in idle:
            self._discard(holder, _UNUSABLE)

    def _node_down(self, node: Node) -> None:
        """A node left the state TARGET needs: counted, its connections retired."""
        self.counters.nodes_down += 1
        self._retire_node(node)

    def _retire_node(self, node: Node) -> None:
        """A node left the state TARGET needs (or stopped taking the writes): its idle connections
        close now, its in-use ones at release (their deadline set in the past: the scope path
        needs no check of its own for it)."""
        for holder in self._holders:
            if holder.node is node:
                holder.close_at = _NODE_RETIRED
        retired = [h for h in self._idle if h.node is node]
        self._idle[:] = [h for h in self._idle if h.node is not node]
        for holder in retired:
            self._discard(holder, _NODE)

    def sweep(self) -> None:
        """Close idle connections past their deadline or idle limit (no I/O on healthy ones)."""
        if not self._idle:
            return
        now = monotonic()
        keep: list[Holder] = []
        for holder in self._idle:
            reason = self._unusable_reason(holder, now)
            if reason is not None:
                self._discard(holder, reason)
            else:
                keep.append(holder)
        self._idle[:] = keep

    def next_expiry(self) -> float:
        """When the earliest idle connection expires (monotonic time), ``inf`` if none."""
        return min((min(h.close_at, h.last_used + h.idle_limit) for h in self._idle), default=math.inf)

    async def close(self) -> None:
        """Close the idle connections and refuse new acquires; busy ones close at release."""
        self.closed = True
        self._waiters.fail_all(ClosedError(f"aconn alias {self.alias!r} is closed"))
        idle, self._idle = self._idle, []
        closes = []
        for holder in idle:
            holder.closing(_SHUTDOWN)
            closes.append(self._finish_close(holder))
        await asyncio.gather(*closes, *self._background, return_exceptions=True)
        if self.nodes is not None:
            await self.nodes.aclose()

    def reopen(self) -> None:
        """Serve again after :meth:`close`; only when quiet (nothing of the old life left running)."""
        if not self.quiet() or self._size:
            raise InternalError(f"aconn alias {self.alias!r}: reopened a pool still in use")
        self.closed = False

    def quiet(self) -> bool:
        """Nothing in use, being opened or closed, no waiter, no background work."""
        return not (self._in_use or self._opening or self._closing or self._waiters.live or self._background)

    def forget_idle(self) -> None:
        """Drop the idle connections of an event loop this pool leaves: sockets closed, no I/O."""
        idle, self._idle = self._idle, []
        for holder in idle:
            holder.dropped(_SHUTDOWN)
            self.backend.forget(holder.conn)
            self._free_slot()  # no waiter can be left in a loop that has ended
        self.backend.forget_own()
        if self.nodes is not None:
            self.nodes.forget()

    async def fill(self) -> None:
        """Open one more connection into the idle set, if below the cap (for MIN_CONNS)."""
        if self.closed or self._size >= self.settings.max_conns:
            return
        self._new_slot()
        loop = asyncio.get_running_loop()
        self._put_back(await self._open(loop.time() + self.settings.connect_timeout, background=True))

    async def close_old(self) -> None:
        """Sweep the idle set now and wait for the closes it started."""
        self.sweep()
        await asyncio.gather(*self._background)

    async def warm(self) -> None:
        """Open one connection and put it in the idle set: proves the settings and the server."""
        await self.give_back(await self.acquire(asyncio.current_task()), None)

    # -- observability --------------------------------------------------------------------

    def stats(self) -> PoolStats:
        return self.counters.snapshot(
            alias=self.alias, max_conns=self.settings.max_conns, open=self._size, idle=len(self._idle),
            in_use=self._in_use, opening=self._opening, closing=self._closing, waiting=self._waiters.live,
        )  # fmt: skip
